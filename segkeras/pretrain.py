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
shipped in the package (``segkeras/resources/pretrained/``, made by
``data/make_pretrained_encoder.py``), or, for a recipe no shipped checkpoint was made with,
pretrains once and caches the weights under a name that holds the recipe's hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from segkeras import resources
from segkeras.backbones import (
    ENCODER_SUFFIX,
    LEVELS,
    Encoder,
    freeze,
    train_from_scratch,
    unfreeze,
)
from segkeras.data import shapes
from segkeras.errors import SegkerasError
from segkeras.runs import atomic_write_bytes, atomic_write_text

layers = keras.layers

WIDTHS = (16, 32, 64, 96, 128)
"""Channels of the five blocks of :func:`shapesnet_encoder` (strides 1, 2, 4, 8, 16 before
pooling)."""

MAX_COUNT = 5
"""The counting task's classes per shape: 0, 1, ..., MAX_COUNT (more is counted as MAX_COUNT)."""

RECIPE = {"n_images": 16000, "image_size": 64, "epochs": 4, "batch_size": 64,
          "learning_rate": 2e-3, "seed": 1000}
"""How the shipped checkpoint was made. Its images come from a seed no lab uses (labs use 0-9)."""


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
    P5: the last pooled map), an :class:`~segkeras.backbones.Encoder` like its encoders.
    Trainable, BatchNorm included (momentum 0.9).

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
    return Encoder(image, features, name=name + ENCODER_SUFFIX)


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
    return shapesnet_encoder(input_shape, name=architecture, **_encoder_arguments(architecture))


def _encoder_arguments(architecture: str) -> dict:
    if architecture not in ENCODERS:
        raise SegkerasError(f"Unknown shapesnet architecture {architecture!r}; choose one of "
                            f"{sorted(ENCODERS)}.")
    return ENCODERS[architecture]


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
    """The file name of ``architecture``'s shipped counting-pretrained weights."""
    return f"{architecture}_counting.weights.h5"


def shipped_checkpoint(architecture: str = "shapesnet") -> Path:
    """Where the package ships ``architecture``'s checkpoint (its report: the same name with
    ``.json`` for ``.weights.h5``)."""
    return resources.path("pretrained", checkpoint_name(architecture))


def recipe_key(architecture: str = "shapesnet", recipe: dict | None = None) -> str:
    """12 hex digits naming what a pretraining is made of: the architecture's
    :data:`ENCODERS` entry, the counting task and every :data:`RECIPE` value (``recipe``
    overrides them), so that two different pretrainings never share a cache file."""
    encoder = {"widths": WIDTHS, "residual": False, **_encoder_arguments(architecture)}
    made_of = {"architecture": architecture, "encoder": encoder, "max_count": MAX_COUNT,
               "recipe": _full_recipe(recipe)}
    text = json.dumps(made_of, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _full_recipe(recipe: dict | None) -> dict:
    unknown = set(recipe or {}) - set(RECIPE)
    if unknown:
        raise SegkerasError(f"Unknown pretraining recipe keys {sorted(unknown)}; use "
                            f"{sorted(RECIPE)}.")
    return {**RECIPE, **(recipe or {})}


def _report_path(weights: Path) -> Path:
    return weights.with_name(weights.name.replace(".weights.h5", ".json"))


def _read_report(weights: Path) -> dict | None:
    report = _report_path(weights)
    if not (weights.is_file() and report.is_file()):
        return None
    return json.loads(report.read_text())


def _checkpoint(architecture: str, recipe: dict | None) -> Path:
    """The weights :func:`pretrained_encoder` loads for ``recipe``: the shipped checkpoint when
    its report says it was made with exactly this recipe, otherwise the cache file
    ``$KERAS_HOME/segkeras/<architecture>_counting-<recipe_key>.weights.h5`` (which may not
    exist yet)."""
    recipe = _full_recipe(recipe)
    shipped = shipped_checkpoint(architecture)
    report = _read_report(shipped)
    if report is not None and report.get("recipe") == recipe:
        return shipped
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    key = recipe_key(architecture, recipe)
    return Path(home) / "segkeras" / f"{architecture}_counting-{key}.weights.h5"


def save_checkpoint(encoder: keras.Model, report: dict, recipe: dict, weights: Path) -> dict:
    """Write ``encoder``'s weights to ``weights`` and, beside it, its report with the recipe
    and the parameter count (both atomically, the report last); returns the report."""
    report = {"recipe": _full_recipe(recipe), **report, "parameters": encoder.count_params()}
    with tempfile.TemporaryDirectory() as folder:  # Keras wants the .weights.h5 suffix
        written = Path(folder) / "encoder.weights.h5"
        encoder.save_weights(written)
        atomic_write_bytes(weights, written.read_bytes())
    atomic_write_text(_report_path(weights), json.dumps(report, indent=2) + "\n")
    return report


def checkpoint_report(architecture: str = "shapesnet", recipe: dict | None = None) -> dict | None:
    """The report (recipe, held-out counting accuracy, training time, parameters) of the
    checkpoint :func:`pretrained_encoder` loads for ``recipe`` (default :data:`RECIPE`: the
    shipped one), or None while that checkpoint has not been made (pretrained_encoder makes
    it)."""
    return _read_report(_checkpoint(architecture, recipe))


def pretrained_encoder(
    input_shape: tuple = (None, None, 3), trainable: bool = False,
    architecture: str = "shapesnet", recipe: dict | None = None,
) -> keras.Model:
    """The :data:`ENCODERS` entry ``architecture`` with its counting-pretrained weights, frozen
    by default.

    With the default ``recipe`` (:data:`RECIPE`), reads the checkpoint shipped in the package.
    Any other recipe (a dict overriding some :data:`RECIPE` values, e.g. fewer images) is
    pretrained once (minutes on a CPU) and cached in ``$KERAS_HOME/segkeras/`` under a name
    that holds :func:`recipe_key`, with its report (:func:`checkpoint_report`): a quick
    pretraining never stands in for the full one. ``trainable=True`` unfreezes it with
    BatchNorm kept frozen.
    """
    encoder = build(architecture, input_shape)
    path = _checkpoint(architecture, recipe)
    if _read_report(path) is None:
        print(f"No {architecture} pretrained with this recipe yet: pretraining it once "
              f"(cached in {path})")
        pretrained, report = pretrain(architecture, **_full_recipe(recipe), verbose=0)
        save_checkpoint(pretrained, report, recipe, path)
    encoder.load_weights(path)
    return unfreeze(encoder) if trainable else freeze(encoder)


def random_encoder(
    input_shape: tuple = (None, None, 3), architecture: str = "shapesnet"
) -> keras.Model:
    """The :data:`ENCODERS` entry ``architecture`` with random weights, trainable BatchNorm
    included (momentum 0.9): the from-scratch baseline of the same architecture."""
    return train_from_scratch(build(architecture, input_shape))
