"""Checks for lab 6, from boxes to masks: the IoU of two sets of boxes, the RPN's matching of
anchors to ground-truth boxes and the box coder of Faster R-CNN (Ren, He, Girshick & Sun, NIPS
2015, Sec. 3.1.2 and eq. 2), which Mask R-CNN (He et al., ICCV 2017) trains its proposals with,
and the greedy per-class non-maximum suppression its detections go through.

Each judge compares the student's function with a plain numpy reference written here (private:
refused as an answer; the library's and Keras' own box functions are forbidden: "write it
yourself"), on hand-made boxes where each rule shows on its own (disjoint boxes, IoU exactly 0.7
and 0.3, a padding row, an image without objects) and on random ones; the hint names the rule the
answer breaks. Then it runs the answer where the model runs it: traced as a graph, and inside
:func:`segkeras.models.mask_rcnn.rpn.rpn_losses` on a batch under ``tf.function``, comparing
values (an answer in numpy that special-cases symbolic tensors fails there). The fallbacks are the
library's versions, what the lab trains with until an exercise passes.

NMS's contract (the library's :func:`segkeras.boxes.batched_non_max_suppression`, one image):
``nms(boxes (n, 4), scores (n,), class_ids (n,), iou_threshold, max_outputs)`` -> (max_outputs,)
int indices of the kept boxes, best first, padded with -1. Boxes are visited by descending score,
equal scores in index order (the earlier index first); a box is kept unless a kept box of the
**same class** visited before it overlaps it with IoU **strictly above** the threshold. The judge
compares with a plain numpy greedy loop on hand-made boxes (a tie, an IoU of exactly the
threshold, two classes) and on random clusters with tied scores, traced as a graph, and inside
the detector's final step (:func:`segkeras.models.mask_rcnn.roi_heads.detect`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import keras
import keras.utils.bounding_boxes as keras_boxes
import numpy as np

import segkeras.boxes
import segkeras.models.mask_rcnn.roi_heads
import segkeras.models.mask_rcnn.rpn
import segkeras.models.mask_rcnn.sampling
from segkeras.checks.core import CheckFailed, Lab, in_float32, require
from segkeras.grading.answer import Answer
from segkeras.grading.probes import call_in_graph, call_symbolic, probe
from segkeras.models.mask_rcnn.anchors import anchor_grid

POSITIVE_IOU, NEGATIVE_IOU = 0.7, 0.3
_ATOL = 1e-4

LAB = Lab("06_boxes_to_masks", {"box_iou": 2, "match_anchors": 3, "encode_boxes": 2, "nms": 3})
start, use, guard, total = LAB.start, LAB.use, LAB.guard, LAB.total



def _numpy(value) -> np.ndarray:
    """A student's result (numpy array, list or backend tensor) as a numpy array."""
    return np.asarray(keras.ops.convert_to_numpy(value))


def _inputs(*args) -> tuple[np.ndarray, ...]:
    """float32 copies of numpy ``args`` (bool arrays stay bool)."""
    return tuple(np.array(arg, dtype=bool if np.asarray(arg).dtype == bool else np.float32)
                 for arg in args)


def _call(answer: Answer, *args):
    """The answer on float32 copies of ``args`` (bool arrays stay bool)."""
    return answer(*_inputs(*args))


# --- numpy references -----------------------------------------------------------------------

def _area(boxes: np.ndarray, plus_one: float = 0.0) -> np.ndarray:
    sides = np.maximum(boxes[:, 2:] - boxes[:, :2] + plus_one, 0.0)
    return sides[:, 0] * sides[:, 1]


def reference_iou(a, b, clip: bool = True, subtract: bool = True, enclosing: bool = False,
                  plus_one: float = 0.0) -> np.ndarray:
    """(N, 4) x (M, 4) -> (N, M) IoU in numpy; the keywords make the usual mistakes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    first, last = (np.minimum, np.maximum) if enclosing else (np.maximum, np.minimum)
    top_left = first(a[:, None, :2], b[None, :, :2])
    bottom_right = last(a[:, None, 2:], b[None, :, 2:])
    overlap = bottom_right - top_left + plus_one
    if clip:
        overlap = np.maximum(overlap, 0.0)
    intersection = overlap[..., 0] * overlap[..., 1]
    union = _area(a, plus_one)[:, None] + _area(b, plus_one)[None, :]
    if subtract:
        union = union - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def _xywh_to_corners(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def reference_labels(anchors, gt_boxes, gt_valid, best_rule: bool = True,
                     ignore_band: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, matched, best IoU)`` of each anchor: 1 positive, 0 negative, -1 ignored."""
    iou = reference_iou(anchors, gt_boxes)
    iou[:, ~np.asarray(gt_valid, bool)] = -1.0
    best, matched = iou.max(axis=1), iou.argmax(axis=1)
    positive = best >= POSITIVE_IOU
    if best_rule:
        best_of_truth = iou.max(axis=0)
        positive |= ((iou == best_of_truth) & (best_of_truth > 0)).any(axis=1)
    negative = ~positive if not ignore_band else (best < NEGATIVE_IOU) & ~positive
    return np.where(positive, 1, np.where(negative, 0, -1)), matched, best


def reference_codes(reference_boxes, boxes, weights=(1.0, 1.0, 1.0, 1.0)) -> np.ndarray:
    """Faster R-CNN's (dx, dy, dw, dh) of ``boxes`` relative to ``reference_boxes``, in numpy."""
    return _codes(reference_boxes, boxes, weights)


def _codes(reference_boxes, boxes, weights, log: bool = True, divide: bool = True,
           centre: str = "middle", use_weights: bool = True) -> np.ndarray:
    """The box coder, and its usual mistakes."""
    def centre_size(b):
        size = b[:, 2:] - b[:, :2]
        point = {"middle": b[:, :2] + size / 2, "corner": b[:, :2], "sum": b[:, :2] + b[:, 2:],
                 "half_size": size / 2}[centre]
        return point, size

    ref = np.asarray(reference_boxes, np.float64).reshape(-1, 4)
    box = np.asarray(boxes, np.float64).reshape(-1, 4)
    (ref_centre, ref_size), (box_centre, box_size) = centre_size(ref), centre_size(box)
    shift = box_centre - ref_centre
    if divide:
        shift = shift / ref_size
    scale = np.log(box_size / ref_size) if log else box_size / ref_size
    codes = np.concatenate([shift, scale], axis=1)
    return codes * np.asarray(weights, np.float64) if use_weights else codes


# --- library answers (the fallbacks) ----------------------------------------------------------

def library_box_iou(boxes_a, boxes_b):
    """segkeras' answer to exercise 1."""
    return segkeras.boxes.box_iou(boxes_a, boxes_b)


def library_match_anchors(anchors, gt_boxes, gt_valid):
    """segkeras' answer to exercise 2: ``(labels, matched)`` of one image."""
    positive, negative, matched = segkeras.models.mask_rcnn.rpn.anchor_labels(
        anchors, keras.ops.expand_dims(gt_boxes, 0), keras.ops.expand_dims(gt_valid, 0))
    labels = keras.ops.where(positive, 1, keras.ops.where(negative, 0, -1))
    return keras.ops.cast(labels[0], "int32"), matched[0]


def library_encode_boxes(reference_boxes, boxes, weights=(1.0, 1.0, 1.0, 1.0)):
    """segkeras' answer to exercise 3."""
    return segkeras.boxes.encode_boxes(reference_boxes, boxes, weights)


def library_nms(boxes, scores, class_ids, iou_threshold, max_outputs):
    """segkeras' answer to exercise 4: indices padded with -1."""
    keep, kept = segkeras.boxes.batched_non_max_suppression(
        keras.ops.expand_dims(boxes, 0), keras.ops.expand_dims(scores, 0),
        keras.ops.expand_dims(class_ids, 0), iou_threshold, max_outputs)
    return keras.ops.where(kept[0], keep[0], -1)


# --- running an answer inside the model -------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _training_batch() -> dict[str, np.ndarray]:
    """A batch of two 64x64 images as the RPN's loss sees it: anchors, ground truth with padding
    rows (the second image has no object at all), RPN outputs and random sampling keys."""
    rng = np.random.default_rng(6)
    anchors = anchor_grid((8, 8), 8, (16, 32), (0.5, 1.0, 2.0))
    corners = rng.uniform(0, 40, size=(2, 4, 2))
    sides = rng.uniform(10, 24, size=(2, 4, 2))
    gt_boxes = np.concatenate([corners, corners + sides], axis=-1).astype(np.float32)
    gt_valid = np.array([[True, True, True, False], [False, False, False, False]])
    return {"anchors": anchors, "gt_boxes": gt_boxes, "gt_valid": gt_valid,
            "objectness": rng.normal(size=(2, len(anchors))).astype(np.float32),
            "deltas": rng.normal(0, 0.3, size=(2, len(anchors), 4)).astype(np.float32),
            "uniform": rng.uniform(size=(2, len(anchors))).astype(np.float32)}


def _rpn_losses(**answers) -> np.ndarray:
    """The RPN's two losses on :func:`_training_batch`, traced as a graph (as ``fit`` runs
    them), with ``answers`` (``anchor_matcher=``, ``box_encoder=``) in place of the library's."""
    batch = _training_batch()
    names = ("anchors", "objectness", "deltas", "gt_boxes", "gt_valid", "uniform")

    def losses(*tensors):
        return segkeras.models.mask_rcnn.rpn.rpn_losses(*tensors, **answers)

    tensors = [keras.ops.convert_to_tensor(batch[name]) for name in names]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        losses = tf.function(losses, autograph=False)
    return np.array([float(_numpy(loss)) for loss in losses(*tensors)])


@probe
def rpn_losses_with(function: Callable, keyword: str) -> np.ndarray:
    """The RPN's losses with the student's ``function`` as its ``keyword`` (``anchor_matcher`` or
    ``box_encoder``): an error comes back as its message, a string."""
    try:
        return _rpn_losses(**{keyword: function})
    except CheckFailed:
        raise
    except Exception as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


_library_losses = functools.lru_cache(maxsize=1)(_rpn_losses)


def _check_trains(answer: Answer, keyword: str) -> None:
    """The RPN's losses with the student's function equal those with the library's."""
    expected = _library_losses()
    actual = answer.probe(rpn_losses_with, keyword)
    if isinstance(actual, str):
        raise CheckFailed(
            f"your {answer.exercise} gives the right numbers but fails where the model runs it, "
            f"on every image of a batch in the training step ({actual}). Write it with keras.ops "
            "only: no numpy, no Python `if` on tensor values, no boolean indexing.")
    require(bool(np.allclose(actual, expected, atol=_ATOL)),
            f"with your {answer.exercise} the RPN's losses on a training batch are "
            f"{np.round(actual, 4).tolist()} instead of {np.round(expected, 4).tolist()}: it "
            "must give the same results on tensors (e.g. inside model.fit) as on numpy arrays.")


def _keras_ops_hint(exercise: str, where: str, error: Exception) -> str:
    return (f"your {exercise} works on numpy arrays but not {where} ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200] if str(error) else ''}): the model runs it inside "
            "its training step, so write it with keras.ops only (no numpy, no Python `if` on "
            "tensor values, no boolean indexing).")


def _check_symbolic(answer: Answer, *specs, expected_shapes) -> None:
    """The answer on symbolic tensors (what ``keras.ops`` code handles) -> the right shapes."""
    try:
        shapes = answer.probe(call_symbolic, list(specs))
    except CheckFailed:
        raise
    except Exception as error:
        raise CheckFailed(_keras_ops_hint(answer.exercise, "on symbolic tensors", error)) from None
    shapes = shapes if isinstance(shapes, tuple) and shapes and isinstance(shapes[0], tuple) \
        else (shapes,)
    require(shapes == expected_shapes,
            f"on symbolic tensors your {answer.exercise} returns shapes {shapes}, expected "
            f"{expected_shapes}.")


def _check_graph(answer: Answer, args: tuple, expected, hint: str) -> None:
    """The answer traced as a graph (``tf.function``) gives ``expected`` on ``args``."""
    try:
        values = answer.probe(call_in_graph, *args)
    except CheckFailed:
        raise
    except Exception as error:
        raise CheckFailed(_keras_ops_hint(answer.exercise, "traced as a graph (as model.fit "
                                                           "runs it)", error)) from None
    values = values if isinstance(values, (tuple, list)) else (values,)
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    require(len(values) == len(expected)
            and all(np.shape(v) == np.shape(e) and np.allclose(np.asarray(v, np.float64), e,
                                                                atol=_ATOL)
                    for v, e in zip(values, expected, strict=False)),
            f"traced as a graph (as model.fit runs it) your {answer.exercise} gives other values "
            f"than on numpy arrays: {hint}")


# --- exercise 1: IoU ----------------------------------------------------------------------------

# Pairs that show each rule: identical, nested, partly overlapping, touching, apart along x, apart
# along y, apart along both (where an unclipped overlap is a product of two negatives), and a
# zero-area box (union > 0) and two zero-area boxes (union 0: IoU 0, not NaN).
_IOU_A = np.array([[10, 10, 30, 30], [0, 0, 40, 20], [5, 5, 25, 15], [0, 0, 10, 10],
                   [0, 0, 10, 10], [2.5, 3.5, 17.25, 9.75], [4, 4, 4, 4]], np.float32)
_IOU_B = np.array([[10, 10, 30, 30], [10, 5, 20, 15], [15, 0, 35, 10], [10, 0, 20, 10],
                   [30, 40, 50, 60], [20, 0, 30, 10], [0, 20, 10, 30], [4, 4, 4, 4]], np.float32)


def _random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    corners = rng.uniform(0, 60, size=(count, 2))
    return np.concatenate([corners, corners + rng.uniform(1, 30, size=(count, 2))], axis=1)


_IOU_MISTAKES = (
    (dict(clip=False),
     "boxes that do not overlap have intersection 0: clip the overlap's width and height at 0 "
     "(keras.ops.maximum(..., 0)) before multiplying them (two negative sides make a positive "
     "'intersection')."),
    (dict(subtract=False),
     "the union counts the intersection twice: union = area_a + area_b - intersection."),
    (dict(enclosing=True),
     "that is the box enclosing both: the intersection's top-left corner is the maximum of the "
     "two top-left corners, its bottom-right corner the minimum of the bottom-right ones."),
    (dict(plus_one=1.0),
     "no +1: coordinates are continuous, a box (x1, y1, x2, y2) has width x2 - x1."),
)


def _diagnose_iou(answer: np.ndarray, a: np.ndarray, b: np.ndarray) -> str:
    for mistake, hint in _IOU_MISTAKES:
        if np.allclose(answer, reference_iou(a, b, **mistake), atol=_ATOL, equal_nan=True):
            return hint
    if np.allclose(answer, reference_iou(_xywh_to_corners(a), _xywh_to_corners(b)), atol=_ATOL):
        return ("boxes are corners (x1, y1, x2, y2), not (x, y, width, height): the width is "
                "x2 - x1.")
    return ("intersection = (min(x2, x2') - max(x1, x1'), clipped at 0) times the same along y; "
            "IoU = intersection / (area_a + area_b - intersection).")


_KERAS_IOU = (keras_boxes.compute_iou, keras_boxes.compute_ciou)
_KERAS_CODER = (keras_boxes.encode_box_to_deltas, keras_boxes.decode_deltas_to_boxes)


@LAB.check("box_iou", forbid=[segkeras.boxes.box_iou, *_KERAS_IOU], fallback=library_box_iou)
@in_float32
def box_iou(box_iou_fn: Answer) -> None:
    """``box_iou(boxes_a (N, 4), boxes_b (M, 4))`` -> (N, M) IoU, in keras.ops."""
    rng = box_iou_fn.rng
    cases = [(_IOU_A, _IOU_B), (_random_boxes(rng, 9), _random_boxes(rng, 5)),
             (_IOU_A[:3], np.zeros((0, 4), np.float32))]
    for a, b in cases:
        answer = _numpy(_call(box_iou_fn, a, b)).astype(np.float64)
        expected = reference_iou(*_inputs(a, b))
        require(answer.shape == expected.shape,
                f"box_iou of {len(a)} and {len(b)} boxes should have shape {expected.shape} "
                f"(one row per box of the first set), got {answer.shape}.")
        if not np.isfinite(answer).all():
            require(False, "your IoU is NaN or infinite where both boxes have no area (union 0): "
                           "return 0 there (keras.ops.where(union > 0, ..., 0.0)).")
        if not np.allclose(answer, expected, atol=_ATOL):
            require(False, _diagnose_iou(answer, a, b))
    _check_symbolic(box_iou_fn, ((7, 4), "float32"), ((5, 4), "float32"),
                    expected_shapes=((7, 5),))
    a, b = _inputs(*cases[1])
    _check_graph(box_iou_fn, (a, b), reference_iou(a, b),
                 "IoU = intersection / (area_a + area_b - intersection), in keras.ops.")


# --- exercise 2: matching anchors to ground truth ---------------------------------------------

# One image where each anchor tests one rule: (anchor, expected label, hint if it is wrong).
_GT = np.array([[0, 0, 10, 7], [100, 100, 110, 103], [200, 200, 230, 230], [50, 50, 60, 60],
                [0, 0, 0, 0]], np.float32)
_GT_VALID = np.array([True, True, True, False, False])
_RULES = (
    ((50, 50, 60, 60), 0,
     "an anchor that overlaps only a padding row (gt_valid False) is negative: padding rows are "
     "not objects, leave them out of the IoU (e.g. set their IoU to -1) and of every rule."),
    ((100, 100, 110, 120), 0,
     "an anchor whose best IoU is 0.15 is negative. If you mark the anchors with the highest IoU "
     "of each ground-truth box, do it for real boxes only: a padding row overlaps no anchor, so "
     "every anchor ties at its highest IoU (0, or -1 after masking)."),
    ((0, 0, 10, 14), -1,
     "an anchor with 0.3 <= IoU < 0.7 (here 0.5) is ignored (label -1): neither positive nor "
     "negative, it is left out of the loss."),
    ((100, 100, 110, 110), -1,
     "an anchor with IoU exactly 0.3 is ignored: negative means IoU < 0.3 (strictly)."),
    ((0, 0, 10, 10), 1,
     "an anchor with IoU exactly 0.7 is positive: positive means IoU >= 0.7."),
    ((0, 0, 10, 7.5), 1, "an anchor with IoU 0.93 is positive (IoU >= 0.7)."),
    ((100, 100, 110, 104), 1, "an anchor with IoU 0.75 is positive (IoU >= 0.7)."),
    ((200, 200, 210, 210), 1,
     "the best anchor of each ground-truth box is positive too, whatever its IoU (here 0.11): "
     "otherwise an object that no anchor covers at 0.7 gets no positive anchor at all. It stays "
     "positive even below 0.3: positive wins."),
    ((205, 205, 212, 212), 0, "an anchor with IoU 0.05 that is no box's best is negative."),
    ((300, 300, 316, 316), 0, "an anchor overlapping no box is negative."),
)


def _labels_and_matches(match_fn: Answer, anchors, gt_boxes, gt_valid):
    result = _call(match_fn, anchors, gt_boxes, gt_valid)
    require(isinstance(result, (tuple, list)) and len(result) == 2,
            "match_anchors should return two arrays: (labels, matched).")
    labels, matched = (_numpy(value) for value in result)
    require(labels.shape == (len(anchors),) and matched.shape == (len(anchors),),
            f"labels and matched should each have one entry per anchor, shape ({len(anchors)},); "
            f"got {labels.shape} and {matched.shape}.")
    require(bool(np.isin(labels, (-1, 0, 1)).all()),
            "labels should be 1 (positive), 0 (negative) or -1 (ignored); got values "
            f"{sorted(set(np.unique(labels).tolist()))}.")
    return labels.astype(int), matched.astype(int)


def _matching_cases(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray,
                                                              np.ndarray]]:
    """Random ground truth (with a padding row) over a grid of anchors, and an empty image."""
    anchors = anchor_grid((8, 8), 8, (16, 32), (0.5, 1.0, 2.0))
    corners = rng.uniform(0, 40, size=(4, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(8, 24, size=(4, 2))], axis=1)
    return [(anchors, boxes.astype(np.float32), np.array([True, True, True, False])),
            (anchors, boxes.astype(np.float32), np.zeros(4, bool))]


@LAB.check("match_anchors", forbid=[
    segkeras.boxes.box_iou, segkeras.models.mask_rcnn.sampling.match_to_ground_truth,
    segkeras.models.mask_rcnn.rpn.anchor_labels, *_KERAS_IOU], fallback=library_match_anchors)
@in_float32
def match_anchors(match_fn: Answer) -> None:
    """``match_anchors(anchors (A, 4), gt_boxes (N, 4), gt_valid (N,))`` -> ``(labels,
    matched)``: Faster R-CNN's rules, checked anchor by anchor, then on random boxes, on an image
    without objects, and inside the RPN's loss."""
    anchors = np.array([anchor for anchor, _, _ in _RULES], np.float32)
    labels, matched = _labels_and_matches(match_fn, anchors, _GT, _GT_VALID)
    for (anchor, expected, hint), label in zip(_RULES, labels, strict=True):
        require(label == expected, f"anchor {anchor}: label {label}, expected {expected}. {hint}")
    _, expected_match, _ = reference_labels(anchors, _GT, _GT_VALID)
    positive = labels == 1
    require(bool(np.array_equal(matched[positive], expected_match[positive])),
            "matched[i] should be the index (into gt_boxes) of the valid ground-truth box that "
            "anchor i overlaps most: its regression target.")
    (grid, boxes, valid), (_, _, none_valid) = _matching_cases(match_fn.rng)
    labels, matched = _labels_and_matches(match_fn, grid, boxes, valid)
    expected, expected_match, best = reference_labels(grid, boxes, valid)
    wrong = np.flatnonzero(labels != expected)
    if len(wrong):
        k = wrong[0]
        require(False, f"on a grid of {len(grid)} anchors, anchor {k} {np.round(grid[k], 1)} "
                       f"(best IoU {best[k]:.2f}) gets label {labels[k]}, expected {expected[k]}.")
    require(bool(np.array_equal(matched[labels == 1], expected_match[labels == 1])),
            "on a grid of anchors, matched should be each positive anchor's best ground-truth "
            "box.")
    labels, _ = _labels_and_matches(match_fn, grid, boxes, none_valid)
    require(bool((labels == 0).all()),
            "in an image without objects (every gt_valid False) every anchor is negative.")
    _check_symbolic(match_fn, ((len(grid), 4), "float32"), ((4, 4), "float32"), ((4,), "bool"),
                    expected_shapes=((len(grid),), (len(grid),)))
    _check_trains(match_fn, "anchor_matcher")


# --- exercise 3: the box coder ---------------------------------------------------------------

_ENCODE_MISTAKES = (
    (dict(log=False),
     "dw and dh are logarithms: dw = log(w / wa), so that shrinking and growing by the same "
     "factor give opposite codes."),
    (dict(divide=False),
     "the shift is relative to the reference box's size: dx = (x - xa) / wa, dy = (y - ya) / ha."),
    (dict(centre="corner"),
     "x, y are the centres, (x1 + x2) / 2, not the top-left corners."),
    (dict(centre="sum"), "the centre is (x1 + x2) / 2: you forgot to halve it."),
    (dict(centre="half_size"), "the centre is x1 + w / 2 (= (x1 + x2) / 2), not w / 2."),
    (dict(use_weights=False),
     "multiply the codes by the weights (wx, wy, ww, wh): dx = wx (x - xa) / wa, ..."),
)


def _diagnose_codes(answer: np.ndarray, reference_boxes, boxes, weights) -> str:
    for mistake, hint in _ENCODE_MISTAKES:
        if np.allclose(answer, _codes(reference_boxes, boxes, weights, **mistake), atol=_ATOL):
            return hint
    if np.allclose(answer, _codes(boxes, reference_boxes, weights), atol=_ATOL):
        return ("the box is coded relative to the reference (anchor): encode_boxes(reference, "
                "boxes) measures boxes in units of the reference, not the other way round.")
    if np.allclose(answer, reference_codes(reference_boxes, boxes, weights)[:, [1, 0, 3, 2]],
                   atol=_ATOL):
        return "the order is (dx, dy, dw, dh): x before y."
    divided = _codes(reference_boxes, boxes, weights, use_weights=False) / np.asarray(weights)
    if np.allclose(answer, divided, atol=_ATOL):
        return "multiply by the weights when encoding (decoding divides)."
    return ("dx = wx (x - xa) / wa, dy = wy (y - ya) / ha, dw = ww log(w / wa), "
            "dh = wh log(h / ha), with x, y the centres and w, h the sizes.")


@LAB.check("encode_boxes", forbid=[segkeras.boxes.encode_boxes, segkeras.boxes.decode_boxes,
                                   *_KERAS_CODER], fallback=library_encode_boxes)
@in_float32
def encode_boxes(encode_fn: Answer) -> None:
    """``encode_boxes(reference (K, 4), boxes (K, 4), weights)`` -> (K, 4) (dx, dy, dw, dh)."""
    rng = encode_fn.rng
    reference_boxes, boxes = _inputs(_random_boxes(rng, 6), _random_boxes(rng, 6))
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 5.0, 2.0, 4.0)):
        answer = _numpy(encode_fn(reference_boxes.astype(np.float32), boxes.astype(np.float32),
                                  weights)).astype(np.float64)
        expected = reference_codes(reference_boxes, boxes, weights)
        require(answer.shape == expected.shape,
                f"encode_boxes of {len(boxes)} boxes should have shape {expected.shape}, "
                f"got {answer.shape}.")
        if not np.allclose(answer, expected, atol=_ATOL):
            require(False, f"weights={weights}: " + _diagnose_codes(answer, reference_boxes,
                                                                    boxes, weights))
    require(np.allclose(_numpy(_call(encode_fn, reference_boxes, reference_boxes)), 0.0,
                        atol=_ATOL),
            "a box coded relative to itself should give (0, 0, 0, 0) with the default weights.")
    _check_symbolic(encode_fn, ((6, 4), "float32"), ((6, 4), "float32"),
                    expected_shapes=((6, 4),))
    _check_graph(encode_fn, (reference_boxes, boxes), reference_codes(reference_boxes, boxes),
                 "dx = (x - xa) / wa, ..., dw = log(w / wa), ... in keras.ops.")
    _check_trains(encode_fn, "box_encoder")


# --- exercise 4: non-maximum suppression ------------------------------------------------------

def reference_nms(boxes, scores, class_ids, iou_threshold: float, max_outputs: int,
                  first_of_ties: bool = True, strict: bool = True,
                  per_class: bool = True) -> np.ndarray:
    """Greedy NMS in plain numpy -> (max_outputs,) indices padded with -1; the keywords make the
    usual mistakes (the last of equal scores first, suppressing at IoU == threshold, suppressing
    across classes)."""
    boxes, scores = np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
    classes = np.asarray(class_ids)
    index = np.arange(len(scores))
    order = np.lexsort((index if first_of_ties else -index, -scores))
    iou = reference_iou(boxes, boxes)
    overlaps = iou > iou_threshold if strict else iou >= iou_threshold
    if per_class:
        overlaps &= classes[:, None] == classes[None, :]
    suppressed = np.zeros(len(scores), bool)
    kept = []
    for i in order:
        if not suppressed[i]:
            kept.append(i)
            suppressed |= overlaps[i]
    kept = kept[:max_outputs]
    return np.array(kept + [-1] * (max_outputs - len(kept)), np.int64)


# One image where each rule shows: boxes 0 and 1 tie in score and overlap (keep 0, the earlier),
# box 3 overlaps box 2 with IoU exactly 0.5 (kept at threshold 0.5), box 4 (class 2) covers
# box 0 (class 1) and suppresses nothing of it.
_NMS_BOXES = np.array([[10, 10, 30, 30], [11, 11, 31, 31], [40, 0, 60, 10], [40, 0, 50, 10],
                       [12, 10, 32, 30]], np.float32)
_NMS_SCORES = np.array([0.6, 0.6, 0.9, 0.7, 0.8], np.float32)
_NMS_CLASSES = np.array([1, 1, 1, 1, 2], np.int32)

_NMS_MISTAKES = (
    (dict(first_of_ties=False),
     "of two boxes with equal scores the earlier index comes first (a stable sort by descending "
     "score): yours kept the later one."),
    (dict(strict=False),
     "a box is suppressed when its IoU with a kept box is strictly above the threshold: at "
     "IoU == threshold it stays."),
    (dict(per_class=False),
     "boxes of different classes never suppress each other: a box is suppressed only by a kept "
     "box of its own class."),
)


def _nms_clusters(rng: np.random.Generator, iou_threshold: float):
    """Clusters of jittered boxes of two classes with scores on a coarse grid (so some tie),
    redrawn until no pair's IoU is within 1e-3 of the threshold (float32 rounding must not
    decide a case)."""
    while True:
        centres = np.repeat(rng.uniform(20, 80, size=(4, 2)), 5, axis=0)
        centres += rng.normal(0, 3, size=centres.shape)
        sides = rng.uniform(10, 30, size=centres.shape)
        boxes = np.concatenate([centres - sides / 2, centres + sides / 2], axis=1)
        iou = reference_iou(boxes, boxes)
        if np.all(np.abs(iou - iou_threshold) > 1e-3):
            break
    scores = rng.integers(1, 10, size=len(boxes)) / 10
    classes = rng.integers(1, 3, size=len(boxes))
    return boxes.astype(np.float32), scores.astype(np.float32), classes.astype(np.int32)


def _nms_result(answer, exercise: str, max_outputs: int) -> np.ndarray:
    indices = _numpy(answer)
    require(indices.shape == (max_outputs,),
            f"{exercise} should return a fixed-size (max_outputs,) = ({max_outputs},) array of "
            f"indices, padded with -1; got shape {indices.shape}.")
    require(np.issubdtype(indices.dtype, np.integer),
            f"{exercise} should return integer indices (e.g. int32), got {indices.dtype}.")
    return indices.astype(np.int64)


def _diagnose_nms(answer: np.ndarray, expected: np.ndarray, case: tuple, where: str) -> str:
    boxes, scores, classes, threshold, max_outputs = case
    for mistake, hint in _NMS_MISTAKES:
        if np.array_equal(answer, reference_nms(boxes, scores, classes, threshold, max_outputs,
                                                **mistake)):
            return f"{where}: {hint}"
    kept = expected[expected >= 0]
    if np.array_equal(np.sort(answer[answer >= 0]), np.sort(kept)):
        return (f"{where}: you keep the right boxes but list them as {answer.tolist()}: the "
                f"kept indices come best first ({expected.tolist()}), then -1 padding.")
    if set(answer[len(kept):].tolist()) - {-1}:
        return (f"{where}: after the kept boxes the output is padded with -1 up to max_outputs; "
                f"got {answer.tolist()}, expected {expected.tolist()}.")
    return (f"{where} (IoU threshold {threshold}, max_outputs {max_outputs}) your nms gives "
            f"{answer.tolist()}, expected {expected.tolist()}. Visit the boxes by descending "
            "score; keep a box unless a kept box of its class overlaps it with IoU > threshold.")


@probe
def nms_in_graph(function: Callable, boxes, scores, class_ids, iou_threshold: float,
                 max_outputs: int):
    """``function`` on tensors traced as a graph (``tf.function``, as ``predict`` runs the
    detector; ``jax.jit`` on JAX), the threshold and output size fixed Python numbers."""
    def run(*tensors):
        return function(*tensors, iou_threshold, max_outputs)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        run = tf.function(run, autograph=False)
    elif backend == "jax":
        import jax

        run = jax.jit(run)
    return run(*(keras.ops.convert_to_tensor(array) for array in (boxes, scores, class_ids)))


@functools.lru_cache(maxsize=1)
def _detector_batch() -> dict[str, np.ndarray]:
    """Two images' worth of the box head's output: 24 proposals (the last 4 of the second image
    not valid), logits over the background and 2 classes, and box deltas."""
    rng = np.random.default_rng(16)
    corners = rng.uniform(0, 40, size=(2, 24, 2))
    proposals = np.concatenate([corners, corners + rng.uniform(8, 24, size=(2, 24, 2))], -1)
    valid = np.ones((2, 24), bool)
    valid[1, 20:] = False
    return {"proposals": proposals.astype(np.float32), "valid": valid,
            "logits": rng.normal(0, 2, size=(2, 24, 3)).astype(np.float32),
            "deltas": rng.normal(0, 0.5, size=(2, 24, 3, 4)).astype(np.float32)}


def _detections(nms=None) -> dict[str, np.ndarray]:
    """The detector's last step on :func:`_detector_batch`, traced as a graph, with ``nms`` in
    place of the library's per-class NMS."""
    batch = _detector_batch()

    def run(proposals, valid, logits, deltas):
        return segkeras.models.mask_rcnn.roi_heads.detect(
            proposals, valid, logits, deltas, (64, 64), 0.05, 0.5, 10, nms=nms)

    tensors = [keras.ops.convert_to_tensor(batch[name])
               for name in ("proposals", "valid", "logits", "deltas")]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        run = tf.function(run, autograph=False)
    return {key: _numpy(value) for key, value in run(*tensors).items()}


@probe
def detections_with(function: Callable):
    """The detector's final detections with the student's NMS: an error comes back as its
    message, a string."""
    try:
        return _detections(function)
    except CheckFailed:
        raise
    except Exception as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


_library_detections = functools.lru_cache(maxsize=1)(_detections)


@LAB.check("nms", forbid=[segkeras.boxes.non_max_suppression,
                          segkeras.boxes.batched_non_max_suppression],
           fallback=library_nms)
@in_float32
def nms(nms_fn: Answer) -> None:
    """``nms(boxes (n, 4), scores (n,), class_ids (n,), iou_threshold, max_outputs)`` ->
    (max_outputs,) kept indices, best first, padded with -1: each rule on its own, random clusters
    with tied scores, traced as a graph, and inside the detector."""
    rng = nms_fn.rng
    handmade = (_NMS_BOXES, _NMS_SCORES, _NMS_CLASSES, 0.5, 6)
    cases = [("on 5 hand-made boxes", handmade),
             ("with max_outputs 3", (*handmade[:4], 3))]
    for threshold in (0.3, 0.7):
        boxes, scores, classes = _nms_clusters(rng, threshold)
        cases += [(f"on {len(boxes)} random boxes in clusters", (boxes, scores, classes,
                                                                 threshold, len(boxes) + 3)),
                  (f"on {len(boxes)} random boxes, max_outputs 4", (boxes, scores, classes,
                                                                   threshold, 4))]
    for where, case in cases:
        boxes, scores, classes, threshold, max_outputs = case
        answer = _nms_result(nms_fn(boxes.copy(), scores.copy(), classes.copy(), threshold,
                                    max_outputs), "nms", max_outputs)
        expected = reference_nms(*case)
        if not np.array_equal(answer, expected):
            require(False, _diagnose_nms(answer, expected, case, where))
    boxes, scores, classes, threshold, max_outputs = cases[2][1]
    try:
        traced = nms_fn.probe(nms_in_graph, boxes, scores, classes, threshold, max_outputs)
    except CheckFailed:
        raise
    except Exception as error:
        raise CheckFailed(_keras_ops_hint(
            "nms", "traced as a graph (as the detector runs it)", error)) from None
    traced = _nms_result(traced, "nms traced as a graph", max_outputs)
    require(bool(np.array_equal(traced, reference_nms(*cases[2][1]))),
            f"traced as a graph (as the detector runs it) your nms gives {traced.tolist()}, "
            "other indices than on numpy arrays: write it with keras.ops only (a loop over a "
            "fixed number of steps with keras.ops.fori_loop, no Python `if` on tensor values).")
    actual = nms_fn.probe(detections_with)
    if isinstance(actual, str):
        raise CheckFailed(
            "your nms gives the right indices but fails where the detector runs it, on every "
            f"image of a batch ({actual}). Write it with keras.ops only: no numpy, no Python "
            "`if` on tensor values, no boolean indexing.")
    expected = _library_detections()
    require(all(np.allclose(actual[key], expected[key], atol=_ATOL) for key in expected),
            "with your nms the detector's final detections differ from the library's: it must "
            "give the same results on tensors (inside model.predict) as on numpy arrays.")


# Every reference and library answer of this module: refused as answers, forbidden while any
# answer runs (the grader's worker swaps them out before the answer is even defined).
PRIVATE = (reference_iou, _area, _xywh_to_corners, reference_labels, reference_codes, _codes,
           library_box_iou, library_match_anchors, library_encode_boxes, reference_nms,
           library_nms)
