"""Segmentation losses Keras lacks.

Keras already has what most labs need, over logits with the 255 "ignore" label of our masks::

    keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    keras.losses.Dice()                          # soft Dice on one-hot targets and probabilities
    keras.losses.CategoricalFocalCrossentropy()  # focal loss (Lin et al., 2017), one-hot targets

What is missing is their combination on sparse masks with ignored pixels: :class:`SparseCEDice`.

Labels outside ``0..num_classes-1`` that are not the ignore label (7 with 4 classes, -1) are a
data error, never dropped silently. They are refused at three levels: the input pipeline
(:func:`segkeras.data.pipeline.make_dataset` checks every mask before training); an eager call of
a loss or metric raises :class:`SegkerasError`; inside a compiled graph (``model.fit`` on any
backend), where no Python error can be raised, the loss and metrics become NaN, which
``keras.callbacks.TerminateOnNaN`` (used by ``python -m segkeras train``) turns into a stop.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from segkeras.data.core import IGNORE_LABEL
from segkeras.errors import SegkerasError
from segkeras.layers import concrete_value


def sparse_labels(y_true, y_pred, ignore_class: int | None, num_classes: int | None = None):
    """``(labels, weight)`` of integer masks against logits, for losses and metrics.

    ``labels`` (int32, the logits' shape without the class axis) holds each pixel's class, 0
    where the pixel is ignored or bad; ``weight`` is 1 for a valid pixel, 0 for an ignored one and
    NaN for a label outside ``0..num_classes-1`` (see the module docstring): eager calls raise
    SegkerasError for such labels instead. ``num_classes`` defaults to the logits' channels; other
    channel counts raise SegkerasError.
    """
    channels = y_pred.shape[-1]
    if num_classes is None:
        num_classes = channels
    elif channels is not None and channels != num_classes:
        raise SegkerasError(
            f"the logits have {channels} channels but num_classes={num_classes}; use "
            f"num_classes={channels} or a model with {num_classes} output channels.")
    if len(y_true.shape) == len(y_pred.shape):
        y_true = ops.squeeze(y_true, axis=-1)
    labels = ops.cast(y_true, "int32")
    if ignore_class is None:
        ignored = ops.zeros_like(labels, dtype="bool")
    else:
        ignored = ops.equal(labels, ignore_class)
    bad = ops.logical_and(ops.logical_or(labels < 0, labels >= num_classes),
                          ops.logical_not(ignored))
    any_bad = concrete_value(ops.any(bad))  # one number, not the masks, leaves the device
    if any_bad is not None and any_bad:
        found = np.unique(concrete_value(labels)[concrete_value(bad)]).tolist()
        allowed = f"0..{num_classes - 1}" + ("" if ignore_class is None else f" or {ignore_class}")
        raise SegkerasError(
            f"labels {found[:5]} are not class ids of {num_classes} classes (allowed: {allowed}, "
            "the ignore label); fix the masks or num_classes.")
    weight = ops.where(bad, float("nan"), ops.where(ignored, 0.0, 1.0))
    return ops.where(ops.logical_or(ignored, bad), 0, labels), weight


@keras.saving.register_keras_serializable(package="segkeras")
class SparseCEDice(keras.losses.Loss):
    """Cross-entropy plus soft Dice from logits and integer masks, skipping ``ignore_class`` pixels.

    ``loss = CE + dice_weight * (1 - mean_c Dice_c)`` where CE is the mean over the non-ignored
    pixels of ``-log softmax(logits)[label]`` (what
    ``SparseCategoricalCrossentropy(from_logits=True, ignore_class=...)`` gives), and
    ``Dice_c = (2 sum(p_c t_c) + smooth) / (sum(p_c) + sum(t_c) + smooth)`` with ``p`` the softmax,
    ``t`` the one-hot mask, sums over all non-ignored pixels of the batch. Cross-entropy is a
    per-pixel loss dominated by large classes; Dice scores each class's overlap as a whole, so small
    classes count as much as the background (Milletari et al., "V-Net", 3DV 2016).

    Labels other than ``0..num_classes-1`` and ``ignore_class`` raise SegkerasError in an eager
    call and make the loss NaN in a compiled graph (see the module docstring), as do logits with
    another number of channels than ``num_classes`` (an error in both).

    A class absent from both mask and prediction has Dice 1 (no penalty); a batch whose pixels
    are all ignored has loss 0. The result is one number per batch (Dice is not a per-pixel
    quantity), so per-pixel ``sample_weight`` is not supported; ignore pixels with the label.

    Args:
        num_classes: number of classes (the logits' last axis), >= 2.
        dice_weight: weight of the Dice term (0: plain cross-entropy).
        ignore_class: label of pixels that count for nothing (255 in segkeras masks), or None.
        smooth: added to the Dice numerator and denominator, > 0.
    """

    def __init__(
        self,
        num_classes: int,
        dice_weight: float = 1.0,
        ignore_class: int | None = IGNORE_LABEL,
        smooth: float = 1.0,
        name: str = "sparse_ce_dice",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if num_classes < 2:
            raise SegkerasError(f"num_classes must be >= 2, got {num_classes}.")
        if dice_weight < 0 or smooth <= 0:
            raise SegkerasError(
                f"Need dice_weight >= 0 and smooth > 0, got dice_weight={dice_weight}, "
                f"smooth={smooth}."
            )
        self.num_classes = int(num_classes)
        self.dice_weight = float(dice_weight)
        self.ignore_class = ignore_class
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        labels, weight = sparse_labels(y_true, y_pred, self.ignore_class, self.num_classes)
        weight = ops.expand_dims(ops.cast(weight, y_pred.dtype), -1)
        targets = ops.one_hot(labels, self.num_classes, dtype=y_pred.dtype) * weight
        log_probs = ops.log_softmax(y_pred, axis=-1)

        cross_entropy = -ops.sum(targets * log_probs) / ops.maximum(ops.sum(weight), 1.0)

        probs = ops.exp(log_probs) * weight
        pixel_axes = tuple(range(len(y_pred.shape) - 1))
        intersection = ops.sum(probs * targets, axis=pixel_axes)
        total = ops.sum(probs, axis=pixel_axes) + ops.sum(targets, axis=pixel_axes)
        dice = (2.0 * intersection + self.smooth) / (total + self.smooth)
        return cross_entropy + self.dice_weight * (1.0 - ops.mean(dice))

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "dice_weight": self.dice_weight,
            "ignore_class": self.ignore_class,
            "smooth": self.smooth,
        }
