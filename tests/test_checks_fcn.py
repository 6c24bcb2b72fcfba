"""The lab 01 checks pass the solution, fail typical wrong answers with a hint naming the idea,
refuse answers that call segkeras' own implementation, and say "not answered yet" for stubs."""

import types

import keras
import pytest
from keras import layers

from segkeras.checks import fcn as checks
from segkeras.layers import BilinearUpsampling
from segkeras.models.fcn import convolutionize as library_convolutionize
from segkeras.models.fcn import fcn_head as library_fcn_head
from segkeras.models.fcn import fuse_skip as library_fuse_skip

SKIPS = {"32s": (), "16s": ("P4",), "8s": ("P4", "P3")}
SWAPPED = {"32s": (), "16s": ("P4", "P3"), "8s": ("P4",)}
STRIDES = {"P3": 8, "P4": 16, "P5": 32}


def stub(*args, **kwargs):
    raise NotImplementedError()


@pytest.fixture(autouse=True)
def _lab():
    checks.start()


def _fails(result, words):
    assert not result and result.points == 0
    assert words in result.message, result.message


# --- convolutionize -------------------------------------------------------------------------


def convolutionize(dense, window=(1, 1), order="hwc", bias=True, activation=True, padding="valid",
                   strides=(1, 1)):
    kernel, dense_bias = dense.get_weights()
    height, width = window
    channels = kernel.shape[0] // (height * width)
    if order == "hwc":
        kernel = kernel.reshape(height, width, channels, dense.units)
    elif order == "whc":  # rows and columns swapped
        kernel = kernel.reshape(width, height, channels, dense.units).transpose(1, 0, 2, 3)
    else:  # channels first: the wrong order for Flatten on channels-last maps
        kernel = kernel.reshape(channels, height, width, dense.units).transpose(1, 2, 0, 3)
    conv = layers.Conv2D(dense.units, window, strides=strides, use_bias=bias, padding=padding,
                         activation=dense.activation if activation else None)
    conv.build((None, None, None, channels))
    conv.set_weights([kernel, dense_bias] if bias else [kernel])
    return conv


def flatten_then_dense(dense, window=(1, 1)):
    """The classifier as it was: right on its window, but it cannot slide over a larger map."""
    return keras.Sequential([layers.Flatten(), dense, layers.Reshape((1, 1, dense.units))])


@pytest.mark.fast
def test_convolutionize_accepts_the_solution():
    assert checks.convolutionize(convolutionize).points == 2


@pytest.mark.parametrize("wrong, words", [
    (lambda d, w=(1, 1): convolutionize(d, w, order="chw"), "Flatten"),
    (lambda d, w=(1, 1): convolutionize(d, w, order="whc"), "(row, column, channel)"),
    (lambda d, w=(1, 1): convolutionize(d, w, bias=False), "bias"),
    (lambda d, w=(1, 1): convolutionize(d, w, activation=False), "activation"),
    (lambda d, w=(1, 1): convolutionize(d, w, padding="same"), "padding='valid'"),
    (lambda d, w=(1, 1): convolutionize(d, w, strides=w), "stride 1"),
    (flatten_then_dense, "slides over a larger map"),
    (lambda d, w=(1, 1): None, "return the Conv2D layer"),
    (library_convolutionize, "write it yourself"),
], ids=["channels_first", "rows_columns_swapped", "no_bias", "no_activation", "padding_same",
        "strided", "flatten_dense_one_size", "nothing", "library"])
def test_convolutionize_rejects_typical_mistakes(wrong, words):
    _fails(checks.convolutionize(wrong), words)


def test_a_stub_is_not_answered_yet(capsys):
    result = checks.convolutionize(stub)
    assert not result and "not answered yet" in result.message
    assert "✗ convolutionize: 0/2 points" in capsys.readouterr().out


# --- fuse_skip ------------------------------------------------------------------------------


def fuse_skip(scores, skip, level, upsample="transposed", kernel=4, score_init="zeros",
              score_kernel=1, merge="add", activation=None, named=True):
    num_classes = scores.shape[-1]
    names = {"upscore": f"upscore_to_{level}", "score": f"score_{level}", "fuse": f"fuse_{level}"}
    if not named:
        names = dict.fromkeys(names)
    if upsample == "transposed":
        upsampled = layers.Conv2DTranspose(
            num_classes, kernel, strides=2, padding="same", use_bias=False,
            kernel_initializer=BilinearUpsampling(), name=names["upscore"])(scores)
    else:
        upsampled = layers.UpSampling2D(2, interpolation=upsample)(scores)
    if merge == "none":  # the skip is forgotten
        return upsampled
    skip_scores = layers.Conv2D(num_classes, score_kernel, padding="same", activation=activation,
                                kernel_initializer=score_init, name=names["score"])(skip)
    if merge == "scale":  # identity at initialisation, but not a sum
        return layers.Lambda(lambda t: t[0] * (1.0 + t[1]))([upsampled, skip_scores])
    return layers.Add(name=names["fuse"])([upsampled, skip_scores])


@pytest.mark.fast
def test_fuse_skip_accepts_the_solution():
    assert checks.fuse_skip(fuse_skip).points == 3


@pytest.mark.parametrize("options, words", [
    ({"upsample": "bilinear"}, "learned"),
    ({"upsample": "nearest"}, "learned"),
    ({"kernel": 3}, "bilinear"),
    ({"score_init": "glorot_uniform"}, "zeros"),
    ({"merge": "none"}, "skip must contribute"),
    ({"score_kernel": 3}, "1x1"),
    ({"merge": "scale"}, "addition"),
    ({"activation": "relu"}, "no activation"),
    ({"named": False}, "name the layers after level"),
])
def test_fuse_skip_rejects_typical_mistakes(options, words):
    _fails(checks.fuse_skip(lambda s, k, level: fuse_skip(s, k, level, **options)), words)


def test_fuse_skip_refuses_the_library():
    _fails(checks.fuse_skip(library_fuse_skip), "write it yourself")
    _fails(checks.fuse_skip(lambda s, k, level: library_fcn_head({"P5": s}, 3, "32s")),
           "write it yourself")


# --- fcn_head -------------------------------------------------------------------------------


def fcn_head(features, num_classes, variant, fuse=fuse_skip, skips=None, stride=None,
             final="bilinear", score_init="zeros", score_name="score_fr"):
    scores = layers.Conv2D(num_classes, 1, kernel_initializer=score_init, name=score_name)(
        features["P5"])
    levels = SKIPS[variant] if skips is None else skips
    for level in levels:
        scores = fuse(scores, features[level], level)
    stride = stride or 32 // 2 ** len(levels)
    if final == "learned":
        return layers.Conv2DTranspose(num_classes, 2 * stride, strides=stride, padding="same")(
            scores)
    return layers.UpSampling2D(stride, interpolation=final)(scores)


def each_level_straight_to_the_image(features, num_classes, variant, fuse=None):
    """Score every level, upsample each to the image with nearest neighbour, sum (not FCN)."""
    maps = [layers.UpSampling2D(STRIDES[level])(layers.Conv2D(num_classes, 1)(features[level]))
            for level in ("P5", *SKIPS[variant])]
    return maps[0] if len(maps) == 1 else layers.Add()(maps)


def bilinear_resize_fusion(scores, skip, level):
    """A fusion whose x2 upsampling is a fixed bilinear resize instead of a learned one."""
    upsampled = layers.UpSampling2D(2, interpolation="bilinear")(scores)
    skip_scores = layers.Conv2D(scores.shape[-1], 1, kernel_initializer="zeros",
                                name=f"score_{level}")(skip)
    return layers.Add()([upsampled, skip_scores])


def skipping_p4(features, num_classes, variant, fuse=None):
    """FCN-8s that jumps from stride 32 to 16 with a fixed resize, fusing P3 only."""
    if variant != "8s":
        return fcn_head(features, num_classes, variant, fuse)
    scores = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name="score_fr")(
        features["P5"])
    scores = layers.UpSampling2D(2, interpolation="bilinear")(scores)
    return layers.UpSampling2D(8, interpolation="bilinear")(fuse(scores, features["P3"], "P3"))


@pytest.mark.fast
def test_fcn_head_accepts_the_solution():
    assert checks.fcn_head(fcn_head).points == 4


@pytest.mark.parametrize("wrong, words", [
    (each_level_straight_to_the_image, "cascade"),
    (lambda f, c, v, fuse=None: fcn_head(f, c, v, fuse=bilinear_resize_fusion), "learned"),
    (skipping_p4, "8s adds P4 then P3"),
    (lambda f, c, v, fuse=None: fcn_head(f, c, v, fuse=fuse, skips=SWAPPED[v]),
     "8s adds P4 then P3"),
    (lambda f, c, v, fuse=None: fcn_head(f, c, v, fuse=fuse, stride=32), "upsample them x8"),
    (lambda f, c, v, fuse=None: fcn_head(f, c, v, fuse=fuse, final="nearest"), "bilinear"),
    (lambda f, c, v, fuse=None: fcn_head(f, c, v, fuse=fuse, final="learned"), "bilinear"),
    (lambda f, c, v, fuse=None: fcn_head(f, c, v, fuse=fuse, score_init="glorot_uniform"),
     "zeros"),
    (lambda f, c, v, fuse=None: fcn_head(f, c, v, fuse=fuse, score_name=None), "score_fr"),
    (lambda f, c, v, fuse=None: fcn_head(f, c, v), "the `fuse` argument"),
    (lambda f, c, v, fuse=None: layers.Conv2DTranspose(c, 64, strides=32, padding="same")(
        f["P5"]), "must read P3"),
    (library_fcn_head, "write it yourself"),
], ids=["each_level_straight_nearest_sum", "bilinear_resize_not_learned", "skips_a_level",
        "swapped_levels", "wrong_final_stride", "final_nearest", "final_learned",
        "score_fr_random", "score_fr_unnamed", "ignores_fuse", "p5_only", "library"])
def test_fcn_head_rejects_typical_mistakes(wrong, words):
    _fails(checks.fcn_head(wrong), words)


def test_fcn_head_is_graded_apart_from_fuse_skip():
    """The head check gives the head a correct fusion: a wrong fuse_skip costs only its points."""
    broken = lambda s, k, level: fuse_skip(s, k, level, upsample="nearest")  # noqa: E731
    assert not checks.fuse_skip(broken)
    assert checks.fcn_head(lambda f, c, v, fuse=broken: fcn_head(f, c, v, fuse=fuse))


def test_use_falls_back_to_the_library_until_the_check_passes(capsys):
    assert checks.use("fcn_head", stub) is library_fcn_head
    assert "not answered" in capsys.readouterr().out
    assert checks.use("fuse_skip", fuse_skip) is fuse_skip
    assert checks.total() == (3, 9)


def test_checks_accept_the_solution_under_mixed_precision():
    """On a GPU the notebook sets mixed_float16 first: float16 rounding must not fail right
    answers, and the check must leave the policy as it found it."""
    keras.config.set_dtype_policy("mixed_float16")
    try:
        assert checks.convolutionize(convolutionize) and checks.fuse_skip(fuse_skip)
        assert keras.config.dtype_policy().name == "mixed_float16"
    finally:
        keras.config.set_dtype_policy("float32")


# --- holes of issue 21 ----------------------------------------------------------------------


def bilinear_beside_a_dead_transposed_convolution(scores, skip, level, factor=0.0):
    """A fixed bilinear resize does the work; a trainable stride-2 Conv2DTranspose sits beside
    it, multiplied by ``factor`` (0: dead; small, from zeros: nearly dead but bilinear at first)."""
    num_classes = scores.shape[-1]
    fixed = layers.UpSampling2D(2, interpolation="bilinear")(scores)
    learned = layers.Conv2DTranspose(num_classes, 4, strides=2, padding="same", use_bias=False,
                                     kernel_initializer="zeros" if factor else BilinearUpsampling(),
                                     name=f"upscore_to_{level}")(scores)
    upsampled = layers.Add()([fixed, layers.Rescaling(factor)(learned)])
    skip_scores = layers.Conv2D(num_classes, 1, kernel_initializer="zeros",
                                name=f"score_{level}")(skip)
    return layers.Add(name=f"fuse_{level}")([upsampled, skip_scores])


@pytest.mark.parametrize("factor", [0.0, 1e-3])
def test_fuse_skip_x2_path_must_respond_to_its_weights(factor):
    _fails(checks.fuse_skip(lambda s, k, level: bilinear_beside_a_dead_transposed_convolution(
        s, k, level, factor)), "the transposed convolution itself")


_CONVOLUTIONIZE_CODE = library_convolutionize.__code__  # kept before any check swaps it


def convolutionize_from_kept_code(dense, window=(1, 1)):
    """The library's convolutionize rebuilt from its code object taken at definition time."""
    library = types.FunctionType(_CONVOLUTIONIZE_CODE, library_convolutionize.__globals__)
    return library(dense, window)


def test_convolutionize_refuses_the_library_code_kept_before_the_check():
    _fails(checks.convolutionize(convolutionize_from_kept_code),
           "write it yourself: your answer calls segkeras.models.fcn.convolutionize")
    assert library_convolutionize.__code__ is _CONVOLUTIONIZE_CODE  # restored
