# The setup a grading worker runs before an answer of lab 04_stacked_hourglass: generated from solutions/04_stacked_hourglass.ipynb
# by `python -m segkeras.notebooks`; do not edit.

import os
QUICK = os.environ.get("SEGKERAS_QUICK", "0")          # 1 (or true, yes): CI / laptop CPU, tiny data, few steps
WEIGHTS = None if os.environ.get("SEGKERAS_WEIGHTS", "imagenet") == "none" else "imagenet"
DATA = os.environ.get("SEGKERAS_DATA", "shapes")       # "shapes", "pets" or a COCO-format folder
CHECKPOINTS = os.environ.get("SEGKERAS_CHECKPOINTS", "checkpoints")  # training checkpoints (a folder)
QUICK = True

import time
import warnings
import keras
import numpy as np
from keras import layers
from matplotlib.figure import Figure
from segkeras import environment, train, viz
from segkeras.data import sources
from segkeras.data.pipeline import make_dataset
from segkeras.evaluate.semantic import confusion_matrices, evaluate_semantic, format_table, scores
from segkeras.models.hourglass import hourglass
NUM_STACKS, DEPTH, FILTERS = (2, 3, 64)
SIZE = 64 if DATA == 'shapes' else 128
N_TRAIN, N_VAL = (16, 16) if QUICK else (1600, 200)
BATCH = 8
EPOCHS = 1 if QUICK else 15
LEARNING_RATE = 0.005

def residual(x, filters: int, name: str):
    """Newell et al.'s bottleneck residual module: BN-ReLU-conv 1x1 (filters/2), 3x3 (filters/2),
    1x1 (filters), plus the input."""
    shortcut = x if x.shape[-1] == filters else layers.Conv2D(filters, 1, name=f'{name}_skip')(x)
    for i, (width, kernel) in enumerate(((filters // 2, 1), (filters // 2, 3), (filters, 1)), 1):
        x = layers.BatchNormalization(name=f'{name}_bn{i}')(x)
        x = layers.ReLU(name=f'{name}_relu{i}')(x)
        x = layers.Conv2D(width, kernel, padding='same', name=f'{name}_conv{i}')(x)
    return layers.Add(name=f'{name}_add')([shortcut, x])

width = 0.8 / NUM_STACKS

ABLATION_STEPS = 1 if QUICK else 250
ABLATION_SEEDS = (1,) if QUICK else (1, 2)


def conv_multiply_adds(network: keras.Model) -> int:
    """The multiply-adds of the convolutions of `network` for one image."""
    return sum((int(np.prod(layer.output.shape[1:])) * int(np.prod(layer.kernel.shape[:-1])) for layer in network.layers if isinstance(layer, layers.Conv2D)))




def supervising(supervised: list[str]):
    """(image, mask) -> (image, {stack: target}): the mask for the stacks in `supervised`, all
    255 (ignored: no loss, no gradient) for the others."""

    def targets(image, mask):
        ignored = keras.ops.full_like(mask, 255)
        return (image, {name: mask if name in supervised else ignored for name in stacks})
    return targets

ablation = {}

import textwrap
labels, position = ([], 0)
