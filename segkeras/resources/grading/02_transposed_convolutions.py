# The setup a grading worker runs before an answer of lab 02_transposed_convolutions: generated from solutions/02_transposed_convolutions.ipynb
# by `python -m segkeras.notebooks`; do not edit.

import os
QUICK = os.environ.get("SEGKERAS_QUICK", "0")          # 1 (or true, yes): CI / laptop CPU, tiny data, few steps
WEIGHTS = None if os.environ.get("SEGKERAS_WEIGHTS", "imagenet") == "none" else "imagenet"
DATA = os.environ.get("SEGKERAS_DATA", "shapes")       # "shapes", "pets" or a COCO-format folder
CHECKPOINTS = os.environ.get("SEGKERAS_CHECKPOINTS", "checkpoints")  # training checkpoints (a folder)
QUICK = True

import logging
import time
import keras
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch
import segkeras
from segkeras import backbones, environment, train, viz
from segkeras.data import pipeline, shapes, sources
from segkeras.evaluate.semantic import evaluate_semantic
from segkeras.models.deconv import deconvnet
layers = keras.layers
IMAGE_SIZE = 64 if QUICK else 128
TRAIN_IMAGES = 16 if QUICK else 1000
VAL_IMAGES = 16 if QUICK else 200
CROP = 64
CLASSIFIER_EPOCHS = 1 if QUICK else 4
EPOCHS = 1 if QUICK else 5
BATCH_SIZE = 16
LEARNING_RATE = 0.001
DECODER_FILTERS = (128, 64, 32, 16, 16)


def class_legend(figure, class_names):
    """A legend of the class colours used by segkeras.viz.colorize."""
    handles = [Patch(color=viz.PALETTE[i] / 255, label=name) for i, name in enumerate(class_names)]
    figure.legend(handles=handles, loc='outside lower center', ncols=len(handles), frameon=False)

def transposed(kernel, stride, padding='valid'):
    """A one-channel Conv2DTranspose holding ``kernel`` (no bias)."""
    layer = layers.Conv2DTranspose(1, kernel.shape[0], strides=stride, padding=padding, use_bias=False, dtype='float32')
    layer.build((None, None, None, 1))
    layer.set_weights([kernel.reshape(*kernel.shape, 1, 1).astype('float32')])
    return layer

def nearest_upsampler(images):
    return np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)

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
        if block > 1:
            features[f'P{block - 1}'] = x
        x = layers.MaxPooling2D(name=f'block{block}_pool')(x)
    features['P5'] = x
    return keras.Model(image, features, name='shapesnet_encoder')




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

def make_encoder():
    """A frozen copy of the pretrained small encoder (shapes), or VGG16 (ImageNet weights when
    available, else random and trainable)."""
    if DATA != 'shapes':
        return backbones.build_encoder('vgg16', (IMAGE_SIZE, IMAGE_SIZE, 3), WEIGHTS, trainable=WEIGHTS is None)
    frozen = shapes_encoder()
    frozen.set_weights(pretrained)
    return backbones.freeze(frozen)


models, histories = ({}, {})

ROWS = 4
