"""Checks for lab 04, stacked hourglass: the recursive hourglass module, the per-stack losses of
intermediate supervision, the final-stack inference model.

Each check builds or runs the student's answer on a small model and tests what it must do."""

from __future__ import annotations

import collections
import importlib
import sys
from collections.abc import Callable

import keras
import numpy as np

from segkeras import train
from segkeras.checks.core import Lab, forbid, in_float32, require, require_close
from segkeras.data.core import IGNORE_LABEL

# the module, not the builder function of the same name that segkeras.models exports
library = importlib.import_module("segkeras.models.hourglass")

LAB = Lab("04_stacked_hourglass",
          {"hourglass_module": 3, "intermediate_supervision": 2, "final_stack": 1})
start, use, guard, total = LAB.start, LAB.use, LAB.guard, LAB.total

_SIZE, _FILTERS, _DEPTHS = 16, 8, (1, 2, 3, 4)
_NUM_CLASSES, _NUM_STACKS = 4, 3  # three stacks, so that an answer written for two fails


def _library_stack_losses(model: keras.Model) -> tuple[dict, dict]:
    """The fallback of ``stack_losses``: segkeras' default loss and weight 1 for every output."""
    return train.per_output(model, train.default_loss()), train.per_output(model, 1.0)


def _max_pool(x: np.ndarray) -> np.ndarray:
    batch, height, width, channels = x.shape
    return x.reshape(batch, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


def _nearest_upsample(x: np.ndarray) -> np.ndarray:
    return x.repeat(2, axis=1).repeat(2, axis=2)


def _identity_hourglass(x: np.ndarray, depth: int) -> np.ndarray:
    """The module when every residual is the identity: ``x + up(hourglass(pool(x)))``."""
    low = _max_pool(x)
    low = _identity_hourglass(low, depth - 1) if depth > 1 else low
    return x + _nearest_upsample(low)


def _spatial_sizes(model: keras.Model) -> set[int]:
    sizes = set()
    for layer in model.layers:
        for tensor in keras.tree.flatten(layer.output):
            if len(tensor.shape) == 4:
                sizes.add(tensor.shape[1])
    return sizes


def _residuals_per_size(model: keras.Model) -> dict[int, int]:
    """How many 3x3 convolutions (one per residual module) work at each spatial size."""
    counts = collections.Counter(
        layer.input.shape[1] for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D) and tuple(layer.kernel_size) == (3, 3)
    )
    return dict(sorted(counts.items(), reverse=True))


def _expected_residuals_per_size(depth: int) -> dict[int, int]:
    """Full resolution: the branch's residual; every lower one: after the pool, before the
    upsample, and the next level's branch (at the bottom: the bottom residual instead)."""
    return {_SIZE: 1, **{_SIZE // 2**level: 3 for level in range(1, depth + 1)}}


def _build_counting_calls(module: Callable, inputs, depth: int):
    """``module(inputs, depth, ...)`` and how many times the module's own code ran (itself
    included): a recursive hourglass of depth d runs d times, a loop once."""
    code = getattr(module, "__code__", None)
    calls = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code is code:
            calls.append(frame.f_locals.get("depth"))

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        output = module(inputs, depth, _FILTERS, f"check{depth}")
    finally:
        sys.setprofile(previous)
    return output, (len(calls) if code is not None else depth)


@LAB.check("hourglass_module", fallback=library.hourglass_module)
@forbid(library.hourglass_module)
@in_float32
def hourglass_module(module: Callable, residual: Callable | None = None) -> None:
    """``module(x, depth, filters, name)`` for depths 1..4: recursive; the output has the input's
    shape and is a sum, not a concatenation; it pools ``depth`` times, holds ``3 * depth + 1``
    residual modules at the paper's resolutions and, with every residual an identity, computes
    ``x + nearest_upsample(module(max_pool(x), depth - 1))``."""
    residual = residual or library._residual
    inputs = keras.Input((_SIZE, _SIZE, _FILTERS), name="features")
    one_residual = keras.Model(inputs, residual(inputs, _FILTERS, "one")).count_params()
    x = np.random.default_rng(0).normal(size=(2, _SIZE, _SIZE, _FILTERS)).astype("float32")
    for depth in _DEPTHS:
        inputs = keras.Input((_SIZE, _SIZE, _FILTERS), name="features")
        output, calls = _build_counting_calls(module, inputs, depth)
        require(output is not None, "hourglass_module returns nothing: return the sum at the end.")
        model = keras.Model(inputs, output)
        require(not any(type(op).__name__ == "Concatenate" for op in model.operations),
                "The hourglass adds the full-resolution branch to the upsampled lower one "
                "(layers.Add()): it does not concatenate them as U-Net does.")
        require(tuple(output.shape) == tuple(inputs.shape),
                f"depth={depth}: the output should have the input's shape "
                f"{tuple(inputs.shape)[1:]}, got {tuple(output.shape)[1:]}: upsample back after "
                "pooling, keep `filters` channels and add the two branches.")
        smallest = _SIZE // 2**depth
        lowest = min(_spatial_sizes(model))
        require(lowest == smallest,
                f"depth={depth} should pool {depth} time(s), down to {smallest}x{smallest} from "
                f"{_SIZE}x{_SIZE}; yours goes down to {lowest}x{lowest}. Recurse with depth - 1 "
                "and use a residual instead of recursing when depth == 1.")
        require(calls == depth,
                f"The hourglass is recursive: a depth-{depth} hourglass_module calls "
                f"hourglass_module(low, depth - 1, filters, name) inside, down to depth 1 "
                f"({depth} calls in all); yours ran {calls} time(s). Write the recursion, not a "
                "loop.")
        residuals, remainder = divmod(model.count_params(), one_residual)
        expected = 3 * depth + 1
        require(remainder == 0 and residuals == expected,
                f"depth={depth} should hold {expected} residual modules (per level: one on the "
                "full-resolution branch, one after the pool, one before the upsample; plus one "
                f"at the bottom), that is {expected * one_residual} parameters; yours has "
                f"{model.count_params()}.")
        placement = _residuals_per_size(model)
        require(placement == _expected_residuals_per_size(depth),
                f"depth={depth}: residual modules per resolution {placement}, the paper has "
                f"{_expected_residuals_per_size(depth)}. Each level is: max-pool, residual, "
                "(the deeper hourglass), residual, and only then upsample: the residuals work "
                "at the low resolution.")
        model.set_weights([np.zeros_like(weight) for weight in model.get_weights()])
        require_close(keras.ops.convert_to_numpy(model(x, training=False)),
                      _identity_hourglass(x, depth),
                      f"depth={depth}: with every residual an identity the module should give "
                      "x + upsample(hourglass(maxpool(x))): max-pool 2x2, recurse, nearest "
                      "upsampling x2, then add the full-resolution branch", atol=1e-3)


def _sparse_cross_entropy(masks: np.ndarray, logits: np.ndarray) -> float:
    """Mean over non-ignored pixels of -log softmax(logits)[label]."""
    logits = logits.astype("float64")
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    valid = masks != IGNORE_LABEL
    labels = np.where(valid, masks, 0)[..., None]
    return float(-np.take_along_axis(log_probs, labels, axis=-1)[..., 0][valid].mean())


def _small_hourglass(num_stacks: int = _NUM_STACKS) -> keras.Model:
    return library.hourglass(_NUM_CLASSES, num_stacks=num_stacks, depth=1, filters=8,
                             input_shape=(16, 16, 3))


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    masks = rng.integers(0, _NUM_CLASSES, (2, 16, 16)).astype("int32")
    masks[0, :4] = IGNORE_LABEL
    return images, masks


@LAB.check("intermediate_supervision", fallback=_library_stack_losses)
@forbid(train.per_output, train.default_loss)
@in_float32
def intermediate_supervision(stack_losses: Callable) -> None:
    """``stack_losses(model) -> (losses, loss_weights)``: dicts keyed by the output names, a
    sparse cross-entropy on logits ignoring 255 and a positive weight for every stack."""
    model = _small_hourglass()
    answer = stack_losses(model)
    require(isinstance(answer, tuple) and len(answer) == 2,
            "Return a pair (losses, loss_weights) of dicts.")
    losses, weights = answer
    names = sorted(model.output_names)
    for label, value in (("losses", losses), ("loss_weights", weights)):
        require(isinstance(value, dict) and sorted(value) == names,
                f"{label} must be a dict with one entry per model output, keyed by "
                f"model.output_names ({', '.join(names)} for a {_NUM_STACKS}-stack model); got "
                f"{sorted(value) if isinstance(value, dict) else type(value).__name__}.")
    require(all(float(weight) > 0 for weight in weights.values()),
            "Every stack needs a positive loss weight: intermediate supervision trains each "
            f"stack on its own prediction; got {weights}.")

    images, masks = _batch()
    logits = np.random.default_rng(1).normal(size=(2, 16, 16, _NUM_CLASSES)).astype("float32")
    expected = _sparse_cross_entropy(masks, logits)
    for name in names:
        try:
            value = float(keras.ops.convert_to_numpy(losses[name](masks, logits)))
        except Exception:  # TensorFlow rejects the label 255 unless the loss ignores it
            value = float("nan")
        require(abs(value - expected) < 1e-3,
                f"The loss of {name} gives {value:.4f} where sparse categorical cross-entropy "
                f"on logits ignoring pixels labelled {IGNORE_LABEL} gives {expected:.4f}: use "
                f"from_logits=True (the model outputs logits) and ignore_class={IGNORE_LABEL}.")

    model.compile(optimizer="sgd", loss=losses, loss_weights=weights)
    outputs = model(images, training=False)
    total = sum(float(weights[name]) * _sparse_cross_entropy(
        masks, keras.ops.convert_to_numpy(outputs[name])) for name in names)
    logged = float(keras.ops.convert_to_numpy(model.compute_loss(
        images, {name: masks for name in names}, outputs, training=False)))
    require(abs(logged - total) < 1e-3 * max(1.0, total),
            f"Compiled with your dicts the model's loss is {logged:.4f}, expected the weighted "
            f"sum of the stacks' losses {total:.4f}.")


@LAB.check("final_stack", fallback=library.final_stack_model)
@forbid(library.final_stack_model)
@in_float32
def final_stack(make_final: Callable) -> None:
    """``make_final(model)``: a model with one output, the last stack's logits, sharing the
    trained model's layers and weights."""
    model = _small_hourglass()
    final = make_final(model)
    require(isinstance(final, keras.Model), "Return a keras.Model (keras.Model(inputs, output)).")
    outputs = keras.tree.flatten(final.outputs)
    require(len(outputs) == 1,
            f"The inference model should have one output (the last stack), it has {len(outputs)}.")
    own = {id(weight) for weight in model.weights}
    require(all(id(weight) in own for weight in final.weights),
            "The inference model has weights of its own: build it from the trained model's "
            "input and last output tensor (no new layers), so it shares the trained weights.")
    images, _ = _batch()
    expected = keras.ops.convert_to_numpy(model(images, training=False)[f"stack_{_NUM_STACKS}"])
    actual = keras.tree.flatten(final(images, training=False))[0]
    require_close(keras.ops.convert_to_numpy(actual), expected,
                  f"The output should be the last stack's logits (stack_{_NUM_STACKS} of a "
                  f"{_NUM_STACKS}-stack model), the most refined prediction")
