"""bench/flops.py counts and segkeras.calibration, against FLOPs counted by hand from the layer
definitions (2 FLOPs per multiply-add). No timing asserts."""

import math
import os
import sys

import keras
import pytest

from segkeras.calibration import matmul_flops, matmul_gflops
from segkeras.errors import SegkerasError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "bench"))
from flops import forward_flops_per_image, training_flops_per_image  # noqa: E402

# 8x8x3 input; conv 3x3 'same' -> 4 channels: 64 positions x 4 filters x 27 taps x 2.
CONV = 2 * 8 * 8 * 4 * 3 * 3 * 3
# depthwise 3x3 on 8x8x4: 64 positions x 4 channels x 9 taps x 2.
DEPTHWISE = 2 * 8 * 8 * 4 * 9
# transposed 2x2 stride 2, 4 -> 5 channels: every input pixel x in-channel hits 4 taps x 5 outputs.
TRANSPOSED = 2 * 8 * 8 * 4 * 4 * 5
# dense 5 -> 6 at each of 16x16 positions.
DENSE = 2 * 16 * 16 * 5 * 6


def _encoder_decoder(encoder_trainable: bool) -> keras.Model:
    image = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(image)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    encoder = keras.Model(image, x, name="toy_encoder")
    encoder.trainable = encoder_trainable
    inputs = keras.Input((8, 8, 3))
    y = keras.layers.Conv2DTranspose(5, 2, strides=2)(encoder(inputs))
    y = keras.layers.BatchNormalization()(y)  # cheap: not counted
    return keras.Model(inputs, keras.layers.Dense(6)(y))


@pytest.mark.fast
def test_forward_flops_count_every_layer_kind():
    model = _encoder_decoder(encoder_trainable=True)
    assert forward_flops_per_image(model) == CONV + DEPTHWISE + TRANSPOSED + DENSE


@pytest.mark.fast
def test_trained_layers_cost_three_forward_passes():
    model = _encoder_decoder(encoder_trainable=True)
    assert training_flops_per_image(model) == 3 * (CONV + DEPTHWISE + TRANSPOSED + DENSE)


@pytest.mark.fast
def test_frozen_encoder_costs_its_forward_pass_only():
    model = _encoder_decoder(encoder_trainable=False)
    assert training_flops_per_image(model) == CONV + DEPTHWISE + 3 * (TRANSPOSED + DENSE)
    assert forward_flops_per_image(model) == CONV + DEPTHWISE + TRANSPOSED + DENSE


@pytest.mark.fast
def test_matmul_flops_is_one_multiply_and_one_add_per_term():
    size = 7
    terms = sum(1 for _ in range(size) for _ in range(size) for _ in range(size))
    assert matmul_flops(size) == 2 * terms


@pytest.mark.fast
def test_calibration_reports_the_rate_of_its_fastest_product():
    calibration = matmul_gflops(size=128, repeats=2)
    assert calibration.size == 128 and calibration.seconds > 0
    assert math.isclose(calibration.gflops * 1e9 * calibration.seconds, 2 * 128**3, rel_tol=1e-9)
    assert "GFLOP/s" in str(calibration) and "load average" in str(calibration)


@pytest.mark.fast
@pytest.mark.parametrize("kwargs", [{"size": 0}, {"repeats": 0}, {"size": 2.5}])
def test_calibration_refuses_bad_arguments(kwargs):
    with pytest.raises(SegkerasError, match="matmul_gflops needs"):
        matmul_gflops(**kwargs)
