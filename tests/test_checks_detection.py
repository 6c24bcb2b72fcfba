"""Lab 6's checks (segkeras.checks.detection): right answers written with keras.ops pass (on numpy
inputs too, and inside the RPN's loss), the wrong answers students write are rejected with a hint
naming the rule, and answers that call segkeras' own box maths are refused."""

import keras
import numpy as np
import pytest
from keras import ops

from segkeras.checks import core
from segkeras.checks import detection as checks

POSITIVE_IOU, NEGATIVE_IOU = 0.7, 0.3


def stub(*args, **kwargs):
    raise NotImplementedError()


# --- right answers, written as a student would (keras.ops) -------------------------------------

def make_box_iou(clip=True, subtract=True, enclosing=False, plus_one=0.0, xywh=False,
                 guard_empty=True):
    def box_iou(boxes_a, boxes_b):
        a, b = ops.convert_to_tensor(boxes_a), ops.convert_to_tensor(boxes_b)
        if xywh:
            a = ops.concatenate([a[:, :2], a[:, :2] + a[:, 2:]], axis=1)
            b = ops.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
        first, last = (ops.minimum, ops.maximum) if enclosing else (ops.maximum, ops.minimum)
        top_left = first(a[:, None, :2], b[None, :, :2])
        bottom_right = last(a[:, None, 2:], b[None, :, 2:])
        overlap = bottom_right - top_left + plus_one
        if clip:
            overlap = ops.maximum(overlap, 0.0)
        intersection = overlap[..., 0] * overlap[..., 1]

        def area(boxes):
            return ops.maximum(boxes[:, 2] - boxes[:, 0] + plus_one, 0.0) * ops.maximum(
                boxes[:, 3] - boxes[:, 1] + plus_one, 0.0)

        union = area(a)[:, None] + area(b)[None, :]
        if subtract:
            union = union - intersection
        if not guard_empty:
            return intersection / union
        return ops.where(union > 0, intersection / ops.maximum(union, 1e-9), 0.0)

    return box_iou


box_iou = make_box_iou()


def make_match_anchors(best_rule=True, strict_positive=False, loose_negative=False,
                       mask_padding=True, ignore_band=True, guard_best=True,
                       negative_wins=False, iou=box_iou):
    def match_anchors(anchors, gt_boxes, gt_valid):
        overlaps = iou(anchors, gt_boxes)  # (A, N)
        if mask_padding:
            overlaps = ops.where(gt_valid[None, :], overlaps, -1.0)
        best = ops.max(overlaps, axis=1)
        matched = ops.argmax(overlaps, axis=1)
        positive = best > POSITIVE_IOU if strict_positive else best >= POSITIVE_IOU
        if best_rule:
            best_of_truth = ops.max(overlaps, axis=0)
            is_best = overlaps == best_of_truth[None, :]
            if guard_best:
                is_best = is_best & (best_of_truth[None, :] > 0)
            positive = positive | ops.any(is_best, axis=1)
        negative = best <= NEGATIVE_IOU if loose_negative else best < NEGATIVE_IOU
        if not ignore_band:
            negative = ~positive
        if negative_wins:
            labels = ops.where(negative, 0, ops.where(positive, 1, -1))
        else:
            labels = ops.where(positive, 1, ops.where(negative, 0, -1))
        return labels, matched

    return match_anchors


match_anchors = make_match_anchors()


def make_encode(log=True, divide=True, centre="middle", weights_used=True, swap=False,
                order=(0, 1, 2, 3), divide_weights=False):
    def encode_boxes(reference, boxes, weights=(1.0, 1.0, 1.0, 1.0)):
        if swap:
            reference, boxes = boxes, reference
        reference, boxes = ops.convert_to_tensor(reference), ops.convert_to_tensor(boxes)

        def centre_size(b):
            size = b[:, 2:] - b[:, :2]
            point = {"middle": b[:, :2] + 0.5 * size, "corner": b[:, :2],
                     "sum": b[:, :2] + b[:, 2:]}[centre]
            return point, size

        (rc, rs), (c, s) = centre_size(reference), centre_size(boxes)
        shift = (c - rc) / rs if divide else c - rc
        scale = ops.log(s / rs) if log else s / rs
        codes = ops.concatenate([shift, scale], axis=1)
        codes = ops.take(codes, list(order), axis=1)
        w = ops.convert_to_tensor(weights, "float32")
        if divide_weights:
            return codes / w
        return codes * w if weights_used else codes

    return encode_boxes


encode_boxes = make_encode()


def make_nms(first_of_ties=True, strict=True, per_class=True, best_first=True, pad=-1):
    """Greedy NMS over the boxes in score order (keras.ops.fori_loop), and its usual mistakes."""
    def nms(boxes, scores, class_ids, iou_threshold, max_outputs):
        boxes, scores = ops.convert_to_tensor(boxes), ops.convert_to_tensor(scores)
        class_ids = ops.convert_to_tensor(class_ids)
        n = ops.shape(scores)[0]
        index = ops.arange(n)
        tie_order = index[:, None] < index[None, :] if first_of_ties else \
            index[:, None] > index[None, :]
        before = (scores[:, None] > scores[None, :]) | (
            (scores[:, None] == scores[None, :]) & tie_order)
        rank = ops.sum(ops.cast(before, "int32"), axis=0)
        order = ops.argsort(rank)
        iou = box_iou(boxes, boxes)
        suppresses = iou > iou_threshold if strict else iou >= iou_threshold
        if per_class:
            suppresses = suppresses & (class_ids[:, None] == class_ids[None, :])

        def visit(k, keep):
            i = order[k]
            return ops.where(index == i, ~ops.any(keep & ops.take(suppresses, i, axis=1)), keep)

        keep = ops.fori_loop(0, n, visit, ops.zeros((n,), "bool"))
        priority = n - rank if best_first else n - index
        priority = ops.concatenate([ops.where(keep, priority, -1),
                                    -ops.ones((max_outputs,), "int32")])
        top, slots = ops.top_k(priority, max_outputs)
        padded = ops.concatenate([index, -ops.ones((max_outputs,), "int32")])
        return ops.where(top > 0, ops.take(padded, slots), pad)

    return nms


nms = make_nms()


def loop_nms(boxes, scores, class_ids, iou_threshold, max_outputs):
    """Greedy NMS as a Python loop in numpy: right indices, but not in a graph."""
    boxes, scores = np.asarray(boxes), np.asarray(scores)
    iou, kept = numpy_iou(boxes, boxes), []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):  # sorted() is stable
        if all(iou[i, j] <= iou_threshold or class_ids[i] != class_ids[j] for j in kept):
            kept.append(i)
    kept = kept[:max_outputs]
    return np.array(kept + [-1] * (max_outputs - len(kept)), np.int32)


def assert_fails(result, *words):
    assert not result and result.points == 0, "a wrong answer must not score"
    for word in words:
        assert word in result.message, f"{word!r} not in hint: {result.message}"


@pytest.fixture(autouse=True)
def fresh_lab(capsys):
    checks.start()
    yield
    core.reset()


# --- right answers ------------------------------------------------------------------------------

@pytest.mark.fast
def test_right_answers_pass_with_full_points():
    assert checks.box_iou(box_iou).points == 2
    assert checks.match_anchors(match_anchors).points == 3
    assert checks.encode_boxes(encode_boxes).points == 2
    assert checks.nms(nms).points == 3
    assert core.total() == (10, 10)


def test_the_reference_agrees_with_the_library():
    """The checks' numpy references and segkeras' keras.ops box maths are the same functions."""
    from segkeras.boxes import box_iou as library_iou
    from segkeras.boxes import encode_boxes as library_encode

    rng = np.random.default_rng(0)
    a, b = checks._random_boxes(rng, 7), checks._random_boxes(rng, 5)
    np.testing.assert_allclose(checks.reference_iou(a, b),
                               ops.convert_to_numpy(library_iou(a, b)), atol=1e-5)
    np.testing.assert_allclose(checks.reference_codes(a[:5], b, (10, 10, 5, 5)),
                               ops.convert_to_numpy(library_encode(a[:5], b, (10, 10, 5, 5))),
                               rtol=1e-4, atol=1e-4)
    for anchors, gt, valid in checks._matching_cases(np.random.default_rng(2)):
        labels, matched = (ops.convert_to_numpy(v) for v in checks.library_match_anchors(
            anchors, gt, valid))
        expected, expected_match, _ = checks.reference_labels(anchors, gt, valid)
        np.testing.assert_array_equal(labels, expected)
        np.testing.assert_array_equal(matched[labels == 1], expected_match[labels == 1])


def test_the_nms_reference_agrees_with_the_library():
    """The checks' numpy greedy NMS and segkeras' vectorised one keep the same boxes, in the same
    order, on the hand-made boxes and on random clusters with tied scores."""
    cases = [(checks._NMS_BOXES, checks._NMS_SCORES, checks._NMS_CLASSES, 0.5, 6)]
    rng = np.random.default_rng(3)
    for threshold in (0.3, 0.5, 0.7):
        cases.append((*checks._nms_clusters(rng, threshold), threshold, 12))
    for case in cases:
        np.testing.assert_array_equal(ops.convert_to_numpy(checks.library_nms(*case)),
                                      checks.reference_nms(*case))


def test_the_hand_made_nms_boxes_tell_each_mistake_apart():
    case = (checks._NMS_BOXES, checks._NMS_SCORES, checks._NMS_CLASSES, 0.5, 6)
    assert checks.reference_nms(*case).tolist() == [2, 4, 3, 0, -1, -1]
    outputs = {tuple(checks.reference_nms(*case, **mistake)) for mistake, _ in checks._NMS_MISTAKES}
    assert len(outputs) == len(checks._NMS_MISTAKES) and (2, 4, 3, 0, -1, -1) not in outputs


def test_the_hand_made_anchors_each_test_one_rule():
    anchors = np.array([anchor for anchor, _, _ in checks._RULES], np.float32)
    labels, _, _ = checks.reference_labels(anchors, checks._GT, checks._GT_VALID)
    assert labels.tolist() == [label for _, label, _ in checks._RULES]
    # no ties at the best IoU of a ground-truth box in the random case (argmax answers pass too)
    anchors, gt, valid = checks._matching_cases(np.random.default_rng(2))[0]
    iou = checks.reference_iou(anchors, gt)[:, valid]
    assert ((iou == iou.max(axis=0)).sum(axis=0) == 1).all()


def numpy_iou(a, b):
    """IoU in numpy: right numbers, but it cannot run in the training step."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    overlap = np.maximum(np.minimum(a[:, None, 2:], b[None, :, 2:]) - top_left, 0.0)
    intersection = overlap[..., 0] * overlap[..., 1]
    area_a, area_b = (np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) for boxes in (a, b))
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def dodging_iou(a, b):
    """Issue 21: numpy, with zeros of the right shape for the symbolic probe."""
    if isinstance(a, keras.KerasTensor):
        return ops.zeros((a.shape[0], b.shape[0]))
    return numpy_iou(a, b)


def test_numpy_answers_pass_the_values_but_not_the_model():
    assert_fails(checks.box_iou(numpy_iou), "keras.ops")
    assert_fails(checks.box_iou(dodging_iou), "keras.ops")


@pytest.mark.parametrize("private", ["reference_iou", "library_box_iou"])
def test_the_checks_references_are_refused_as_answers(private):
    assert_fails(checks.box_iou(getattr(checks, private)), "write it yourself", private)


def test_keras_own_box_functions_are_refused():
    from keras.utils import bounding_boxes

    def keras_iou(a, b):
        return bounding_boxes.compute_iou(a, b, bounding_box_format="xyxy")

    def keras_codes(reference, boxes, weights=(1.0, 1.0, 1.0, 1.0)):
        return bounding_boxes.encode_box_to_deltas(reference, boxes, encoding_format="xyxy")

    assert_fails(checks.box_iou(keras_iou), "write it yourself", "compute_iou")
    assert_fails(checks.encode_boxes(keras_codes), "write it yourself", "encode_box_to_deltas")


# --- wrong answers ------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, words", [
    (make_box_iou(clip=False), ["do not overlap", "clip"]),
    (make_box_iou(subtract=False), ["counts the intersection twice"]),
    (make_box_iou(enclosing=True), ["enclosing both", "maximum"]),
    (make_box_iou(plus_one=1.0), ["no +1"]),
    (make_box_iou(xywh=True), ["corners (x1, y1, x2, y2)", "not (x, y, width, height)"]),
    (make_box_iou(guard_empty=False), ["NaN", "union 0"]),
    (lambda a, b: ops.transpose(box_iou(a, b)), ["shape", "one row per box"]),
    (lambda a, b: box_iou(a, b) * 0.5, ["IoU = intersection"]),
    (stub, ["not answered yet"]),
], ids=["no clip", "union not subtracting", "swapped min/max", "+1", "xywh", "NaN", "transposed",
        "other", "stub"])
def test_box_iou_rejects(answer, words):
    assert_fails(checks.box_iou(answer), *words)


@pytest.mark.parametrize("answer, words", [
    (make_match_anchors(best_rule=False), ["best anchor of each ground-truth box"]),
    (make_match_anchors(strict_positive=True), ["exactly 0.7 is positive", ">= 0.7"]),
    (make_match_anchors(loose_negative=True), ["exactly 0.3 is ignored", "< 0.3"]),
    (make_match_anchors(mask_padding=False), ["padding row", "gt_valid False"]),
    (make_match_anchors(guard_best=False), ["padding row"]),
    (make_match_anchors(ignore_band=False), ["ignored (label -1)"]),
    (make_match_anchors(negative_wins=True), ["positive wins"]),
    (lambda anchors, gt, valid: make_match_anchors()(anchors, gt, valid)[0],
     ["two arrays: (labels, matched)"]),
    (lambda anchors, gt, valid: (make_match_anchors()(anchors, gt, valid)[0],
                                 ops.zeros(ops.shape(anchors)[:1], "int32")),
     ["matched[i] should be the index"]),
    (lambda anchors, gt, valid: (ops.cast(make_match_anchors()(anchors, gt, valid)[0] == 1,
                                          "int32"), make_match_anchors()(anchors, gt, valid)[1]),
     ["label 0, expected -1"]),
    (stub, ["not answered yet"]),
], ids=["no best-anchor rule", "> 0.7", "<= 0.3", "padding as real", "padding ties",
        "ignore band negative", "negative wins", "one output", "matched", "binary labels",
        "stub"])
def test_match_anchors_rejects(answer, words):
    assert_fails(checks.match_anchors(answer), *words)


def test_match_anchors_rejects_python_control_flow_on_tensors():
    def with_if(anchors, gt_boxes, gt_valid):
        if not np.any(np.asarray(gt_valid)):
            return ops.zeros(ops.shape(anchors)[:1], "int32"), ops.zeros(
                ops.shape(anchors)[:1], "int32")
        return match_anchors(anchors, gt_boxes, gt_valid)

    assert_fails(checks.match_anchors(with_if), "keras.ops")


def test_match_anchors_rejects_an_image_without_objects_wrong():
    def all_ignored_when_empty(anchors, gt_boxes, gt_valid):
        labels, matched = match_anchors(anchors, gt_boxes, gt_valid)
        empty = ~ops.any(gt_valid)
        return ops.where(empty, -1, labels), matched

    assert_fails(checks.match_anchors(all_ignored_when_empty), "without objects")


@pytest.mark.parametrize("answer, words", [
    (make_encode(log=False), ["logarithms"]),
    (make_encode(divide=False), ["relative to the reference box's size"]),
    (make_encode(centre="corner"), ["centres", "not the top-left corners"]),
    (make_encode(centre="sum"), ["forgot to halve"]),
    (make_encode(weights_used=False), ["multiply the codes by the weights"]),
    (make_encode(divide_weights=True), ["multiply by the weights when encoding"]),
    (make_encode(swap=True), ["relative to the reference"]),
    (make_encode(order=(1, 0, 3, 2)), ["(dx, dy, dw, dh)"]),
    (lambda r, b, w=(1.0, 1.0, 1.0, 1.0): encode_boxes(r, b, w)[:, :2], ["shape"]),
    (stub, ["not answered yet"]),
], ids=["no log", "not divided", "corner", "sum", "weights ignored", "weights divided",
        "swapped", "order", "shape", "stub"])
def test_encode_boxes_rejects(answer, words):
    assert_fails(checks.encode_boxes(answer), *words)


@pytest.mark.parametrize("answer, words", [
    (make_nms(first_of_ties=False), ["equal scores the earlier index comes first"]),
    (make_nms(strict=False), ["strictly above the threshold", "IoU == threshold"]),
    (make_nms(per_class=False), ["different classes never suppress each other"]),
    (make_nms(best_first=False), ["best first"]),
    (make_nms(pad=0), ["padded with -1"]),
    (lambda *args: nms(*args)[:-1], ["fixed-size", "padded with -1"]),
    (lambda *args: ops.cast(nms(*args), "float32"), ["integer indices"]),
    (loop_nms, ["traced as a graph", "keras.ops"]),
    (stub, ["not answered yet"]),
], ids=["last of ties", ">= threshold", "across classes", "index order", "zero padding",
        "short", "float", "python loop", "stub"])
def test_nms_rejects(answer, words):
    assert_fails(checks.nms(answer), *words)


def test_nms_rejects_an_answer_that_breaks_only_in_the_detector():
    """Right on the judge's cases, but it breaks on the detector's output size (10 slots)."""
    def sized_nms(boxes, scores, class_ids, iou_threshold, max_outputs):
        if max_outputs == 10:
            raise ValueError("only small outputs")
        return nms(boxes, scores, class_ids, iou_threshold, max_outputs)

    assert_fails(checks.nms(sized_nms), "where the detector runs it", "only small outputs")


# --- delegation -----------------------------------------------------------------------------------

def _delegations():
    from segkeras.boxes import box_iou as library_iou
    from segkeras.boxes import decode_boxes
    from segkeras.boxes import encode_boxes as library_encode
    from segkeras.models.mask_rcnn.rpn import anchor_labels
    from segkeras.models.mask_rcnn.sampling import match_to_ground_truth

    def match_by_labels(anchors, gt, valid):
        positive, negative, matched = anchor_labels(anchors, gt[None], valid[None])
        return ops.where(positive, 1, ops.where(negative, 0, -1))[0], matched[0]

    def match_by_library_matcher(anchors, gt, valid):
        best, matched, iou = match_to_ground_truth(anchors, gt[None], valid[None])
        return make_match_anchors()(anchors, gt, valid)[0], matched[0]

    def encode_by_inverse(reference, boxes, weights=(1.0, 1.0, 1.0, 1.0)):
        decode_boxes(reference, ops.zeros_like(reference), weights)
        return encode_boxes(reference, boxes, weights)

    return [
        ("box_iou", lambda a, b: library_iou(a, b), "segkeras.boxes.box_iou"),
        ("match_anchors", make_match_anchors(iou=lambda a, b: library_iou(a, b)),
         "segkeras.boxes.box_iou"),
        ("match_anchors", match_by_labels, "anchor_labels"),
        ("match_anchors", match_by_library_matcher, "match_to_ground_truth"),
        ("encode_boxes", lambda r, b, w=(1.0, 1.0, 1.0, 1.0): library_encode(r, b, w),
         "segkeras.boxes.encode_boxes"),
        ("encode_boxes", encode_by_inverse, "segkeras.boxes.decode_boxes"),
        ("nms", lambda boxes, scores, class_ids, threshold, size: checks.library_nms(
            boxes, scores, class_ids, threshold, size), "library_nms"),
    ]


@pytest.mark.parametrize("index", range(7))
def test_answers_that_call_the_library_fail(index):
    exercise, answer, name = _delegations()[index]
    assert_fails(getattr(checks, exercise)(answer), "write it yourself", name)


def test_the_library_works_after_the_checks():
    from segkeras.boxes import box_iou as library_iou

    checks.box_iou(lambda a, b: library_iou(a, b))
    iou = ops.convert_to_numpy(library_iou(np.array([[0, 0, 10, 10.0]]),
                                           np.array([[0, 0, 10, 5.0]])))
    assert iou[0, 0] == pytest.approx(0.5)


# --- the fallbacks and the model hook ---------------------------------------------------------

def test_the_fallbacks_are_the_library_answers(capsys):
    fallbacks = {name: checks.use(name, stub) for name in checks.LAB.exercises}
    assert capsys.readouterr().out.count("has not passed its check yet (not answered)") == 4
    a, b = checks._IOU_A, checks._IOU_B
    np.testing.assert_allclose(ops.convert_to_numpy(fallbacks["box_iou"](a, b)),
                               checks.reference_iou(a, b), atol=1e-6)
    anchors, gt, valid = checks._matching_cases(np.random.default_rng(2))[0]
    labels, _ = fallbacks["match_anchors"](anchors, gt, valid)
    np.testing.assert_array_equal(ops.convert_to_numpy(labels),
                                  checks.reference_labels(anchors, gt, valid)[0])
    np.testing.assert_allclose(ops.convert_to_numpy(fallbacks["encode_boxes"](a[:4], b[:4])),
                               checks.reference_codes(a[:4], b[:4]), atol=1e-5)
    case = (checks._NMS_BOXES, checks._NMS_SCORES, checks._NMS_CLASSES, 0.5, 6)
    np.testing.assert_array_equal(ops.convert_to_numpy(fallbacks["nms"](*case)),
                                  checks.reference_nms(*case))


def test_the_rpn_loss_with_the_students_functions_equals_the_librarys():
    library = checks._rpn_losses()
    mine = checks._rpn_losses(anchor_matcher=match_anchors, box_encoder=encode_boxes)
    fallback = checks._rpn_losses(anchor_matcher=checks.library_match_anchors,
                                  box_encoder=checks.library_encode_boxes)
    assert library[0] > 0 and library[1] > 0
    np.testing.assert_allclose(mine, library, atol=1e-5)
    np.testing.assert_allclose(fallback, library, atol=1e-5)


def test_the_model_trains_with_the_students_matcher():
    """mask_rcnn(anchor_matcher=..., box_encoder=...) calls them in its training step."""
    from segkeras.data import shapes
    from segkeras.models.mask_rcnn import mask_rcnn, mask_rcnn_dataset

    calls = []

    def counting_matcher(anchors, gt_boxes, gt_valid):
        calls.append("match")
        return match_anchors(anchors, gt_boxes, gt_valid)

    data = shapes.generate(4, 64, seed=0)
    # VGG16: a training step traced in 12 CPU-s, MobileNetV2's in 30 (the heads are the point)
    model = mask_rcnn(data.num_classes, "vgg16", weights=None, input_shape=(64, 64, 3),
                      anchor_sizes=(16, 32), fpn_channels=16, box_head_units=16,
                      mask_head_channels=8, rpn_pre_nms=50, rpn_post_nms_train=20,
                      rpn_post_nms_test=10, rois_per_image=8, max_detections=5,
                      anchor_matcher=counting_matcher, box_encoder=encode_boxes)
    model.compile(keras.optimizers.Adam(1e-3))
    history = model.fit(mask_rcnn_dataset(data, 64, 2, max_instances=6), epochs=1, verbose=0)
    assert calls, "the model never called the matcher"
    assert np.isfinite(history.history["loss"]).all()
    assert "anchor_matcher" not in model.get_config()


def test_the_detector_predicts_with_the_students_nms():
    """mask_rcnn(nms=...) runs it on every image in predict_instances, with the same detections
    as the library's; set later, the compiled detector follows."""
    from segkeras.data import shapes
    from segkeras.models.mask_rcnn import mask_rcnn, predict_instances

    calls = []

    def counting_nms(*args):
        calls.append("nms")
        return nms(*args)

    data = shapes.generate(2, 64, seed=0)
    # VGG16: its predict traces faster than MobileNetV2's (the NMS is the point)
    model = mask_rcnn(data.num_classes, "vgg16", weights=None, input_shape=(64, 64, 3),
                      anchor_sizes=(16, 32), fpn_channels=16, box_head_units=16,
                      mask_head_channels=8, rpn_pre_nms=50, rpn_post_nms_train=20,
                      rpn_post_nms_test=10, rois_per_image=8, max_detections=5, seed=0,
                      score_threshold=0.0)
    library = predict_instances(model, data.images)
    model.nms = counting_nms
    mine = predict_instances(model, data.images)
    assert calls, "the detector never called the student's nms"
    for ours, theirs in zip(mine, library, strict=True):
        assert len(ours["boxes"]) == len(theirs["boxes"]) > 0
        np.testing.assert_allclose(ours["boxes"], theirs["boxes"], atol=1e-4)
        np.testing.assert_array_equal(ours["class_ids"], theirs["class_ids"])


def test_the_score_adds_up_over_the_lab(capsys):
    checks.box_iou(box_iou)
    checks.encode_boxes(make_encode(log=False))
    assert core.total() == (2, 10)
    assert capsys.readouterr().out.endswith(
        "Score in this notebook: 2/10 points (1/4 exercises passed; the grader re-runs every "
        "answer on its own)\n")
