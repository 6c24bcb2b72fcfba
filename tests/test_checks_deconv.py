"""The lab 02 checks pass the solution, fail typical wrong answers with a useful hint, and say
"not answered yet" for the lab's stubs."""

import keras
import numpy as np
import pytest

from segkeras.checks import deconv as checks

layers = keras.layers


def stub(*args, **kwargs):
    raise NotImplementedError()


# --- transposed_output_size -----------------------------------------------------------------


def output_size(size, kernel, stride, padding):
    return size * stride if padding == "same" else (size - 1) * stride + kernel


@pytest.mark.fast
def test_output_size_accepts_the_solution():
    assert checks.transposed_output_size(output_size).points == 2


@pytest.mark.parametrize("wrong, words", [
    (lambda n, k, s, p: n * s + k - 1 if p == "valid" else n * s, "where does the last patch end"),
    (lambda n, k, s, p: (n - 1) * s + k, "'same' crops"),
    (lambda n, k, s, p: (n - k) // s + 1, "Keras gives"),  # a convolution's size, not its transpose
])
def test_output_size_rejects_typical_mistakes(wrong, words):
    result = checks.transposed_output_size(wrong)
    assert not result and words in result.message


def test_a_stub_is_not_answered_yet(capsys):
    result = checks.transposed_output_size(stub)
    assert not result and "not answered yet" in result.message
    assert "✗ transposed_output_size: 0/2 points" in capsys.readouterr().out


# --- overlap_counts -------------------------------------------------------------------------


def overlap_counts(size, kernel, stride):
    counts = np.zeros((size - 1) * stride + kernel, dtype=int)
    for i in range(size):
        counts[i * stride:i * stride + kernel] += 1
    return counts


@pytest.mark.fast
def test_overlap_counts_accepts_the_solution_and_shows_the_checkerboard():
    assert checks.overlap_counts(overlap_counts).points == 2
    assert overlap_counts(4, 3, 2).tolist() == [1, 1, 2, 1, 2, 1, 2, 1, 1]  # uneven: checkerboard
    assert overlap_counts(4, 4, 2)[2:-2].tolist() == [2] * 6  # even inside


@pytest.mark.parametrize("wrong, words", [
    (lambda n, k, s: np.ones(n * s), "one count per output pixel"),
    (lambda n, k, s: overlap_counts(n, k, s)[::-1] * 0 + k // s, "count the writers"),
])
def test_overlap_counts_rejects_typical_mistakes(wrong, words):
    result = checks.overlap_counts(wrong)
    assert not result and words in result.message


# --- bilinear_kernel ------------------------------------------------------------------------


def bilinear_kernel(size, channels, centre_shift=0.0, mix=False):
    factor = (size + 1) // 2
    centre = (size - 1) / 2 + centre_shift
    taps = 1 - np.abs(np.arange(size) - centre) / factor
    kernel = np.zeros((size, size, channels, channels), "float32")
    for c in range(channels):
        kernel[:, :, c, c] = np.outer(taps, taps)
    if mix:
        kernel[:, :, :, :] = np.outer(taps, taps)[:, :, None, None]
    return kernel


@pytest.mark.fast
def test_bilinear_kernel_accepts_the_solution():
    assert checks.bilinear_kernel(bilinear_kernel).points == 3


@pytest.mark.parametrize("wrong, words", [
    (lambda size, c: bilinear_kernel(size, c)[:, :, 0, 0], "must have shape (4, 4, 1, 1)"),
    (lambda size, c: bilinear_kernel(size, c, centre_shift=0.5 * (size % 2 == 0)), "ramp"),
    (lambda size, c: bilinear_kernel(size, c, mix=True), "channel c must only read channel c"),
    (lambda size, c: bilinear_kernel(size, c, centre_shift=0.5 * (size % 2 == 1)), "odd size"),
])
def test_bilinear_kernel_rejects_typical_mistakes(wrong, words):
    result = checks.bilinear_kernel(wrong)
    assert not result and words in result.message


# --- upsampling_block -----------------------------------------------------------------------


def upsampling_block(x, skip, filters, name, kernel=4, project=1, bn=True, relu=True, add=True):
    x = layers.Conv2DTranspose(filters, kernel, strides=2, padding="same", use_bias=False,
                               name=f"{name}_deconv")(x)
    if skip is not None and add:
        skip = layers.Conv2D(filters, project, padding="same", use_bias=False,
                             name=f"{name}_project")(skip)
        x = layers.Add(name=f"{name}_add")([x, skip])
    if bn:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


@pytest.mark.fast
def test_upsampling_block_accepts_the_solution():
    assert checks.upsampling_block(upsampling_block).points == 3


@pytest.mark.parametrize("options, words", [
    ({"kernel": 3}, "checkerboard"),
    ({"bn": False}, "BatchNormalization"),
    ({"relu": False}, "ReLU"),
    ({"add": False}, "the skip does not reach the output"),
    ({"project": 3}, "1x1"),
])
def test_upsampling_block_rejects_typical_mistakes(options, words):
    result = checks.upsampling_block(lambda x, s, f, n: upsampling_block(x, s, f, n, **options))
    assert not result and words in result.message


def test_upsampling_block_needs_the_right_shape():
    result = checks.upsampling_block(lambda x, s, f, n: layers.Conv2DTranspose(f, 4, 1, "same")(x))
    assert not result and "strides=2" in result.message


def test_checks_accept_the_solution_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        assert checks.bilinear_kernel(bilinear_kernel) and checks.upsampling_block(upsampling_block)
        assert keras.config.dtype_policy().name == "mixed_float16"
    finally:
        keras.config.set_dtype_policy("float32")
