# The setup a grading worker runs before an answer of lab 03_unet_transfer_learning: generated from solutions/03_unet_transfer_learning.ipynb
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
from matplotlib.ticker import MaxNLocator
from segkeras import WeightsUnavailableError, backbones, environment, pretrain, train, viz
from segkeras.data import sources
from segkeras.data.pipeline import make_dataset
from segkeras.evaluate.semantic import evaluate_semantic
from segkeras.losses import SparseCEDice
from segkeras.models.unet import unet
SIZE = 64 if DATA == 'shapes' else 128
SHAPE = (SIZE, SIZE, 3)
N_LABELLED = 32 if QUICK else 96
N_VAL = 32 if QUICK else 200
BATCH = 8
HEAD_EPOCHS, FINETUNE_EPOCHS = (1, 1) if QUICK else (10, 10)
SEEDS = (0,) if QUICK else (0, 1, 2)
LEARNING_RATE = 0.003
DECODER_FILTERS = (64, 48, 32, 16, 16)
IMAGENET = WEIGHTS == 'imagenet'
BACKBONE = 'mobilenetv2' if IMAGENET else 'shapesnet'
PRETRAINED = 'ImageNet MobileNetV2' if IMAGENET else 'shapesnet pretrained by counting shapes'

def count(weights) -> int:
    return sum((int(np.prod(weight.shape)) for weight in weights))




def report_trainable(model: keras.Model) -> None:
    print(f'trainable {count(model.trainable_weights):>9,}   non-trainable {count(model.non_trainable_weights):>9,}')

EPOCHS = HEAD_EPOCHS + FINETUNE_EPOCHS


def make_encoder(pretrained: bool, backbone: str=BACKBONE) -> keras.Model:
    """An encoder pretrained (on ImageNet, or offline on counting shapes) and frozen, or the same
    architecture randomly initialised (BatchNorm trainable)."""
    if IMAGENET:
        return backbones.build_encoder(backbone, SHAPE, 'imagenet' if pretrained else None, trainable=not pretrained)
    if pretrained:
        return pretrain.pretrained_encoder(SHAPE, architecture=backbone)
    return pretrain.random_encoder(SHAPE, architecture=backbone)




def training_data(seed: int):
    """The labelled images, shuffled and augmented anew each epoch, in the order of `seed`."""
    return make_dataset(small_data, SIZE, BATCH, augment=True, shuffle=True, seed=seed)




def fit(model: keras.Model, data, epochs: int, curve: list, name: str) -> None:
    """Train `epochs` epochs on `data` (a checkpoint per epoch, named `name`); append the
    validation mean IoU after each one to `curve`."""
    track = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(val_mean_iou=evaluate_semantic(model, val_ds)['mean_iou']))
    history = train.resumable_fit(model, data, CHECKPOINTS, name, epochs, callbacks=[track], verbose=0)
    curve.extend(history.history['val_mean_iou'])




def spread(values: list) -> str:
    """The mean of one result over the seeds, its range and each seed's value."""
    return f'{np.mean(values):.3f} (min {min(values):.3f}, max {max(values):.3f}; seeds ' + ' '.join((f'{value:.3f}' for value in values)) + ')'


curves, seconds = ({'a': {}, 'b': {}, 'c': {}}, {'a': {}, 'b': {}, 'c': {}})
models = {}

after_head = {}

NAMES = {'a': '(a) from scratch', 'b': '(b) frozen pretrained', 'c': '(c) fine-tuned'}

comparison = {}
