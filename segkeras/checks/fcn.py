"""Checks for lab 01, fully convolutional networks (Long, Shelhamer & Darrell, CVPR 2015).

Each check builds the student's layer or head on small random inputs and tests what it must do:
a convolutionised ``Dense`` gives the same numbers on its window and a grid of them on a larger
map; the skip fusion doubles the resolution, starts as bilinear upsampling of the coarse scores
and lets every skip pixel add its own score; the FCN head returns image-sized logits that read
exactly the skips of its variant.
"""

from __future__ import annotations

import keras
import numpy as np

from segkeras.checks.core import exercise, in_float32, require, require_close

_NUM_CLASSES = 3
_SKIP_LEVELS = {"32s": (), "16s": ("P4",), "8s": ("P4", "P3")}


def _numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype="float64")




def _randomize(model: keras.Model, seed: int = 0) -> None:
    """Give every weight of ``model`` random positive values, as after training: no part of it
    stays zero (positive, so a BatchNormalization variance stays valid)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.uniform(0.2, 1.0, size=tuple(weight.shape)).astype(weight.dtype))


def _dense(rng, inputs: int, units: int, activation: str | None) -> keras.layers.Dense:
    dense = keras.layers.Dense(units, activation=activation)
    dense.build((None, inputs))
    dense.set_weights([rng.normal(size=(inputs, units)), rng.normal(size=units)])
    return dense


def _convolutionize_case(function, rng, window: tuple, channels: int, activation) -> None:
    height, width = window
    units = 4
    dense = _dense(rng, height * width * channels, units, activation)
    conv = function(dense) if window == (1, 1) else function(dense, window)
    require(callable(conv), "return the Conv2D layer (built, with the Dense layer's weights)")
    x = rng.normal(size=(2, height, width, channels)).astype("float32")
    expected = _numpy(dense(x.reshape(2, -1)))
    got = _numpy(conv(x))
    require(got.shape == (2, 1, 1, units),
            f"on a {height}x{width}x{channels} map (the window the Dense layer read) the "
            f"convolution must give one {units}-vector: got shape {got.shape}; use "
            f"kernel_size={window}, padding='valid' and {units} filters")
    got = got.reshape(2, units)
    if not np.allclose(got, expected, atol=1e-4):
        pre_activation = _numpy(keras.ops.matmul(x.reshape(2, -1), dense.kernel))
        bias = _numpy(dense.bias)
        require(not (activation and np.allclose(got, pre_activation + bias, atol=1e-4)),
                "the numbers match before the activation: give the convolution the Dense "
                "layer's activation too")
        require(not np.allclose(got, pre_activation if activation is None
                                else np.maximum(pre_activation, 0), atol=1e-4),
                "the numbers are off by the bias: copy the Dense layer's bias too")
        require_close(got, expected,
                      f"not the Dense layer's numbers on a {height}x{width} window: reshape the "
                      "kernel (inputs, units) to (height, width, channels, units), the order in "
                      "which Flatten lays out (row, column, channel)")
    larger = rng.normal(size=(1, height + 3, width + 2, channels)).astype("float32")
    grid = _numpy(conv(larger))
    require(grid.shape == (1, 4, 3, units),
            f"on a larger {height + 3}x{width + 2} map expect a 4x3 grid of scores (one per "
            f"window position, stride 1, 'valid'); got shape {grid.shape}")
    windows = np.stack([larger[0, i:i + height, j:j + width].reshape(-1)
                        for i in range(4) for j in range(3)])
    require_close(grid.reshape(12, units), _numpy(dense(windows)),
                  "on a larger map each output pixel must be the Dense layer applied to the "
                  "window below it")


@exercise("convolutionize", 3)
@in_float32
def convolutionize(function) -> None:
    """``function(dense, window=(1, 1))`` turns a Dense layer that read a flattened
    ``window`` x channels map into the equivalent Conv2D."""
    rng = np.random.default_rng(0)
    _convolutionize_case(function, rng, (1, 1), channels=5, activation=None)
    _convolutionize_case(function, rng, (2, 3), channels=4, activation="relu")


def _fusion_model(function, channels: int = 5):
    scores = keras.Input((4, 4, _NUM_CLASSES), name="coarse_scores")
    skip = keras.Input((8, 8, channels), name="skip_features")
    fused = function(scores, skip, "P4")
    return keras.Model([scores, skip], fused)


@exercise("fuse_skip", 3)
@in_float32
def fuse_skip(function) -> None:
    """``function(scores, skip, level)``: FCN's fusion of stride-2s scores with a stride-s skip."""
    rng = np.random.default_rng(1)
    model = _fusion_model(function)
    shape = tuple(model.output.shape)
    require(shape == (None, 8, 8, _NUM_CLASSES),
            f"4x4 scores of {_NUM_CLASSES} classes fused with an 8x8 skip must give 8x8 scores "
            f"of {_NUM_CLASSES} classes, got {shape}: upsample x2 (strides=2, padding='same') "
            "and score the skip with num_classes filters")
    transposed = [layer for layer in model.layers
                  if isinstance(layer, keras.layers.Conv2DTranspose)]
    require(any(layer.trainable and tuple(layer.strides) == (2, 2) for layer in transposed),
            "the x2 upsampling should be learned: a trainable Conv2DTranspose with strides=2 "
            "(UpSampling2D has nothing to learn)")
    scores = rng.normal(size=(1, 4, 4, _NUM_CLASSES)).astype("float32")
    skip = rng.normal(size=(1, 8, 8, 5)).astype("float32")
    start = _numpy(model([scores, skip]))
    require_close(start, _numpy(model([scores, np.zeros_like(skip)])),
                  "at initialisation the skip must add nothing (FCN initialises the skip's score "
                  "layer with zeros, so training starts from the coarser net): "
                  "kernel_initializer='zeros'")
    bilinear = _numpy(keras.ops.image.resize(scores, (8, 8), interpolation="bilinear"))
    require_close(start[:, 2:-2, 2:-2], bilinear[:, 2:-2, 2:-2],
                  "at initialisation the upsampled scores must be bilinear interpolation of the "
                  "coarse ones: kernel 4 (= 2 x stride), padding='same', "
                  "kernel_initializer=BilinearUpsampling()")
    _randomize(model)
    out = _numpy(model([scores, skip]))
    no_skip = _numpy(model([scores, np.zeros_like(skip)]))
    require(not np.allclose(out, no_skip, atol=1e-4),
            "after training the skip must contribute: add the skip's scores to the upsampled "
            "scores")
    nudged = skip.copy()
    nudged[0, 3, 5] += 1.0
    changed = np.abs(_numpy(model([scores, nudged])) - out).max(axis=-1)[0] > 1e-5
    require(changed[3, 5] and changed.sum() == 1,
            "changing one skip pixel must change that output pixel only: score the skip with "
            "a 1x1 convolution (one score vector per skip pixel)")
    only_skip = _numpy(model([np.zeros_like(scores), skip]))
    neither = _numpy(model([np.zeros_like(scores), np.zeros_like(skip)]))
    require_close(out, no_skip + only_skip - neither,
                  "fuse the two score maps by addition (layers.Add): each keeps its own "
                  "contribution")


def _head_model(function, variant: str):
    shapes = {"P3": (8, 8, 6), "P4": (4, 4, 7), "P5": (2, 2, 9)}  # a 64x64 image
    features = {level: keras.Input(shape, name=level) for level, shape in shapes.items()}
    logits = function(features, _NUM_CLASSES, variant)
    return keras.Model(features, logits), shapes


@exercise("fcn_head", 3)
@in_float32
def fcn_head(function) -> None:
    """``function(features, num_classes, variant)``: FCN-32s/16s/8s scores from P3..P5."""
    rng = np.random.default_rng(2)
    for variant, skips in _SKIP_LEVELS.items():
        model, shapes = _head_model(function, variant)
        shape = tuple(model.output.shape)
        stride = 32 // 2 ** len(skips)
        require(shape == (None, 64, 64, _NUM_CLASSES),
                f"FCN-{variant} on a 64x64 image (P5 2x2) must return 64x64 logits of "
                f"{_NUM_CLASSES} classes, got {shape}: after fusing {len(skips)} skip(s) the "
                f"scores are at stride {stride}, so upsample them x{stride}")
        _randomize(model)
        inputs = {level: rng.normal(size=(1, *s)).astype("float32") for level, s in shapes.items()}
        out = _numpy(model(inputs))
        for level in ("P3", "P4"):
            changed = dict(inputs, **{level: inputs[level] + 1.0})
            reads = not np.allclose(_numpy(model(changed)), out, atol=1e-5)
            require(reads == (level in skips),
                    f"FCN-{variant} must {'' if level in skips else 'not '}read {level}: it "
                    f"fuses {', '.join(skips) or 'no skip'} (16s adds P4, 8s adds P4 then P3)")
        changed = dict(inputs, P5=inputs["P5"] + 1.0)
        require(not np.allclose(_numpy(model(changed)), out, atol=1e-5),
                f"FCN-{variant} must score P5 (a 1x1 convolution, 'score_fr') and start from it")
