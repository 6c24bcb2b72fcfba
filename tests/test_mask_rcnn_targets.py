"""Mask R-CNN's training targets and losses on hand-made cases, against numpy."""

import numpy as np
import pytest
from keras import ops

from segkeras.boxes import encode_boxes
from segkeras.layers import RoIAlign
from segkeras.models.mask_rcnn.masks import region_mask_targets
from segkeras.models.mask_rcnn.roi_heads import BOX_WEIGHTS, box_head_losses, sample_rois
from segkeras.models.mask_rcnn.rpn import anchor_labels, propose, rpn_losses
from segkeras.models.mask_rcnn.sampling import ignored_by, sample_subset

pytestmark = pytest.mark.fast


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def smooth_l1(x, beta=1 / 9):
    return np.where(np.abs(x) < beta, 0.5 * x * x / beta, np.abs(x) - 0.5 * beta)


def bce(target, logit):
    return np.maximum(logit, 0) - logit * target + np.log1p(np.exp(-np.abs(logit)))


ANCHORS = np.array([
    [0, 0, 10, 10],     # IoU 1 with the object: positive
    [0, 0, 10, 20],     # IoU 0.5: ignored
    [40, 40, 50, 50],   # IoU 0: negative
    [60, 60, 70, 70],   # IoU 0: negative
    [0, 0, 11, 10.5],   # IoU ~0.87: positive
], "float32")
GT = np.array([[[0, 0, 10, 10], [80, 80, 80, 90]]], "float32")  # the second has no area
GT_VALID = np.array([[True, False]])


def test_anchor_labels_thresholds():
    positive, negative, matched = (_np(t) for t in anchor_labels(ANCHORS, GT, GT_VALID))
    assert positive[0].tolist() == [True, False, False, False, True]
    assert negative[0].tolist() == [False, False, True, True, False]
    assert matched[0, 0] == 0


def test_best_anchor_of_each_object_is_positive_even_below_threshold():
    gt = np.array([[[0, 0, 10, 13], [40, 40, 52, 52]]], "float32")  # best IoUs .77, .69
    positive, negative, matched = (_np(t) for t in anchor_labels(ANCHORS[:4], gt,
                                                                  np.array([[True, True]])))
    assert positive[0].tolist() == [True, False, True, False]
    assert matched[0, 2] == 1
    assert not (positive & negative).any()


def test_image_without_objects_has_only_negatives():
    positive, negative, _ = (_np(t) for t in anchor_labels(ANCHORS, GT, np.zeros((1, 2), bool)))
    assert not positive.any() and negative.all()


def test_sample_subset_draws_exactly_count_of_the_eligible():
    rng = np.random.default_rng(0)
    eligible = rng.uniform(size=(3, 50)) < 0.4
    counts = np.array([5, 0, 100])
    chosen = _np(sample_subset(eligible, counts, 50, rng.uniform(size=(3, 50)).astype("float32")))
    assert not (chosen & ~eligible).any()
    assert chosen.sum(1).tolist() == [5, 0, eligible[2].sum()]


def test_rpn_losses_match_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 5)).astype("float32")
    deltas = rng.normal(scale=0.2, size=(1, 5, 4)).astype("float32")
    keys = rng.uniform(size=(1, 5)).astype("float32")
    objectness, box = (float(_np(v)) for v in rpn_losses(
        ANCHORS, logits, deltas, GT, GT_VALID, keys, anchors_per_image=8))
    sampled = [0, 2, 3, 4]  # everything but the ignored anchor
    labels = np.array([1, 0, 0, 0, 1.0])
    np.testing.assert_allclose(objectness, bce(labels, logits[0])[sampled].mean(), rtol=1e-5)
    targets = _np(encode_boxes(ANCHORS[[0, 4]], GT[0, [0, 0]]))
    expected = smooth_l1(deltas[0, [0, 4]] - targets).sum() / len(sampled)
    np.testing.assert_allclose(box, expected, rtol=1e-5)


def test_rpn_losses_of_an_image_without_objects_are_finite():
    logits = np.zeros((1, 5), "float32")
    values = rpn_losses(ANCHORS, logits, np.zeros((1, 5, 4), "float32"), GT,
                        np.zeros((1, 2), bool), np.full((1, 5), 0.5, "float32"), 8)
    objectness, box = (float(_np(v)) for v in values)
    np.testing.assert_allclose(objectness, np.log(2), rtol=1e-5)
    assert box == 0.0


def test_sample_rois_labels_and_order():
    proposals = np.array([[[1, 0, 10, 10], [40, 40, 50, 50], [0, 0, 10, 20], [0, 0, 0, 0]]],
                         "float32")
    valid = np.array([[True, True, True, False]])
    keys = np.linspace(0.1, 0.9, 6, dtype="float32")[None]
    sample = {k: _np(v) for k, v in sample_rois(
        proposals, valid, GT, np.array([[2, 0]]), GT_VALID, keys, 4, 0.5).items()}
    # candidates: 3 valid proposals + the valid ground-truth box; foreground (IoU >= .5):
    # proposal 0 (IoU .9), proposal 2 (IoU .5) and the ground truth; two foreground slots
    assert sample["foreground"][0].tolist() == [True, True, False, False]
    assert sample["valid"][0].tolist() == [True, True, True, False]
    assert sample["class_ids"][0].tolist() == [2, 2, 0, 0]
    np.testing.assert_array_equal(sample["rois"][0, 2], [40, 40, 50, 50])


def test_box_head_losses_match_numpy():
    rng = np.random.default_rng(2)
    rois = np.array([[[1, 0, 10, 10], [0, 0, 10, 20], [40, 40, 50, 50], [0, 0, 0, 0]]], "f4")
    sample = {"rois": rois, "valid": np.array([[True, True, True, False]]),
              "foreground": np.array([[True, True, False, False]]),
              "class_ids": np.array([[2, 1, 0, 0]]), "matched": np.zeros((1, 4), "int32")}
    logits = rng.normal(size=(1, 4, 3)).astype("float32")
    deltas = rng.normal(size=(1, 4, 3, 4)).astype("float32")
    class_loss, box_loss = (float(_np(v)) for v in box_head_losses(logits, deltas, sample, GT))
    log_softmax = logits[0] - np.log(np.exp(logits[0]).sum(-1, keepdims=True))
    expected = -np.mean([log_softmax[i, c] for i, c in zip(range(3), [2, 1, 0], strict=True)])
    np.testing.assert_allclose(class_loss, expected, rtol=1e-5)
    targets = _np(encode_boxes(rois[0, :2], GT[0, [0, 0]], BOX_WEIGHTS))
    errors = smooth_l1(np.stack([deltas[0, 0, 2], deltas[0, 1, 1]]) - targets)
    np.testing.assert_allclose(box_loss, errors.sum() / 3, rtol=1e-5)


def bilinear_roi_reference(mask, box, size=28, ratio=1):
    """numpy: ``mask`` (H, W) sampled bilinearly over ``box`` (aligned RoIAlign: pixel centres at
    +0.5), ``ratio`` x ``ratio`` samples per bin averaged, samples beyond one pixel outside 0."""
    height, width = mask.shape

    def axis_samples(start, end, extent):
        step = (end - start) / size
        offsets = (np.arange(size)[:, None] + (np.arange(ratio) + 0.5) / ratio) * step
        return (start - 0.5 + offsets).reshape(-1)

    ys, xs = axis_samples(box[1], box[3], height), axis_samples(box[0], box[2], width)
    out = np.zeros((len(ys), len(xs)))
    for a, y in enumerate(ys):
        for b, x in enumerate(xs):
            if y < -1 or y > height or x < -1 or x > width:
                continue
            y, x = min(max(y, 0), height - 1), min(max(x, 0), width - 1)
            y0, x0 = int(y), int(x)
            y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
            fy, fx = y - y0, x - x0
            out[a, b] = ((1 - fy) * (1 - fx) * mask[y0, x0] + (1 - fy) * fx * mask[y0, x1]
                         + fy * (1 - fx) * mask[y1, x0] + fy * fx * mask[y1, x1])
    return out.reshape(size, ratio, size, ratio).mean(axis=(1, 3))


@pytest.mark.parametrize("ratio", [1, 2])
def test_region_mask_targets_roialign_the_full_mask_over_each_region_in_one_step(ratio):
    rows, cols = np.mgrid[:96, :128]
    masks = np.zeros((2, 3, 96, 128), bool)
    masks[0, 0] = (rows - 40) ** 2 + (cols - 50) ** 2 < 30 ** 2  # a disc
    masks[0, 1] = (rows > 10) & (rows < 70) & (cols > 60 + rows / 3) & (cols < 120)  # a wedge
    masks[1, 0] = masks[0, 1][::-1]
    rois = np.array([[[12.3, 9.7, 81.2, 70.9], [55.5, 8.2, 123.1, 71.4], [0.7, 1.3, 127.1, 95.4]],
                     [[50.2, 20.6, 126.4, 88.8], [3.3, 4.4, 30.1, 60.2], [0, 0, 1, 1]]],
                    "float32")
    matched = np.array([[0, 1, 0], [0, 0, 2]], "int32")
    foreground = np.array([[True, True, True], [True, True, False]])
    targets = _np(region_mask_targets(masks, rois, matched, foreground,
                                      RoIAlign(28, ratio, 1.0)))
    assert targets.shape == (2, 3, 28, 28)
    for b in range(2):
        for r in range(3):
            if not foreground[b, r]:
                assert (targets[b, r] == -1).all()  # ignored by the loss
                continue
            sampled = bilinear_roi_reference(masks[b, matched[b, r]].astype(float), rois[b, r],
                                             ratio=ratio)
            clear = np.abs(sampled - 0.5) > 1e-4  # float32 vs float64 may round a tie either way
            np.testing.assert_array_equal(targets[b, r][clear], (sampled >= 0.5)[clear],
                                          err_msg=f"{b}, {r}")
            assert clear.mean() > 0.97
    assert targets[0, 0].sum() > 100 and targets[1, 1].sum() == 0  # an object, and background


def test_ignored_by_is_intersection_over_the_box_area():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], "float32")
    ignore = np.array([[[0, 0, 10, 8], [0, 0, 0, 0]], [[0, 0, 10, 6], [0, 0, 0, 0]]], "float32")
    # IoA 0.8 > 0.7 in image 0, 0.6 in image 1; the padding row covers nothing
    np.testing.assert_array_equal(_np(ignored_by(boxes, ignore)),
                                  [[True, True, False], [False, False, False]])
    assert not _np(ignored_by(boxes, np.zeros((1, 3, 4), "float32"))).any()


def test_anchors_and_regions_inside_ignore_boxes_are_not_background():
    anchors = np.array([[0, 0, 16, 16], [40, 40, 56, 56], [44, 44, 60, 60], [100, 100, 116, 116]],
                       "float32")
    gt = np.array([[[0, 0, 16, 16]]], "float32")
    valid = np.array([[True]])
    crowd = np.array([[[38, 38, 62, 62]]], "float32")
    positive, negative, _ = anchor_labels(anchors, gt, valid)
    assert _np(negative)[0].tolist() == [False, True, True, True]
    # with the crowd: the two anchors inside it are neither positive nor negative
    keys = np.linspace(0, 1, 4, dtype="float32")[None]
    logits = np.array([[0, 5, 5, 0]], "float32")  # confident objects on the crowd
    deltas = np.zeros((1, 4, 4), "float32")
    plain, _ = rpn_losses(anchors, logits, deltas, gt, valid, keys)
    ignored, _ = rpn_losses(anchors, logits, deltas, gt, valid, keys, ignore_boxes=crowd)
    log2, background_cost = np.log(2.0), np.log1p(np.exp(5.0))
    assert float(_np(plain)) == pytest.approx((2 * log2 + 2 * background_cost) / 4, rel=1e-5)
    assert float(_np(ignored)) == pytest.approx(log2, rel=1e-5)  # only anchors 0 and 3 count
    # sample_rois: a proposal on the crowd is never a background region
    proposals = np.array([[[40, 40, 60, 60], [100, 100, 120, 120]]], "float32")
    sample = sample_rois(proposals, np.array([[True, True]]), gt, np.array([[1]], "int32"), valid,
                         np.full((1, 3), 0.5, "float32"), 3, 0.5, ignore_boxes=crowd)
    rois = _np(sample["rois"])[0][_np(sample["valid"])[0]].tolist()
    assert [40, 40, 60, 60] not in rois and [100, 100, 120, 120] in rois


def test_propose_decodes_clips_and_suppresses():
    anchors = np.array([[0, 0, 20, 20], [1, 1, 21, 21], [50, 50, 70, 70], [-10, -10, 10, 10]],
                       "float32")
    scores = np.array([[0.9, 0.8, 0.7, 0.95]], "float32")
    proposals, valid = (_np(t) for t in propose(anchors, scores, np.zeros((1, 4, 4), "f4"),
                                                (64, 64), pre_nms=4, post_nms=3))
    # anchor 3 clipped to (0, 0, 10, 10) (IoU .25 with anchor 0); anchor 1 overlaps anchor 0
    np.testing.assert_array_equal(proposals[0][valid[0]],
                                  [[0, 0, 10, 10], [0, 0, 20, 20], [50, 50, 64, 64]])
