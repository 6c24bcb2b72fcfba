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
from collections.abc import Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segkeras.data.coco import CocoIndex
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


SIZE_KEYS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")
"""The first six of COCOeval's ``stats``, in order."""


def _coco_ap(images: list, truths: list, categories: set, results: list,
             iou_type: str, keys: tuple[str, ...] = SIZE_KEYS[:3]) -> dict[str, float]:
    """``{"AP", "AP50", "AP75"}`` (or ``keys``, a prefix of :data:`SIZE_KEYS`) of ``results`` by
    ``COCOeval(iouType=iou_type)``; NaN where COCO says -1 (undefined)."""
    if not results:
        return dict.fromkeys(keys, 0.0)
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
    return {key: float("nan") if value < 0 else float(value)
            for key, value in zip(keys, evaluation.stats, strict=False)}


def _ground_truth_list(ground_truth) -> list:
    if isinstance(ground_truth, SegmentationData):
        if ground_truth.instances is None:
            raise SegkerasError("The dataset has no instances; mask AP needs instance masks.")
        return list(ground_truth.instances)
    return list(ground_truth)


def _mask_rles(masks, shape, where: str) -> list[dict]:
    """Detection masks as RLE dicts: (D, H, W) bool arrays are encoded, RLE dicts
    (``predict_instances(..., mask_format="rle")``) are checked against the image's size."""
    if len(masks) and isinstance(masks[0], dict):
        for rle in masks:
            if list(rle["size"]) != list(shape):
                raise SegkerasError(f"{where}: an RLE mask of size {list(rle['size'])} for an "
                                    f"image of {list(shape)}; predict at the ground truth's size.")
        return list(masks)
    return [_rle(mask) for mask in _as_masks(masks, shape, where)]


def _image_shape(truth: Instances, crowd: Instances | None, found: dict) -> tuple:
    """(H, W) of an image, from its ground truth, its crowd masks or its detections' masks."""
    for masks in (truth.masks, None if crowd is None else crowd.masks, found["masks"]):
        if masks is None or len(masks) == 0:
            continue
        if isinstance(masks[0], dict):
            return tuple(masks[0]["size"])
        return np.shape(masks)[1:]
    return np.shape(found["masks"])[1:]


class DetectionEvaluation:
    """COCO box and mask AP accumulated one image at a time: masks become RLE as they arrive, so
    memory holds run-length encodings, never an image-sized mask per detection.

    :meth:`add` one image's ground truth and detections, then read :meth:`scores`.
    :func:`detection_ap` does both for lists or streams of images.
    """

    def __init__(self):
        self.images: list[dict] = []
        self.truths: list[dict] = []
        self.box_results: list[dict] = []
        self.mask_results: list[dict] = []
        self.categories: set = set()

    def add(self, truth: Instances | list[dict], detections: dict,
            crowds: Instances | None = None,
            shape: tuple[int, int] | None = None) -> None:
        """One image: ``truth`` its objects (an :class:`Instances`, or COCO annotations with
        RLE ``segmentation``, class ids as ``category_id``, ``iscrowd`` and optionally ``area``
        and ``bbox``, and then ``shape`` (H, W)); ``detections`` a dict with ``"boxes"`` (D, 4)
        ``x1, y1, x2, y2``, ``"class_ids"``, ``"scores"`` and ``"masks"`` ((D, H, W) bool or D
        RLE dicts); ``crowds``: the image's crowd regions as an :class:`Instances` (masks and
        class ids), scored as COCO does: a detection of that class on a crowd is neither a true
        nor a false positive."""
        image_id = len(self.images) + 1
        where = f"Image {image_id - 1}"
        if isinstance(truth, Instances):
            shape = _image_shape(truth, crowds, detections)
            if len(shape) != 2:
                raise SegkerasError(f"{where}: masks must be (N, H, W) arrays.")
            annotations = []
            for objects, crowd in ((truth, 0), (crowds, 1)):
                if objects is None:
                    continue
                masks = _as_masks(np.asarray(objects.masks, dtype=bool), shape, where)
                annotations += [{"segmentation": _rle(mask), "category_id": int(class_id),
                                 "iscrowd": crowd}
                                for mask, class_id in zip(masks, objects.class_ids, strict=True)]
        else:
            annotations = truth
        self.images.append({"id": image_id, "height": int(shape[0]), "width": int(shape[1])})
        for annotation in annotations:
            rle = annotation["segmentation"]
            self.truths.append({
                "id": len(self.truths) + 1, "image_id": image_id,
                "category_id": int(annotation["category_id"]), "segmentation": rle,
                "area": float(annotation.get("area", mask_utils.area(rle))),
                "bbox": [float(v) for v in annotation.get("bbox", mask_utils.toBbox(rle))],
                "iscrowd": int(annotation.get("iscrowd", 0)),
            })
            self.categories.add(int(annotation["category_id"]))
        self._add_detections(image_id, detections, shape, where)

    def _add_detections(self, image_id: int, found: dict, shape: tuple, where: str) -> None:
        boxes = np.asarray(found["boxes"], np.float64).reshape(-1, 4)
        class_ids, scores = np.asarray(found["class_ids"]), np.asarray(found["scores"])
        if not len(found["masks"]) == len(boxes) == len(class_ids) == len(scores):
            raise SegkerasError(f"{where}: {len(boxes)} boxes, {len(class_ids)} class ids, "
                                f"{len(scores)} scores and {len(found['masks'])} masks; pass one "
                                "each per detection.")
        rles = _mask_rles(found["masks"], shape, f"Detections for image {image_id - 1}")
        for rle, box, class_id, score in zip(rles, boxes, class_ids, scores, strict=True):
            common = {"image_id": image_id, "category_id": int(class_id), "score": float(score)}
            x1, y1, x2, y2 = (float(v) for v in box)
            self.box_results.append({**common, "bbox": [x1, y1, x2 - x1, y2 - y1]})
            self.mask_results.append({**common, "segmentation": rle})
            self.categories.add(int(class_id))

    def scores(self, by_size: bool = False) -> dict[str, dict[str, float]]:
        """``{"box": {"AP", "AP50", "AP75"}, "mask": {...}}``; ``by_size`` adds COCO's
        ``"AP_S"``, ``"AP_M"``, ``"AP_L"`` (objects under 32x32 pixels, up to 96x96, larger)."""
        if not any(not truth["iscrowd"] for truth in self.truths):
            raise SegkerasError("The ground truth has no objects, so AP is undefined.")
        keys = SIZE_KEYS if by_size else SIZE_KEYS[:3]
        return {kind: _coco_ap(self.images, self.truths, self.categories, results, iou_type,
                               keys)
                for kind, results, iou_type in (("box", self.box_results, "bbox"),
                                                ("mask", self.mask_results, "segm"))}


def detection_ap(
    ground_truth: SegmentationData | Sequence[Instances] | CocoIndex,
    detections: Iterable[dict],
    crowds: Sequence | None = None,
    by_size: bool = False,
) -> dict[str, dict[str, float]]:
    """COCO box AP and mask AP of a detector's output over a set of images.

    Args:
        ground_truth: a dataset with ``instances``, one :class:`Instances` per image, or a
            :class:`~segkeras.data.coco.CocoIndex`, whose annotations are scored as they are in
            the file (crowds included: ``iscrowd=1``, as COCO's own evaluation does).
        detections: per image (a list, or any iterable: a generator streams) a dict with
            ``"boxes"`` (D, 4) ``x1, y1, x2, y2``, ``"class_ids"`` (D,), ``"scores"`` (D,) and
            ``"masks"``, (D, H, W) bool or D COCO RLE dicts at the image's resolution (what
            :func:`segkeras.models.mask_rcnn.predict_instances` returns). Each image's masks are
            encoded as RLE when it is read; no image-sized mask is kept.
        crowds: per image its crowd regions (an :class:`Instances`: masks and class ids, or
            None) for ground truth given as :class:`Instances`; detections of their class on
            them are ignored, not false positives.
        by_size: add COCO's ``"AP_S"``, ``"AP_M"`` and ``"AP_L"`` (small, medium, large objects).

    Returns:
        ``{"box": {"AP", "AP50", "AP75"}, "mask": {...}}``, fractions in [0, 1], or NaN where
        COCO's evaluation says -1 (undefined: nothing to score there), never 0. Ground-truth
        boxes of :class:`Instances` are the tight boxes of their masks (COCO's convention).

    Raises SegkerasError when the lists differ in length, arrays disagree in length or size, or
    there is no ground-truth object.
    """
    if isinstance(ground_truth, CocoIndex):
        truths = [(_coco_truth(ground_truth, i), None, _coco_shape(ground_truth, i))
                  for i in range(len(ground_truth))]
    else:
        truth_list = _ground_truth_list(ground_truth)
        if crowds is not None and len(crowds) != len(truth_list):
            raise SegkerasError(f"Got {len(truth_list)} ground-truth images but {len(crowds)} "
                                "crowd lists; pass one per image.")
        truths = [(truth, None if crowds is None else crowds[i], None)
                  for i, truth in enumerate(truth_list)]
    evaluation = DetectionEvaluation()
    count = 0
    for count, found in enumerate(detections, 1):
        if count > len(truths):
            break
        truth, crowd, shape = truths[count - 1]
        evaluation.add(truth, found, crowd, shape)
    if count != len(truths):
        raise SegkerasError(f"Got {len(truths)} ground-truth images but "
                            f"{'more' if count > len(truths) else count} detection dicts; pass "
                            "one per image.")
    return evaluation.scores(by_size)


def _coco_truth(index, i: int) -> list[dict]:
    """Image ``i``'s annotations of a CocoIndex for :meth:`DetectionEvaluation.add`: RLE
    masks, class ids, crowds and the file's own area and bbox."""
    truth = []
    for annotation in index.annotations(i):
        entry = {"segmentation": index.coco.annToRLE(annotation),
                 "category_id": index.class_of_category[annotation["category_id"]],
                 "iscrowd": annotation.get("iscrowd", 0)}
        entry.update({key: annotation[key] for key in ("area", "bbox") if key in annotation})
        truth.append(entry)
    return truth


def _coco_shape(index, i: int) -> tuple[int, int]:
    info = index.coco.imgs[index.image_ids[i]]
    return info["height"], info["width"]
