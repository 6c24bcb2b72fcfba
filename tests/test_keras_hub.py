"""Ecosystem fit: a segkeras encoder exposes keras-hub's ``pyramid_outputs``, so keras-hub's heads
build on it (DeepLabV3+, random weights, a tiny input)."""

import keras
import numpy as np
import pytest

from segkeras import backbones, pretrain

keras_hub = pytest.importorskip("keras_hub")


def test_pyramid_outputs_are_the_encoders_levels_at_keras_hubs_strides():
    for encoder in (backbones.build_encoder("mobilenetv2", (64, 64, 3), weights=None),
                    pretrain.shapesnet_encoder((64, 64, 3), widths=(4, 4, 8, 8, 8))):
        pyramid = encoder.pyramid_outputs
        assert list(pyramid) == list(backbones.LEVELS)
        for level, tensor in pyramid.items():
            stride = 2 ** int(level[1:])  # keras-hub's P-level: log2 of the stride
            assert stride == backbones.STRIDES[level]
            assert tensor is encoder.output[level]
            assert tuple(tensor.shape[1:3]) == (64 // stride, 64 // stride)


def test_a_keras_hub_deeplabv3plus_builds_and_predicts_on_a_segkeras_encoder():
    encoder = backbones.build_encoder("mobilenetv2", (64, 64, 3), weights=None)
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder, spatial_pyramid_pooling_key="P5", upsampling_size=8,
        dilation_rates=[1, 2], low_level_feature_key="P2", projection_filters=8,
        image_shape=(64, 64, 3))
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=4)
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    logits = segmenter.predict(images, verbose=0)
    assert logits.shape == (2, 64, 64, 4) and np.isfinite(logits).all()
    # keras-hub reads the encoder's own feature maps: same weights, same P2 and P5
    pyramid = keras.Model(encoder.input, encoder.pyramid_outputs)
    ours = encoder(images)
    for level in ("P2", "P5"):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(pyramid(images)[level]),
                                   keras.ops.convert_to_numpy(ours[level]), atol=1e-5)
    assert all(any(w is v for v in backbone.weights) for w in encoder.weights)
