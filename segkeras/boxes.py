"""Box maths shared by detection and masks, in ``keras.ops`` (TensorFlow, JAX and PyTorch).

Boxes are ``x1, y1, x2, y2`` in pixels (the data contract). The box coder is Faster R-CNN's
(Ren, He, Girshick & Sun, "Faster R-CNN", NIPS 2015, eq. 2): a box is coded relative to a
reference box (an anchor or a proposal) as ``dx = wx (x - xa) / wa``, ``dy = wy (y - ya) / ha``,
``dw = ww log(w / wa)``, ``dh = wh log(h / ha)`` with centres ``x, y`` and weights
``(wx, wy, ww, wh)``; decoding clamps ``dw, dh`` at ``log(1000 / 16)`` as torchvision does, so a
wild prediction cannot overflow ``exp``.

Non-maximum suppression (greedy, as in Faster R-CNN) has no ``keras.ops`` primitive. Here it is
vectorised with a fixed-size, padded output so that it compiles on every backend: with ``i``
before ``j`` when ``score_i > score_j`` (ties: the lower index first), box ``j`` is kept iff it is
valid and no kept box before it overlaps it by more than the threshold. That recursion has one
solution, the greedy one; it is reached by iterating ``keep <- valid & ~any(keep_i & edge_ij)``
from ``keep = valid`` until nothing changes (after ``t`` steps the first ``t`` boxes in score
order are final, so at most ``n`` steps; in practice a handful).
"""

from __future__ import annotations

import math

from keras import ops

DELTA_CLAMP = math.log(1000.0 / 16)
"""Largest ``dw``/``dh`` a decoder accepts (torchvision's ``BoxCoder`` clamp)."""

_TINY = 1e-6


def box_area(boxes):
    """(..., 4) boxes -> (...) areas; 0 for boxes with ``x2 <= x1`` or ``y2 <= y1``."""
    sides = ops.maximum(boxes[..., 2:] - boxes[..., :2], 0.0)
    return sides[..., 0] * sides[..., 1]


def box_iou(boxes_a, boxes_b):
    """Pairwise IoU: (..., N, 4) and (..., M, 4) -> (..., N, M); 0 where the union is empty."""
    boxes_a = ops.cast(boxes_a, "float32")
    boxes_b = ops.cast(boxes_b, "float32")
    top_left = ops.maximum(boxes_a[..., :, None, :2], boxes_b[..., None, :, :2])
    bottom_right = ops.minimum(boxes_a[..., :, None, 2:], boxes_b[..., None, :, 2:])
    overlap = ops.maximum(bottom_right - top_left, 0.0)
    intersection = overlap[..., 0] * overlap[..., 1]
    union = box_area(boxes_a)[..., :, None] + box_area(boxes_b)[..., None, :] - intersection
    return ops.where(union > 0, intersection / ops.maximum(union, _TINY), 0.0)


def _centre_size(boxes):
    size = ops.maximum(boxes[..., 2:] - boxes[..., :2], _TINY)
    return boxes[..., :2] + 0.5 * size, size


def encode_boxes(reference, boxes, weights=(1.0, 1.0, 1.0, 1.0)):
    """(..., 4) boxes coded as (dx, dy, dw, dh) relative to (..., 4) reference boxes.

    Sides are floored at 1e-6, so a degenerate (zero-area) box gives large but finite codes.
    """
    reference_centre, reference_size = _centre_size(ops.cast(reference, "float32"))
    centre, size = _centre_size(ops.cast(boxes, "float32"))
    weights = ops.convert_to_tensor(weights, "float32")
    shift = (centre - reference_centre) / reference_size
    scale = ops.log(size / reference_size)
    return ops.concatenate([shift, scale], axis=-1) * weights


def decode_boxes(reference, deltas, weights=(1.0, 1.0, 1.0, 1.0)):
    """Inverse of :func:`encode_boxes`: (..., 4) deltas applied to (..., 4) reference boxes.

    ``dw`` and ``dh`` (after dividing by their weights) are clamped at :data:`DELTA_CLAMP`.
    """
    reference_centre, reference_size = _centre_size(ops.cast(reference, "float32"))
    deltas = ops.cast(deltas, "float32") / ops.convert_to_tensor(weights, "float32")
    centre = reference_centre + deltas[..., :2] * reference_size
    size = reference_size * ops.exp(ops.minimum(deltas[..., 2:], DELTA_CLAMP))
    return ops.concatenate([centre - 0.5 * size, centre + 0.5 * size], axis=-1)


def clip_to_image(boxes, height: int, width: int):
    """Boxes clipped to ``[0, width] x [0, height]``."""
    limit = ops.convert_to_tensor([width, height, width, height], "float32")
    return ops.minimum(ops.maximum(ops.cast(boxes, "float32"), 0.0), limit)


def _precedence(scores):
    """(B, n, n) bool, ``[b, i, j]``: box ``i`` comes before box ``j`` in score order (higher
    score first, ties broken by the lower index)."""
    n = ops.shape(scores)[-1]
    index = ops.arange(n)
    higher = scores[:, :, None] > scores[:, None, :]
    tie = (scores[:, :, None] == scores[:, None, :]) & (index[:, None] < index[None, :])
    return higher | tie


def non_max_suppression(boxes, scores, iou_threshold: float, max_output: int, valid=None):
    """Greedy NMS per image, vectorised, with a fixed-size output.

    Args:
        boxes: (B, n, 4) boxes.
        scores: (B, n) scores; higher is kept first, equal scores in index order.
        iou_threshold: a box is suppressed by a kept, higher-ranked box with IoU **above** this.
        max_output: K, the number of output slots per image.
        valid: optional (B, n) bool; invalid boxes are neither kept nor suppress anything.

    Returns:
        ``(indices, kept)``: (B, K) int32 indices into ``n`` of the kept boxes in score order,
        and (B, K) bool, False on padding slots (whose index is 0).
    """
    batch, n = ops.shape(scores)[0], ops.shape(scores)[1]
    if n == 0:
        return ops.zeros((batch, max_output), "int32"), ops.zeros((batch, max_output), "bool")
    scores = ops.cast(scores, "float32")
    valid = ops.ones((batch, n), "bool") if valid is None else ops.cast(valid, "bool")
    before = _precedence(scores)
    overlaps = box_iou(boxes, boxes) > iou_threshold
    edges = ops.cast(before & overlaps & valid[:, :, None], "float32")

    def step(keep, changed):
        suppressed = ops.einsum("bi,bij->bj", ops.cast(keep, "float32"), edges) > 0
        new_keep = valid & ~suppressed
        return new_keep, ops.any(ops.not_equal(new_keep, keep))

    keep, _ = ops.while_loop(
        lambda keep, changed: changed, step, (valid, ops.convert_to_tensor(True)),
        maximum_iterations=n,
    )
    rank = ops.sum(ops.cast(before, "int32"), axis=1)  # how many boxes come before each
    priority = ops.where(keep, ops.cast(n - rank, "float32"), -1.0)
    slots = min(max_output, n)
    top, indices = ops.top_k(priority, slots)
    indices = ops.cast(indices, "int32")
    kept = top > 0
    if slots < max_output:
        indices = ops.pad(indices, [[0, 0], [0, max_output - slots]])
        kept = ops.pad(kept, [[0, 0], [0, max_output - slots]])
    return ops.where(kept, indices, 0), kept


def batched_non_max_suppression(
    boxes, scores, class_ids, iou_threshold: float, max_output: int, valid=None
):
    """Per-class NMS in one call: boxes of different classes never suppress each other.

    Each box is shifted by ``class_id * (largest coordinate + 1)`` so boxes of different classes
    cannot overlap (torchvision's ``batched_nms`` trick); arguments and results as in
    :func:`non_max_suppression`, with ``class_ids`` (B, n) ints.
    """
    boxes = ops.cast(boxes, "float32")
    if ops.shape(boxes)[1] == 0:
        return non_max_suppression(boxes, scores, iou_threshold, max_output, valid)
    span = ops.max(ops.abs(boxes), axis=(1, 2), keepdims=True) + 1.0
    shifted = boxes + ops.cast(class_ids, "float32")[:, :, None] * span
    return non_max_suppression(shifted, scores, iou_threshold, max_output, valid)


def gather_rows(values, indices):
    """``values[b, indices[b, k]]`` for (B, n, ...) values and (B, K) indices -> (B, K, ...)."""
    extra = len(ops.shape(values)) - 2
    index = ops.reshape(indices, (*ops.shape(indices), *([1] * extra)))
    return ops.take_along_axis(values, ops.cast(index, "int32"), axis=1)
