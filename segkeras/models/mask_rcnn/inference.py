"""Instances of new images with Mask R-CNN: no boxes needed (He et al., ICCV 2017, Sec. 3).

Each image is resized keeping its aspect ratio (shorter side ``min_side``, longer at most
``max_side``, the whole inside the model's fixed input; Faster R-CNN's rule) and padded below and
right to the model's input. The detector finds boxes, classes and scores; the mask branch then runs
only on the detections kept (score above the model's threshold and ``min_score``), not on the
padding slots; both are compiled (``predict_on_batch``). Boxes are mapped back to the original
image, and each 28x28 mask is pasted over its box there, only on the pixels the box reaches
(:func:`segkeras.models.mask_head.pasted_windows`), and thresholded at 0.5. Masks come back as
boolean arrays or as COCO RLE. Memory grows with the kept detections, not with 100 slots times the
photo's pixels. For masks of given boxes use
:func:`segkeras.models.mask_head.predict_masks_in_boxes`.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import keras
import numpy as np

from segkeras.data.images import check_images, check_sides, fit_size, letterbox
from segkeras.errors import SegkerasError
from segkeras.models.mask_head import pasted_windows
from segkeras.models.mask_rcnn.model import MaskRCNN

MASK_FORMATS = ("bool", "rle")


class _Detector(keras.Model):
    """:meth:`MaskRCNN.detect` as a model of its own, so ``predict_on_batch`` compiles it. It
    tracks the detector's parts (their weights) and holds the MaskRCNN itself weakly."""

    def __init__(self, model: MaskRCNN):
        super().__init__(name=f"{model.name}_detect")
        self.parts = [model.features, model.rpn, model.box_head, model.box_align]
        self.owner = weakref.ref(model)
        self.nms = model.nms  # the NMS it was compiled with

    def build(self, input_shape=None):
        self.built = True

    def call(self, images):
        return self.owner().detect(images)


class _MaskBranch(keras.Model):
    """:meth:`MaskRCNN.detection_mask_logits` as a model of its own, so ``predict_on_batch``
    compiles it (run eagerly, op by op, it cost more than the detector on small images)."""

    def __init__(self, model: MaskRCNN):
        super().__init__(name=f"{model.name}_mask_branch")
        self.parts = [model.mask_align, model.mask_head]
        self.owner = weakref.ref(model)

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs):
        return self.owner().detection_mask_logits(
            inputs["features"], inputs["boxes"], inputs["image_indices"], inputs["class_ids"])


_DETECTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MASK_BRANCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _detector(model: MaskRCNN) -> _Detector:
    if model not in _DETECTORS or _DETECTORS[model].nms is not model.nms:
        _DETECTORS[model] = _Detector(model)
    return _DETECTORS[model]


def _mask_probabilities(model: MaskRCNN, features, boxes: np.ndarray,
                        image_indices: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    """(K, 28, 28) mask probabilities of K kept detections (boxes in input pixels). The
    compiled branch takes any K (Keras traces it again for a new count at most twice, then once
    for every count)."""
    if model not in _MASK_BRANCHES:
        _MASK_BRANCHES[model] = _MaskBranch(model)
    logits = _MASK_BRANCHES[model].predict_on_batch({
        "features": features, "boxes": boxes.astype(np.float32),
        "image_indices": image_indices.astype(np.int32),
        "class_ids": class_ids.astype(np.int32)})
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float32)))


def model_sides(model: MaskRCNN, min_side: int | None = None,
                max_side: int | None = None) -> tuple[int, int]:
    """``(min_side, max_side)``, by default the model's input's shorter and longer sides."""
    height, width = model.image_size
    return check_sides(min(height, width) if min_side is None else min_side,
                       max(height, width) if max_side is None else max_side)


def model_input(model: MaskRCNN, image: np.ndarray, min_side: int | None = None,
                max_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``image`` as ``model`` sees it (aspect ratio kept, padded to its input) and the
    ``(sx, sy, sx, sy)`` scale from image pixels to input pixels."""
    height, width = np.shape(image)[:2]
    size = fit_size(height, width, *model_sides(model, min_side, max_side), model.image_size)
    scale = np.array([size[1] / width, size[0] / height] * 2, np.float32)
    return letterbox(image, size, model.image_size), scale


def predict_instances(model: MaskRCNN, images: np.ndarray | Sequence[np.ndarray],
                      batch_size: int = 8, min_score: float = 0.0, min_side: int | None = None,
                      max_side: int | None = None, mask_format: str = "bool") -> list[dict]:
    """Per image a dict: ``"boxes"`` (D, 4) ``x1, y1, x2, y2`` in the image's own pixels,
    ``"class_ids"`` (D,) int32, ``"scores"`` (D,) float32 (best first) and ``"masks"``, for the
    detections scoring at least ``min_score``.

    Images are RGB in [0, 255] of any size and aspect ratio, a (B, H, W, 3) array or a list of
    arrays (grayscale and RGBA are converted; :func:`segkeras.data.images.check_images` says
    which pixels are refused). Each is resized keeping its aspect ratio: shorter side
    ``min_side``, longer at most ``max_side`` (by default the model input's shorter and longer
    sides), never beyond the model's input, and padded to it.

    ``mask_format``: ``"bool"``, masks (D, H, W) bool (D x H x W bytes: for large photos with
    many detections prefer RLE), or ``"rle"``, a list of D COCO RLE dicts (``"size"`` [H, W],
    ``"counts"`` text, as in COCO results; ``pycocotools.mask.decode`` reads them).
    """
    if not isinstance(model, MaskRCNN):
        raise SegkerasError(f"predict_instances needs a MaskRCNN model (mask_rcnn(...)), got "
                            f"{type(model).__name__}; for given boxes use "
                            "segkeras.models.mask_head.predict_masks_in_boxes.")
    if mask_format not in MASK_FORMATS:
        raise SegkerasError(f"mask_format must be one of {', '.join(MASK_FORMATS)}, got "
                            f"{mask_format!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SegkerasError(f"batch_size must be a positive int, got {batch_size!r}.")
    sides = model_sides(model, min_side, max_side)
    images = check_images(images)
    results = []
    for start in range(0, len(images), batch_size):
        results.extend(_predict_batch(model, images[start: start + batch_size], sides,
                                      min_score, mask_format))
    return results


def _predict_batch(model: MaskRCNN, images: list[np.ndarray], sides: tuple[int, int],
                   min_score: float, mask_format: str) -> list[dict]:
    inputs = [model_input(model, image, *sides) for image in images]
    outputs = _detector(model).predict_on_batch(np.stack([batch for batch, _ in inputs]))
    keep = outputs["valid"] & (outputs["scores"] >= min_score)
    image_indices, slots = np.nonzero(keep)
    probabilities = np.zeros((0, *model.mask_head.output_shape[1:3]), np.float32)
    if len(slots):  # the mask branch on the kept detections only
        probabilities = _mask_probabilities(model, outputs["features"], outputs["boxes"][keep],
                                            image_indices, outputs["class_ids"][keep])
    results = []
    for i, (image, (_, scale)) in enumerate(zip(images, inputs, strict=True)):
        height, width = np.shape(image)[:2]
        boxes = outputs["boxes"][i][keep[i]] / scale
        boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
        inside = np.all(boxes[:, 2:] > boxes[:, :2], axis=1)  # not only on the padding
        masks = _masks(probabilities[image_indices == i][inside], boxes[inside], height, width,
                       mask_format)
        results.append({
            "boxes": boxes[inside],
            "class_ids": outputs["class_ids"][i][keep[i]][inside].astype(np.int32),
            "scores": outputs["scores"][i][keep[i]][inside].astype(np.float32),
            "masks": masks,
        })
    return results


def _masks(probabilities: np.ndarray, boxes: np.ndarray, height: int, width: int,
           mask_format: str):
    """The detections' masks on the image: (D, H, W) bool, or D COCO RLE dicts."""
    windows = pasted_windows(probabilities, boxes, height, width)
    if mask_format == "bool":
        masks = np.zeros((len(boxes), height, width), bool)
        for i, (rows, cols, window) in enumerate(windows):
            masks[i, rows, cols] = window >= 0.5
        return masks
    from pycocotools import mask as mask_utils

    plane = np.zeros((height, width), np.uint8, order="F")  # pycocotools' input: uint8, Fortran
    rles = []
    for rows, cols, window in windows:
        plane[rows, cols] = window >= 0.5
        rle = mask_utils.encode(plane)
        plane[rows, cols] = 0
        rles.append({"size": [int(side) for side in rle["size"]],
                     "counts": rle["counts"].decode("ascii")})
    return rles
