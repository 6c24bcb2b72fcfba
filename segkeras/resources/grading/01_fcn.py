# The setup a grading worker runs before an answer of lab 01_fcn: generated from solutions/01_fcn.ipynb
# by `python -m segkeras.notebooks`; do not edit.

import os
QUICK = os.environ.get("SEGKERAS_QUICK", "0")          # 1 (or true, yes): CI / laptop CPU, tiny data, few steps
WEIGHTS = None if os.environ.get("SEGKERAS_WEIGHTS", "imagenet") == "none" else "imagenet"
DATA = os.environ.get("SEGKERAS_DATA", "shapes")       # "shapes", "pets" or a COCO-format folder
CHECKPOINTS = os.environ.get("SEGKERAS_CHECKPOINTS", "checkpoints")  # training checkpoints (a folder)
QUICK = True

import contextlib
import io
import logging
import time
import keras
import numpy as np
from keras import layers
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
import segkeras
from segkeras import backbones, environment, train, viz
from segkeras.data import shapes, sources
from segkeras.data.pipeline import make_dataset
from segkeras.evaluate.semantic import evaluate_semantic
from segkeras.fcn_stages import initialize_from, train_in_stages
from segkeras.layers import BilinearUpsampling
IMAGE_SIZE = 64 if QUICK else 128
TRAIN_IMAGES = 16 if QUICK else 1000
VAL_IMAGES = 16 if QUICK else 200
CROP = 64
CLASSIFIER_EPOCHS = 1 if QUICK else 4
EPOCHS = 1 if QUICK else 5
BATCH_SIZE = 16
LEARNING_RATE = 0.001


def class_legend(figure, class_names):
    """A legend of the class colours used by segkeras.viz.colorize."""
    handles = [Patch(color=viz.PALETTE[i] / 255, label=name) for i, name in enumerate(class_names)]
    figure.legend(handles=handles, loc='outside lower center', ncols=len(handles), frameon=False)

def object_crops(data, size=CROP, seed=0):
    """A size x size crop centred on every object (label: its class) and one crop of plain
    background per image (label 0); images are mirrored beyond their borders."""
    rng = np.random.default_rng(seed)
    half, crops, labels = (size // 2, [], [])
    for image, mask, objects in zip(data.images, data.masks, data.instances):
        padded = np.pad(image, ((half, half), (half, half), (0, 0)), mode='reflect')
        centres = [((y1 + y2) // 2, (x1 + x2) // 2) for x1, y1, x2, y2 in objects.boxes.astype(int)]
        labels += [int(class_id) for class_id in objects.class_ids]
        for _ in range(50):
            y, x = rng.integers(8, len(mask) - 8, size=2)
            if not mask[y - 8:y + 8, x - 8:x + 8].any():
                centres.append((y, x))
                labels.append(0)
                break
        crops += [padded[y:y + size, x:x + size] for y, x in centres]
    return (np.stack(crops).astype('float32'), np.array(labels))

def shapes_encoder(input_shape=(None, None, 3), widths=(16, 32, 64, 96, 128)):
    """A small VGG-style encoder: raw RGB [0, 255] in, {"P1": stride 2, ..., "P5": stride 32} out."""
    image = keras.Input(input_shape, name='image')
    x = layers.Rescaling(1 / 127.5, offset=-1, name='preprocess')(image)
    features = {}
    for block, width in enumerate(widths, start=1):
        for i in (1, 2):
            x = layers.Conv2D(width, 3, padding='same', use_bias=False, name=f'block{block}_conv{i}')(x)
            x = layers.BatchNormalization(momentum=0.9, name=f'block{block}_bn{i}')(x)
            x = layers.ReLU(name=f'block{block}_relu{i}')(x)
        x = layers.MaxPooling2D(name=f'block{block}_pool')(x)
        features[f'P{block}'] = x
    return keras.Model(image, features, name='shapesnet_encoder')

def softmax(logits):
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)




def shift_and_stitch(model, images, stride=32, step=8):
    """Scores every `step` pixels from a network of output stride `stride` (Long et al., 3.2):
    one pass per shift of the input, the grids interleaved."""
    batch, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (0, stride), (0, stride), (0, 0)), mode='reflect')
    ratio = stride // step
    dense = None
    for dy in range(0, stride, step):
        for dx in range(0, stride, step):
            scores = model.predict(padded[:, dy:dy + height, dx:dx + width], verbose=0)
            if dense is None:
                dense = np.zeros((batch, scores.shape[1] * ratio, scores.shape[2] * ratio, scores.shape[3]), scores.dtype)
            dense[:, dy // step::ratio, dx // step::ratio] = scores
    return dense




def heatmap_figure(images, masks, logits, class_names, rows=3):
    """image | truth | one probability map per object class | argmax of the upsampled scores."""
    size = images.shape[1]
    upsampled = keras.ops.convert_to_numpy(keras.ops.image.resize(logits, (size, size), interpolation='bilinear'))
    columns = 3 + len(class_names) - 1
    figure = Figure(figsize=(2.2 * columns, 2.3 * rows), layout='constrained')
    axes = figure.subplots(rows, columns, squeeze=False)
    for row in range(rows):
        probabilities = softmax(logits[row])
        panels = [('image', images[row]), ('truth', viz.colorize(masks[row]))]
        panels += [(f'P({name})', None) for name in class_names[1:]]
        panels += [('argmax', viz.colorize(upsampled[row].argmax(-1)))]
        for column, (title, picture) in enumerate(panels):
            ax = axes[row, column]
            if picture is None:
                ax.imshow(images[row].mean(axis=-1), cmap='gray')
                ax.imshow(probabilities[..., column - 1], cmap='magma', vmin=0, vmax=1, alpha=0.7, extent=(-0.5, size - 0.5, size - 0.5, -0.5), interpolation='nearest')
            else:
                ax.imshow(np.asarray(picture).astype('uint8'), interpolation='nearest')
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title)
    class_legend(figure, class_names)
    return figure

def build_fcn(variant, encoder, size=IMAGE_SIZE):
    """FCN-`variant` made of your head on `encoder`, float32 logits out."""
    image = keras.Input((size, size, 3), name='image')
    scores = head(encoder(image), NUM_CLASSES, variant, fuse=fuse)
    logits = layers.Activation('linear', dtype='float32', name='logits')(scores)
    return keras.Model(image, logits, name=f'fcn{variant}')

def make_encoder():
    """A fresh copy of the classifier's encoder (shapes) or an ImageNet MobileNetV2."""
    if DATA != 'shapes':
        return backbones.build_encoder('mobilenetv2', (IMAGE_SIZE, IMAGE_SIZE, 3), WEIGHTS, trainable=WEIGHTS is None)
    fresh = shapes_encoder()
    fresh.set_weights(pretrained)
    return fresh




def fit(model, data=None, name=None):
    """One stage: where it starts, then EPOCHS of training on `data` (default: `train_ds`)."""
    name = name or model.name
    train.compile_model(model, LEARNING_RATE)
    starts_at = model.evaluate(val_ds, verbose=0, return_dict=True)['mean_iou']
    started = time.time()
    history = train.resumable_fit(model, train_ds if data is None else data, CHECKPOINTS, f'01_{name}', EPOCHS, validation_data=val_ds, verbose=0)
    history.history['start_mean_iou'] = starts_at
    print(f"{name}: validation mean IoU {starts_at:.3f} before training, {history.history['val_mean_iou'][-1]:.3f} after {time.time() - started:.0f} s")
    return history




def build_stage(variant):
    """A fresh FCN-`variant`; FCN-32s starts from the convolutionized classifier of part 1."""
    model = build_fcn(variant, make_encoder())
    if variant == '32s' and DATA == 'shapes':
        model.get_layer('score_fr').set_weights(classify_everywhere.get_weights())
    return model

offset = 0

ROWS = 4
