"""Segmentation metrics Keras lacks: pixel accuracy with ignored pixels, per-class IoU.

Both read logits (argmax over the last axis) and integer masks whose ``ignore_class`` pixels
(255 in segkeras masks) count for nothing. Other labels outside ``0..num_classes-1`` raise
SegkerasError in an eager call and make the metric NaN inside a compiled graph (see
:mod:`segkeras.losses`). :func:`segmentation_metrics` gives the list for
``model.compile(metrics=...)``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from segkeras.data.core import IGNORE_LABEL
from segkeras.errors import SegkerasError
from segkeras.losses import sparse_labels


def _labels_and_weight(y_true, y_pred, ignore_class, num_classes, sample_weight):
    """Labels and per-pixel weights (0 ignored, NaN for labels out of range: see
    :func:`segkeras.losses.sparse_labels`), times ``sample_weight`` (per image or per pixel)."""
    labels, weight = sparse_labels(y_true, y_pred, ignore_class, num_classes)
    if sample_weight is not None:
        sample_weight = ops.cast(sample_weight, "float32")
        while len(sample_weight.shape) < len(weight.shape):
            sample_weight = ops.expand_dims(sample_weight, -1)
        weight = weight * sample_weight
    return labels, weight


@keras.saving.register_keras_serializable(package="segkeras")
class PixelAccuracy(keras.metrics.SparseCategoricalAccuracy):
    """The fraction of non-ignored pixels whose argmax logit is the label.

    ``keras.metrics.SparseCategoricalAccuracy`` with ignored pixels weighted 0 (Keras' own has no
    ``ignore_class``); a ``sample_weight`` (per image or per pixel) multiplies that weight.
    """

    def __init__(self, ignore_class: int | None = IGNORE_LABEL, name="pixel_accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.ignore_class = ignore_class

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, weight = _labels_and_weight(y_true, y_pred, self.ignore_class, None, sample_weight)
        return super().update_state(labels, y_pred, sample_weight=weight)

    def get_config(self):
        return {**super().get_config(), "ignore_class": self.ignore_class}


@keras.saving.register_keras_serializable(package="segkeras")
class PerClassIoU(keras.metrics.MeanIoU):
    """``keras.metrics.MeanIoU`` from logits that also reports the IoU of every class.

    ``result()`` is Keras' mean IoU (over the classes that occur in the masks or predictions),
    NaN after labels out of range (which Keras' own metric would silently skip);
    :meth:`per_class` gives each class's ``TP / (TP + FP + FN)`` and :meth:`confusion_matrix` the
    accumulated counts (rows: true class, columns: predicted class).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_class: int | None = IGNORE_LABEL,
        sparse_y_true: bool = True,
        sparse_y_pred: bool = False,
        axis: int = -1,
        name: str = "mean_iou",
        dtype=None,
    ):
        super().__init__(
            num_classes, name=name, dtype=dtype, ignore_class=ignore_class,
            sparse_y_true=sparse_y_true, sparse_y_pred=sparse_y_pred, axis=axis,
        )
        self.invalid_pixels = self.add_variable(
            shape=(), initializer="zeros", dtype="float32", name="invalid_pixels")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, weight = _labels_and_weight(y_true, y_pred, self.ignore_class, self.num_classes,
                                            sample_weight)
        invalid = ops.isnan(weight)  # the confusion matrix holds integers: count them apart
        self.invalid_pixels.assign_add(ops.sum(ops.cast(invalid, "float32")))
        weight = ops.cast(ops.where(invalid, 0.0, weight), self.dtype)
        return super().update_state(labels, y_pred, sample_weight=weight)

    def result(self):
        return ops.where(self.invalid_pixels > 0, float("nan"), super().result())

    def reset_state(self):
        super().reset_state()
        self.invalid_pixels.assign(0.0)

    def confusion_matrix(self) -> np.ndarray:
        """The accumulated pixel counts, ``(num_classes, num_classes)``: rows true, columns
        predicted. Raises SegkerasError if a graph-mode update saw labels out of range."""
        invalid = int(ops.convert_to_numpy(self.invalid_pixels))
        if invalid:
            raise SegkerasError(
                f"{invalid} pixels had labels outside 0..{self.num_classes - 1} (not the ignore "
                "label); fix the masks (segkeras.data.pipeline.make_dataset checks them).")
        return np.asarray(ops.convert_to_numpy(self.total_cm), dtype="float64")

    def per_class(self) -> np.ndarray:
        """IoU of each class, ``(num_classes,)``; NaN for a class never labelled nor predicted."""
        matrix = self.confusion_matrix()
        true_positives = np.diag(matrix)
        union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positives
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, true_positives / union, np.nan)


def segmentation_metrics(
    num_classes: int, ignore_class: int | None = IGNORE_LABEL
) -> list[keras.metrics.Metric]:
    """``[PixelAccuracy, PerClassIoU]`` (logged as ``pixel_accuracy`` and ``mean_iou``) for
    ``model.compile(metrics=...)`` on a model with logits out."""
    return [
        PixelAccuracy(ignore_class=ignore_class),
        PerClassIoU(num_classes, ignore_class=ignore_class),
    ]
