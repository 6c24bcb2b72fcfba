"""The lab 02 checks pass the solution, fail typical wrong answers with a hint naming the idea,
refuse answers that call the Keras or segkeras code implementing the exercise, and say "not
answered yet" for the lab's stubs. Their numpy references agree with Keras and segkeras."""

import itertools

import keras
import numpy as np
import pytest

import segkeras.layers
import segkeras.models.deconv
from segkeras.checks import core
from segkeras.checks import deconv as checks
from segkeras.grading.answer import LocalAnswer
from segkeras.unpooling import MaxUnpooling, max_pool_switches

layers = keras.layers


def stub(*args, **kwargs):
    raise NotImplementedError()


def refused(result) -> bool:
    return not result and "write it yourself" in result.message


@pytest.mark.fast
def test_the_lab_declares_its_exercises_and_points():
    assert checks.LAB.exercises == {"transposed_conv_matrix": 3, "transposed_output_size": 2,
                                    "overlap_counts": 2, "bilinear_kernel": 3,
                                    "upsampling_block": 3, "max_unpool": 2}


# --- the checks' own references agree with Keras and segkeras --------------------------------


@pytest.mark.fast
def test_references_agree_with_keras_and_segkeras():
    keras.config.set_dtype_policy("float32")  # exact references, also in CI's mixed pass
    for size, kernel, stride, padding in itertools.product(
            (1, 3, 8), (2, 3, 4, 7), (1, 2, 3), ("valid", "same")):
        if kernel < stride:  # the exercise assumes kernel >= stride
            continue
        layer = layers.Conv2DTranspose(1, kernel, strides=stride, padding=padding)
        keras_size = layer.compute_output_shape((1, size, size, 1))[1]
        assert checks.reference_output_size(size, kernel, stride, padding) == keras_size
    for size, kernel, stride in ((4, 3, 2), (3, 5, 2), (2, 6, 3)):
        ones = layers.Conv1DTranspose(1, kernel, strides=stride, use_bias=False,
                                      kernel_initializer="ones")
        counts = keras.ops.convert_to_numpy(ones(np.ones((1, size, 1), "float32")))[0, :, 0]
        np.testing.assert_array_equal(checks.reference_overlap_counts(size, kernel, stride), counts)
    for size in (2, 3, 4, 5, 8):
        np.testing.assert_allclose(checks.reference_bilinear_kernel(size, 3),
                                   segkeras.layers.bilinear_kernel(size, 3, 3), atol=1e-7)
    for _, values, pre_pool in checks._unpool_cases(np.random.default_rng(0)):
        unpooled = MaxUnpooling()([values[None].astype("float32"),
                                   pre_pool[None].astype("float32")])
        np.testing.assert_allclose(checks.reference_max_unpool(values, pre_pool),
                                   keras.ops.convert_to_numpy(unpooled)[0], rtol=1e-6)


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
    (lambda n, k, s, p: n * s, "where does the last patch end"),  # 'same' for both
    (lambda n, k, s, p: (n - 1) * s + k - 2 * (k // 2) if p == "same" else (n - 1) * s + k,
     "'same' crops"),  # a convolution's symmetric padding
])
def test_output_size_rejects_typical_mistakes(wrong, words):
    result = checks.transposed_output_size(wrong)
    assert not result and words in result.message


def ask_keras_for_the_shape(n, k, s, p):
    return layers.Conv2DTranspose(1, k, strides=s, padding=p).compute_output_shape((1, n, n, 1))[1]


def run_a_layer(n, k, s, p):
    return layers.Conv2DTranspose(1, k, strides=s, padding=p)(np.zeros((1, n, n, 1))).shape[1]


def run_a_symbolic_layer(n, k, s, p):
    return layers.Conv2DTranspose(1, k, strides=s, padding=p)(keras.Input((n, n, 1))).shape[1]


def call_the_op(n, k, s, p):
    return keras.ops.conv_transpose(np.zeros((1, n, n, 1), "float32"),
                                    np.zeros((k, k, 1, 1), "float32"), s, p).shape[1]


@pytest.mark.parametrize("delegate", [ask_keras_for_the_shape, run_a_layer, run_a_symbolic_layer,
                                      call_the_op])
def test_output_size_refuses_asking_keras(delegate):
    assert delegate(3, 4, 2, "valid") == 8  # a right answer ...
    assert refused(checks.transposed_output_size(delegate))  # ... that is not the student's
    assert delegate(3, 4, 2, "same") == 6  # and Keras is back to normal afterwards


def keras_internal_shape_function(n, k, s, p):
    """Keras' own shape helper, imported as a student would find it in Keras' source."""
    from keras.src.backend.common.backend_utils import compute_conv_transpose_output_shape

    return compute_conv_transpose_output_shape((1, n, n, 1), (k, k), 1, s, p)[1]


def test_output_size_refuses_keras_internal_shape_function():
    assert keras_internal_shape_function(3, 4, 2, "valid") == 8
    assert refused(checks.transposed_output_size(keras_internal_shape_function))
    assert keras_internal_shape_function(3, 4, 2, "same") == 6  # restored


def output_size_table(n, k, s, p):
    """Right on the check's small cases only (looked up), wrong elsewhere: random cases catch it."""
    return output_size(n, k, s, p) if n <= 8 and k <= 7 else 0


def test_output_size_draws_cases_beyond_a_fixed_table():
    assert not checks.transposed_output_size(output_size_table)


@pytest.mark.parametrize("exercise, private", [
    ("transposed_conv_matrix", checks.reference_conv_matrix),
    ("transposed_output_size", checks.reference_output_size),
    ("overlap_counts", checks.reference_overlap_counts),
    ("bilinear_kernel", checks.reference_bilinear_kernel),
    ("max_unpool", checks.reference_max_unpool),
])
def test_the_checks_references_are_refused_as_answers(exercise, private):
    assert private in checks.PRIVATE
    assert refused(getattr(checks, exercise)(private))
    assert refused(getattr(checks, exercise)(lambda *args: private(*args)))


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
    (lambda n, k, s: np.convolve(np.ones(n), np.ones(k)), "one count per output pixel"),
    (lambda n, k, s: overlap_counts(n, k, s) * 0 + np.ceil(k / s), "count the writers"),
])
def test_overlap_counts_rejects_typical_mistakes(wrong, words):
    result = checks.overlap_counts(wrong)
    assert not result and words in result.message


def stamp_ones(size, kernel, stride):
    layer = layers.Conv1DTranspose(1, kernel, strides=stride, use_bias=False,
                                   kernel_initializer="ones")
    return keras.ops.convert_to_numpy(layer(np.ones((1, size, 1), "float32")))[0, :, 0]


def test_overlap_counts_refuses_a_transposed_convolution_of_ones():
    assert refused(checks.overlap_counts(stamp_ones))
    assert stamp_ones(4, 3, 2).tolist() == [1, 1, 2, 1, 2, 1, 2, 1, 1]


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


def normalised_bilinear_kernel(size, channels):
    kernel = bilinear_kernel(size, channels)
    return kernel / kernel[:, :, 0, 0].sum()


@pytest.mark.parametrize("wrong, words", [
    (lambda size, c: bilinear_kernel(size, c)[:, :, 0, 0], "must have shape (4, 4, 1, 1)"),
    (lambda size, c: bilinear_kernel(size, c, centre_shift=0.5 * (size % 2 == 0)), "ramp"),
    (lambda size, c: bilinear_kernel(size, c, mix=True), "channel c must only read channel c"),
    (lambda size, c: bilinear_kernel(size, c, centre_shift=0.5 * (size % 2 == 1)), "odd size"),
    (lambda size, c: normalised_bilinear_kernel(size, c), "ramp"),  # sums to 1: 4x too dark
    (lambda size, c: np.ones((size, size, c, c)) * np.eye(c), "ramp"),  # a box: nearest-like
])
def test_bilinear_kernel_rejects_typical_mistakes(wrong, words):
    result = checks.bilinear_kernel(wrong)
    assert not result and words in result.message


@pytest.mark.parametrize("delegate", [
    lambda size, c: segkeras.layers.bilinear_kernel(size, c, c),
    lambda size, c: segkeras.layers.BilinearUpsampling()((size, size, c, c)),
])
def test_bilinear_kernel_refuses_the_library(delegate):
    assert refused(checks.bilinear_kernel(delegate))
    assert segkeras.layers.bilinear_kernel(4, 1, 1).shape == (4, 4, 1, 1)  # restored


# --- upsampling_block -----------------------------------------------------------------------


def upsampling_block(x, skip, filters, name, kernel=4, project=1, bn=True, relu=True, add=True,
                     skip_after_bn=False, concatenate=False, relu_first=False):
    x = layers.Conv2DTranspose(filters, kernel, strides=2, padding="same", use_bias=False,
                               name=f"{name}_deconv")(x)
    if concatenate and skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    elif skip is not None and add:
        skip = layers.Conv2D(filters, project, padding="same", use_bias=False,
                             name=f"{name}_project")(skip)
        if not skip_after_bn:
            x = layers.Add(name=f"{name}_add")([x, skip])
    if relu_first:  # ReLU, then BatchNorm: looks the same in inference mode, not in training
        return layers.BatchNormalization(name=f"{name}_bn")(layers.ReLU(name=f"{name}_relu")(x))
    if bn:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
    if skip_after_bn and skip is not None:
        x = layers.Add(name=f"{name}_add")([x, skip])
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def nearest_then_conv(x, skip, filters, name):
    """The wrong answer of issue 11: no transposed convolution at all."""
    x = layers.UpSampling2D(name=f"{name}_up")(x)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    if skip is not None:
        x = layers.Add(name=f"{name}_add")(
            [x, layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(skip)])
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def nearest_then_transposed(x, skip, filters, name):
    """A transposed convolution is there, but the upsampling is nearest neighbour."""
    x = layers.UpSampling2D(name=f"{name}_up")(x)
    x = layers.Conv2DTranspose(filters, 3, padding="same", name=f"{name}_deconv")(x)
    return upsampling_block_after(x, skip, filters, name)


def transposed_plus_nearest(x, skip, filters, name):
    """A stride-2 transposed convolution plus a nearest-neighbour shortcut for x."""
    up = layers.Conv2DTranspose(filters, 4, strides=2, padding="same", name=f"{name}_deconv")(x)
    shortcut = layers.Conv2D(filters, 1, name=f"{name}_short")(layers.UpSampling2D(
        name=f"{name}_up")(x))
    return upsampling_block_after(layers.Add(name=f"{name}_sum")([up, shortcut]), skip, filters,
                                  name)


def upsampling_block_after(x, skip, filters, name):
    if skip is not None:
        x = layers.Add(name=f"{name}_add")(
            [x, layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(skip)])
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


@pytest.mark.fast
def test_upsampling_block_accepts_the_solution():
    assert checks.upsampling_block(upsampling_block).points == 3


@pytest.mark.parametrize("options, words", [
    ({"kernel": 3}, "checkerboard"),
    ({"bn": False}, "BatchNormalization"),
    ({"relu": False}, "ReLU"),
    ({"add": False}, "the skip does not reach the output"),
    ({"project": 3}, "1x1"),
    ({"skip_after_bn": True}, "before the BatchNormalization"),
    ({"name": "block"}, "start every layer name with `name`"),
    ({"concatenate": True}, "project the skip"),
    ({"relu_first": True}, "no activation before the BatchNorm"),
])
def test_upsampling_block_rejects_typical_mistakes(options, words):
    name = options.pop("name", None)
    result = checks.upsampling_block(
        lambda x, s, f, n: upsampling_block(x, s, f, name or n, **options))
    assert not result and words in result.message


@pytest.mark.parametrize("wrong, words", [
    (nearest_then_conv, "upsample with a transposed convolution"),
    (nearest_then_transposed, "strides=2"),
    (transposed_plus_nearest, "only through the transposed convolution"),
])
def test_upsampling_block_must_upsample_with_a_transposed_convolution(wrong, words):
    result = checks.upsampling_block(wrong)
    assert not result and words in result.message


def test_upsampling_block_refuses_the_library():
    def delegate(x, skip, filters, name):
        return segkeras.models.deconv.upsampling_block(x, skip, filters, name)

    assert refused(checks.upsampling_block(delegate))
    assert checks.use("upsampling_block", delegate) is segkeras.models.deconv.upsampling_block


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


# --- max_unpool -----------------------------------------------------------------------------


def max_unpool(values, pre_pool, last=False, everywhere=False, all_maxima=False):
    out = np.zeros(pre_pool.shape)
    for i, j, c in np.ndindex(values.shape):
        window = pre_pool[2 * i:2 * i + 2, 2 * j:2 * j + 2, c]
        if everywhere:
            out[2 * i:2 * i + 2, 2 * j:2 * j + 2, c] = values[i, j, c]
            continue
        if all_maxima:
            out[2 * i:2 * i + 2, 2 * j:2 * j + 2, c] = (window == window.max()) * values[i, j, c]
            continue
        flat = window.ravel()
        k = len(flat) - 1 - np.argmax(flat[::-1]) if last else np.argmax(flat)
        out[2 * i + k // 2, 2 * j + k % 2, c] = values[i, j, c]
    return out


@pytest.mark.fast
def test_max_unpool_accepts_the_solution():
    assert checks.max_unpool(max_unpool).points == 2


@pytest.mark.parametrize("options, words", [
    ({"last": True}, "first maximum in row-major order"),
    ({"everywhere": True}, "not nearest-neighbour upsampling"),
    ({"all_maxima": True}, "only the first maximum counts"),
])
def test_max_unpool_rejects_typical_mistakes(options, words):
    result = checks.max_unpool(lambda v, p: max_unpool(v, p, **options))
    assert not result and words in result.message


def test_max_unpool_rejects_column_major_and_mixed_channels():
    transposed = checks.max_unpool(lambda v, p: max_unpool(v.transpose(1, 0, 2),
                                                           p.transpose(1, 0, 2)).transpose(1, 0, 2))
    assert not transposed and "row-major" in transposed.message
    mixed = checks.max_unpool(lambda v, p: max_unpool(v, np.repeat(p.max(-1, keepdims=True),
                                                                   p.shape[-1], -1)))
    assert not mixed and "separately per channel" in mixed.message


@pytest.mark.parametrize("delegate", [
    lambda v, p: MaxUnpooling()([v[None].astype("float32"), p[None].astype("float32")])[0],
    lambda v, p: np.repeat(np.repeat(v, 2, 0), 2, 1) * keras.ops.convert_to_numpy(
        max_pool_switches(p[None].astype("float32")))[0],
])
def test_max_unpool_refuses_the_library(delegate):
    assert refused(checks.max_unpool(delegate))
    assert MaxUnpooling().pool_size == 2  # restored


def test_use_falls_back_to_the_library_until_the_check_passes(capsys):
    checks.start()
    fallback = checks.use("max_unpool", stub)
    assert "has not passed its check yet (not answered)" in capsys.readouterr().out
    values, pre_pool = checks._unpool_cases(np.random.default_rng(0))[2][1:]
    np.testing.assert_array_equal(fallback(values, pre_pool),
                                  checks.reference_max_unpool(values, pre_pool))
    checks.max_unpool(max_unpool)
    assert checks.use("max_unpool", max_unpool) is max_unpool
    assert checks.total() == (2, 15)


def test_the_library_fallbacks_are_right_answers():
    """What ``use`` hands out after a failed check passes the check's tests (run without the
    "write it yourself" rule, which the fallbacks break by design) and is not a reference."""
    checks.start()
    for name in checks.LAB.exercises:
        fallback = checks.use(name, stub)
        assert fallback is not stub and fallback not in checks.PRIVATE
        core.in_float32(checks.LAB.judges[name])(LocalAnswer(name, (fallback,)))


# --- transposed_conv_matrix -------------------------------------------------------------------


def conv_matrix(kernel, size, stride, padding, top=None, flip=False):
    """The convolution's matrix C from its definition (``top``: the padding above and left)."""
    kernel = np.asarray(kernel)[::-1, ::-1] if flip else np.asarray(kernel)
    k = len(kernel)
    out = -(-size // stride) if padding == "same" else (size - k) // stride + 1
    total = max((out - 1) * stride + k - size, 0) if padding == "same" else 0
    top = total // 2 if top is None else top(total)
    conv = np.zeros((out * out, size * size))
    for i, j, a, b in np.ndindex(out, out, k, k):
        y, x = i * stride - top + a, j * stride - top + b
        if 0 <= y < size and 0 <= x < size:
            conv[i * out + j, y * size + x] = kernel[a, b]
    return conv


def transposed_conv_matrix(kernel, size, stride, padding):
    return conv_matrix(kernel, size, stride, padding).T


@pytest.mark.fast
def test_conv_matrix_reference_is_the_transpose_of_conv2d_transpose():
    """C from the convolution's responses to one-hot images, transposed, is what Conv2DTranspose
    does to one-hot images of the convolution's output size, and what the definition gives."""
    keras.config.set_dtype_policy("float32")
    for kernel, size, stride, padding in checks._matrix_cases(np.random.default_rng(3)):
        conv = checks.reference_conv_matrix(kernel, size, stride, padding)
        np.testing.assert_allclose(conv, conv_matrix(kernel, size, stride, padding), atol=1e-6)
        np.testing.assert_allclose(
            conv.T, checks._library_transposed_conv_matrix(kernel, size, stride, padding),
            atol=1e-5)


@pytest.mark.fast
def test_conv_matrix_accepts_the_solution():
    assert checks.transposed_conv_matrix(transposed_conv_matrix).points == 3


@pytest.mark.parametrize("wrong, words", [
    (conv_matrix, "this is the convolution's matrix C"),  # C handed in instead of C^T
    (lambda k, n, s, p: conv_matrix(k, n, 1, p).T, "shape"),  # stride ignored
    (lambda k, n, s, p: conv_matrix(k, n, s, "valid").T, "shape"),  # padding ignored
    (lambda k, n, s, p: conv_matrix(k, n, s, p, top=lambda total: total - total // 2).T,
     "the extra pixel goes to the bottom"),  # 'same' padded like PyTorch's symmetric-first
    (lambda k, n, s, p: conv_matrix(k, n, s, p, flip=True).T, "no kernel flip"),
    (lambda k, n, s, p: conv_matrix(k, n, s, p).reshape(-1)[::-1].reshape(
        conv_matrix(k, n, s, p).T.shape), "C^T @ y must equal Conv2DTranspose"),
])
def test_conv_matrix_rejects_typical_mistakes(wrong, words):
    result = checks.transposed_conv_matrix(wrong)
    assert not result and words in result.message, result.message


def probe_the_transposed_layer(kernel, size, stride, padding):
    """C^T read off Conv2DTranspose's responses to one-hot images: no matrix built."""
    return checks._library_transposed_conv_matrix(kernel, size, stride, padding)


def probe_the_convolution(kernel, size, stride, padding):
    """C read off keras.ops.conv's responses to one-hot images, transposed."""
    basis = np.eye(size * size, dtype="float32").reshape(-1, size, size, 1)
    out = keras.ops.conv(basis, np.asarray(kernel, "float32")[:, :, None, None], stride, padding)
    return keras.ops.convert_to_numpy(out).reshape(size * size, -1)


@pytest.mark.parametrize("delegate", [probe_the_transposed_layer, probe_the_convolution])
def test_conv_matrix_refuses_keras_convolutions(delegate):
    assert refused(checks.transposed_conv_matrix(delegate))
