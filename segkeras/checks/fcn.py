"""Checks for lab 01, fully convolutional networks (Long, Shelhamer & Darrell, CVPR 2015).

Each check builds the student's layer or head on small random inputs and tests what it must do:
a convolutionised ``Dense`` gives the same numbers on its window and slides over a larger map; the
skip fusion doubles the resolution with a learned, bilinear-initialised transposed convolution and
adds zero-initialised 1x1 scores of the skip; the FCN head is a cascade of such fusions, coarsest
first, whose final scores alone are upsampled to the image, bilinearly. Answers that call the
library's own implementation (``segkeras.models.fcn``) are refused.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import keras
import numpy as np

from segkeras.checks.core import (
    CheckFailed,
    Lab,
    _write_it_yourself,
    answer_model,
    in_float32,
    require,
    require_close,
)
from segkeras.errors import SegkerasError
from segkeras.fcn_stages import initialize_from
from segkeras.grading.answer import Answer
from segkeras.grading.probes import probe
from segkeras.models.fcn import convolutionize as library_convolutionize
from segkeras.models.fcn import fcn as library_fcn
from segkeras.models.fcn import fcn_head as library_fcn_head
from segkeras.models.fcn import fuse_skip as library_fuse_skip

LAB = Lab("01_fcn", {"convolutionize": 2, "fuse_skip": 3, "fcn_head": 4})
PRIVATE = ()  # no references of its own: the fallbacks are the library's, forbidden as answers
start, use, guard, total = LAB.start, LAB.use, LAB.guard, LAB.total

_NUM_CLASSES = 3
_IMAGE = 64
_FEATURES = {"P3": (8, 8, 6), "P4": (4, 4, 7), "P5": (2, 2, 9)}  # of a 64x64 image
_SKIPS = {"8s": ("P4", "P3"), "16s": ("P4",), "32s": ()}  # checked finest first: richest hints

# What implements each exercise: forbidden while the answer runs ("write it yourself").
_FORBID = {"convolutionize": (library_convolutionize,),
           "fuse_skip": (library_fuse_skip, library_fcn_head, library_fcn),
           "fcn_head": (library_fcn_head, library_fcn)}

# The code of those functions, taken when this module is imported, before any check swaps it:
# in the kernel an answer that kept a forbidden function's ``__code__`` from before the swap
# (``types.FunctionType(convolutionize.__code__, ...)``) still runs this very code object, which
# the probes watch for. (The grader's worker swaps before the answer is defined: what an answer
# keeps there is the stub.)
_ORIGINAL_CODE = {function: function.__code__ for function in (
    library_convolutionize, library_fuse_skip, library_fcn_head, library_fcn)}


def _refusing_kept_code(function: Callable, *targets: Callable) -> Callable:
    """``function``, failing with "write it yourself" when the original code of one of
    ``targets`` runs during its call, however the answer reached it (seen by a profiler)."""
    forbidden = {_ORIGINAL_CODE[target]: f"{target.__module__}.{target.__qualname__}"
                 for target in targets}
    ran: list[str] = []

    def watch(frame, event, arg) -> None:
        if event == "call" and frame.f_code in forbidden:
            ran.append(forbidden[frame.f_code])

    @functools.wraps(function)
    def run(*args, **kwargs):
        previous = sys.getprofile()
        sys.setprofile(watch)
        try:
            result = function(*args, **kwargs)
        finally:
            sys.setprofile(previous)
        if ran:
            raise CheckFailed(_write_it_yourself(ran[0]))
        return result

    return run


def _numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype="float64")


def _randomize(model: keras.Model, seed: int = 0) -> None:
    """Give every weight of ``model`` random positive values, as after training: no part of it
    stays zero (positive, so a BatchNormalization variance stays valid)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.uniform(0.2, 1.0, size=tuple(weight.shape)).astype(weight.dtype))


def _bilinear(maps: np.ndarray, size: int) -> np.ndarray:
    return _numpy(keras.ops.image.resize(maps.astype("float32"), (size, size),
                                         interpolation="bilinear"))


# --- convolutionize ------------------------------------------------------------------------------


def _dense(rng, inputs: int, units: int, activation: str | None) -> keras.layers.Dense:
    dense = keras.layers.Dense(units, activation=activation)
    dense.build((None, inputs))
    dense.set_weights([rng.normal(size=(inputs, units)), rng.normal(size=units)])
    return dense


@probe
def convolutionize_layer(function, dense: keras.layers.Dense, window: tuple):
    """``function(dense)`` for a 1x1 window (the lab's default), else ``function(dense,
    window)``; an answer running the library's original code fails."""
    function = _refusing_kept_code(function, *_FORBID["convolutionize"])
    return function(dense) if tuple(window) == (1, 1) else function(dense, tuple(window))


def _convolutionize_case(answer: Answer, window: tuple, channels: int, activation) -> None:
    rng = answer.rng
    height, width = window
    units = 4
    dense = _dense(rng, height * width * channels, units, activation)
    conv = answer.probe(convolutionize_layer, dense, window)
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
    slides = ("The point of convolutionizing is that the classifier slides over a larger map: a "
              f"Conv2D with kernel_size={window} (no Flatten or Reshape, which fix the size)")
    try:
        grid = _numpy(conv(larger))
    except Exception as error:  # e.g. a Flatten + Dense that only fits the window
        require(False, f"{slides[0].lower()}{slides[1:]}; on a {height + 3}x{width + 2} map "
                       f"yours raised {type(error).__name__}")
    require(grid.shape == (1, 4, 3, units),
            f"on a larger {height + 3}x{width + 2} map expect a 4x3 grid of scores (one per "
            f"window position: stride 1, 'valid'); got shape {grid.shape}. {slides}")
    windows = np.stack([larger[0, i:i + height, j:j + width].reshape(-1)
                        for i in range(4) for j in range(3)])
    require_close(grid.reshape(12, units), _numpy(dense(windows)),
                  f"on a larger map each output pixel must be the Dense layer applied to the "
                  f"window below it. {slides}")


@LAB.check("convolutionize", forbid=_FORBID["convolutionize"], fallback=library_convolutionize)
@in_float32
def convolutionize(answer: Answer) -> None:
    """``answer(dense, window=(1, 1))`` turns a Dense layer that read a flattened
    ``window`` x channels map into the equivalent Conv2D."""
    rng = answer.rng
    _convolutionize_case(answer, (1, 1), channels=int(rng.integers(3, 7)), activation=None)
    window = (int(rng.integers(2, 4)), int(rng.integers(2, 5)))
    _convolutionize_case(answer, window, channels=int(rng.integers(3, 6)), activation="relu")


# --- fuse_skip -----------------------------------------------------------------------------------


@probe
def fusion_model(function, channels: int) -> keras.Model:
    """The model of ``function(scores, skip, "P4")`` on 4x4 scores and an 8x8 skip."""
    function = _refusing_kept_code(function, *_FORBID["fuse_skip"])
    scores = keras.Input((4, 4, _NUM_CLASSES), name="coarse_scores")
    skip = keras.Input((8, 8, channels), name="skip_features")
    return answer_model([scores, skip], function(scores, skip, "P4"))


def _learned_x2(model: keras.Model) -> int:
    """How many trainable stride-2 transposed convolutions ``model`` has."""
    return sum(isinstance(layer, keras.layers.Conv2DTranspose) and layer.trainable
               and tuple(layer.strides) == (2, 2) for layer in model.layers)


def _check_x2_responds(model: keras.Model, scores: np.ndarray, skip: np.ndarray, rng) -> None:
    """The x2 upsampling *is* the transposed convolution: changing its kernel must change the
    fused scores by what the layer itself then adds (not a fixed resize beside a transposed
    convolution multiplied by zero, or by a small number)."""
    base = _numpy(model([scores, skip]))
    responses = []
    for layer in model.layers:
        if not (isinstance(layer, keras.layers.Conv2DTranspose) and layer.trainable
                and tuple(layer.strides) == (2, 2)):
            continue
        original = _numpy(layer.kernel)
        nudge = rng.normal(size=original.shape)
        try:
            before = _numpy(layer(scores))
            layer.kernel.assign((original + nudge).astype(layer.kernel.dtype))
            expected = _numpy(layer(scores)) - before
        except Exception:  # the layer reads something else than the scores
            expected = None
        changed = _numpy(model([scores, skip])) - base
        layer.kernel.assign(original.astype(layer.kernel.dtype))
        if expected is not None and expected.shape == changed.shape and np.allclose(
                changed, expected, atol=1e-4 * (1 + np.abs(expected).max())):
            return
        responses.append(float(np.abs(changed).max()) / (float(np.abs(expected).max()) + 1e-12)
                         if expected is not None and expected.shape == changed.shape else 0.0)
    require(False, "the x2 upsampling must be the transposed convolution itself, applied to the "
                   "scores: changing its kernel must change the fused scores by what the layer "
                   f"computes (yours changed them {max(responses, default=0.0):.2g} times as "
                   "much); no fixed resize beside it, no factor on it")


@LAB.check("fuse_skip", forbid=_FORBID["fuse_skip"], fallback=library_fuse_skip)
@in_float32
def fuse_skip(answer: Answer) -> None:
    """``answer(scores, skip, level)``: FCN's fusion of stride-2s scores with a stride-s skip."""
    rng = answer.rng
    model = answer.probe(fusion_model, 5)
    shape = tuple(model.output.shape)
    require(shape == (None, 8, 8, _NUM_CLASSES),
            f"4x4 scores of {_NUM_CLASSES} classes fused with an 8x8 skip must give 8x8 scores "
            f"of {_NUM_CLASSES} classes, got {shape}: upsample x2 (strides=2, padding='same') "
            "and score the skip with num_classes filters")
    require(_learned_x2(model) >= 1,
            "the x2 upsampling should be learned: a trainable Conv2DTranspose with strides=2 "
            "(a fixed resize such as UpSampling2D has nothing to learn)")
    scores = rng.normal(size=(1, 4, 4, _NUM_CLASSES)).astype("float32")
    skip = rng.normal(size=(1, 8, 8, 5)).astype("float32")
    start_out = _numpy(model([scores, skip]))
    require_close(start_out, _numpy(model([scores, np.zeros_like(skip)])),
                  "at initialisation the skip must add nothing (FCN initialises the skip's score "
                  "layer with zeros, so training starts from the coarser net): "
                  "kernel_initializer='zeros'")
    bilinear = _bilinear(scores, 8)
    require_close(start_out[:, 2:-2, 2:-2], bilinear[:, 2:-2, 2:-2],
                  "at initialisation the upsampled scores must be bilinear interpolation of the "
                  "coarse ones: kernel 4 (= 2 x stride), padding='same', "
                  "kernel_initializer=BilinearUpsampling()")
    _check_x2_responds(model, scores, skip, rng)
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
    doubled = _numpy(model([scores, 2 * skip]))
    require_close(doubled - no_skip, 2 * (out - no_skip),
                  "class scores are linear in the features: no activation on the skip's 1x1 "
                  "score layer (FCN's scores are logits)")
    try:
        initialize_from(answer.probe(fusion_model, 5), answer.probe(fusion_model, 5))
    except SegkerasError:
        require(False, "name the layers after level (f'upscore_to_{level}', f'score_{level}'): "
                       "the lab's staged training carries FCN-16s' weights over to FCN-8s by "
                       "layer name, so every build must give the same names")


# --- fcn_head ------------------------------------------------------------------------------------


class _RecordingFuse:
    """The library's fusion, recording each call: the check sees the cascade the head builds."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, scores, skip, level):
        fused = library_fuse_skip(scores, skip, level)
        self.calls.append((scores, skip, level, fused))
        return fused


@probe
def head_model(function, variant: str) -> tuple[keras.Model, list[dict]]:
    """The model of ``function(features, num_classes, variant, fuse=...)`` on P3..P5 inputs, and
    what the head did with ``fuse`` (a recording library fusion): each call's level, whether it
    got that level's features themselves, the shape of the scores it got, and whether those were
    what the previous call returned."""
    function = _refusing_kept_code(function, *_FORBID["fcn_head"])
    features = {level: keras.Input(shape, name=level) for level, shape in _FEATURES.items()}
    fuse = _RecordingFuse()
    model = answer_model(features, function(features, _NUM_CLASSES, variant, fuse=fuse))
    calls, previous = [], None
    for scores, skip, level, fused in fuse.calls:
        calls.append({"level": str(level), "skip_is_features": skip is features.get(level),
                      "scores_shape": [int(n) if n is not None else -1 for n in scores.shape[1:]],
                      "chained": scores is previous})
        previous = fused
    return model, calls


def _spatial(tensor) -> int | None:
    shape = getattr(tensor, "shape", None)
    return shape[1] if shape is not None and len(shape) == 4 else None


def _straight_to_image(model: keras.Model, final_size: int) -> bool:
    """Whether some operation maps a map coarser than ``final_size`` straight to the image."""
    for operation in model.operations:
        try:
            inputs, output = operation.input, operation.output
        except (AttributeError, ValueError):
            continue
        coarse = [_spatial(x) for x in keras.tree.flatten(inputs)]
        if _spatial(output) == _IMAGE and any(s is not None and s < final_size for s in coarse):
            return True
    return False


def _check_cascade(model: keras.Model, calls: list[dict], variant: str) -> None:
    skips = _SKIPS[variant]
    final_stride = 32 // 2 ** len(skips)
    levels = tuple(call["level"] for call in calls)
    if levels != skips:
        require(not _straight_to_image(model, _IMAGE // final_stride),
                f"FCN-{variant} is a cascade of learned x2 upsamplings, not a sum of levels each "
                "upsampled straight to the image: upsample the P5 scores x2 and add the P4 "
                "scores (fuse), then the same with P3; only the final stride-8 scores go to the "
                "image size")
        require(_learned_x2(model) >= len(skips),
                f"FCN-{variant}'s x2 upsamplings are learned: fuse each skip with `fuse` (your "
                "fuse_skip: a transposed convolution initialised to bilinear, then learned); a "
                "fixed resize (UpSampling2D, image.resize) has nothing to learn")
        require(False, f"FCN-{variant} fuses {', '.join(skips) or 'no skip'} with the `fuse` "
                       f"argument, coarsest first (16s adds P4, 8s adds P4 then P3); yours "
                       f"called fuse for {', '.join(levels) or 'no level'}")
    for index, call in enumerate(calls):
        level = call["level"]
        require(call["skip_is_features"],
                f"give fuse the {level} features themselves: fuse(scores, features['{level}'], "
                f"'{level}')")
        if index == 0:
            require(tuple(call["scores_shape"]) == (2, 2, _NUM_CLASSES),
                    "the cascade starts from the class scores of P5 (score_fr: a 1x1 "
                    "convolution with num_classes filters)")
        else:
            require(call["chained"],
                    f"chain the fusions: fuse {level} into the scores the previous fuse returned")


def _check_final_upsampling(model: keras.Model, variant: str, rng) -> None:
    """One pixel of the finest level read must spread over the image as bilinear interpolation."""
    finest = (_SKIPS[variant] or ("P5",))[-1]
    stride = 32 // 2 ** len(_SKIPS[variant])
    inputs = {level: rng.normal(size=(1, *shape)).astype("float32")
              for level, shape in _FEATURES.items()}
    size = _FEATURES[finest][0]
    row, column = size // 2 - 1, size // 2
    impulse = np.zeros((1, size, size, 1), dtype="float32")
    impulse[0, row, column] = 1.0
    nudged = dict(inputs, **{finest: inputs[finest] + impulse})
    response = _numpy(model(nudged)) - _numpy(model(inputs))
    spread = _bilinear(impulse, _IMAGE)[..., 0:1]
    per_class = (spread * response).sum(axis=(0, 1, 2)) / (spread ** 2).sum()
    require(np.allclose(response, spread * per_class, atol=1e-4 * (1 + np.abs(response).max())),
            f"upsample FCN-{variant}'s final stride-{stride} scores to the image with fixed "
            f"bilinear interpolation (UpSampling2D({stride}, interpolation='bilinear')): one "
            f"score pixel must spread smoothly over its neighbours, not fill a block of "
            f"{stride}x{stride} pixels (nearest neighbour) or follow learned weights")


@LAB.check("fcn_head", forbid=_FORBID["fcn_head"], fallback=library_fcn_head)
@in_float32
def fcn_head(answer: Answer) -> None:
    """``answer(features, num_classes, variant, fuse=...)``: FCN-32s/16s/8s from P3..P5."""
    rng = answer.rng
    models = {}
    for variant, skips in _SKIPS.items():
        model, calls = answer.probe(head_model, variant)
        stride = 32 // 2 ** len(skips)
        shape = tuple(model.output.shape)
        require(shape == (None, _IMAGE, _IMAGE, _NUM_CLASSES),
                f"FCN-{variant} on a 64x64 image (P5 2x2) must return 64x64 logits of "
                f"{_NUM_CLASSES} classes, got {shape}: after fusing {len(skips)} skip(s) the "
                f"scores are at stride {stride}, so upsample them x{stride}")
        inputs = {level: rng.normal(size=(1, *s)).astype("float32")
                  for level, s in _FEATURES.items()}
        initial = _numpy(model(inputs))
        _randomize(model)
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
        _check_cascade(model, calls, variant)
        require(not np.any(initial),
                f"a new FCN-{variant} must predict all-zero scores: initialise score_fr with "
                "zeros (kernel_initializer='zeros'), as the paper does")
        _check_final_upsampling(model, variant, rng)
        models[variant] = model
    try:
        initialize_from(models["16s"], models["32s"])
        initialize_from(models["8s"], models["16s"])
    except SegkerasError:
        require(False, "name P5's score layer 'score_fr' in every variant: the lab trains "
                       "FCN-32s, then initialises FCN-16s (and FCN-8s) from it by layer name")
