"""Checks for lab 02, transposed convolutions.

Each check compares the student's answer with what Keras layers actually do: the output size of
``Conv2DTranspose`` for many kernel/stride/padding combinations, how many input pixels write to
each output pixel (the cause of checkerboard artefacts), a bilinear kernel that reproduces
bilinear resizing of a ramp, and a decoder block that doubles the resolution and lets a skip add
its own detail pixel by pixel.
"""

from __future__ import annotations

import itertools

import keras
import numpy as np

from segkeras.checks.core import exercise, in_float32, require, require_close
from segkeras.layers import bilinear_kernel as reference_bilinear_kernel


def _numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype="float64")




def _keras_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    layer = keras.layers.Conv2DTranspose(1, kernel, strides=stride, padding=padding)
    return int(layer.compute_output_shape((1, size, size, 1))[1])


@exercise("transposed_output_size", 2)
@in_float32
def transposed_output_size(function) -> None:
    """``function(size, kernel, stride, padding)`` -> the output side of ``Conv2DTranspose``."""
    for size, kernel, stride, padding in itertools.product(
        (1, 2, 3, 5, 8), (1, 2, 3, 4, 5, 7), (1, 2, 3, 4), ("valid", "same")
    ):
        if kernel < stride:  # gaps between the patches: not an upsampling layer anyone uses
            continue
        expected = _keras_output_size(size, kernel, stride, padding)
        got = function(size, kernel, stride, padding)
        require(got == expected,
                f"size={size}, kernel={kernel}, stride={stride}, padding={padding!r}: Keras "
                f"gives {expected}, you gave {got}. "
                + ("Each input pixel paints a kernel-wide patch and the patches start `stride` "
                   "apart: where does the last patch end?" if padding == "valid" else
                   "'same' crops the 'valid' output to exactly size x stride."))


@exercise("overlap_counts", 2)
@in_float32
def overlap_counts(function) -> None:
    """``function(size, kernel, stride)`` -> how many input pixels write each output pixel."""
    for size, kernel, stride in ((4, 3, 2), (4, 4, 2), (5, 3, 1), (3, 5, 2), (4, 3, 3), (2, 6, 3)):
        layer = keras.layers.Conv1DTranspose(1, kernel, strides=stride, padding="valid",
                                             use_bias=False, kernel_initializer="ones")
        expected = _numpy(layer(np.ones((1, size, 1), "float32")))[0, :, 0]
        got = np.asarray(function(size, kernel, stride))
        require(got.shape == expected.shape,
                f"size={size}, kernel={kernel}, stride={stride}: expected one count per output "
                f"pixel, {len(expected)} of them ('valid' output size), got shape {got.shape}")
        require_close(got, expected,
                      f"size={size}, kernel={kernel}, stride={stride}: input pixel i writes "
                      "output pixels i * stride to i * stride + kernel - 1; count the writers "
                      "of each output pixel")


def _ramp_upsampled(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A horizontal ramp upsampled x2 with ``kernel`` and by ``keras.ops.image.resize``."""
    ramp = np.tile(np.arange(8, dtype="float32"), (8, 1))[None, :, :, None]
    layer = keras.layers.Conv2DTranspose(1, 4, strides=2, padding="same", use_bias=False)
    layer.build((None, 8, 8, 1))
    layer.set_weights([np.asarray(kernel, dtype="float32")])
    resized = keras.ops.image.resize(ramp, (16, 16), interpolation="bilinear")
    return _numpy(layer(ramp)), _numpy(resized)


@exercise("bilinear_kernel", 3)
@in_float32
def bilinear_kernel(function) -> None:
    """``function(size, channels)`` -> the (size, size, channels, channels) bilinear kernel."""
    kernel = np.asarray(function(4, 1))
    require(kernel.shape == (4, 4, 1, 1),
            f"bilinear_kernel(4, 1) must have shape (4, 4, 1, 1) (Conv2DTranspose's "
            f"(size, size, channels_out, channels_in)), got {kernel.shape}")
    upsampled, resized = _ramp_upsampled(kernel)
    require_close(upsampled[:, 2:-2, 2:-2], resized[:, 2:-2, 2:-2],
                  "a Conv2DTranspose(kernel 4, stride 2, 'same') with your kernel must upsample "
                  "a ramp like bilinear resizing (away from the borders): check the taps "
                  "1 - |i - centre| / factor, factor = (size + 1) // 2")
    for size in (2, 3, 5, 6, 8):
        expected = reference_bilinear_kernel(size, 3, 3)
        got = np.asarray(function(size, 3))
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


@exercise("upsampling_block", 3)
@in_float32
def upsampling_block(function) -> None:
    """``function(x, skip, filters, name)``: a x2 decoder step, skip added before BN + ReLU."""
    filters = 6
    x = keras.Input((4, 4, 5), name="coarse")
    plain = keras.Model(x, function(x, None, filters, "plain"))
    shape = tuple(plain.output.shape)
    require(shape == (None, 8, 8, filters),
            f"without a skip, a 4x4 map must become 8x8 with {filters} channels, got {shape}: "
            f"Conv2DTranspose({filters}, 4, strides=2, padding='same')")
    skip = keras.Input((8, 8, 3), name="skip")
    model = keras.Model([x, skip], function(x, skip, filters, "with_skip"))
    shape = tuple(model.output.shape)
    require(shape == (None, 8, 8, filters),
            f"with an 8x8 skip of 3 channels the output must still be 8x8x{filters}, got {shape}: "
            f"project the skip to {filters} channels with a 1x1 convolution before adding")
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            kernel, stride = layer.kernel_size[0], layer.strides[0]
            require(kernel % stride == 0,
                    f"kernel {kernel} with stride {stride} overlaps unevenly (checkerboard "
                    f"artefacts): use a kernel size divisible by the stride, e.g. 4")
    require(any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers),
            "normalise the sum with BatchNormalization before the ReLU")
    rng = np.random.default_rng(3)
    coarse = rng.uniform(0.0, 1.0, size=(1, 4, 4, 5)).astype("float32")
    features = rng.uniform(0.0, 1.0, size=(1, 8, 8, 3)).astype("float32")
    out = _numpy(model([coarse - 0.5, features - 0.5]))
    require(out.min() >= 0.0, "end the block with a ReLU (the output has negative values)")
    for conv in (layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)):
        conv.set_weights([rng.uniform(0.2, 1.0, w.shape) for w in conv.get_weights()])
    out = _numpy(model([coarse, features]))
    nudged = features.copy()
    nudged[0, 2, 6] += 3.0
    changed = np.abs(_numpy(model([coarse, nudged])) - out).max(axis=-1)[0] > 1e-5
    require(changed[2, 6],
            "the skip does not reach the output: add the projected skip to the upsampled map")
    require(changed.sum() == 1,
            "changing one skip pixel must change that output pixel only: project the skip with "
            "a 1x1 convolution")
