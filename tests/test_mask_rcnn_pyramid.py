"""Mask R-CNN on a feature pyramid (Lin et al. 2017): eq. 1 level assignment, the FPN's P2-P6,
multi-level RoIAlign, per-level anchors and proposals, and the pyramid model end to end."""

import argparse

import keras
import numpy as np
import pytest
from keras import ops

from segkeras import backbones
from segkeras.cli import common
from segkeras.errors import SegkerasError
from segkeras.layers import MultiScaleRoIAlign, RoIAlign, fpn_levels
from segkeras.models.mask_rcnn import (
    MaskRCNN,
    mask_rcnn,
    predict_instances,
    predict_masks_in_boxes,
)
from segkeras.models.mask_rcnn.anchors import anchor_grid, pyramid_anchors
from segkeras.models.mask_rcnn.model import LOSS_NAMES
from segkeras.models.mask_rcnn.neck import FPN_STRIDES, feature_pyramid_levels
from segkeras.models.mask_rcnn.rpn import propose

pytestmark = pytest.mark.fast

TINY = dict(pyramid=True, anchor_sizes=(8, 16, 32, 64, 128), fpn_channels=16,
            box_head_units=32, mask_head_channels=16, rpn_pre_nms=100, rpn_post_nms_train=40,
            rpn_post_nms_test=20, rois_per_image=16, max_detections=10)


def _np(tensor):
    return np.asarray(ops.convert_to_numpy(tensor))


def _boxes(rng, count, image=512, smallest=2.0, largest=900.0):
    corner = rng.uniform(-20, image, (count, 2))
    sides = np.exp(rng.uniform(np.log(smallest), np.log(largest), (count, 2)))
    return np.concatenate([corner, corner + sides], 1).astype("float32")


# ---------------------------------------------------------------- eq. 1


def test_levels_follow_eq_1_at_the_boundaries_and_clamp():
    sides = [(112, 112), (224, 224), (448, 448), (111.5, 111.5), (223, 223), (447, 447),
             (56, 224), (448, 112), (10, 10), (0, 30), (2000, 2000), (896, 896)]
    boxes = np.array([[5, 7, 5 + w, 7 + h] for w, h in sides], "float32")
    assert _np(fpn_levels(boxes)).tolist() == [3, 4, 5, 2, 3, 4, 3, 4, 2, 2, 5, 5]
    assert _np(fpn_levels(boxes, 2, 6)).tolist()[-2:] == [6, 6]


@pytest.mark.parametrize("canonical", [224, 112, 143.5])
def test_levels_equal_eq_1_in_numpy(canonical):
    boxes = _boxes(np.random.default_rng(0), 500)
    area = np.prod(boxes[:, 2:].astype(np.float64) - boxes[:, :2], axis=1)
    exact = 4 + np.log2(np.sqrt(area) / canonical)
    away = np.abs(exact - np.round(exact)) > 1e-4  # float32 vs float64 right at a boundary
    expected = np.clip(np.floor(exact), 2, 5)
    found = _np(fpn_levels(boxes, canonical_size=canonical))
    assert away.sum() > 450 and set(expected[away].tolist()) == {2, 3, 4, 5}
    np.testing.assert_array_equal(found[away], expected[away])
    np.testing.assert_array_equal(
        _np(fpn_levels(boxes.reshape(5, 100, 4), canonical_size=canonical)), found.reshape(5, 100))


# ---------------------------------------------------------------- the neck


def test_fpn_levels_have_the_strides_and_p6_subsamples_p5():
    height, width = 128, 96
    encoder = backbones.build_encoder("mobilenetv2", (height, width, 3), None)
    image = keras.Input((height, width, 3))
    pyramid = keras.Model(image, feature_pyramid_levels(encoder(image), 8))
    outputs = pyramid(np.random.default_rng(0).uniform(0, 255, (2, height, width, 3)))
    assert FPN_STRIDES == (4, 8, 16, 32, 64)
    assert [tuple(output.shape) for output in outputs] == [
        (2, -(-height // stride), -(-width // stride), 8) for stride in FPN_STRIDES]
    np.testing.assert_array_equal(_np(outputs[4]), _np(outputs[3])[:, ::2, ::2])
    names = {layer.name for layer in pyramid.layers}
    for level in ("P2", "P3", "P4", "P5"):
        assert {f"fpn_lateral_{level}", f"fpn_output_{level}"} <= names
    assert {"fpn_upsample_P2", "fpn_upsample_P4", "fpn_P6"} <= names
    assert "fpn_upsample_P5" not in names  # the top-down path starts at P5


# ---------------------------------------------------------------- multi-level RoIAlign


@pytest.mark.parametrize("aligned, canonical", [(True, 224), (False, 224), (True, 112)])
def test_multiscale_roi_align_is_roi_align_on_the_assigned_level(aligned, canonical):
    rng = np.random.default_rng(1)
    strides = (4, 8, 16, 32)
    features = [rng.normal(size=(3, 256 // s, 192 // s, 5)).astype("float32") for s in strides]
    boxes = _boxes(rng, 60, image=256)
    boxes[0] = [10, 10, 10, 10]  # empty: level 2
    indices = rng.integers(0, 3, len(boxes)).astype("int32")
    layer = MultiScaleRoIAlign(7, 2, strides, aligned, canonical_size=canonical)
    pooled = _np(layer(features, boxes, indices))
    area = np.prod(boxes[:, 2:].astype(np.float64) - boxes[:, :2], axis=1)
    with np.errstate(divide="ignore"):  # the empty box: log2(0) = -inf, clamped to level 2
        levels = np.clip(np.floor(4 + np.log2(np.sqrt(area) / canonical)), 2, 5).astype(int)
    assert set(levels.tolist()) == {2, 3, 4, 5}
    for k, level in enumerate(levels):
        single = RoIAlign(7, 2, 1.0 / 2**level, aligned)
        expected = _np(single(features[level - 2], boxes[k:k + 1], indices[k:k + 1]))[0]
        np.testing.assert_allclose(pooled[k], expected, atol=2e-5, err_msg=f"box {k}")


def test_multiscale_roi_align_bad_boxes_inside_a_graph_give_zeros():
    features = [np.ones((2, 64 // s, 64 // s, 3), "float32") for s in (4, 8, 16, 32)]
    boxes = np.array([[0, 0, np.nan, 9], [0, 0, np.inf, 9], [8, 8, 4, 4], [0, 0, 300, 300],
                      [0, 0, 300, 300], [1, 1, 9, 9]], "float32")
    indices = np.array([0, 1, 0, -1, 2, 1], "int32")
    layer = MultiScaleRoIAlign(2, 1)
    with pytest.raises(SegkerasError, match="box 0"):  # values known: refused up front
        layer(features, boxes, indices)
    pooled = _np(layer.call(features, boxes, indices))  # as in a compiled graph
    assert (pooled[:5] == 0).all() and (pooled[5] == 1).all()


def test_multiscale_roi_align_config_and_bad_strides():
    layer = MultiScaleRoIAlign((14, 14), 3, (8, 16, 32), aligned=False, canonical_size=112)
    clone = MultiScaleRoIAlign.from_config(layer.get_config())
    assert (clone.output_size, clone.sampling_ratio, clone.strides, clone.aligned,
            clone.min_level, clone.max_level, clone.canonical_size) == (
                (14, 14), 3, (8, 16, 32), False, 3, 5, 112.0)
    for strides in [(4, 16), (4, 6), ()]:
        with pytest.raises(ValueError, match="strides"):
            MultiScaleRoIAlign(7, 2, strides)
    for canonical in [0, -224, "224"]:
        with pytest.raises(SegkerasError, match="canonical_size"):
            MultiScaleRoIAlign(7, 2, canonical_size=canonical)


# ---------------------------------------------------------------- anchors and proposals


def test_pyramid_anchors_one_size_per_level():
    grids, sizes = [(16, 12), (8, 6), (4, 3), (2, 2), (1, 1)], (32, 64, 128, 256, 512)
    ratios = (0.5, 1.0, 2.0)
    anchors = pyramid_anchors(grids, FPN_STRIDES, sizes, ratios)
    counts = [h * w * 3 for h, w in grids]
    assert anchors.shape == (sum(counts), 4)
    start = 0
    for grid, stride, size, count in zip(grids, FPN_STRIDES, sizes, counts, strict=True):
        level = anchors[start:start + count]
        start += count
        np.testing.assert_array_equal(level, anchor_grid(grid, stride, (size,), ratios))
        sides = level[:, 2:] - level[:, :2]
        np.testing.assert_allclose(np.prod(sides, 1), size * size, rtol=1e-5)
        np.testing.assert_allclose(sides[:3, 1] / sides[:3, 0], ratios, rtol=1e-5)
        np.testing.assert_allclose((level[0, :2] + level[0, 2:]) / 2, [stride / 2] * 2)


def test_proposals_are_made_per_level_then_merged_by_score():
    # level 0 (3 anchors): two overlapping boxes and a far one; level 1 (2 anchors): a copy of
    # level 0's best box (another level: not suppressed) and a weak box
    anchors = np.array([[0, 0, 20, 20], [1, 1, 21, 21], [40, 40, 60, 60],
                        [0, 0, 20, 20], [30, 0, 50, 20]], "float32")
    scores = np.array([[3.0, 2.0, 0.5, 2.5, -1.0]], "float32")
    deltas = np.zeros((1, 5, 4), "float32")
    boxes, valid = (_np(t) for t in propose(anchors, scores, deltas, (64, 64), pre_nms=3,
                                             post_nms=4, level_sizes=(3, 2)))
    np.testing.assert_array_equal(boxes[0][valid[0]], anchors[[0, 3, 2, 4]])
    # pre_nms per level: only the best anchor of each level enters NMS
    boxes, valid = (_np(t) for t in propose(anchors, scores, deltas, (64, 64), pre_nms=1,
                                             post_nms=3, level_sizes=(3, 2)))
    assert valid[0].tolist() == [True, True, False]
    np.testing.assert_array_equal(boxes[0][:2], anchors[[0, 3]])
    # one level: exactly the single-level proposals
    single = [_np(t) for t in propose(anchors, scores, deltas, (64, 64), 5, 3)]
    one = [_np(t) for t in propose(anchors, scores, deltas, (64, 64), 5, 3, level_sizes=(5,))]
    for a, b in zip(single, one, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- the model


def tiny_model(seed=0, **options):
    """VGG16: its 19 layers trace in a third of MobileNetV2's time; the pyramid is the point."""
    keras.utils.set_random_seed(seed)
    return mask_rcnn(4, "vgg16", weights=None, input_shape=(64, 64, 3), seed=seed,
                     **{**TINY, **options})


def tiny_batch():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    boxes = np.array([[[4, 4, 30, 40], [10, 20, 60, 62]], [[0, 0, 0, 0], [5, 5, 20, 20]]],
                     "float32")
    class_ids = np.array([[1, 2], [0, 3]], "int32")
    masks = np.zeros((2, 2, 64, 64), bool)  # each object's mask at the input's size
    masks[0, 0, 8:36, 8:26] = masks[0, 1, 24:60, 16:56] = masks[1, 1, 6:19, 6:19] = True
    return {"image": images, "boxes": boxes, "class_ids": class_ids}, masks


def test_builder_defaults_and_bad_pyramid_arguments():
    model = mask_rcnn(4, "mobilenetv2", weights=None, input_shape=(64, 64, 3), pyramid=True,
                      fpn_channels=8, box_head_units=8, mask_head_channels=8)
    config = model.config
    assert config["anchor_sizes"] == (32, 64, 128, 256, 512) and config["pyramid"] is True
    assert (config["rpn_pre_nms"], config["rpn_pre_nms_test"], config["rpn_post_nms_train"],
            config["rpn_post_nms_test"], config["rois_per_image"]) == (2000, 1000, 1000, 1000, 512)
    assert model.level_sizes == (16 * 16 * 3, 8 * 8 * 3, 4 * 4 * 3, 2 * 2 * 3, 3)
    single = MaskRCNN(4, "mobilenetv2", None, (64, 64, 3), fpn_channels=8, box_head_units=8,
                      mask_head_channels=8).config
    assert (single["anchor_sizes"], single["rpn_pre_nms"], single["rpn_pre_nms_test"],
            single["rpn_post_nms_train"], single["rpn_post_nms_test"],
            single["rois_per_image"], single["pyramid"]) == ((16, 32, 64, 128), 1000, 1000, 500,
                                                             200, 256, False)
    # the command line's --model maskrcnn-fpn is this model (maskrcnn: the single level)
    args = argparse.Namespace(model="maskrcnn-fpn", backbone=None, stacks=2, image_size=64)
    assert common.build_model(args, 4, None).config["pyramid"] is True
    assert config["roi_canonical_size"] == 224.0 and model.box_align.canonical_size == 224.0
    coarser = mask_rcnn(4, "mobilenetv2", weights=None, input_shape=(64, 64, 3), pyramid=True,
                        fpn_channels=8, box_head_units=8, mask_head_channels=8,
                        roi_canonical_size=112)
    assert coarser.box_align.canonical_size == coarser.mask_align.canonical_size == 112.0
    # RoIAlign's samples per bin: the paper's 2 x 2 unless asked, for both heads on both sizes
    assert config["roi_sampling_ratio"] == 2
    assert model.box_align.sampling_ratio == model.mask_align.sampling_ratio == 2
    for pyramid in (True, False):
        denser = mask_rcnn(4, "mobilenetv2", weights=None, input_shape=(64, 64, 3),
                           pyramid=pyramid, fpn_channels=8, box_head_units=8,
                           mask_head_channels=8, roi_sampling_ratio=3)
        assert denser.box_align.sampling_ratio == denser.mask_align.sampling_ratio == 3
        assert denser.target_align.sampling_ratio == 2  # mask targets are not features
    for bad in [dict(anchor_sizes=(16, 32, 64, 128)), dict(pyramid="yes"),
                dict(rpn_pre_nms_test=0), dict(rois_per_image=2000),
                dict(roi_canonical_size=0), dict(roi_canonical_size=True),
                dict(roi_canonical_size=float("nan")), dict(roi_sampling_ratio=0),
                dict(roi_sampling_ratio=2.5), dict(roi_sampling_ratio=True)]:
        with pytest.raises(SegkerasError):
            mask_rcnn(4, "mobilenetv2", weights=None, input_shape=(64, 64, 3),
                      **{"pyramid": True, **bad})


@pytest.fixture(scope="module")
def pyramid_model():
    return tiny_model()


def test_pyramid_model_reads_every_level(pyramid_model):
    model = pyramid_model
    features = model.features(np.zeros((1, 64, 64, 3), "float32"))
    assert [tuple(level.shape[1:]) for level in features] == [
        (16, 16, 16), (8, 8, 16), (4, 4, 16), (2, 2, 16), (1, 1, 16)]
    assert model.anchors.shape == (sum(model.level_sizes), 4)
    assert isinstance(model.box_align, MultiScaleRoIAlign)
    assert model.box_align.strides == model.mask_align.strides == (4, 8, 16, 32)
    # one RPN head (one set of weights) for all levels, its outputs concatenated finest first
    assert len(model.rpn.weights) == 6
    rpn = model._rpn(features)
    assert tuple(rpn["objectness"].shape) == (1, len(model.anchors))
    coarsest = _np(model.rpn(features[4])["objectness"])
    np.testing.assert_allclose(_np(rpn["objectness"])[:, -model.level_sizes[-1]:], coarsest)


def test_pyramid_model_forward_train_step_predict_and_keras_file(tmp_path):
    """The one compiled train step of the pyramid (mostly tracing): static level shapes and
    per-level NMS must hold in a graph on every backend."""
    model = tiny_model(seed=1, roi_sampling_ratio=3)
    inputs, targets = tiny_batch()
    outputs = model(inputs, training=True)
    total = model.compute_loss(inputs, targets, outputs)
    for name in LOSS_NAMES[:-1]:
        assert np.isfinite(float(_np(outputs[name]))), name
    assert np.isfinite(float(_np(total)))
    before = [_np(w).copy() for w in model.features.trainable_weights]
    model.compile(keras.optimizers.Adam(1e-3))
    history = model.fit(inputs, targets, batch_size=2, epochs=1, verbose=0).history
    assert all(np.isfinite(history[name]).all() for name in LOSS_NAMES)
    after = [_np(w) for w in model.features.trainable_weights]
    changed = {w.path.split("/")[-2] for w, a, b in zip(model.features.trainable_weights,
                                                        before, after, strict=True)
               if not np.array_equal(a, b)}
    # every FPN level's output conv got a gradient (from the RPN, the RoI heads or both)
    assert {f"fpn_output_{level}" for level in ("P2", "P3", "P4", "P5")} <= changed
    # predict_instances: the compiled detector, then the mask branch on the kept detections
    photos = [inputs["image"][0].astype("uint8"), np.full((50, 90, 3), 128, np.uint8)]
    for result, photo in zip(predict_instances(model, photos), photos, strict=True):
        count = len(result["scores"])
        assert count <= 10 and result["masks"].shape == (count, *photo.shape[:2])
    path = str(tmp_path / "pyramid.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.mask_align, MultiScaleRoIAlign) and loaded.config["pyramid"] is True
    assert loaded.box_align.sampling_ratio == loaded.mask_align.sampling_ratio == 3
    expected, again = model(inputs["image"]), loaded(inputs["image"])
    assert tuple(expected["mask_logits"].shape) == (2, 10, 28, 28)
    for key in ("boxes", "scores", "class_ids", "valid", "mask_logits"):
        np.testing.assert_allclose(_np(again[key]), _np(expected[key]), atol=1e-4, err_msg=key)


def test_pyramid_detection_masks_match_the_full_call(pyramid_model):
    """The mask branch on kept detections only (detect + detection_mask_logits) gives the
    masks of call() for those detections, over the pyramid's levels."""
    model = pyramid_model
    images = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    full = {key: _np(value) for key, value in model(images).items()}
    found = model.detect(images)
    assert len(found["features"]) == 4  # P2-P5: what the mask head pools from
    keep = _np(found["valid"])
    image_indices, _ = np.nonzero(keep)
    logits = _np(model.detection_mask_logits(found["features"], _np(found["boxes"])[keep],
                                             image_indices.astype("int32"),
                                             _np(found["class_ids"])[keep]))
    np.testing.assert_allclose(logits, full["mask_logits"][keep], atol=1e-4)
    masks = predict_masks_in_boxes(model, [images[0]], [np.array([[4, 4, 30, 40.]])], [[2]])
    assert masks[0].shape == (1, 64, 64) and not masks[0][0, 45:].any()


def test_mixed_precision_gives_float32_mask_logits(mixed_float16):
    """(CI's SEGKERAS_PRECISION=mixed_float16 pass runs the train step above in mixed precision.)"""
    model = tiny_model()
    inputs, _ = tiny_batch()
    assert keras.backend.standardize_dtype(model.box_align.compute_dtype) == "float16"
    outputs = model(inputs["image"])
    assert keras.backend.standardize_dtype(outputs["mask_logits"].dtype) == "float32"
    assert np.isfinite(_np(outputs["mask_logits"])).all()
