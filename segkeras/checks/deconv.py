"""Checks for lab 02, transposed convolutions and unpooling.

Each check tests the idea of its exercise against an independent reference written here in numpy
(the tests compare these references with what Keras and segkeras actually do): the output size of
``Conv2DTranspose``, the transposed convolution as the transpose of the convolution's matrix
(checked against a matrix built from the convolution's responses to one-hot images), how many
input pixels write each output pixel (the cause of checkerboard
artefacts), a bilinear kernel that upsamples a ramp like bilinear resizing, a decoder step whose
upsampling *is* a learned stride-2 transposed convolution, and DeconvNet's unpooling with
switches. An answer that calls the Keras or segkeras code implementing the exercise (Keras'
internal shape helpers included) or one of this module's references (:data:`PRIVATE`) is refused.
The inputs are drawn at random on top of a few fixed cases, so an answer cannot look them up.
"""

from __future__ import annotations

import importlib
import itertools

import keras
import numpy as np

import segkeras.layers
import segkeras.models.deconv
import segkeras.unpooling
from segkeras.checks.core import CheckFailed, Lab, answer_model, in_float32, require, require_close
from segkeras.grading.answer import Answer
from segkeras.grading.probes import build_model, probe

LAB = Lab("02_transposed_convolutions", {
    "transposed_conv_matrix": 3, "transposed_output_size": 2, "overlap_counts": 2,
    "bilinear_kernel": 3, "upsampling_block": 3, "max_unpool": 2,
})



def _keras_internals(module: str, *names: str) -> tuple:
    """Functions of Keras' private modules that compute a transposed convolution's size: a
    student can import them (``keras.src...``) although the public API hides them; they are
    refused like the layers. Absent in another Keras version: nothing to refuse."""
    try:
        found = importlib.import_module(module)
    except ImportError:
        return ()
    return tuple(getattr(found, name) for name in names if hasattr(found, name))


# What computes a transposed convolution's size or output for the student: not allowed where
# that is the exercise (the layers are refused when constructed).
_KERAS_TRANSPOSED = (
    keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose,
    keras.layers.Conv2DTranspose.compute_output_shape, keras.ops.conv_transpose,
    *_keras_internals("keras.src.backend.common.backend_utils",
                      "compute_conv_transpose_output_shape", "_get_output_shape_given_tf_padding"),
)


@probe
def call_each(function, cases: list) -> list:
    """``function(*case)`` for every case (one round trip to the grader's worker)."""
    return [function(*case) for case in cases]


def _numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype="float64")


# --- exercise 1: the transposed convolution as a matrix ------------------------------------------

def reference_conv_matrix(kernel: np.ndarray, size: int, stride: int, padding: str) -> np.ndarray:
    """The matrix C of a one-channel ``Conv2D`` (no bias) on a ``size`` x ``size`` image, both
    flattened row-major: column j is the convolution's response to the j-th one-hot image."""
    basis = np.eye(size * size, dtype="float32").reshape(size * size, size, size, 1)
    responses = keras.ops.conv(basis, np.asarray(kernel, "float32")[:, :, None, None],
                               strides=stride, padding=padding)
    return _numpy(responses).reshape(size * size, -1).T


def _library_transposed_conv_matrix(kernel, size: int, stride: int, padding: str) -> np.ndarray:
    """``Conv2DTranspose``'s responses to one-hot images of the convolution's output size."""
    kernel = np.asarray(kernel, "float32")
    out = -(-size // stride) if padding == "same" else (size - len(kernel)) // stride + 1
    layer = keras.layers.Conv2DTranspose(1, len(kernel), strides=stride, padding=padding,
                                         use_bias=False)
    layer.build((None, out, out, 1))
    layer.set_weights([kernel[:, :, None, None]])
    basis = np.eye(out * out, dtype="float32").reshape(out * out, out, out, 1)
    return _numpy(layer(basis)).reshape(out * out, -1).T


def _transposed_conv(kernel: np.ndarray, stride: int, padding: str, y: np.ndarray) -> np.ndarray:
    """``Conv2DTranspose`` holding ``kernel`` applied to the one-channel image ``y``."""
    layer = keras.layers.Conv2DTranspose(1, len(kernel), strides=stride, padding=padding,
                                         use_bias=False)
    layer.build((None, *y.shape, 1))
    layer.set_weights([kernel[:, :, None, None].astype("float32")])
    return _numpy(layer(y[None, :, :, None].astype("float32")))[0, :, :, 0]


def _matrix_cases(rng: np.random.Generator) -> list[tuple[np.ndarray, int, int, str]]:
    """(kernel, size, stride, padding): the lab's 4x4 examples, then random ones, each with a
    size the transposed convolution gives back exactly (no output_padding needed) and a kernel
    at least as wide as the stride (as in the rest of the lab)."""
    cases = [(3, 4, 1, "valid"), (3, 4, 2, "same"), (3, 5, 2, "valid"), (2, 4, 1, "same")]
    for _ in range(6):
        stride = int(rng.integers(1, 4))
        kernel, padding = int(rng.integers(stride, 6)), str(rng.choice(["valid", "same"]))
        out = int(rng.integers(2, 5))
        size = out * stride if padding == "same" else (out - 1) * stride + kernel
        cases.append((kernel, size, stride, padding))
    return [(rng.normal(size=(k, k)).round(2) + np.eye(k)[::-1], size, stride, padding)
            for k, size, stride, padding in cases]  # the anti-diagonal: never symmetric


@LAB.check("transposed_conv_matrix",
           forbid=[*_KERAS_TRANSPOSED, keras.layers.Conv2D, keras.ops.conv],
           fallback=_library_transposed_conv_matrix)
@in_float32
def transposed_conv_matrix(answer: Answer) -> None:
    """``answer(kernel, size, stride, padding)`` -> C^T, (size², out²), C the matrix of the
    ``Conv2D`` (kernel, stride, padding) on a flattened size x size image."""
    for kernel, size, stride, padding in _matrix_cases(answer.rng):
        case = f"a {len(kernel)}x{len(kernel)} kernel, size={size}, stride={stride}, " \
               f"padding={padding!r}"
        conv = reference_conv_matrix(kernel, size, stride, padding)
        got = np.asarray(answer(kernel, size, stride, padding), dtype="float64")
        if got.shape == conv.shape and np.allclose(got, conv, atol=1e-4) \
                and not np.allclose(conv, conv.T if conv.shape == conv.T.shape else 0):
            raise CheckFailed(f"{case}: this is the convolution's matrix C (one row per "
                              "output pixel); the transposed convolution is its transpose C^T")
        require(got.shape == conv.T.shape,
                f"{case}: C^T has one row per pixel of the size x size image and one column "
                f"per pixel of the convolution's output: shape {conv.T.shape}, got {got.shape}"
                + (" ('same': the output side is ceil(size / stride))" if padding == "same"
                   else " ('valid': (size - kernel) // stride + 1 per side)"))
        y = answer.rng.normal(size=(int(conv.shape[0] ** 0.5),) * 2)
        expected = _transposed_conv(kernel, stride, padding, y).ravel()
        require_close(got @ y.ravel(), expected,
                      f"{case}: C^T @ y must equal Conv2DTranspose (same kernel, stride and "
                      "padding) of y. Row i of C is the kernel laid over the image window of "
                      "output pixel i: window corners `stride` apart"
                      + (", starting at -(total padding // 2), where the total padding is "
                         "max((out - 1) * stride + kernel - size, 0) (the extra pixel goes "
                         "to the bottom and the right)" if padding == "same" else
                         ", starting at 0 (no padding)")
                      + "; no kernel flip (Keras convolutions are correlations)",
                      atol=1e-3 * max(1.0, float(np.abs(expected).max())))


# --- exercise 2: the output size -----------------------------------------------------------------

def reference_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    """``Conv2DTranspose``'s output side: whole stamps ("valid") or cropped to size x stride."""
    return size * stride if padding == "same" else (size - 1) * stride + kernel


def _library_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    layer = keras.layers.Conv2DTranspose(1, kernel, strides=stride, padding=padding)
    return int(layer.compute_output_shape((1, size, size, 1))[1])


def _size_cases(rng: np.random.Generator) -> list[tuple[int, int, int, str]]:
    """Every small case, then random larger ones, all in a random order."""
    cases = [case for case in itertools.product(
        (1, 2, 3, 5, 8), (1, 2, 3, 4, 5, 7), (1, 2, 3, 4), ("valid", "same"))
        if case[1] >= case[2]]  # kernel < stride leaves gaps: not an upsampling layer anyone uses
    for _ in range(12):
        stride = int(rng.integers(1, 5))
        cases.append((int(rng.integers(9, 60)), int(rng.integers(stride, 12)), stride,
                      str(rng.choice(["valid", "same"]))))
    return [cases[i] for i in rng.permutation(len(cases))]


@LAB.check("transposed_output_size", forbid=_KERAS_TRANSPOSED, fallback=_library_output_size)
@in_float32
def transposed_output_size(answer: Answer) -> None:
    """``answer(size, kernel, stride, padding)`` -> the output side of ``Conv2DTranspose``."""
    cases = _size_cases(answer.rng)
    for (size, kernel, stride, padding), got in zip(cases, answer.probe(call_each, cases),
                                                     strict=True):
        expected = reference_output_size(size, kernel, stride, padding)
        require(got == expected,
                f"size={size}, kernel={kernel}, stride={stride}, padding={padding!r}: Keras "
                f"gives {expected}, you gave {got}. "
                + ("Each input pixel paints a kernel-wide patch and the patches start `stride` "
                   "apart: where does the last patch end?" if padding == "valid" else
                   "'same' crops the 'valid' output to exactly size x stride."))


# --- exercise 3: counting the stamps -------------------------------------------------------------

def reference_overlap_counts(size: int, kernel: int, stride: int) -> np.ndarray:
    """For each output pixel of a 1-D "valid" transposed convolution, how many inputs write it."""
    counts = np.zeros(reference_output_size(size, kernel, stride, "valid"), dtype=int)
    for i in range(size):
        counts[i * stride:i * stride + kernel] += 1
    return counts


def _library_overlap_counts(size: int, kernel: int, stride: int) -> np.ndarray:
    """A 1-D transposed convolution of ones with a kernel of ones: the count of writers."""
    layer = keras.layers.Conv1DTranspose(1, kernel, strides=stride, use_bias=False,
                                         kernel_initializer="ones")
    return np.rint(_numpy(layer(np.ones((1, size, 1), "float32")))[0, :, 0]).astype(int)


def _count_cases(rng: np.random.Generator) -> list[tuple[int, int, int]]:
    cases = [(4, 3, 2), (4, 4, 2), (5, 3, 1), (3, 5, 2), (4, 3, 3), (2, 6, 3)]
    for _ in range(4):
        stride = int(rng.integers(1, 5))
        cases.append((int(rng.integers(2, 12)), int(rng.integers(stride, 10)), stride))
    return cases


@LAB.check("overlap_counts", forbid=_KERAS_TRANSPOSED, fallback=_library_overlap_counts)
@in_float32
def overlap_counts(answer: Answer) -> None:
    """``answer(size, kernel, stride)`` -> how many input pixels write each output pixel."""
    for size, kernel, stride in _count_cases(answer.rng):
        expected = reference_overlap_counts(size, kernel, stride)
        got = np.asarray(answer(size, kernel, stride))
        require(got.shape == expected.shape,
                f"size={size}, kernel={kernel}, stride={stride}: expected one count per output "
                f"pixel, {len(expected)} of them ('valid' output size), got shape {got.shape}")
        require_close(got, expected,
                      f"size={size}, kernel={kernel}, stride={stride}: input pixel i writes "
                      "output pixels i * stride to i * stride + kernel - 1; count the writers "
                      "of each output pixel")


# --- exercise 4: a bilinear kernel ---------------------------------------------------------------

def reference_bilinear_kernel(size: int, channels: int) -> np.ndarray:
    """The tent kernel (FCN's bilinear initialisation) at ``[:, :, c, c]``, zeros elsewhere."""
    factor = (size + 1) // 2
    centre = (size - 1) / 2 if size % 2 == 0 else factor - 1
    taps = 1.0 - np.abs(np.arange(size) - centre) / factor
    kernel = np.zeros((size, size, channels, channels))
    kernel[:, :, np.arange(channels), np.arange(channels)] = np.outer(taps, taps)[..., None]
    return kernel


def _ramp_upsampled(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A horizontal ramp upsampled x2 with ``kernel`` and by ``keras.ops.image.resize``."""
    ramp = np.tile(np.arange(8, dtype="float32"), (8, 1))[None, :, :, None]
    layer = keras.layers.Conv2DTranspose(1, 4, strides=2, padding="same", use_bias=False)
    layer.build((None, 8, 8, 1))
    layer.set_weights([np.asarray(kernel, dtype="float32")])
    resized = keras.ops.image.resize(ramp, (16, 16), interpolation="bilinear")
    return _numpy(layer(ramp)), _numpy(resized)


def _library_bilinear_kernel(size: int, channels: int) -> np.ndarray:
    return segkeras.layers.bilinear_kernel(size, channels, channels)


@LAB.check("bilinear_kernel",
           forbid=[segkeras.layers.bilinear_kernel, segkeras.layers.BilinearUpsampling],
           fallback=_library_bilinear_kernel)
@in_float32
def bilinear_kernel(answer: Answer) -> None:
    """``answer(size, channels)`` -> the (size, size, channels, channels) bilinear kernel."""
    kernel = np.asarray(answer(4, 1))
    require(kernel.shape == (4, 4, 1, 1),
            f"bilinear_kernel(4, 1) must have shape (4, 4, 1, 1) (Conv2DTranspose's "
            f"(size, size, channels_out, channels_in)), got {kernel.shape}")
    upsampled, resized = _ramp_upsampled(kernel)
    require_close(upsampled[:, 2:-2, 2:-2], resized[:, 2:-2, 2:-2],
                  "a Conv2DTranspose(kernel 4, stride 2, 'same') with your kernel must upsample "
                  "a ramp like bilinear resizing (away from the borders): check the taps "
                  "1 - |i - centre| / factor, factor = (size + 1) // 2")
    for size in (2, 3, 5, 6, 8, int(answer.rng.integers(9, 16))):
        expected = reference_bilinear_kernel(size, 3)
        got = np.asarray(answer(size, 3))
        require(got.shape == expected.shape,
                f"bilinear_kernel({size}, 3) must have shape {expected.shape}, got {got.shape}")
        off_diagonal = got * (1.0 - np.eye(3))[None, None]
        require(not np.any(off_diagonal),
                "channel c must only read channel c: put the 2-D kernel at kernel[:, :, c, c] "
                "and leave the other entries 0 (else the classes mix)")
        centre = "(size - 1) / 2, between two taps" if size % 2 == 0 else "size // 2"
        require_close(got, expected,
                      f"bilinear_kernel({size}, 3) differs from bilinear interpolation: for "
                      f"{'an even' if size % 2 == 0 else 'an odd'} size the centre is {centre}")


# --- exercise 5: a decoder step ------------------------------------------------------------------

def _set_weights(model: keras.Model, layer_type, make) -> None:
    for layer in model.layers:
        if isinstance(layer, layer_type):
            layer.set_weights([make(w.shape).astype("float32") for w in layer.get_weights()])


def _check_upsampling(model: keras.Model, inputs: list, filters: int) -> None:
    """The upsampling is a learned stride-2 transposed convolution, the only path from ``x``."""
    transposed = [layer for layer in model.layers
                  if isinstance(layer, keras.layers.Conv2DTranspose)]
    require(transposed,
            "upsample with a transposed convolution (the exercise's idea: a *learned* x2 "
            f"upsampling): Conv2DTranspose({filters}, 4, strides=2, padding='same'), not "
            "UpSampling2D or a resize")
    require(any(layer.strides == (2, 2) for layer in transposed),
            "the transposed convolution itself must upsample: strides=2 (no UpSampling2D or "
            "resize before it)")
    for layer in transposed:
        kernel, stride = layer.kernel_size[0], layer.strides[0]
        require(kernel % stride == 0,
                f"kernel {kernel} with stride {stride} overlaps unevenly (checkerboard "
                f"artefacts): use a kernel size divisible by the stride, e.g. 4")
    rng = np.random.default_rng(0)
    _set_weights(model, keras.layers.Conv2DTranspose, np.zeros)
    nudged = [inputs[0] + rng.uniform(0.5, 1.0, inputs[0].shape).astype("float32"), *inputs[1:]]
    require(np.allclose(_numpy(model(inputs)), _numpy(model(nudged)), atol=1e-6),
            "x must reach the output only through the transposed convolution (the learned "
            "upsampling): no UpSampling2D, resize or other path for x")


def _check_normalise_then_relu(model: keras.Model, rng: np.random.Generator) -> None:
    """In training mode (as under ``fit``) the block must be ReLU(BatchNorm(sum)): the
    BatchNormalization reads the sum itself, linear in x and the skip, and the ReLU comes after
    it. (In inference mode, with fresh statistics, BatchNorm after the ReLU looks the same.)"""
    norm = next(layer for layer in model.layers
                if isinstance(layer, keras.layers.BatchNormalization))
    try:
        before_norm = answer_model(model.inputs, norm.input)
    except (AttributeError, ValueError) as error:
        raise CheckFailed(f"use the BatchNormalization layer once, on the sum ({error})") from None
    inputs = [rng.normal(size=(2, *tensor.shape[1:])).astype("float32")
              for tensor in model.inputs]
    zeros = [np.zeros_like(array) for array in inputs]
    pre, offset = _numpy(before_norm(inputs)), _numpy(before_norm(zeros))
    flipped = _numpy(before_norm([-1.5 * array for array in inputs])) - offset
    require_close(flipped, -1.5 * (pre - offset),
                  "BatchNormalization must normalise the sum itself (upsampled x + projected "
                  "skip), then the ReLU: no activation before the BatchNorm",
                  atol=1e-4 * max(1.0, float(np.abs(pre).max())))
    mean, variance = pre.mean(axis=(0, 1, 2)), pre.var(axis=(0, 1, 2))
    gamma = _numpy(norm.gamma) if norm.scale else 1.0
    beta = _numpy(norm.beta) if norm.center else 0.0
    expected = np.maximum((pre - mean) / np.sqrt(variance + norm.epsilon) * gamma + beta, 0.0)
    require_close(_numpy(model(inputs, training=True)), expected,
                  "in training mode (as in fit, with batch statistics) the block must give "
                  "ReLU(BatchNorm(upsampled x + projected skip)): BatchNorm, then the ReLU, last",
                  atol=1e-3)


@LAB.check("upsampling_block", forbid=[segkeras.models.deconv.upsampling_block],
           fallback=segkeras.models.deconv.upsampling_block)
@in_float32
def upsampling_block(answer: Answer) -> None:
    """``answer(x, skip, filters, name)``: a x2 transposed convolution, the 1x1-projected skip
    added, then BatchNorm and ReLU."""
    filters = 6
    x, skip = ((4, 4, 5), "float32", "coarse"), ((8, 8, 3), "float32", "skip")
    plain = answer.probe(build_model, [x], None, filters, "plain")
    shape = tuple(plain.output.shape)
    require(shape == (None, 8, 8, filters),
            f"without a skip, a 4x4 map must become 8x8 with {filters} channels, got {shape}: "
            f"Conv2DTranspose({filters}, 4, strides=2, padding='same')")
    model = answer.probe(build_model, [x, skip], filters, "with_skip")
    shape = tuple(model.output.shape)
    require(shape == (None, 8, 8, filters),
            f"with an 8x8 skip of 3 channels the output must still be 8x8x{filters}, got {shape}: "
            f"project the skip to {filters} channels with a 1x1 convolution before adding")
    require(all(layer.name.startswith("with_skip") for layer in model.layers
                if not isinstance(layer, keras.layers.InputLayer)),
            "start every layer name with `name` (e.g. f'{name}_deconv'): a decoder has five "
            "blocks, and layer names must be unique")
    require(any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers),
            "normalise the sum with BatchNormalization before the ReLU")

    rng = answer.rng
    coarse = rng.uniform(0.0, 1.0, size=(1, 4, 4, 5)).astype("float32")
    features = rng.uniform(0.0, 1.0, size=(1, 8, 8, 3)).astype("float32")
    _set_weights(model, keras.layers.Conv2D, lambda s: rng.uniform(0.2, 1.0, s))
    _set_weights(model, keras.layers.Conv2DTranspose, lambda s: rng.uniform(0.2, 1.0, s))
    out = _numpy(model([coarse, features]))
    # Positive inputs and weights: a variance 4x larger halves the output iff BatchNorm
    # normalises the whole sum (upsampled + projected skip) right before the ReLU.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(np.full(layer.moving_variance.shape,
                                                 4.0 * (1.0 + layer.epsilon) - layer.epsilon,
                                                 dtype="float32"))
    require_close(_numpy(model([coarse, features])), out / 2,
                  "add the projected skip to the upsampled map before the BatchNormalization, "
                  "then ReLU: BatchNorm normalises the sum", atol=1e-4 * max(1.0, out.max()))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(np.ones(layer.moving_variance.shape, dtype="float32"))
    out = _numpy(model([coarse - 0.5, features - 0.5]))
    require(out.min() >= 0.0, "end the block with a ReLU (the output has negative values)")
    out = _numpy(model([coarse, features]))
    nudged = features.copy()
    nudged[0, 2, 6] += 3.0
    changed = np.abs(_numpy(model([coarse, nudged])) - out).max(axis=-1)[0] > 1e-5
    require(changed[2, 6],
            "the skip does not reach the output: add the projected skip to the upsampled map")
    require(changed.sum() == 1,
            "changing one skip pixel must change that output pixel only: project the skip with "
            "a 1x1 convolution")
    _check_normalise_then_relu(model, rng)
    _check_upsampling(model, [coarse, features], filters)


# --- exercise 6: unpooling with switches ---------------------------------------------------------

def reference_max_unpool(values: np.ndarray, pre_pool: np.ndarray) -> np.ndarray:
    """2x2 unpooling of ``(H/2, W/2, C)`` values at the first (row-major) maximum of each window
    of ``(H, W, C)`` ``pre_pool``; zeros elsewhere."""
    out = np.zeros(pre_pool.shape)
    for i, j, c in np.ndindex(values.shape):
        window = pre_pool[2 * i:2 * i + 2, 2 * j:2 * j + 2, c]
        di, dj = divmod(int(np.argmax(window)), 2)  # np.argmax: the first maximum, row-major
        out[2 * i + di, 2 * j + dj, c] = values[i, j, c]
    return out


def _library_max_unpool(values, pre_pool) -> np.ndarray:
    unpool = segkeras.unpooling.MaxUnpooling()
    return _numpy(unpool([np.asarray(values, "float32")[None],
                          np.asarray(pre_pool, "float32")[None]]))[0]


def _unpool_cases(rng: np.random.Generator) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Random maps, random maps of few values (many ties), and hand-made ties."""
    ties = np.zeros((4, 4, 1))                   # top-left window: all zeros (a ReLU plateau)
    ties[0:2, 2:4, 0] = [[1, 5], [5, 5]]         # three maxima: the first is top-right
    ties[2:4, 0:2, 0] = [[0, 2], [2, 0]]         # two: top-right again, not bottom-left
    ties[2:4, 2:4, 0] = [[-3, -3], [-1, -1]]     # negative values, maximum at the bottom
    height, width = (2 * int(n) for n in rng.integers(2, 5, size=2))
    channels = int(rng.integers(2, 5))
    return [("random maps", rng.normal(size=(height // 2, width // 2, channels)) + 2.0,
             rng.normal(size=(height, width, channels))),
            ("maps of few values (ties)", rng.uniform(1.0, 2.0, size=(3, 4, 2)),
             rng.integers(0, 3, size=(6, 8, 2)).astype("float64")),
            ("windows with ties", np.array([[[2.0], [3.0]], [[4.0], [6.0]]]), ties)]


@LAB.check("max_unpool",
           forbid=[segkeras.unpooling.max_pool_switches, segkeras.unpooling.MaxUnpooling],
           fallback=_library_max_unpool)
@in_float32
def max_unpool(answer: Answer) -> None:
    """``answer(values, pre_pool)``: each value back at its window's first maximum."""
    for case, values, pre_pool in _unpool_cases(answer.rng):
        expected = reference_max_unpool(values, pre_pool)
        got = np.asarray(answer(values, pre_pool), dtype="float64")
        require(got.shape == pre_pool.shape,
                f"{case}: the output has the pre-pool shape {pre_pool.shape}, got {got.shape}")
        require(np.count_nonzero(got) <= np.count_nonzero(values),
                f"{case}: one switch per window and channel, zeros elsewhere: unpooling is not "
                "nearest-neighbour upsampling (and with ties, only the first maximum counts)")
        require_close(got, expected,
                      f"{case}: put each value where its 2x2 window of pre_pool had its maximum "
                      "(the switch), separately per channel; ties: the first maximum in "
                      "row-major order (top-left, top-right, bottom-left, bottom-right)")


# The checks' own references: refused as answers, forbidden while any answer runs.
PRIVATE = (reference_conv_matrix, reference_output_size, reference_overlap_counts,
           reference_bilinear_kernel, reference_max_unpool)

start, use, guard, total = LAB.start, LAB.use, LAB.guard, LAB.total
