"""Mask head: model wiring, masked loss, targets and jitter, pasting, mask AP, bad input."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from tracing import EAGER_IS_CHEAPER

from segkeras.data.core import Instances, SegmentationData
from segkeras.data.instances import (
    PADDING_TARGET,
    jitter_boxes,
    make_instance_dataset,
    mask_targets,
)
from segkeras.errors import SegkerasError
from segkeras.evaluate.instances import mask_ap
from segkeras.layers import RoIAlign
from segkeras.models.mask_head import (
    MaskedBinaryCrossentropy,
    instance_segmenter,
    paste_masks,
    predict_masks_in_boxes,
)

SIZE, ROWS, CLASSES = 64, 3, 4


def _rectangle(height, width, x1, y1, x2, y2):
    mask = np.zeros((height, width), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def _disc(height, width, cx, cy, radius):
    yy, xx = np.mgrid[:height, :width] + 0.5
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def _instances(masks, class_ids):
    masks = np.asarray(masks, bool).reshape(-1, *np.shape(masks)[-2:])
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        boxes[i] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return Instances(masks, boxes, np.asarray(class_ids, np.int32))


def tiny_data(n=4, size=SIZE):
    """Rectangles (class 1), discs (class 2) and squares (class 3) on noise; image 1 is empty."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, size, size, 3)).astype(np.uint8)
    instances = []
    for i in range(n):
        masks, ids = [], []
        if i != 1:
            masks += [_rectangle(size, size, 4 + i, 6, 30 + i, 20),
                      _disc(size, size, 40 - i, 42, 12)]
            ids += [1, 2]
        if i == 2:
            masks.append(_rectangle(size, size, 8, 30, 24, 46))
            ids.append(3)
        objects = _instances(np.array(masks, bool).reshape(-1, size, size), ids)
        for mask, class_id in zip(objects.masks, objects.class_ids, strict=True):
            images[i][mask] = 60 * class_id
        instances.append(objects)
    semantic = np.zeros((n, size, size), np.uint8)
    names = ["background", "rectangle", "disc", "square"]
    return SegmentationData(images, semantic, names, instances)


def small_model(**kwargs):
    options = dict(weights=None, input_shape=(SIZE, SIZE, 3), max_instances=ROWS,
                   head_channels=8)
    return instance_segmenter(CLASSES, "mobilenetv2", **{**options, **kwargs})


def numpy_iou(a, b):
    overlap = np.maximum(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0)
    inter = overlap.prod(1)
    return inter / ((a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter)


# ---------------------------------------------------------------- model


@pytest.mark.fast
def test_model_is_named_takes_padded_boxes_and_selects_the_class_channel():
    model = small_model(feature_level="P3")
    assert model.name == "mask_head_mobilenetv2"
    assert model.get_layer("mobilenetv2_encoder").name == "mobilenetv2_encoder"
    assert model.get_layer("roi_align").spatial_scale == 1 / 8
    assert small_model().get_layer("roi_align").spatial_scale == 1 / 16
    inputs, _ = next(iter(make_instance_dataset(tiny_data(), SIZE, 4, ROWS, shuffle=False)))
    inputs = {key: value.numpy() for key, value in inputs.items()}
    logits = ops.convert_to_numpy(model(inputs))
    assert logits.shape == (4, ROWS, 28, 28) and str(model.output.dtype) == "float32"
    per_class = keras.Model(model.inputs, model.get_layer("mask_predictor").output)
    all_channels = ops.convert_to_numpy(per_class(inputs)).reshape(4, ROWS, 28, 28, CLASSES)
    for b in range(4):
        for n in range(ROWS):
            expected = all_channels[b, n, ..., inputs["class_ids"][b, n]]
            np.testing.assert_allclose(logits[b, n], expected, rtol=1e-5, atol=1e-6)
    # each image's boxes read that image's features: a batch equals its images one at a time
    for b in (0, 3):
        alone = ops.convert_to_numpy(model({key: value[b : b + 1] for key, value in
                                            inputs.items()}))
        np.testing.assert_allclose(alone[0], logits[b], rtol=1e-4, atol=1e-5)


@pytest.mark.fast
def test_bad_builder_arguments_are_rejected():
    with pytest.raises(SegkerasError, match="feature_level"):
        small_model(feature_level="P5")
    with pytest.raises(SegkerasError, match="num_classes"):
        instance_segmenter(1, weights=None)
    with pytest.raises(SegkerasError, match="max_instances"):
        small_model(max_instances=0)


# ---------------------------------------------------------------- loss


@pytest.mark.fast
def test_masked_loss_is_the_mean_bce_over_real_boxes_only():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 28, 28)).astype("float32")
    targets = (rng.random((2, 3, 28, 28)) > 0.5).astype("float32")
    targets[0, 2] = targets[1, 1:] = PADDING_TARGET
    loss = MaskedBinaryCrossentropy()
    value = float(ops.convert_to_numpy(loss(targets, logits)))
    bce = np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))
    assert value == pytest.approx(bce[targets >= 0].mean(), rel=1e-5)
    changed = logits.copy()
    changed[targets < 0] = 1e4  # padding rows may hold anything
    assert float(ops.convert_to_numpy(loss(targets, changed))) == pytest.approx(value, rel=1e-5)
    nothing = float(ops.convert_to_numpy(loss(np.full_like(targets, PADDING_TARGET), logits)))
    assert nothing == 0.0


@pytest.mark.fast
def test_fit_step_trains_and_keras_file_round_trips(tmp_path):
    model = small_model(encoder_trainable=True)
    encoder = model.get_layer("mobilenetv2_encoder")
    batchnorm = [layer for layer in encoder.layers
                 if isinstance(layer, keras.layers.BatchNormalization)]
    # random weights: no ImageNet statistics to keep frozen; moving statistics that keep up
    assert all(layer.trainable and layer.momentum <= 0.99 for layer in batchnorm[:10])
    # eagerly on TensorFlow: tracing costs more than the epoch's steps (tests/tracing.py)
    model.compile(keras.optimizers.Adam(1e-3), loss=MaskedBinaryCrossentropy(),
                  run_eagerly=EAGER_IS_CHEAPER)
    dataset = make_instance_dataset(tiny_data(), SIZE, 2, ROWS, jitter=0.1, augment=True)
    before = ops.convert_to_numpy(model.get_layer("mask_conv1").kernel).copy()
    moving_mean = ops.convert_to_numpy(batchnorm[0].moving_mean).copy()
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert not np.allclose(ops.convert_to_numpy(model.get_layer("mask_conv1").kernel), before)
    # the encoder ran in training mode although the layers past its P-level are frozen: its
    # BatchNorm learnt batch statistics (in inference mode they stay at the initial 0, 1)
    assert not np.allclose(ops.convert_to_numpy(batchnorm[0].moving_mean), moving_mean)

    path = os.path.join(tmp_path, "mask_head.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    inputs, _ = next(iter(make_instance_dataset(tiny_data(), SIZE, 4, ROWS, shuffle=False)))
    inputs = {key: value.numpy() for key, value in inputs.items()}
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(inputs)),
                               ops.convert_to_numpy(model(inputs)), rtol=1e-5, atol=1e-5)
    assert isinstance(loaded.loss, MaskedBinaryCrossentropy)


# ---------------------------------------------------------------- targets and jitter


def test_mask_targets_are_roi_aligned_masks_thresholded():
    data = tiny_data()
    objects = data.instances[2]
    boxes = objects.boxes + np.array([[-3, 2, 4, -1]], np.float32)  # off the tight boxes
    targets = mask_targets(tf.constant(objects.masks), tf.constant(boxes)).numpy()
    features = objects.masks[..., None].astype("float32")
    layer = RoIAlign(28, sampling_ratio=2, spatial_scale=1.0)
    pooled = ops.convert_to_numpy(layer(features, boxes, np.arange(len(boxes), dtype="int32")))
    np.testing.assert_array_equal(targets, (pooled[..., 0] >= 0.5).astype("float32"))
    tight = mask_targets(tf.constant(objects.masks[:1]), tf.constant(objects.boxes[:1])).numpy()
    assert tight.min() == 1.0  # a rectangle over its own box fills the target


def test_jitter_keeps_iou_of_at_least_one_half_inside_the_image():
    rng = np.random.default_rng(2)
    corner = rng.uniform(0, 100, (500, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(1, 60, (500, 2))], 1).astype("float32")
    boxes = np.minimum(boxes, 128)
    jittered = jitter_boxes(tf.constant(boxes), 0.4, tf.constant([3, 4]), 128, 128).numpy()
    iou = numpy_iou(jittered, boxes)
    assert iou.min() >= 0.5
    assert (iou < 0.95).mean() > 0.3  # it does move boxes
    assert jittered.min() >= 0 and jittered.max() <= 128


def test_dataset_pads_clips_and_skips_bad_boxes():
    data = tiny_data()
    objects = data.instances[3]
    outside = _rectangle(SIZE, SIZE, 0, 0, 4, 4)
    data.instances[3] = Instances(
        np.concatenate([objects.masks, outside[None], outside[None]]),
        np.concatenate([objects.boxes, [[-10, -20, 4, 4], [70, 70, 90, 90]]]).astype("float32"),
        np.array([1, 2, 3, 1], np.int32))
    data.instances[0] = Instances(  # more objects than rows: the first ROWS are kept
        np.repeat(data.instances[0].masks, 2, axis=0), np.repeat(data.instances[0].boxes, 2, 0),
        np.array([1, 2, 1, 2], np.int32))
    inputs, targets = next(iter(make_instance_dataset(data, SIZE, 4, ROWS, jitter=0.0,
                                                      shuffle=False)))
    class_ids, boxes = inputs["class_ids"].numpy(), inputs["boxes"].numpy()
    targets = targets.numpy()
    assert inputs["image"].shape == (4, SIZE, SIZE, 3) and inputs["image"].dtype == tf.float32
    assert targets.shape == (4, ROWS, 28, 28)
    np.testing.assert_array_equal(class_ids, [[1, 2, 1], [0, 0, 0], [1, 2, 3], [1, 2, 3]])
    np.testing.assert_array_equal(boxes[3, 2], [0, 0, 4, 4])  # clipped; the one outside skipped
    assert (targets[1] == PADDING_TARGET).all() and (boxes[1] == 0).all()  # no instances
    assert set(np.unique(targets[class_ids > 0])) == {0.0, 1.0}


def test_dataset_resizes_and_mirrors_consistently():
    data = tiny_data(n=3, size=48)  # resized to 64: masks nearest, boxes scaled
    plain = next(iter(make_instance_dataset(data, SIZE, 3, ROWS, jitter=0, shuffle=False)))
    assert plain[0]["image"].shape == (3, SIZE, SIZE, 3)
    np.testing.assert_allclose(plain[0]["boxes"].numpy()[0, 0], data.instances[0].boxes[0] * 4 / 3)
    mirrored_seen = False
    for seed in range(4):
        batch = next(iter(make_instance_dataset(data, SIZE, 3, ROWS, jitter=0, augment=True,
                                                shuffle=False, seed=seed)))
        for i in range(3):
            image, targets = batch[0]["image"].numpy()[i], batch[1].numpy()[i]
            if np.array_equal(image, plain[0]["image"].numpy()[i]):
                np.testing.assert_array_equal(targets, plain[1].numpy()[i])
            else:
                np.testing.assert_array_equal(image, plain[0]["image"].numpy()[i][:, ::-1])
                valid = batch[0]["class_ids"].numpy()[i] > 0
                np.testing.assert_array_equal(targets[valid],
                                              plain[1].numpy()[i][valid][:, :, ::-1])
                mirrored_seen = mirrored_seen or valid.any()
    assert mirrored_seen


def test_dataset_bad_input_raises_clear_errors():
    data = tiny_data()
    with pytest.raises(SegkerasError, match="multiple of"):
        make_instance_dataset(data, 50)
    data.instances[2] = Instances(data.instances[2].masks, data.instances[2].boxes,
                                  np.array([1, 2, 7], np.int32))
    with pytest.raises(SegkerasError, match="class id 7"):
        make_instance_dataset(data, SIZE)
    with pytest.raises(SegkerasError, match="no instances"):
        make_instance_dataset(SegmentationData(data.images, data.masks, data.class_names), SIZE)


# ---------------------------------------------------------------- prediction


@pytest.mark.fast
def test_paste_masks_stretches_the_mask_over_its_box():
    full = np.ones((1, 28, 28), np.float32)
    box = np.array([[10, 20, 40, 50]], np.float32)
    np.testing.assert_array_equal(paste_masks(full, box, 64, 64)[0] >= 0.5,
                                  _rectangle(64, 64, 10, 20, 40, 50))
    left = np.zeros((1, 28, 28), np.float32)
    left[:, :, :14] = 1.0
    np.testing.assert_array_equal(paste_masks(left, box, 64, 64)[0] >= 0.5,
                                  _rectangle(64, 64, 10, 20, 25, 50))


@pytest.mark.fast
def test_predict_masks_in_boxes_full_resolution_and_bad_input():
    model = small_model()
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (80, 96, 3)).astype(np.uint8),
              rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)]
    boxes = [np.array([[5, 5, 40, 30], [-20, 50, 30, 120], [30, 30, 30, 60], [1, 2, 50, 60],
                       [200, 200, 220, 230]], np.float32), np.zeros((0, 4), np.float32)]
    class_ids = [np.array([1, 2, 3, 1, 2]), np.zeros(0, np.int32)]
    masks, scores = predict_masks_in_boxes(model, images, boxes, class_ids, return_scores=True)
    assert masks[0].shape == (5, 80, 96) and masks[0].dtype == bool
    assert masks[1].shape == (0, 64, 64) and scores[1].shape == (0,)
    assert not masks[0][2].any() and not masks[0][4].any()  # zero-area and outside: empty
    assert not masks[0][1][:50].any() and not masks[0][1][:, 30:].any()  # within the clipped box
    assert np.isfinite(scores[0]).all() and ((scores[0] == 0) | (scores[0] >= 0.5)).all()
    with pytest.raises(SegkerasError, match="class id 4"):
        predict_masks_in_boxes(model, images[:1], boxes[:1], [np.array([1, 2, 4, 1, 1])])
    with pytest.raises(SegkerasError, match="one box array"):
        predict_masks_in_boxes(model, images, boxes[:1], class_ids)
    with pytest.raises(SegkerasError, match="NaN"):
        predict_masks_in_boxes(model, images[:1], [np.full((1, 4), np.nan)], [np.array([1])])


# ---------------------------------------------------------------- mask AP


def test_mask_ap_matches_the_coco_definition_on_a_small_case():
    truth = [_instances([_rectangle(64, 64, 0, 0, 20, 20), _rectangle(64, 64, 30, 30, 50, 50)],
                        [1, 1])]
    shifted = _rectangle(64, 64, 34, 30, 54, 50)  # IoU 16 / 24 = 0.667 with the second object
    predicted = np.stack([truth[0].masks[0], shifted])
    # COCO: 101 recall points; at IoU thresholds <= 0.65 both match (AP 1), above only the first
    # (recall 0.5: precision 1 on 51 points if it is ranked first, 1/2 if second)
    thresholds = np.linspace(0.5, 0.95, 10)
    for scores, low in (([0.9, 0.3], 51 / 101), ([0.3, 0.9], 0.5 * 51 / 101)):
        result = mask_ap(truth, [predicted], [np.array(scores)])
        expected = np.where(thresholds <= 16 / 24, 1.0, low)
        assert result["AP"] == pytest.approx(expected.mean(), abs=1e-6)
        assert result["AP50"] == pytest.approx(1.0) and result["AP75"] == pytest.approx(low)
    wrong_class = Instances(predicted, truth[0].boxes, np.array([2, 2], np.int32))
    assert mask_ap(truth, [wrong_class])["AP"] == 0.0
    assert mask_ap(truth, [truth[0]]) == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0}


def test_mask_ap_bad_input():
    truth = tiny_data().instances
    with pytest.raises(SegkerasError, match="one per image"):
        mask_ap(truth, [objects.masks for objects in truth[:2]])
    with pytest.raises(SegkerasError, match="do not match"):
        mask_ap(truth, [objects.masks[:, :32] for objects in truth])
    empty = [Instances(np.zeros((0, 8, 8), bool), np.zeros((0, 4)), np.zeros(0, int))]
    with pytest.raises(SegkerasError, match="no objects"):
        mask_ap(empty, [np.zeros((0, 8, 8), bool)])
