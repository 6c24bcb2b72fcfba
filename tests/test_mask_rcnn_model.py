"""Mask R-CNN end to end: building, bad input, training, prediction without boxes, .keras files."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops
from tracing import eagerly

from segkeras import backbones
from segkeras.data import shapes
from segkeras.errors import SegkerasError
from segkeras.models.mask_rcnn import (
    MaskRCNN,
    mask_rcnn,
    mask_rcnn_dataset,
    predict_instances,
    predict_masks_in_boxes,
)
from segkeras.models.mask_rcnn.model import LOSS_NAMES

SMALL = dict(anchor_sizes=(16, 32), fpn_channels=16, box_head_units=32, mask_head_channels=16,
             rpn_pre_nms=100, rpn_post_nms_train=40, rpn_post_nms_test=20, rois_per_image=16,
             max_detections=10)


def small_model(seed=0, backbone="mobilenetv2"):
    keras.utils.set_random_seed(seed)
    return mask_rcnn(4, backbone, weights=None, input_shape=(64, 64, 3), seed=seed, **SMALL)


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.mark.fast
@pytest.mark.parametrize("bad", [
    dict(input_shape=(None, None, 3)), dict(input_shape=(60, 64, 3)), dict(num_classes=1),
    dict(foreground_fraction=0.0), dict(rois_per_images=8), dict(max_detections=0),
    dict(anchor_sizes=()), dict(backbone=keras.Model),
    dict(rois_per_image=64, rpn_post_nms_train=32), dict(batchnorm_momentum=1.0),
])
def test_builder_rejects_bad_arguments(bad):
    arguments = dict(num_classes=4, backbone="mobilenetv2", weights=None,
                     input_shape=(64, 64, 3)) | bad
    with pytest.raises(SegkerasError):
        mask_rcnn(**arguments)


@pytest.mark.fast
def test_training_losses_stay_finite_on_awkward_ground_truth(model):
    images = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    boxes = np.zeros((3, 3, 4), "float32")
    class_ids = np.zeros((3, 3), "int32")  # image 0: no objects at all
    boxes[1] = [[10, 10, 10, 30], [70, 70, 90, 90], [5, 5, 40, 40]]  # zero-area, outside, real
    class_ids[1] = [1, 2, 3]
    boxes[2, 0], class_ids[2, 0] = [-20, -20, 30, 30], 1  # partly outside: clipped
    inputs = {"image": images, "boxes": boxes, "class_ids": class_ids}
    targets = np.zeros((3, 3, 64, 64), bool)  # each object's mask at the input's size
    targets[1, 2, 5:40, 5:40] = targets[2, 0, :30, :30] = True
    outputs = model(inputs, training=True)
    total = model.compute_loss(inputs, targets, outputs)
    for name in LOSS_NAMES[:-1]:
        assert np.isfinite(float(ops.convert_to_numpy(outputs[name]))), name
    assert np.isfinite(float(ops.convert_to_numpy(total)))


@pytest.mark.fast
def test_predict_without_boxes_on_empty_and_odd_sized_images(model):
    images = [np.zeros((64, 64, 3), np.uint8), np.full((50, 90, 3), 128, np.uint8)]
    results = predict_instances(model, images)
    assert len(results) == 2
    for result, image in zip(results, images, strict=True):
        count = len(result["scores"])
        assert count <= 10
        assert result["boxes"].shape == (count, 4) and result["class_ids"].shape == (count,)
        assert result["masks"].shape == (count, *image.shape[:2])
        assert set(result["class_ids"].tolist()) <= {1, 2, 3}
        assert np.all(np.diff(result["scores"]) <= 0)
        assert (result["boxes"][:, 2:] <= [image.shape[1], image.shape[0]]).all()
    assert predict_instances(model, []) == []
    assert len(predict_instances(model, images, min_score=1.01)[1]["scores"]) == 0
    with pytest.raises(SegkerasError):
        predict_instances(keras.Sequential([keras.layers.Dense(1)]), images)
    with pytest.raises(SegkerasError):
        predict_instances(model, [np.zeros((64, 64, 2))])


@pytest.mark.fast
def test_masks_in_given_boxes(model):
    image = np.zeros((64, 64, 3), np.uint8)
    masks = predict_masks_in_boxes(model, [image, image], [np.array([[4, 4, 30, 40.]]),
                                                         np.zeros((0, 4))], [[2], []])
    assert masks[0].shape == (1, 64, 64) and masks[1].shape == (0, 64, 64)
    assert not masks[0][0, 45:].any() and not masks[0][0, :, 35:].any()  # nothing outside


def _batchnorm_layers(model):
    encoder = backbones.find_encoder(model.features)
    return [layer for layer in encoder.layers
            if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.fast
def test_from_scratch_batchnorm_momentum_and_precise_recalibration(model):
    """A from-scratch encoder's BatchNorm gets the builder's momentum (0.9, so the moving
    statistics used at inference keep up with the weights), and recalibrate_batchnorm sets the
    moving statistics to the average of the batch statistics, computed here independently."""
    batchnorm = _batchnorm_layers(model)
    assert batchnorm and all(layer.momentum == 0.9 for layer in batchnorm)
    encoder = backbones.find_encoder(model.features)
    probe = keras.Model(encoder.input, [layer.input for layer in batchnorm])
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32") for _ in range(3)]
    inputs = [[ops.convert_to_numpy(x).astype("float64") for x in probe(b, training=True)]
              for b in batches]
    assert model.recalibrate_batchnorm(iter(batches)) == 3
    assert all(layer.momentum == 0.9 for layer in batchnorm)  # restored
    for i, layer in enumerate(batchnorm):
        axes = tuple(range(inputs[0][i].ndim - 1))
        mean = np.mean([x[i].mean(axis=axes) for x in inputs], axis=0)
        variance = np.mean([x[i].var(axis=axes) for x in inputs], axis=0)
        np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_mean), mean,
                                   rtol=1e-3, atol=1e-4, err_msg=layer.name)
        np.testing.assert_allclose(ops.convert_to_numpy(layer.moving_variance), variance,
                                   rtol=1e-3, atol=1e-4, err_msg=layer.name)


@pytest.mark.fast
def test_dataset_warns_when_objects_are_truncated():
    data = shapes.generate(6, 64, seed=0, min_objects=3, max_objects=3)
    with pytest.warns(UserWarning, match="max_instances=2"):
        mask_rcnn_dataset(data, 64, max_instances=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask_rcnn_dataset(data, 64, max_instances=3)


def test_fit_lowers_the_losses_and_keras_round_trip(tmp_path):
    # VGG16: its 19 layers trace in a third of MobileNetV2's time (the heads are the point here)
    model = small_model(seed=1, backbone="vgg16")
    data = shapes.generate(8, 64, seed=3, max_objects=3)
    dataset = mask_rcnn_dataset(data, 64, batch_size=4, max_instances=3, augment=False,
                                shuffle=False)
    model.compile(keras.optimizers.Adam(2e-3))
    history = model.fit(dataset, epochs=15, verbose=0).history
    for name in LOSS_NAMES:
        assert np.isfinite(history[name]).all(), name
    # Not the box loss: in a run this short it rises, because as the RPN learns, more of the
    # sampled regions are foreground proposals with real offsets to regress (at first only the
    # ground-truth boxes themselves, with zero offsets, are).
    for name in ("rpn_objectness_loss", "class_loss", "mask_loss", "loss"):
        assert history[name][-1] < history[name][0], (name, history[name])
    # The RPN's box loss starts tiny (about 0.003: a few positive anchors among the 256 sampled)
    # and jumps once the objectness has been learnt (epoch 4 or 5), then comes down: measured
    # from that peak, since from epoch 0 the sampling noise is as large as the effect.
    rpn_box = history["rpn_box_loss"]
    assert rpn_box[-1] < 0.8 * max(rpn_box), rpn_box

    path = str(tmp_path / "mask_rcnn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects
    assert isinstance(loaded, MaskRCNN) and loaded.name == model.name
    images = data.images[:2].astype("float32")
    with eagerly():  # the round trip is the point here, not the traced predict
        expected, got = model.predict(images, verbose=0), loaded.predict(images, verbose=0)
    for key in ("boxes", "scores", "class_ids", "valid", "mask_logits"):
        np.testing.assert_allclose(got[key], expected[key], atol=1e-4, err_msg=key)
