# The setup a grading worker runs before an answer of lab 06_boxes_to_masks: generated from solutions/06_boxes_to_masks.ipynb
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
from keras import ops
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
import segkeras
from segkeras import backbones, environment, train, viz
from segkeras.data import sources
from segkeras.evaluate import detection_ap, mask_ap
from segkeras.models.mask_rcnn import mask_rcnn, mask_rcnn_dataset, predict_instances, predict_masks_in_boxes
from segkeras.models.mask_rcnn.anchors import anchor_grid
IMAGE_SIZE = 64 if QUICK else 128
TRAIN_IMAGES = 32 if QUICK else 1600
VAL_IMAGES = 16 if QUICK else 200
STEPS = 4 if QUICK else 600
BATCH_SIZE = 8
MAX_INSTANCES = 6
STRIDE = 8
ANCHOR_SIZES = (16, 32, 64)
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
WIDTH = 16 if QUICK else 64
ENCODER_WEIGHTS = None if WEIGHTS == 'none' else WEIGHTS

grid_size = (IMAGE_SIZE // STRIDE, IMAGE_SIZE // STRIDE)
position = grid_size[0] // 2 * grid_size[1] + grid_size[1] // 2

POSITIVE_IOU, NEGATIVE_IOU = (0.7, 0.3)

def padded(objects, rows=MAX_INSTANCES):
    """Ground-truth boxes padded to ``rows`` rows, and which rows are real."""
    boxes = np.zeros((rows, 4), 'float32')
    count = min(len(objects), rows)
    boxes[:count] = objects.boxes[:count]
    return (boxes, np.arange(rows) < count)

LABEL_AT = [(10, 7, 'left'), (52, 7, 'right'), (60, 18, 'left'), (12, 58, 'left'), (50, 58, 'right')]

EPOCHS = 4

def show_instances(ax, image, masks, boxes=(), labels=(), outlines=(), alpha=0.55):
    """A grey copy of ``image`` (so masks stand out from the coloured shapes) with each mask tinted
    in its own colour, its box and label, and white outlines."""
    picture = np.repeat(np.asarray(image, np.float64).mean(axis=-1, keepdims=True), 3, axis=-1)
    for k, mask in enumerate(masks):
        picture[mask] = (1 - alpha) * picture[mask] + alpha * 255 * TAB10[k % 10]
    ax.imshow(picture.round().astype(np.uint8))
    for k, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels)):
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color=TAB10[k % 10], linewidth=1.5))
        ax.text(x1, y1 - 1, label, color='white', fontsize=7, backgroundcolor=TAB10[k % 10])
    for mask in outlines:
        if mask.any():
            ax.contour(mask, levels=[0.5], colors='white', linewidths=0.8)
    ax.set_axis_off()

def disagreement(index):
    """How differently the two ways segment image ``index``: missed objects plus false detections."""
    keep = detections[index]['scores'] >= 0.5
    return abs(int(keep.sum()) - len(val_data.instances[index]))
