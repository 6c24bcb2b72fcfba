# The setup a grading worker runs before an answer of lab 05_mask_rcnn_head: generated from solutions/05_mask_rcnn_head.ipynb
# by `python -m segkeras.notebooks`; do not edit.

import os

QUICK = os.environ.get("SEGKERAS_QUICK", "0")             # 1 (or true, yes): CI / laptop CPU, tiny data, few steps
WEIGHTS = os.environ.get("SEGKERAS_WEIGHTS", "imagenet")  # encoder start: "imagenet" or "none"
DATA = os.environ.get("SEGKERAS_DATA", "shapes")          # "shapes" or a COCO-format dataset
CHECKPOINTS = os.environ.get("SEGKERAS_CHECKPOINTS", "checkpoints")  # training checkpoints (a folder)
QUICK = True

import contextlib
import io
import time
import keras
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
import segkeras
from segkeras import backbones, environment, train, viz
from segkeras.data import shapes, sources
from segkeras.data.core import Instances
from segkeras.data.instances import make_instance_dataset
from segkeras.evaluate.instances import mask_ap
from segkeras.models.mask_head import instance_segmenter, predict_masks_in_boxes
IMAGE_SIZE = 64 if QUICK else 128 if DATA == 'shapes' else 256
TRAIN_IMAGES = 16 if QUICK else 1600
VAL_IMAGES = 16 if QUICK else 200
EPOCHS = 1 if QUICK else 4
BATCH_SIZE = 8
MAX_INSTANCES = 6
HEAD_CHANNELS = 32 if QUICK else 128
ENCODER_WEIGHTS = None if WEIGHTS == 'none' else WEIGHTS

def paint_instances(image, masks, alpha=0.6):
    """A grey copy of the image with each instance mask tinted in its own colour."""
    grey = np.repeat(np.asarray(image, dtype=np.float64).mean(axis=-1, keepdims=True), 3, axis=-1)
    for index, mask in enumerate(masks):
        grey[mask] = (1 - alpha) * grey[mask] + alpha * TAB10[index % len(TAB10)]
    return grey.round().astype(np.uint8)




def outline(ax, masks, color='white'):
    """Draw the outline of every mask on ``ax``."""
    for mask in masks:
        if mask.any():
            ax.contour(mask, levels=[0.5], colors=[color], linewidths=1.2)




def touching_pair(objects):
    """Indices of two touching objects of the same class, or None."""
    for i in range(len(objects)):
        grown = objects.masks[i].copy()
        grown[1:] |= objects.masks[i][:-1]
        grown[:-1] |= objects.masks[i][1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        for j in range(i + 1, len(objects)):
            if objects.class_ids[i] == objects.class_ids[j] and (grown & objects.masks[j]).any():
                return (i, j)
    return None

def draw_roi_align(box=(1.6, 1.3, 6.1, 4.9), bins=2, sampling_ratio=2, height=6, width=8):
    """Feature cells (centres at +0.5), a box in feature-map coordinates, its bins and samples."""
    figure = Figure(figsize=(7, 5.4), layout='constrained')
    ax = figure.subplots()
    for row in range(height + 1):
        ax.plot([0, width], [row, row], color='0.8', linewidth=1)
    for col in range(width + 1):
        ax.plot([col, col], [0, height], color='0.8', linewidth=1)
    centres = np.stack(np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5), -1)
    ax.scatter(*centres.reshape(-1, 2).T, s=12, color='0.5', label='feature cell centres')
    x1, y1, x2, y2 = box
    rounded = np.round(box)
    ax.add_patch(Rectangle(rounded[:2], *rounded[2:] - rounded[:2], fill=False, color='0.4', linestyle=':', linewidth=2, label='RoIPool: box rounded to cells'))
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color='tab:blue', linewidth=2.5, label='RoI (box)'))
    for k in range(1, bins):
        ax.plot([x1 + k * (x2 - x1) / bins] * 2, [y1, y2], '--', color='tab:blue')
        ax.plot([x1, x2], [y1 + k * (y2 - y1) / bins] * 2, '--', color='tab:blue')
    steps = (np.arange(bins)[:, None] + (np.arange(sampling_ratio) + 0.5) / sampling_ratio).ravel()
    xs, ys = (x1 + steps * (x2 - x1) / bins, y1 + steps * (y2 - y1) / bins)
    points = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    ax.scatter(*points.T, s=40, color='tab:red', zorder=3, label='sampling points')
    px, py = points[5]
    cx, cy = (np.floor(px - 0.5) + 0.5, np.floor(py - 0.5) + 0.5)
    for nx in (cx, cx + 1):
        for ny in (cy, cy + 1):
            ax.plot([px, nx], [py, ny], color='tab:red', linewidth=1)
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(height + 0.2, -0.2)
    ax.set_aspect('equal')
    ax.set_title(f'RoIAlign: {bins}x{bins} bins, {sampling_ratio}x{sampling_ratio} samples per bin')
    ax.legend(loc='upper left', bbox_to_anchor=(1.0, 1.0), fontsize=9)
    return figure

from skimage.transform import resize

import tensorflow as tf
from segkeras.data.instances import MASK_SIZE
from segkeras.layers import RoIAlign, RoIPool
from segkeras.models.mask_head import ROI_SIZE, FlattenBoxes, mask_branch
ABLATION_STEPS = 1 if QUICK else 400
ABLATION_CHANNELS = 32
ABLATION_RUNS = (1,) if QUICK else (1, 2)
VARIANTS = ('RoIAlign, sigmoid', 'RoIPool, sigmoid', 'RoIAlign, softmax')


def proposals(part, jitter):
    """`part`'s ({"image", "boxes", "class_ids"}, targets) batches, resized to IMAGE_SIZE and in
    order (no flips); `jitter` as in the training above."""
    return make_instance_dataset(part, IMAGE_SIZE, BATCH_SIZE, MAX_INSTANCES, jitter=jitter, shuffle=False)




def head_batches(features, part, jitter):
    """({"features", "boxes"}, target) batches: `features` beside `part`'s boxes; the target
    of each box row holds its 28x28 mask target (-1: padding) and its class id."""

    def example(features, batch):
        inputs, targets = batch
        ids = keras.ops.cast(inputs['class_ids'], targets.dtype)[:, :, None, None]
        rows = keras.ops.stack([targets, keras.ops.broadcast_to(ids, keras.ops.shape(targets))], -1)
        return ({'features': features, 'boxes': inputs['boxes']}, keras.ops.reshape(rows, (-1, MASK_SIZE, MASK_SIZE, 2)))
    features = tf.data.Dataset.from_tensor_slices(features).batch(BATCH_SIZE)
    return tf.data.Dataset.zip((features, proposals(part, jitter))).map(example)




def sigmoid_loss(rows, logits):
    """Your mask_loss on the box's own class channel (a per-pixel sigmoid)."""
    logits = keras.ops.cast(logits, 'float32')
    ids = keras.ops.cast(rows[:, 0, 0, 1], 'int32')
    chosen = keras.ops.sum(logits * keras.ops.one_hot(ids, logits.shape[-1])[:, None, None], -1)
    return sigmoid_mask_loss(rows[None, ..., 0], chosen[None])




def softmax_loss(rows, logits):
    """Cross-entropy of a softmax over the classes: the box's class inside its object, the
    background (0) outside; padding rows count nothing."""
    logits = keras.ops.cast(logits, 'float32')
    targets, ids = (rows[..., 0], rows[..., 1])
    labels = keras.ops.cast(keras.ops.where(targets > 0, ids, 0.0), 'int32')
    counted = keras.ops.cast(targets >= 0, 'float32')
    per_pixel = keras.ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    return keras.ops.sum(per_pixel * counted) / keras.ops.maximum(keras.ops.sum(counted), 1.0)

heads, losses = ({}, {})
ablation = {}
