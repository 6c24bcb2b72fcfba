"""COCO mask AP and box AP of instance predictions, computed by pycocotools' ``COCOeval``.

AP averages the area under the precision-recall curve over the IoU thresholds 0.50:0.05:0.95 and
the classes (Lin et al., "Microsoft COCO", ECCV 2014); AP50 and AP75 use one threshold. Masks go
to pycocotools as run-length encodings (RLE), so IoUs are exact mask IoUs.

Scores rank the predictions. With predicted boxes, use the mean mask probability inside each
predicted mask (what ``predict_masks_in_boxes(..., return_scores=True)`` returns). With ground-truth
boxes every object has exactly one prediction and ``scores=None`` (all 1) is the natural choice.
A detector (Mask R-CNN) gives boxes, classes, scores and masks: :func:`detection_ap` scores its
boxes (``iouType="bbox"``) and its masks (``iouType="segm"``) against the same ground truth.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segkeras.data.core import Instances, SegmentationData
from segkeras.errors import SegkerasError


def _rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))


def _as_masks(masks, shape: tuple, where: str) -> np.ndarray:
    masks = np.asarray(masks, dtype=bool)
    if masks.size == 0:
        masks = masks.reshape(0, *shape)
    if masks.ndim != 3 or masks.shape[1:] != tuple(shape):
        raise SegkerasError(
            f"{where}: masks of shape {masks.shape} do not match the image's {tuple(shape)}; "
            "predict at the ground truth's resolution (N, H, W)."
        )
    return masks


def _add_ground_truth(truths: list, categories: set, image_id: int, masks: np.ndarray,
                      class_ids) -> None:
    """Append an image's objects as COCO annotations (RLE masks, their tight boxes)."""
    for mask, class_id in zip(masks, class_ids, strict=True):
        rle = _rle(mask)
        truths.append({
            "id": len(truths) + 1, "image_id": image_id, "category_id": int(class_id),
            "segmentation": rle, "area": float(mask_utils.area(rle)),
            "bbox": list(mask_utils.toBbox(rle)), "iscrowd": 0,
        })
        categories.add(int(class_id))


def mask_ap(
    ground_truth: SegmentationData | Sequence[Instances],
    predictions: Sequence[Instances | np.ndarray],
    scores: Sequence[np.ndarray] | None = None,
) -> dict[str, float]:
    """COCO mask ``{"AP", "AP50", "AP75"}`` (fractions in [0, 1]) over a set of images.

    Args:
        ground_truth: a dataset with ``instances`` or one :class:`Instances` per image.
        predictions: per image, an :class:`Instances` (its masks and class ids are used) or a
            boolean (N, H, W) mask array predicted for the ground-truth boxes, which then gives
            the class ids (N must equal the number of ground-truth objects).
        scores: per image, (N,) confidences; None scores every prediction 1.

    Raises SegkerasError when the lists have different lengths, masks do not match the image
    size, or there is no ground-truth object at all (AP is undefined).
    """
    ground_truth = _ground_truth_list(ground_truth)
    if len(predictions) != len(ground_truth) or (scores is not None and
                                                  len(scores) != len(ground_truth)):
        raise SegkerasError(
            f"Got {len(ground_truth)} ground-truth images but {len(predictions)} predictions"
            + ("" if scores is None else f" and {len(scores)} score arrays")
            + "; pass one per image."
        )
    images, truths, results = [], [], []
    categories = set()
    for image_id, (truth, predicted) in enumerate(zip(ground_truth, predictions, strict=True), 1):
        if isinstance(predicted, Instances):
            masks, class_ids = predicted.masks, predicted.class_ids
        else:
            masks, class_ids = predicted, truth.class_ids
        truth_masks = np.asarray(truth.masks, dtype=bool)
        shape = truth_masks.shape[1:] if truth_masks.ndim == 3 else np.shape(masks)[1:]
        if len(shape) != 2:
            raise SegkerasError(f"Image {image_id - 1}: masks must be (N, H, W) arrays.")
        images.append({"id": image_id, "height": int(shape[0]), "width": int(shape[1])})
        _add_ground_truth(truths, categories, image_id,
                          _as_masks(truth_masks, shape, f"Image {image_id - 1}"), truth.class_ids)
        masks = _as_masks(masks, shape, f"Predictions for image {image_id - 1}")
        if len(masks) != len(class_ids):
            raise SegkerasError(
                f"Image {image_id - 1}: {len(masks)} predicted masks but {len(class_ids)} class "
                "ids; mask arrays need the ground-truth boxes (one mask per object)."
            )
        confidences = np.ones(len(masks)) if scores is None else np.asarray(scores[image_id - 1])
        for mask, class_id, score in zip(masks, class_ids, confidences, strict=True):
            results.append({"image_id": image_id, "category_id": int(class_id),
                            "segmentation": _rle(mask), "score": float(score)})
            categories.add(int(class_id))
    if not truths:
        raise SegkerasError("The ground truth has no objects, so mask AP is undefined.")
    return _coco_ap(images, truths, categories, results, "segm")


def _coco_ap(images: list, truths: list, categories: set, results: list,
             iou_type: str) -> dict[str, float]:
    """``{"AP", "AP50", "AP75"}`` of ``results`` by ``COCOeval(iouType=iou_type)``; NaN where
    COCO says -1 (undefined)."""
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": truths,
                        "categories": [{"id": c} for c in sorted(categories)]}
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(results), iouType=iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # COCO's -1 means "undefined" (nothing to score at that setting): NaN, never a score of 0
    ap, ap50, ap75 = (float("nan") if value < 0 else float(value)
                      for value in evaluation.stats[:3])
    return {"AP": ap, "AP50": ap50, "AP75": ap75}


def _ground_truth_list(ground_truth) -> list:
    if isinstance(ground_truth, SegmentationData):
        if ground_truth.instances is None:
            raise SegkerasError("The dataset has no instances; mask AP needs instance masks.")
        return list(ground_truth.instances)
    return list(ground_truth)


def detection_ap(
    ground_truth: SegmentationData | Sequence[Instances],
    detections: Sequence[dict],
) -> dict[str, dict[str, float]]:
    """COCO box AP and mask AP of a detector's output over a set of images.

    Args:
        ground_truth: a dataset with ``instances`` or one :class:`Instances` per image.
        detections: per image a dict with ``"boxes"`` (D, 4) ``x1, y1, x2, y2``, ``"class_ids"``
            (D,), ``"scores"`` (D,) and ``"masks"`` (D, H, W) bool at the image's resolution
            (what :func:`segkeras.models.mask_rcnn.predict_instances` returns).

    Returns:
        ``{"box": {"AP", "AP50", "AP75"}, "mask": {...}}``, fractions in [0, 1], or NaN where
        COCO's evaluation says -1 (undefined: nothing to score there), never 0. Ground-truth
        boxes are the tight boxes of the ground-truth masks (COCO's convention).

    Raises SegkerasError when the lists differ in length, arrays disagree in length or size, or
    there is no ground-truth object.
    """
    truth_list = _ground_truth_list(ground_truth)
    if len(detections) != len(truth_list):
        raise SegkerasError(f"Got {len(truth_list)} ground-truth images but {len(detections)} "
                            "detection dicts; pass one per image.")
    images, truths, box_results, mask_results = [], [], [], []
    categories = set()
    for image_id, (truth, found) in enumerate(zip(truth_list, detections, strict=True), 1):
        where = f"Image {image_id - 1}"
        truth_masks = np.asarray(truth.masks, dtype=bool)
        shape = truth_masks.shape[1:] if truth_masks.ndim == 3 and len(truth_masks) else \
            np.shape(found["masks"])[1:]
        if len(shape) != 2:
            raise SegkerasError(f"{where}: masks must be (N, H, W) arrays.")
        images.append({"id": image_id, "height": int(shape[0]), "width": int(shape[1])})
        _add_ground_truth(truths, categories, image_id, _as_masks(truth_masks, shape, where),
                          truth.class_ids)
        masks = _as_masks(found["masks"], shape, f"Detections for image {image_id - 1}")
        boxes = np.asarray(found["boxes"], np.float64).reshape(-1, 4)
        class_ids, scores = np.asarray(found["class_ids"]), np.asarray(found["scores"])
        if not len(masks) == len(boxes) == len(class_ids) == len(scores):
            raise SegkerasError(f"{where}: {len(boxes)} boxes, {len(class_ids)} class ids, "
                                f"{len(scores)} scores and {len(masks)} masks; pass one each "
                                "per detection.")
        for mask, box, class_id, score in zip(masks, boxes, class_ids, scores, strict=True):
            common = {"image_id": image_id, "category_id": int(class_id), "score": float(score)}
            x1, y1, x2, y2 = (float(v) for v in box)
            box_results.append({**common, "bbox": [x1, y1, x2 - x1, y2 - y1]})
            mask_results.append({**common, "segmentation": _rle(mask)})
            categories.add(int(class_id))
    if not truths:
        raise SegkerasError("The ground truth has no objects, so AP is undefined.")
    return {"box": _coco_ap(images, truths, categories, box_results, "bbox"),
            "mask": _coco_ap(images, truths, categories, mask_results, "segm")}
