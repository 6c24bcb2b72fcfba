"""The lab 01 checks pass the solution, fail typical wrong answers with a useful hint, and say
"not answered yet" for the lab's stubs."""

import keras
import pytest

from segkeras.checks import fcn as checks
from segkeras.layers import BilinearUpsampling

layers = keras.layers
SKIPS = {"32s": (), "16s": ("P4",), "8s": ("P4", "P3")}
SWAPPED = {"32s": (), "16s": ("P4", "P3"), "8s": ("P4",)}


def stub(*args, **kwargs):
    raise NotImplementedError()


# --- convolutionize -------------------------------------------------------------------------


def convolutionize(dense, window=(1, 1), order="hwc", bias=True, activation=True, padding="valid"):
    kernel, dense_bias = dense.get_weights()
    height, width = window
    channels = kernel.shape[0] // (height * width)
    if order == "hwc":
        kernel = kernel.reshape(height, width, channels, dense.units)
    else:  # channels first: the wrong order for Flatten on channels-last maps
        kernel = kernel.reshape(channels, height, width, dense.units).transpose(1, 2, 0, 3)
    conv = layers.Conv2D(dense.units, window, use_bias=bias, padding=padding,
                         activation=dense.activation if activation else None)
    conv.build((None, None, None, channels))
    conv.set_weights([kernel, dense_bias] if bias else [kernel])
    return conv


@pytest.mark.fast
def test_convolutionize_accepts_the_solution():
    assert checks.convolutionize(convolutionize).points == 3


@pytest.mark.parametrize("wrong, words", [
    (lambda d, w=(1, 1): convolutionize(d, w, order="chw"), "Flatten"),
    (lambda d, w=(1, 1): convolutionize(d, w, bias=False), "bias"),
    (lambda d, w=(1, 1): convolutionize(d, w, activation=False), "activation"),
    (lambda d, w=(1, 1): convolutionize(d, w, padding="same"), "padding='valid'"),
    (lambda d, w=(1, 1): None, "return the Conv2D layer"),
])
def test_convolutionize_rejects_typical_mistakes(wrong, words):
    result = checks.convolutionize(wrong)
    assert not result and result.points == 0
    assert words in result.message


def test_a_stub_is_not_answered_yet(capsys):
    result = checks.convolutionize(stub)
    assert not result and "not answered yet" in result.message
    assert "✗ convolutionize: 0/3 points" in capsys.readouterr().out


# --- fuse_skip ------------------------------------------------------------------------------


def fuse_skip(scores, skip, level, upsample="transposed", kernel=4, score_init="zeros",
              score_kernel=1, merge="add"):
    num_classes = scores.shape[-1]
    if upsample == "transposed":
        upsampled = layers.Conv2DTranspose(
            num_classes, kernel, strides=2, padding="same", use_bias=False,
            kernel_initializer=BilinearUpsampling(), name=f"upscore_to_{level}")(scores)
    else:
        upsampled = layers.UpSampling2D(2, interpolation="bilinear")(scores)
    if merge == "none":  # the skip is forgotten
        return upsampled
    skip_scores = layers.Conv2D(num_classes, score_kernel, padding="same",
                                kernel_initializer=score_init, name=f"score_{level}")(skip)
    if merge == "scale":  # identity at initialisation, but not a sum
        return layers.Lambda(lambda t: t[0] * (1.0 + t[1]))([upsampled, skip_scores])
    return layers.Add(name=f"fuse_{level}")([upsampled, skip_scores])


@pytest.mark.fast
def test_fuse_skip_accepts_the_solution():
    assert checks.fuse_skip(fuse_skip).points == 3


@pytest.mark.parametrize("options, words", [
    ({"upsample": "fixed"}, "learned"),
    ({"kernel": 3}, "bilinear"),
    ({"score_init": "glorot_uniform"}, "zeros"),
    ({"merge": "none"}, "skip must contribute"),
    ({"score_kernel": 3, "score_init": "zeros"}, "1x1"),
    ({"merge": "scale"}, "addition"),
])
def test_fuse_skip_rejects_typical_mistakes(options, words):
    result = checks.fuse_skip(lambda s, k, level: fuse_skip(s, k, level, **options))
    assert not result and words in result.message


# --- fcn_head -------------------------------------------------------------------------------


def fcn_head(features, num_classes, variant, skips=None, stride=None):
    scores = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name="score_fr")(
        features["P5"])
    levels = SKIPS[variant] if skips is None else skips
    for level in levels:
        scores = fuse_skip(scores, features[level], level)
    stride = stride or 32 // 2 ** len(levels)
    return layers.UpSampling2D(stride, interpolation="bilinear")(scores)


@pytest.mark.fast
def test_fcn_head_accepts_the_solution():
    assert checks.fcn_head(fcn_head).points == 3


@pytest.mark.parametrize("wrong, words", [
    (lambda f, c, v: fcn_head(f, c, v, stride=32), "upsample them x16"),
    (lambda f, c, v: fcn_head(f, c, v, skips=SWAPPED[v]), "16s adds P4"),
    (lambda f, c, v: layers.Conv2DTranspose(c, 64, strides=32, padding="same")(f["P5"]),
     "must read P4"),
])
def test_fcn_head_rejects_typical_mistakes(wrong, words):
    result = checks.fcn_head(wrong)
    assert not result and words in result.message


def test_checks_accept_the_solution_under_mixed_precision():
    """On a GPU the notebook sets mixed_float16 first: float16 rounding must not fail right
    answers, and the check must leave the policy as it found it."""
    keras.config.set_dtype_policy("mixed_float16")
    try:
        assert checks.convolutionize(convolutionize) and checks.fuse_skip(fuse_skip)
        assert keras.config.dtype_policy().name == "mixed_float16"
    finally:
        keras.config.set_dtype_policy("float32")
