"""Box maths shared by detection and masks, in ``keras.ops`` (TensorFlow, JAX and PyTorch).

Boxes are ``x1, y1, x2, y2`` in pixels (the data contract). The box coder is Faster R-CNN's
(Ren, He, Girshick & Sun, "Faster R-CNN", NIPS 2015, eq. 2): a box is coded relative to a
reference box (an anchor or a proposal) as ``dx = wx (x - xa) / wa``, ``dy = wy (y - ya) / ha``,
``dw = ww log(w / wa)``, ``dh = wh log(h / ha)`` with centres ``x, y`` and weights
``(wx, wy, ww, wh)``; decoding clamps ``dw, dh`` at ``log(1000 / 16)`` as torchvision does, so a
wild prediction cannot overflow ``exp``.

Non-maximum suppression (greedy, as in Faster R-CNN) has no ``keras.ops`` primitive. Here it is
exact and vectorised, with a fixed-size, padded output so that it compiles on every backend: in
score order (ties: the lower index first), box ``j`` is kept iff it is valid and no kept box
before it overlaps it by more than the threshold. That recursion has one solution, the greedy
one. It is solved tile by tile (:data:`NMS_TILE` boxes, as in TensorFlow's padded NMS): inside a
tile by iterating ``keep <- alive & ~any(keep_i & edge_ij)`` to its fixed point (after ``t``
steps the tile's first ``t`` boxes are final; in practice a handful of steps), then the tile's
kept boxes suppress what they overlap in the later tiles.
"""

from __future__ import annotations

import functools
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
    a = [boxes_a[..., :, None, k] for k in range(4)]  # x1, y1, x2, y2 as (..., N, 1)
    b = [boxes_b[..., None, :, k] for k in range(4)]  # and as (..., 1, M)
    width = ops.maximum(ops.minimum(a[2], b[2]) - ops.maximum(a[0], b[0]), 0.0)
    height = ops.maximum(ops.minimum(a[3], b[3]) - ops.maximum(a[1], b[1]), 0.0)
    intersection = width * height
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


NMS_TILE = 256
"""Boxes per tile of :func:`non_max_suppression` (a tile's IoU matrix is ``NMS_TILE`` squared)."""


def _resolve_tile(boxes, alive, iou_threshold: float):
    """Greedy NMS inside one tile of boxes in score order: (B, T, 4), (B, T) -> (B, T) kept.

    Box ``j`` is kept iff alive and no kept box ``i < j`` overlaps it by more than the threshold;
    iterating ``keep <- alive & ~any(keep_i & edge_ij)`` from ``keep = alive`` reaches that
    (unique) solution, the first ``t`` boxes being final after ``t`` steps.
    """
    size = ops.shape(alive)[1]
    index = ops.arange(size)
    earlier = index[:, None] < index[None, :]
    edges = ops.cast((box_iou(boxes, boxes) > iou_threshold) & earlier, "float32")

    def step(keep, changed):
        suppressed = ops.einsum("bi,bij->bj", ops.cast(keep, "float32"), edges) > 0
        new_keep = alive & ~suppressed
        return new_keep, ops.any(ops.not_equal(new_keep, keep))

    keep, _ = ops.while_loop(lambda keep, changed: changed, step,
                             (alive, ops.convert_to_tensor(True)), maximum_iterations=size)
    return keep


def _tile(boxes, alive, size: int, iou_threshold: float):
    """``(keep, later_alive)``: the first ``size`` of the (B, m, 4) boxes left (in score order,
    ``alive`` (B, m)) resolved by :func:`_resolve_tile`, and the later ones still alive after the
    tile's kept boxes have suppressed what they overlap."""
    keep = _resolve_tile(boxes[:, :size], alive[:, :size], iou_threshold)
    if ops.shape(boxes)[1] <= size:
        return keep, alive[:, size:]
    overlaps = box_iou(boxes[:, :size], boxes[:, size:]) > iou_threshold
    return keep, alive[:, size:] & ~ops.any(overlaps & keep[:, :, None], axis=1)


def _nothing_kept(alive, size: int):
    """:func:`_tile`'s result when no box is kept any more."""
    return ops.zeros_like(alive[:, :size]), ops.zeros_like(alive[:, size:])


def non_max_suppression(boxes, scores, iou_threshold: float, max_output: int, valid=None):
    """Greedy NMS per image, exact, with a fixed-size output (tiled: O(n * tile) memory).

    The boxes are sorted once by descending score (a stable sort: equal scores in index order),
    then taken in tiles of :data:`NMS_TILE`: each tile is resolved on its own
    (:func:`_resolve_tile`, a few steps on a tile-sized IoU matrix), then its kept boxes suppress
    the later tiles' boxes that they overlap. The result is the textbook greedy loop's.

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
    # stable on every backend (TensorFlow sorts with top_k, lower index first on ties; JAX and
    # torch sort stably), so equal scores stay in index order
    order = ops.cast(ops.argsort(-ops.cast(scores, "float32"), axis=-1), "int32")
    boxes = gather_rows(ops.cast(boxes, "float32"), order)
    valid = ops.ones((batch, n), "bool") if valid is None else ops.cast(valid, "bool")
    alive = gather_rows(valid, order)
    kept_tiles, count = [], ops.zeros((batch,), "int32")
    for start in range(0, n, NMS_TILE):
        resolve = functools.partial(_tile, boxes[:, start:], alive, NMS_TILE, iou_threshold)
        if start == 0:
            keep, alive = resolve()
        else:  # once every image has its max_output boxes, the later ones cannot be kept
            keep, alive = ops.cond(ops.all(count >= max_output),
                                   functools.partial(_nothing_kept, alive, NMS_TILE), resolve)
        kept_tiles.append(keep)
        count = count + ops.sum(ops.cast(keep, "int32"), axis=1)
    keep = ops.concatenate(kept_tiles, axis=1) if len(kept_tiles) > 1 else kept_tiles[0]
    slots = min(max_output, n)
    priority = ops.where(keep, ops.cast(n - ops.arange(n), "float32"), -1.0)
    top, position = ops.top_k(priority, slots)
    kept = top > 0
    indices = gather_rows(order, position)
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
