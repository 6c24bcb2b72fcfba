"""Semantic segmentation scores over a whole dataset: per-class IoU, mean IoU, pixel accuracy.

Scores come from one confusion matrix accumulated over every pixel of the dataset (not averaged
per image), pixels labelled 255 skipped, as in the PASCAL VOC benchmark and FCN (Long et al.,
CVPR 2015): ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``; the mean IoU averages the classes that occur
in the labels or the predictions (a class absent from both has no IoU: ``None`` in the results).
"""

from __future__ import annotations

import keras
import numpy as np

from segkeras.data.core import IGNORE_LABEL
from segkeras.errors import SegkerasError


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """``(C, C)`` pixel counts, rows the true class, columns the predicted one; 255 skipped.

    Raises SegkerasError when a label is neither 255 nor a class id in ``0..num_classes-1`` (the
    data has more classes than the model predicts).
    """
    labels = np.asarray(labels).ravel()
    predictions = np.asarray(predictions).ravel()
    if labels.shape != predictions.shape:
        raise SegkerasError(
            f"Masks have {labels.size} pixels but predictions {predictions.size}; predict at the "
            "masks' size."
        )
    keep = labels != IGNORE_LABEL
    labels = labels[keep].astype(np.int64)
    predictions = predictions[keep].astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels.max() if labels.max() >= num_classes else labels.min())
        raise SegkerasError(
            f"The masks contain class id {bad} but the model predicts {num_classes} classes "
            f"(0..{num_classes - 1}, 255 = ignore); evaluate on data with the model's classes."
        )
    counts = np.bincount(labels * num_classes + predictions, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def scores(confusion: np.ndarray, class_names: list[str] | None = None) -> dict:
    """Per-class IoU, mean IoU and pixel accuracy of a confusion matrix, as a JSON-ready dict.

    Keys: ``classes``, ``iou`` (class name -> IoU or None when the class is in neither labels
    nor predictions), ``mean_iou``, ``pixel_accuracy``, ``pixels`` (labelled pixels per class),
    ``confusion_matrix`` (rows true, columns predicted).
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    num_classes = confusion.shape[0]
    class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
    true_positives = np.diag(confusion)
    labelled = confusion.sum(axis=1)
    union = labelled + confusion.sum(axis=0) - true_positives
    iou = [float(tp / u) if u else None for tp, u in zip(true_positives, union, strict=True)]
    defined = [value for value in iou if value is not None]
    total = int(confusion.sum())
    return {
        "classes": class_names,
        "iou": dict(zip(class_names, iou, strict=True)),
        "mean_iou": float(np.mean(defined)) if defined else None,
        "pixel_accuracy": float(true_positives.sum() / total) if total else None,
        "pixels": dict(zip(class_names, (int(n) for n in labelled), strict=True)),
        "confusion_matrix": confusion.tolist(),
    }


def _numpy_batches(dataset):
    """``(images, masks)`` numpy batches from a ``tf.data.Dataset`` or any iterable of pairs."""
    batches = dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else dataset
    for images, masks in batches:
        yield np.asarray(images), np.asarray(masks)


def _as_list(outputs, names: list[str]) -> list:
    if isinstance(outputs, dict):
        return [outputs[name] for name in names]
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    return [outputs]


def confusion_matrices(model: keras.Model, dataset) -> list[np.ndarray]:
    """One confusion matrix per model output (hourglass: per stack) over all of ``dataset``."""
    num_classes = int(model.outputs[-1].shape[-1])
    totals = [np.zeros((num_classes, num_classes), np.int64) for _ in model.outputs]
    for images, masks in _numpy_batches(dataset):
        outputs = _as_list(model.predict_on_batch(images), model.output_names)
        for total, logits in zip(totals, outputs, strict=True):
            total += confusion_matrix(masks, np.argmax(logits, axis=-1), num_classes)
    return totals


def evaluate_semantic(model: keras.Model, dataset, class_names: list[str] | None = None) -> dict:
    """Score ``model`` on a dataset of ``(images, masks)`` batches (e.g. from ``make_dataset``).

    Multi-output models (stacked hourglass) are scored on their last output; the result then
    also has ``per_output``: the mean IoU and pixel accuracy of every output, first to last.

    Returns:
        The dict of :func:`scores` (save it with :func:`save_json`, print it with
        :func:`format_table`).
    """
    num_classes = int(model.outputs[-1].shape[-1])
    if class_names is not None and len(class_names) != num_classes:
        raise SegkerasError(
            f"The model predicts {num_classes} classes but the data has {len(class_names)} "
            f"({', '.join(class_names)}); evaluate on the data the model was trained for."
        )
    matrices = confusion_matrices(model, dataset)
    if not matrices[-1].sum():
        raise SegkerasError("The dataset has no labelled pixels to evaluate (empty or all 255).")
    result = scores(matrices[-1], class_names)
    if len(matrices) > 1:
        result["per_output"] = []
        for name, matrix in zip(model.output_names, matrices, strict=True):
            summary = scores(matrix, class_names)
            result["per_output"].append(
                {"output": name, "mean_iou": summary["mean_iou"],
                 "pixel_accuracy": summary["pixel_accuracy"]}
            )
    return result


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_table(result: dict) -> str:
    """A text table: IoU and labelled pixels per class, then mean IoU and pixel accuracy."""
    names = result["classes"]
    width = max(len("pixel accuracy"), *(len(name) for name in names))
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'pixels':>12}", "-" * (width + 22)]
    for name in names:
        lines.append(
            f"{name:<{width}}  {_number(result['iou'][name]):>6}  {result['pixels'][name]:>12,}"
        )
    lines.append("-" * (width + 22))
    lines.append(f"{'mean IoU':<{width}}  {_number(result['mean_iou']):>6}")
    lines.append(f"{'pixel accuracy':<{width}}  {_number(result['pixel_accuracy']):>6}")
    for output in result.get("per_output", []):
        lines.append(
            f"{output['output']:<{width}}  {_number(output['mean_iou']):>6}  (mean IoU)"
        )
    return "\n".join(lines)


def save_json(result: dict, path: str, run_id: str | None = None) -> str:
    """Write ``result`` as indented JSON atomically (creating the folder; with ``run_id`` added,
    :func:`segkeras.runs.write_json`) and return the path."""
    from segkeras.runs import write_json

    write_json(path, result, run_id)
    return path
