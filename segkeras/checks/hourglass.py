"""Checks for lab 04, stacked hourglass: the recursive hourglass module, the per-stack losses of
intermediate supervision, the final-stack inference model.

Each check builds or runs the student's answer on a small model and tests what it must do."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from segkeras.checks.core import exercise, in_float32, require, require_close
from segkeras.data.core import IGNORE_LABEL
from segkeras.models.hourglass import hourglass

_SIZE, _FILTERS, _DEPTHS = 16, 8, (1, 2, 3, 4)
_NUM_CLASSES, _NUM_STACKS = 4, 3  # three stacks, so that an answer written for two fails




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


@exercise("hourglass_module", points=3)
@in_float32
def hourglass_module(module: Callable, residual: Callable) -> None:
    """``module(x, depth, filters, name)`` for depths 1..4: the output has the input's shape, the
    module pools ``depth`` times, has ``3 * depth + 1`` residual modules, and with every residual
    an identity computes ``x + nearest_upsample(module(max_pool(x), depth - 1))``."""
    inputs = keras.Input((_SIZE, _SIZE, _FILTERS), name="features")
    one_residual = keras.Model(inputs, residual(inputs, _FILTERS, "one")).count_params()
    x = np.random.default_rng(0).normal(size=(2, _SIZE, _SIZE, _FILTERS)).astype("float32")
    for depth in _DEPTHS:
        inputs = keras.Input((_SIZE, _SIZE, _FILTERS), name="features")
        output = module(inputs, depth, _FILTERS, f"check{depth}")
        require(output is not None, "hourglass_module returns nothing: return the sum at the end.")
        require(tuple(output.shape) == tuple(inputs.shape),
                f"depth={depth}: the output should have the input's shape "
                f"{tuple(inputs.shape)[1:]}, got {tuple(output.shape)[1:]}: upsample back after "
                "pooling and keep `filters` channels.")
        model = keras.Model(inputs, output)
        smallest = _SIZE // 2**depth
        lowest = min(_spatial_sizes(model))
        require(lowest == smallest,
                f"depth={depth} should pool {depth} time(s), down to {smallest}x{smallest} from "
                f"{_SIZE}x{_SIZE}; yours goes down to {lowest}x{lowest}. Recurse with depth - 1 "
                "and use a residual instead of recursing when depth == 1.")
        residuals, remainder = divmod(model.count_params(), one_residual)
        expected = 3 * depth + 1
        require(remainder == 0 and residuals == expected,
                f"depth={depth} should hold {expected} residual modules (per level: one on the "
                "full-resolution branch, one after the pool, one before the upsample; plus one "
                f"at the bottom), that is {expected * one_residual} parameters; yours has "
                f"{model.count_params()}.")
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
    return hourglass(_NUM_CLASSES, num_stacks=num_stacks, depth=1, filters=8,
                     input_shape=(16, 16, 3))


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    masks = rng.integers(0, _NUM_CLASSES, (2, 16, 16)).astype("int32")
    masks[0, :4] = IGNORE_LABEL
    return images, masks


@exercise("intermediate_supervision", points=2)
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


@exercise("final_stack", points=1)
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
