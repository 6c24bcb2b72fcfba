"""Pretraining offline: a stand-in for ImageNet when there is no network.

Transfer learning needs an encoder that learned good features on a *larger* task than the one at
hand (Yosinski et al., "How transferable are features in deep neural networks?", NeurIPS 2014;
U-Net's encoder-pretrained descendants such as TernausNet, Iglovikov & Shvets, arXiv 2018).
ImageNet is that task for photos. Offline, this module plays its part with a task we can generate
in any amount: **count the circles, rectangles and triangles** in a synthetic shapes image
(image-level labels, cheap like ImageNet's, no pixel masks). To count, the encoder must find and
recognise every object, which is what a segmentation decoder later needs from it.

:func:`shapesnet_encoder` is the small VGG-style encoder (the one labs 1 and 2 pretrain in the
notebook), optionally with residual blocks; :data:`ENCODERS` names three variants;
:func:`pretrain` trains one on the counting task; :func:`pretrained_encoder` loads the checkpoint
shipped in ``data/pretrained/`` (made by ``data/make_pretrained_encoder.py``), or, when that file
is missing (e.g. a pip install), pretrains once and caches the weights.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from segkeras.backbones import ENCODER_SUFFIX, LEVELS, freeze, train_from_scratch, unfreeze
from segkeras.data import shapes
from segkeras.errors import SegkerasError

layers = keras.layers

WIDTHS = (16, 32, 64, 96, 128)
"""Channels of the five blocks of :func:`shapesnet_encoder` (strides 1, 2, 4, 8, 16 before
pooling)."""

MAX_COUNT = 5
"""The counting task's classes per shape: 0, 1, ..., MAX_COUNT (more is counted as MAX_COUNT)."""

RECIPE = {"n_images": 16000, "image_size": 64, "epochs": 4, "batch_size": 64,
          "learning_rate": 2e-3, "seed": 1000}
"""How the shipped checkpoint was made. Its images come from a seed no lab uses (labs use 0-9)."""

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "pretrained"
"""Where the repository ships the checkpoints (``data/make_pretrained_encoder.py`` writes them)."""


def shapesnet_encoder(
    input_shape: tuple = (None, None, 3),
    widths: Sequence[int] = WIDTHS,
    name: str = "shapesnet",
    residual: bool = False,
) -> keras.Model:
    """A small VGG-style encoder (Simonyan & Zisserman, ICLR 2015) named ``"<name>_encoder"``.

    Five blocks of two 3x3 convolutions (BatchNorm, ReLU), each block but the last followed by 2x2
    max-pooling; raw RGB in [0, 255] in, ``{"P1": stride 2, ..., "P5": stride 32}`` out, like
    :func:`segkeras.backbones.build_encoder` (P1..P4: each block's output before its pooling;
    P5: the last pooled map). Trainable, BatchNorm included (momentum 0.9).

    ``residual=True`` makes each block a ResNet basic block (He et al., CVPR 2016): the second
    convolution's BatchNorm output is added to the block's input (through a 1x1 convolution and
    BatchNorm where the width changes) before the last ReLU.
    """
    if len(widths) != len(LEVELS) or not all(int(w) == w and w > 0 for w in widths):
        raise SegkerasError(f"widths needs {len(LEVELS)} positive ints, got {widths!r}.")
    image = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1, name="preprocess")(image)
    features = {}
    for block, width in enumerate(widths, start=1):
        shortcut = x
        for conv in (1, 2):
            x = layers.Conv2D(int(width), 3, padding="same", use_bias=False,
                              name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn{conv}")(x)
            if residual and conv == 2:
                x = layers.Add(name=f"block{block}_add")([x, _projected(shortcut, width, block)])
            x = layers.ReLU(name=f"block{block}_relu{conv}")(x)
        if block > 1:
            features[f"P{block - 1}"] = x  # the deepest map at stride 2 ** (block - 1)
        x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
    features["P5"] = x
    return keras.Model(image, features, name=name + ENCODER_SUFFIX)


def _projected(shortcut, width: int, block: int):
    """A residual block's shortcut: the input itself, or a 1x1 convolution + BatchNorm to
    ``width`` channels where the block changes the width (ResNet's projection shortcut)."""
    if shortcut.shape[-1] == width:
        return shortcut
    shortcut = layers.Conv2D(int(width), 1, use_bias=False, name=f"block{block}_project")(shortcut)
    return layers.BatchNormalization(momentum=0.9, name=f"block{block}_project_bn")(shortcut)


ENCODERS = {
    "shapesnet": {},
    "shapesnet_small": {"widths": tuple(w // 2 for w in WIDTHS)},
    "shapesnet_residual": {"residual": True},
}
"""The pretrainable encoders, as :func:`shapesnet_encoder` arguments: the plain VGG-style
shapesnet, the same at half the width (a quarter of the weights), and the same with residual
blocks. Each ships a counting-pretrained checkpoint (lab 3 compares them)."""


def build(architecture: str = "shapesnet", input_shape: tuple = (None, None, 3)) -> keras.Model:
    """The :data:`ENCODERS` entry ``architecture``, randomly initialised, named after it."""
    if architecture not in ENCODERS:
        raise SegkerasError(f"Unknown shapesnet architecture {architecture!r}; choose one of "
                            f"{sorted(ENCODERS)}.")
    return shapesnet_encoder(input_shape, name=architecture, **ENCODERS[architecture])


def count_labels(data) -> np.ndarray:
    """(n, 3) int32: how many circles, rectangles and triangles each image shows (from its
    instances), capped at :data:`MAX_COUNT`."""
    if data.instances is None:
        raise SegkerasError("count_labels needs data with instances (e.g. shapes.generate).")
    counts = [np.bincount(objects.class_ids, minlength=len(shapes.CLASS_NAMES))[1:]
              for objects in data.instances]
    return np.minimum(np.array(counts, dtype="int32"), MAX_COUNT)


def counting_model(encoder: keras.Model) -> keras.Model:
    """The pretext classifier: global average pooling of P5, then one softmax over 0..MAX_COUNT
    per shape class; logits ``(batch, 3, MAX_COUNT + 1)``."""
    image = keras.Input(encoder.input.shape[1:], name="image")
    pooled = layers.GlobalAveragePooling2D(name="pool")(encoder(image)["P5"])
    classes = len(shapes.CLASS_NAMES) - 1
    logits = layers.Dense(classes * (MAX_COUNT + 1), dtype="float32", name="count")(pooled)
    logits = layers.Reshape((classes, MAX_COUNT + 1), name="count_logits")(logits)
    return keras.Model(image, logits, name=f"{encoder.name}_counting")


def pretrain(
    architecture: str = "shapesnet",
    n_images: int = RECIPE["n_images"],
    image_size: int = RECIPE["image_size"],
    epochs: int = RECIPE["epochs"],
    batch_size: int = RECIPE["batch_size"],
    learning_rate: float = RECIPE["learning_rate"],
    seed: int = RECIPE["seed"],
    verbose: int | str = 2,
) -> tuple[keras.Model, dict]:
    """Train the :data:`ENCODERS` entry ``architecture`` to count the shapes in ``n_images``
    generated images.

    Returns the encoder and a report on 1000 held-out images: ``count_accuracy`` (the share of
    counts right, over images and shape classes), ``all_counts_right`` (the share of images with
    all three counts right) and ``seconds`` (training time).
    """
    keras.utils.set_random_seed(seed)
    train = shapes.generate(n_images, image_size=image_size, seed=seed)
    held_out = shapes.generate(1000, image_size=image_size, seed=seed + 1)
    encoder = build(architecture, (image_size, image_size, 3))
    model = counting_model(encoder)
    steps = epochs * -(-n_images // batch_size)
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
                      learning_rate, decay_steps=steps)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.time()
    model.fit(train.images.astype("float32"), count_labels(train), batch_size=batch_size,
              epochs=epochs, verbose=verbose)
    seconds = time.time() - start
    predicted = model.predict(held_out.images.astype("float32"), verbose=0).argmax(axis=-1)
    right = predicted == count_labels(held_out)
    return encoder, {"count_accuracy": float(right.mean()),
                     "all_counts_right": float(right.all(axis=-1).mean()), "seconds": seconds}


def checkpoint_name(architecture: str = "shapesnet") -> str:
    """The file name of ``architecture``'s counting-pretrained weights."""
    return f"{architecture}_counting.weights.h5"


def checkpoint_report(architecture: str = "shapesnet") -> dict | None:
    """The shipped checkpoint's report (recipe, held-out counting accuracy, training time,
    parameters), or None when the repository's ``data/pretrained/`` is not there."""
    report = SHIPPED_DIR / checkpoint_name(architecture).replace(".weights.h5", ".json")
    return json.loads(report.read_text()) if report.is_file() else None


def _cached_checkpoint(architecture: str) -> Path:
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "segkeras" / checkpoint_name(architecture)


def pretrained_encoder(
    input_shape: tuple = (None, None, 3), trainable: bool = False,
    architecture: str = "shapesnet",
) -> keras.Model:
    """The :data:`ENCODERS` entry ``architecture`` with its counting-pretrained weights, frozen
    by default.

    Reads ``data/pretrained/<architecture>_counting.weights.h5`` (shipped with the repository);
    where it is missing, pretrains with :data:`RECIPE` once (minutes on a CPU) and caches the
    weights in ``$KERAS_HOME/segkeras/``. ``trainable=True`` unfreezes it with BatchNorm kept
    frozen.
    """
    encoder = build(architecture, input_shape)
    path = SHIPPED_DIR / checkpoint_name(architecture)
    if not path.is_file():
        path = _cached_checkpoint(architecture)
    if not path.is_file():
        print(f"No pretrained {architecture} in {SHIPPED_DIR}: pretraining it once "
              f"(cached in {path})")
        pretrained, _ = pretrain(architecture, verbose=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pretrained.save_weights(path)
    encoder.load_weights(path)
    return unfreeze(encoder) if trainable else freeze(encoder)


def random_encoder(
    input_shape: tuple = (None, None, 3), architecture: str = "shapesnet"
) -> keras.Model:
    """The :data:`ENCODERS` entry ``architecture`` with random weights, trainable BatchNorm
    included (momentum 0.9): the from-scratch baseline of the same architecture."""
    return train_from_scratch(build(architecture, input_shape))
