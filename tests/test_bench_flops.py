"""bench/s6_flops.py: FLOP counts by hand on one convolution, per box on the mask head, and
against TensorFlow's own op statistics (the numbers behind BENCHMARKS.md section 6)."""

import os
import sys

import keras
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "bench"))
import s6_flops as flops  # noqa: E402

from segkeras.models.mask_head import instance_segmenter  # noqa: E402


def test_strided_convolution_counts_two_flops_per_multiply_add():
    inputs = keras.Input((9, 9, 4))
    conv = keras.layers.Conv2D(5, 3, strides=2, padding="same")
    keras.Model(inputs, conv(inputs))
    # 5x5 outputs x 5 filters x (3x3x4) multiply-adds x 2
    assert flops.layer_flops(conv) == 2 * 5 * 5 * 5 * 3 * 3 * 4


def _small_mask_head(boxes: int = 3, channels: int = 8):
    return instance_segmenter(4, "mobilenetv2", weights=None, input_shape=(64, 64, 3),
                              max_instances=boxes, head_channels=channels)


def test_mask_head_layers_count_once_per_box():
    model = _small_mask_head(boxes=3, channels=8)
    per_image = dict((layer.name, count) for layer, count in flops._per_image(model))
    # mask_conv2: 3 boxes x 14x14 outputs x 8 filters x (3x3x8) multiply-adds x 2
    assert per_image["mask_conv2"] == 3 * 2 * 14 * 14 * 8 * 3 * 3 * 8
    # the 2x2 stride-2 transposed convolution: 14x14 inputs x 8 channels x (2x2x8) per box
    assert per_image["mask_deconv"] == 3 * 2 * 14 * 14 * 8 * 2 * 2 * 8


def test_frozen_layers_count_once_and_trained_layers_three_times():
    model = _small_mask_head()
    head = sum(count for layer, count in flops._per_image(model) if layer.trainable_weights)
    frozen = sum(count for layer, count in flops._per_image(model) if not layer.trainable_weights)
    assert head > 0 and frozen > 0
    assert flops.training_flops_per_image(model) == pytest.approx(frozen + 3 * head)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow op statistics")
def test_forward_count_equals_tensorflow_op_statistics():
    model = _small_mask_head()
    assert flops.forward_flops_per_image(model) == pytest.approx(
        flops.tensorflow_forward_flops(model), rel=1e-9)
