"""One implementation of each instance piece (issue 26): both predictors share one input check,
the data pipeline's TensorFlow box IoU and RoIAlign agree with ``segkeras.boxes`` and
``segkeras.layers.RoIAlign``, ``mask_rcnn()`` names its valid options, the mask branch is public."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from segkeras.boxes import box_iou
from segkeras.data.images import check_images
from segkeras.data.instances import align_masks, paired_box_iou
from segkeras.errors import SegkerasError
from segkeras.layers import RoIAlign
from segkeras.models.mask_head import instance_segmenter, mask_branch, predict_masks_in_boxes
from segkeras.models.mask_rcnn import MaskRCNN, mask_rcnn, predict_instances
from segkeras.models.mask_rcnn.model import OPTIONS


@pytest.fixture(scope="module")
def detector(small_mask_rcnn):
    return small_mask_rcnn


@pytest.fixture(scope="module")
def segmenter():
    return instance_segmenter(4, "mobilenetv2", weights=None, input_shape=(64, 64, 3),
                              max_instances=2, head_channels=8)


GOOD = np.full((40, 50, 3), 100, np.uint8)
BAD_IMAGES = {
    "NaN pixels": (np.where(np.eye(40, 50, dtype=bool)[..., None], np.nan, 100.0), "NaN"),
    "floats in [0, 1]": (np.full((40, 50, 3), 0.5), "image * 255"),
    "16-bit pixels": (np.full((40, 50, 3), 40000, np.uint16), "16-bit pixels?"),
    "negative pixels": (np.full((40, 50, 3), -3.0), "must be in [0, 255]"),
    "a 0x0 image": (np.zeros((0, 0, 3), np.uint8), "0x0: it has no pixels"),
    "two channels": (np.zeros((40, 50, 2), np.uint8), "HxWx3"),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_check_images_names_the_image_and_the_fix(case):
    image, words = BAD_IMAGES[case]
    with pytest.raises(SegkerasError, match="Image 1") as error:
        check_images([GOOD, image])
    assert words in str(error.value)
    assert "\n" not in str(error.value)


def test_check_images_converts_gray_and_rgba_and_refuses_one_bare_image():
    gray, rgba = GOOD[..., 0], np.dstack([GOOD, np.zeros((40, 50), np.uint8)])
    for image in check_images([gray, rgba]):
        np.testing.assert_array_equal(image, GOOD)
    assert [image.shape for image in check_images(np.stack([GOOD, GOOD]))] == [GOOD.shape] * 2
    with pytest.raises(SegkerasError, match=r"pass \[image\]"):
        check_images(GOOD)


@pytest.mark.parametrize("case", ["NaN pixels", "16-bit pixels", "a 0x0 image"])
def test_both_predictors_refuse_the_same_pixels(case, detector, segmenter):
    image, words = BAD_IMAGES[case]
    box, ids = [np.zeros((0, 4)), np.array([[1, 1, 20, 20.]])], [np.zeros(0, int), np.array([1])]
    calls = {
        "predict_instances (MaskRCNN)": lambda: predict_instances(detector, [GOOD, image]),
        "predict_masks_in_boxes (MaskRCNN)":
            lambda: predict_masks_in_boxes(detector, [GOOD, image], box, ids),
        "predict_masks_in_boxes (instance_segmenter)":
            lambda: predict_masks_in_boxes(segmenter, [GOOD, image], box, ids),
    }
    for name, call in calls.items():
        with pytest.raises(SegkerasError, match="Image 1") as error:
            call()
        assert words in str(error.value), name


def test_masks_in_boxes_of_a_detector_are_its_mask_branch_pasted(detector):
    """predict_masks_in_boxes on a MaskRCNN: the detector's RoIAlign and mask branch on the
    boxes scaled to its input, each box's class channel, pasted at the image's size."""
    from segkeras.data.images import resize_image
    from segkeras.models.mask_head import paste_masks

    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    boxes, ids = np.array([[4, 4, 60, 40], [10, 0, 30, 20]], np.float32), np.array([2, 3])
    (masks,) = predict_masks_in_boxes(detector, [image], [boxes], [ids])
    scale = np.array([64 / 80, 64 / 48] * 2, np.float32)
    features = detector.features(resize_image(image, (64, 64))[None], training=False)
    pooled = detector.mask_align(features, boxes * scale, np.zeros(2, np.int32))
    logits = ops.convert_to_numpy(detector.mask_head(pooled, training=False))
    own = np.moveaxis(logits, -1, 1)[np.arange(2), ids]
    expected = paste_masks(1 / (1 + np.exp(-own)), boxes, 48, 80) >= 0.5
    np.testing.assert_array_equal(masks, expected)


def test_one_mask_branch_for_both_models(detector, segmenter):
    rois = keras.Input((14, 14, 8))
    names = [layer.name for layer in keras.Model(rois, mask_branch(rois, 4, 8)).layers[1:]]
    assert names == ["mask_conv1", "mask_conv2", "mask_conv3", "mask_conv4", "mask_deconv",
                     "mask_predictor"]
    assert [layer.name for layer in detector.mask_head.layers[1:]] == names
    assert set(names) <= {layer.name for layer in segmenter.layers}


# ---------------------------------------------------------------- the pipeline's fast paths


def random_boxes(rng, n, size=64):
    corner = rng.uniform(-10, size, (n, 2))
    return np.concatenate([corner, corner + rng.uniform(0, 40, (n, 2))], 1).astype("float32")


def test_paired_box_iou_is_the_diagonal_of_box_iou():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 200), random_boxes(rng, 200)
    b[:20] = a[:20]  # identical pairs: IoU 1
    a[20:30, 2:] = a[20:30, :2]  # empty boxes: IoU 0, not NaN
    b[20:30] = a[20:30]
    expected = np.diagonal(ops.convert_to_numpy(box_iou(a, b)))
    found = paired_box_iou(tf.constant(a), tf.constant(b)).numpy()
    np.testing.assert_allclose(found, expected, atol=1e-6)
    assert np.isfinite(found).all() and (found[:20] > 0.999).all() and (found[20:30] == 0).all()


def test_align_masks_is_roi_align_on_one_channel():
    """The pipeline's matrix RoIAlign equals the layer on soft masks, for boxes inside, across
    the border, tiny and empty."""
    rng = np.random.default_rng(1)
    masks = rng.uniform(0, 1, (12, 48, 56)).astype("float32")
    boxes = random_boxes(rng, 12, size=48)
    boxes[0] = [20, 20, 20.5, 20.3]  # tiny
    boxes[1] = [10, 10, 10, 30]  # no width
    boxes[2] = [-30, -30, 80, 80]  # around the whole mask
    layer = RoIAlign(28, sampling_ratio=2, spatial_scale=1.0, aligned=True)
    expected = ops.convert_to_numpy(layer(masks[..., None], boxes, np.arange(12, dtype="int32")))
    found = align_masks(tf.constant(masks), tf.constant(boxes)).numpy()
    np.testing.assert_allclose(found, expected[..., 0], atol=1e-5)


# ---------------------------------------------------------------- mask_rcnn options


def test_mask_rcnn_options_are_maskrcnn_keywords():
    parameters = list(inspect.signature(MaskRCNN.__init__).parameters)
    after_anchor_sizes = parameters[parameters.index("anchor_sizes") + 1:]
    assert tuple(name for name in after_anchor_sizes if name != "kwargs") == OPTIONS


@pytest.mark.parametrize("option, hint", [
    ("rois_per_images", "did you mean rois_per_image?"), ("max_detection", "did you mean "
     "max_detections?"), ("encoder", ""), ("name", ""), ("grid", ""), ("self", ""),
])
def test_mask_rcnn_names_the_valid_options(option, hint):
    with pytest.raises(SegkerasError) as error:
        mask_rcnn(4, "mobilenetv2", weights=None, input_shape=(64, 64, 3), **{option: 1})
    message = str(error.value)
    assert f"unknown option {option!r}" in message and hint in message
    assert "valid options: anchor_ratios, fpn_channels" in message and "\n" not in message
