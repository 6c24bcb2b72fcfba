# The setup a grading worker runs before an answer of lab 04_stacked_hourglass: generated from solutions/04_stacked_hourglass.ipynb
# by `python -m segkeras.notebooks`; do not edit.

import os
QUICK = os.environ.get("SEGKERAS_QUICK", "0") == "1"   # CI / laptop CPU: tiny data, few steps
WEIGHTS = None if os.environ.get("SEGKERAS_WEIGHTS", "imagenet") == "none" else "imagenet"
DATA = os.environ.get("SEGKERAS_DATA", "shapes")       # "shapes", "pets" or a COCO-format folder
QUICK = True

import time
import warnings
import keras
import numpy as np
from keras import layers
from matplotlib.figure import Figure
from segkeras import train, viz
from segkeras.data import sources
from segkeras.data.pipeline import make_dataset
from segkeras.evaluate.semantic import confusion_matrices, evaluate_semantic, format_table, scores
from segkeras.models.hourglass import hourglass
NUM_STACKS, DEPTH, FILTERS = (2, 3, 64)
SIZE = 64 if DATA == 'shapes' else 128
N_TRAIN, N_VAL = (64, 32) if QUICK else (1600, 200)
BATCH = 8
EPOCHS = 1 if QUICK else 15
LEARNING_RATE = 0.005

width = 0.8 / NUM_STACKS
