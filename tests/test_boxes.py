"""segkeras.boxes against plain numpy references: IoU, the box coder, vectorised NMS."""

import numpy as np
import pytest
from keras import ops

from segkeras import boxes as B

pytestmark = pytest.mark.fast


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def random_boxes(rng, n, size=100.0, max_side=40.0):
    corner = rng.uniform(0, size, (n, 2))
    sides = rng.uniform(1, max_side, (n, 2))
    return np.concatenate([corner, corner + sides], 1).astype("float32")


def iou_reference(a, b):
    out = np.zeros((len(a), len(b)), np.float64)
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - w * h
            out[i, j] = w * h / union if union > 0 else 0.0
    return out


def nms_reference(boxes, scores, threshold):
    """The textbook greedy loop: take the best box left, drop those overlapping it."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(iou_reference(boxes[[i]], boxes[[k]])[0, 0] <= threshold for k in keep):
            keep.append(i)
    return keep


def test_iou_matches_loop_and_handles_empty_boxes():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 7), random_boxes(rng, 5)
    b[0] = [10, 10, 10, 30]  # zero area
    np.testing.assert_allclose(_np(B.box_iou(a, b)), iou_reference(a, b), atol=1e-6)
    assert _np(B.box_iou(b[:1], b[:1]))[0, 0] == 0.0
    assert _np(B.box_iou(a[None], a[None])).shape == (1, 7, 7)


def test_coder_round_trip_and_known_values():
    rng = np.random.default_rng(1)
    anchors, boxes = random_boxes(rng, 50), random_boxes(rng, 50)
    weights = (10.0, 10.0, 5.0, 5.0)
    deltas = B.encode_boxes(anchors, boxes, weights)
    np.testing.assert_allclose(_np(B.decode_boxes(anchors, deltas, weights)), boxes, atol=1e-3)
    # a box twice as wide, shifted by half an anchor width: dx = 0.5, dw = log 2
    code = _np(B.encode_boxes(np.array([[0, 0, 10, 10.]]), np.array([[-5, 0, 15, 10.]])))
    np.testing.assert_allclose(code, [[0.0, 0.0, np.log(2), 0.0]], atol=1e-6)
    code = _np(B.encode_boxes(np.array([[0, 0, 10, 10.]]), np.array([[5, 0, 15, 10.]])))
    np.testing.assert_allclose(code, [[0.5, 0.0, 0.0, 0.0]], atol=1e-6)


def test_decode_clamps_and_degenerate_boxes_stay_finite():
    anchor = np.array([[0, 0, 16, 16.]])
    huge = _np(B.decode_boxes(anchor, np.array([[0, 0, 100.0, 100.0]])))
    np.testing.assert_allclose(huge[0, 2] - huge[0, 0], 1000.0, rtol=1e-4)
    code = _np(B.encode_boxes(anchor, np.array([[5, 5, 5, 5.]])))
    assert np.isfinite(code).all()


def test_clip_to_image():
    clipped = _np(B.clip_to_image(np.array([[-5, 3, 200, 90.]]), 64, 128))
    np.testing.assert_array_equal(clipped, [[0, 3, 128, 64]])


def _kept(indices, kept):
    return [int(i) for i, k in zip(_np(indices)[0], _np(kept)[0], strict=True) if k]


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", range(4))
def test_nms_matches_greedy_loop(seed, threshold):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 60, size=25.0)
    scores = rng.uniform(size=60).astype("float32")
    indices, kept = B.non_max_suppression(boxes[None], scores[None], threshold, 60)
    expected = nms_reference(boxes, scores, threshold)
    assert _kept(indices, kept) == expected
    assert 1 < len(expected) < 60  # the case suppresses something


def test_nms_ties_keep_the_lower_index_and_output_is_padded():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [0, 0, 10, 10.]])
    scores = np.array([0.5, 0.5, 0.5, 0.9])
    indices, kept = B.non_max_suppression(boxes[None], scores[None], 0.5, 6)
    assert _kept(indices, kept) == nms_reference(boxes, scores, 0.5) == [3, 2]
    assert _np(kept)[0].tolist() == [True, True, False, False, False, False]
    assert _np(indices)[0, 2:].tolist() == [0, 0, 0, 0]


def test_nms_truncates_to_max_output_in_score_order():
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(5)], "float32")
    scores = np.array([0.1, 0.9, 0.3, 0.7, 0.5])
    indices, kept = B.non_max_suppression(boxes[None], scores[None], 0.5, 3)
    assert _kept(indices, kept) == [1, 3, 4]


def test_nms_all_suppressed_but_one_empty_and_invalid():
    boxes = np.tile(np.array([[0, 0, 10, 10.]]), (5, 1))
    scores = np.array([0.2, 0.4, 0.3, 0.1, 0.0])
    indices, kept = B.non_max_suppression(boxes[None], scores[None], 0.5, 4)
    assert _kept(indices, kept) == [1]
    valid = np.array([[True, False, True, True, True]])
    indices, kept = B.non_max_suppression(boxes[None], scores[None], 0.5, 4, valid)
    assert _kept(indices, kept) == [2]  # the invalid best box suppresses nothing
    indices, kept = B.non_max_suppression(np.zeros((2, 0, 4)), np.zeros((2, 0)), 0.5, 3)
    assert _np(indices).shape == (2, 3) and not _np(kept).any()
    none_valid = np.zeros((1, 5), bool)
    assert not _np(B.non_max_suppression(boxes[None], scores[None], 0.5, 4, none_valid)[1]).any()


def test_nms_is_per_image():
    rng = np.random.default_rng(7)
    boxes = np.stack([random_boxes(rng, 30, 50.0), random_boxes(rng, 30, 50.0)])
    scores = rng.uniform(size=(2, 30))
    indices, kept = B.non_max_suppression(boxes, scores, 0.5, 30)
    for b in range(2):
        got = [int(i) for i, k in zip(_np(indices)[b], _np(kept)[b], strict=True) if k]
        assert got == nms_reference(boxes[b], scores[b], 0.5)


def test_batched_nms_keeps_overlapping_boxes_of_different_classes():
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 40, 40.0)
    scores = rng.uniform(size=40)
    classes = rng.integers(1, 4, 40)
    indices, kept = B.batched_non_max_suppression(
        boxes[None], scores[None], classes[None], 0.5, 40)
    expected = []
    for c in (1, 2, 3):
        members = np.flatnonzero(classes == c)
        expected += [members[i] for i in nms_reference(boxes[members], scores[members], 0.5)]
    expected.sort(key=lambda i: (-scores[i], i))
    assert _kept(indices, kept) == expected


def test_gather_rows():
    values = np.arange(2 * 5 * 4).reshape(2, 5, 4).astype("float32")
    indices = np.array([[4, 0], [1, 1]])
    np.testing.assert_array_equal(_np(B.gather_rows(values, indices)),
                                  values[np.arange(2)[:, None], indices])
    np.testing.assert_array_equal(_np(B.gather_rows(values[..., 0], indices)),
                                  values[..., 0][np.arange(2)[:, None], indices])
