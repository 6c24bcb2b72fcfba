"""Matching boxes to ground truth and sampling fixed-size training mini-batches, in keras.ops.

Both stages of Faster R-CNN (Ren et al., NIPS 2015) label candidate boxes by their best IoU with a
ground-truth box and train on a random subset with a bounded share of positives. Shapes stay
static (every backend compiles them): a subset is a boolean mask, drawn by giving every candidate
a uniform random key and keeping the ``count`` largest keys among the eligible ones.
"""

from __future__ import annotations

from keras import ops

from segkeras.boxes import box_iou


def match_to_ground_truth(boxes, gt_boxes, gt_valid):
    """Best ground truth of each box: ``(iou, index, iou_matrix)``.

    ``boxes`` (B, n, 4) or (n, 4) (shared, e.g. anchors), ``gt_boxes`` (B, N, 4), ``gt_valid``
    (B, N) bool. Invalid ground truth counts as IoU -1, so a box of an image without objects gets
    best IoU -1 (a clear negative) and index 0. ``iou_matrix`` is (B, n, N).
    """
    iou = box_iou(boxes, gt_boxes)
    iou = ops.where(gt_valid[:, None, :], iou, -1.0)
    return ops.max(iou, axis=2), ops.cast(ops.argmax(iou, axis=2), "int32"), iou


def sample_subset(eligible, count, capacity: int, uniform):
    """A random subset of ``count`` (B,) eligible entries of each row of ``eligible`` (B, n).

    ``capacity`` (static, at most ``n`` is used) bounds ``count``; ``uniform`` (B, n) holds the
    random keys in [0, 1).
    Rows with fewer eligible entries than ``count`` keep all of them.
    """
    eligible = ops.cast(eligible, "bool")
    capacity = min(capacity, ops.shape(eligible)[1])
    keys = ops.where(eligible, uniform, -1.0)
    largest, _ = ops.top_k(keys, capacity)
    position = ops.clip(ops.cast(count, "int32") - 1, 0, capacity - 1)
    threshold = ops.take_along_axis(largest, position[:, None], axis=1)
    return eligible & (keys >= threshold) & (ops.cast(count, "int32")[:, None] > 0)


def count_true(mask):
    """(B, n) bool -> (B,) int32 number of True entries."""
    return ops.sum(ops.cast(mask, "int32"), axis=1)


def smooth_l1(difference, beta: float):
    """Huber-style smooth L1 (Girshick, "Fast R-CNN", ICCV 2015), quadratic below ``beta``."""
    absolute = ops.abs(difference)
    return ops.where(absolute < beta, 0.5 * difference * difference / beta, absolute - 0.5 * beta)


IGNORE_IOA = 0.7
"""A box whose intersection with an ignore region covers more than this fraction of its own area
is not trained as background (Detectron's ``TRAIN.CROWD_FILTER_THRESH``)."""


def ignored_by(boxes, ignore_boxes, threshold: float = IGNORE_IOA):
    """(B, n) bool: boxes (B, n, 4) or (n, 4) (shared, e.g. anchors) whose intersection over
    their own area (IoA) with some of ``ignore_boxes`` (B, K, 4) exceeds ``threshold``. All-zero
    ignore rows (padding) cover nothing."""
    boxes = ops.cast(boxes, "float32")
    if len(ops.shape(boxes)) == 2:
        boxes = boxes[None]
    ignore = ops.cast(ignore_boxes, "float32")[:, None, :, :]  # (B, 1, K, 4)
    boxes = boxes[:, :, None, :]  # (B, n, 1, 4)
    sides = ops.maximum(ops.minimum(boxes[..., 2:], ignore[..., 2:])
                        - ops.maximum(boxes[..., :2], ignore[..., :2]), 0.0)
    intersection = sides[..., 0] * sides[..., 1]
    area = ops.maximum((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]), 1e-6)
    return ops.any(intersection > threshold * area, axis=2)
