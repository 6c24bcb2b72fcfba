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


# --- the tiled NMS against the dense formulation it replaced and a numpy greedy loop ----------

def dense_nms(boxes, scores, threshold, max_output, valid):
    """The previous implementation, one image: the fixed point of ``keep <- valid & ~any(keep_i &
    before_ij & iou_ij > t)`` on the whole (n, n) precedence matrix, in numpy float32."""
    n = len(scores)
    index = np.arange(n)
    before = (scores[:, None] > scores[None, :]) | (
        (scores[:, None] == scores[None, :]) & (index[:, None] < index[None, :]))
    edges = before & (iou32(boxes, boxes) > threshold) & valid[:, None]
    keep = valid.copy()
    while True:
        new_keep = valid & ~(keep[:, None] & edges).any(axis=0)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    rank = before.sum(axis=0)
    kept = sorted(np.flatnonzero(keep), key=lambda i: rank[i])[:max_output]
    return [int(i) for i in kept]


def iou32(a, b):
    """IoU in float32 with the library's operation order (so ties at the threshold agree)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    width = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2])
                       - np.maximum(a[:, None, 0], b[None, :, 0]), np.float32(0))
    height = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3])
                        - np.maximum(a[:, None, 1], b[None, :, 1]), np.float32(0))
    inter = width * height

    def area(x):
        sides = np.maximum(x[:, 2:] - x[:, :2], np.float32(0))
        return sides[:, 0] * sides[:, 1]

    union = area(a)[:, None] + area(b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, np.float32(1e-6)), np.float32(0))


def greedy_nms(boxes, scores, threshold, max_output, valid):
    """The textbook loop, vectorised per kept box: stable sort, keep, suppress what it overlaps."""
    order = np.argsort(-scores, kind="stable")
    iou = iou32(boxes, boxes)
    alive, kept = valid.copy(), []
    for i in order:
        if alive[i]:
            kept.append(int(i))
            alive &= ~(iou[i] > threshold)
    return kept[:max_output]


def clusters(rng, n, objects, ties=True):
    """``n`` boxes in ``objects`` clusters (integer coordinates, so some IoUs are exact
    fractions), scores on a coarse grid (many exact ties) or continuous."""
    centres = rng.integers(0, 200, (objects, 2))[rng.integers(0, objects, n)]
    sides = rng.integers(4, 40, (n, 2))
    corner = centres + rng.integers(-6, 7, (n, 2))
    boxes = np.concatenate([corner, corner + sides], 1).astype("float32")
    scores = rng.integers(0, 12, n) / 12 if ties else rng.uniform(size=n)
    return boxes, scores.astype("float32")


def _jit_on_jax(fn):
    """``fn`` under jax.jit on JAX (one compilation instead of one per operation), else as is."""
    import keras

    if keras.backend.backend() != "jax":
        return fn
    import jax

    return jax.jit(fn)


def _check_all(boxes, scores, threshold, max_output, valid=None, fn=None):
    """The library (batched over images, ``fn`` or eager) against both references per image."""
    valid = np.ones(scores.shape, bool) if valid is None else valid
    fn = fn or _jit_on_jax(lambda b, s, v: B.non_max_suppression(b, s, threshold, max_output, v))
    indices, kept = (_np(x) for x in fn(boxes, scores, valid))
    assert indices.shape == kept.shape == (len(scores), max_output)
    for b in range(len(scores)):
        got = [int(i) for i, k in zip(indices[b], kept[b], strict=True) if k]
        args = (boxes[b], scores[b], threshold, max_output, valid[b])
        assert got == dense_nms(*args) == greedy_nms(*args)
        assert kept[b].tolist() == [True] * len(got) + [False] * (max_output - len(got))
        assert not indices[b, len(got):].any()


@pytest.mark.parametrize("n", [1, 256, 257, 700])
def test_tiled_nms_equals_dense_and_greedy_across_tile_sizes(n):
    """n below, at, just above and not a multiple of the tile; exact score ties; two images."""
    assert B.NMS_TILE == 256
    rng = np.random.default_rng(n)
    (b0, s0), (b1, s1) = clusters(rng, n, max(n // 20, 1)), clusters(rng, n, max(n // 5, 1))
    boxes, scores = np.stack([b0, b1]), np.stack([s0, s1])
    valid = rng.uniform(size=scores.shape) > 0.1
    for threshold in (0.5, 0.7):
        _check_all(boxes, scores, threshold, n + 3, valid)
    _check_all(boxes, scores, 0.3, max(n // 10, 1))  # few slots: later tiles are skipped


def test_tiled_nms_early_exit_waits_for_every_image():
    """Image 0 fills its 20 slots in the first tile; image 1 (one big cluster) does not, so the
    later tiles still run for it and image 0's result is unchanged by them."""
    rng = np.random.default_rng(5)
    spread, _ = clusters(rng, 600, 300, ties=False)
    dense, _ = clusters(rng, 600, 1, ties=False)
    scores = rng.uniform(size=(2, 600)).astype("float32")
    _check_all(np.stack([spread, dense]), scores, 0.5, 20)


def test_tiled_nms_threshold_is_strict_and_ties_keep_the_earlier_index():
    """IoU exactly 0.5 stays at threshold 0.5; equal scores keep the lower index, also when the
    tied boxes land in different tiles (indices 3 and 300)."""
    boxes = np.tile(np.array([[500, 500, 510, 510]], "float32"), (400, 1))
    boxes[:300] += np.arange(300, dtype="float32")[:, None] * 30  # apart from each other
    boxes[0] = [40, 0, 60, 10]
    boxes[1] = [40, 0, 50, 10]  # IoU with box 0 exactly 0.5
    boxes[3] = boxes[300] = [1000, 1000, 1020, 1020]
    scores = np.linspace(0.2, 0.1, 400).astype("float32")
    scores[0], scores[1], scores[3], scores[300] = 0.9, 0.8, 0.5, 0.5
    kept = dense_nms(boxes, scores, 0.5, 400, np.ones(400, bool))
    assert 1 in kept and 3 in kept and 300 not in kept
    _check_all(boxes[None], scores[None], 0.5, 400)
    assert 1 not in greedy_nms(boxes, scores, 0.4999, 400, np.ones(400, bool))
    _check_all(boxes[None], scores[None], 0.4999, 400)


def test_tiled_nms_identical_boxes_empty_and_invalid():
    boxes = np.tile(np.array([[[3, 4, 30, 40]]], "float32"), (3, 600, 1))
    scores = np.full((3, 600), 0.5, "float32")
    valid = np.ones((3, 600), bool)
    valid[1, :290] = False  # the first kept box is in the second tile
    valid[2] = False
    nms = _jit_on_jax(lambda b, s, v: B.non_max_suppression(b, s, 0.5, 5, v))
    indices, kept = (_np(x) for x in nms(boxes, scores, valid))
    assert indices.tolist() == [[0, 0, 0, 0, 0], [290, 0, 0, 0, 0], [0] * 5]
    assert kept.tolist() == [[True] + [False] * 4, [True] + [False] * 4, [False] * 5]
    indices, kept = B.non_max_suppression(np.zeros((1, 0, 4)), np.zeros((1, 0)), 0.5, 4)
    assert _np(indices).tolist() == [[0] * 4] and not _np(kept).any()


def test_tiled_nms_compiled_as_the_model_runs_it():
    """Traced (tf.function / jax.jit; torch eager) it gives the references' answer, batched
    per class too."""
    import keras

    rng = np.random.default_rng(11)
    boxes, scores = (np.stack(pair) for pair in zip(clusters(rng, 520, 30), clusters(rng, 520, 9),
                                                    strict=True))
    classes = rng.integers(1, 4, scores.shape)

    def run(b, s, v):
        return B.non_max_suppression(b, s, 0.6, 100, v)

    def per_class(b, s, c):
        return B.batched_non_max_suppression(b, s, c, 0.6, 100)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        run, per_class = tf.function(run), tf.function(per_class)
    run, per_class = _jit_on_jax(run), _jit_on_jax(per_class)
    _check_all(boxes, scores, 0.6, 100, fn=run)
    indices, kept = (_np(x) for x in per_class(boxes, scores, classes))
    for b in range(2):
        expected = []
        for c in (1, 2, 3):
            members = np.flatnonzero(classes[b] == c)
            expected += [int(members[i]) for i in greedy_nms(
                boxes[b][members], scores[b][members], 0.6, 520, np.ones(len(members), bool))]
        expected.sort(key=lambda i: (-scores[b, i], i))
        assert [int(i) for i, k in zip(indices[b], kept[b], strict=True) if k] == expected[:100]
