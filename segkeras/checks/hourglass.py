"""Checks for lab 04, stacked hourglass: the recursive hourglass module, the per-stack losses of
intermediate supervision, the final-stack inference model.

Each check is a judge: it talks to the student's function through an
:class:`~segkeras.grading.answer.Answer` (``answer.probe(probe_fn, ...)`` for what must run where
the answer lives: building a model while counting the recursion, compiling a model with the
answer's losses) and gets data back (models, arrays, numbers), which it compares with references
that only it computes (:data:`PRIVATE`). Inputs are drawn from ``answer.rng``."""

from __future__ import annotations

import collections
import importlib
from collections.abc import Callable

import keras
import numpy as np

from segkeras import train
from segkeras.checks.core import Lab, answer_model, in_float32, require, require_close
from segkeras.data.core import IGNORE_LABEL
from segkeras.grading.answer import Answer
from segkeras.grading.probes import answer_files, nesting, probe

# the module, not the builder function of the same name that segkeras.models exports
library = importlib.import_module("segkeras.models.hourglass")

LAB = Lab("04_stacked_hourglass",
          {"hourglass_module": 3, "intermediate_supervision": 2, "final_stack": 1})
start, use, guard, total = LAB.start, LAB.use, LAB.guard, LAB.total

_SIZE, _FILTERS, _DEPTHS = 16, 8, (1, 2, 3, 4)
_NUM_CLASSES = 4
_LOSS_STACKS = 3  # three stacks, so that an answer written for two fails
_FINAL_STACKS = 10  # ten: model.output_names sorts "stack_10" before "stack_2"
_STACK_WEIGHT = 1.0  # the lab's (and the paper's) weight of every stack's loss


def _library_stack_losses(model: keras.Model) -> tuple[dict, dict]:
    """The fallback of ``stack_losses``: segkeras' default loss and weight 1 for every output."""
    return train.per_output(model, train.default_loss()), train.per_output(model, 1.0)


# --- exercise 1: the recursive hourglass module ------------------------------------------------

@probe
def _probe_module(module: Callable, depth: int) -> dict:
    """Probe: the answer on a symbolic (16, 16, 8) input as a model, and the deepest nesting of
    any one function of the answer's source meanwhile (its recursion depth)."""
    inputs = keras.Input((_SIZE, _SIZE, _FILTERS), name="features")
    output, nested = nesting(answer_files(module),
                             lambda: module(inputs, depth, _FILTERS, f"check{depth}"))
    return {"model": None if output is None else answer_model(inputs, output), "nesting": nested}


def _one_residual_parameters() -> int:
    """The parameters of the lab's residual module with ``filters`` channels in and out."""
    inputs = keras.Input((_SIZE, _SIZE, _FILTERS), name="features")
    return keras.Model(inputs, library._residual(inputs, _FILTERS, "one")).count_params()


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


@LAB.check("hourglass_module", forbid=[library.hourglass_module],
           fallback=library.hourglass_module, timeout=60)
@in_float32
def hourglass_module(module: Answer) -> None:
    """``module(x, depth, filters, name)`` for depths 1..4: recursive (a function of the answer
    nests ``depth`` calls); the output has the input's shape and is a sum, not a concatenation;
    it pools ``depth`` times, holds ``3 * depth + 1`` residual modules at the paper's resolutions
    and, with every residual an identity, computes
    ``x + nearest_upsample(module(max_pool(x), depth - 1))``."""
    one_residual = _one_residual_parameters()
    x = module.rng.normal(size=(2, _SIZE, _SIZE, _FILTERS)).astype("float32")
    for depth in _DEPTHS:
        built = module.probe(_probe_module, depth)
        model = built["model"]
        require(model is not None, "hourglass_module returns nothing: return the sum at the end.")
        require(not any(type(op).__name__ == "Concatenate" for op in model.operations),
                "The hourglass adds the full-resolution branch to the upsampled lower one "
                "(layers.Add()): it does not concatenate them as U-Net does.")
        input_shape, output_shape = tuple(model.input.shape), tuple(model.output.shape)
        require(output_shape == input_shape,
                f"depth={depth}: the output should have the input's shape {input_shape[1:]}, "
                f"got {output_shape[1:]}: upsample back after pooling, keep `filters` channels "
                "and add the two branches.")
        smallest = _SIZE // 2**depth
        lowest = min(_spatial_sizes(model))
        require(lowest == smallest,
                f"depth={depth} should pool {depth} time(s), down to {smallest}x{smallest} from "
                f"{_SIZE}x{_SIZE}; yours goes down to {lowest}x{lowest}. Recurse with depth - 1 "
                "and use a residual instead of recursing when depth == 1.")
        require(built["nesting"] >= depth,
                f"The hourglass is recursive: a depth-{depth} hourglass_module calls "
                f"hourglass_module(low, depth - 1, filters, name) inside, down to depth 1 "
                f"({depth} calls nested in one another); your code nests at most "
                f"{built['nesting']} call(s) of one function. Write the recursion, not a loop.")
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


# --- exercise 2: intermediate supervision ------------------------------------------------------

def _stacked_model(num_stacks: int) -> keras.Model:
    """A small model shaped like a stacked hourglass: one output per stack, ``{"stack_1": ...,
    "stack_N": ...}`` made by the layers of the same names, each stack refining the previous."""
    image = keras.Input((_SIZE, _SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(image)
    outputs = {}
    for name in library.output_names(num_stacks):
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=f"{name}_hg")(x)
        outputs[name] = keras.layers.Conv2D(_NUM_CLASSES, 1, name=name)(x)
    return keras.Model(image, outputs, name=f"hourglass{num_stacks}")


def _batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    images = rng.uniform(0, 255, (2, _SIZE, _SIZE, 3)).astype("float32")
    masks = rng.integers(0, _NUM_CLASSES, (2, _SIZE, _SIZE)).astype("int32")
    masks[0, : int(rng.integers(2, 6))] = IGNORE_LABEL
    return images, masks


def _number(value) -> float | None:
    try:
        return float(keras.ops.convert_to_numpy(value))
    except Exception:  # not a number: the judge says what it expected
        return None


@probe
def _probe_stack_losses(stack_losses: Callable, images: np.ndarray, masks: np.ndarray,
                        logits: np.ndarray) -> dict:
    """Probe: a 3-stack model, the answer's dicts for it, each loss on (masks, logits) and the
    model's logged losses when compiled with them and evaluated on (images, masks) (Keras'
    compiled step, as in training)."""
    model = _stacked_model(_LOSS_STACKS)
    answer = stack_losses(model)
    report = {"answer": type(answer).__name__, "output_names": list(model.output_names)}
    if not (isinstance(answer, tuple) and len(answer) == 2):
        return report
    losses, weights = answer
    report["losses"] = sorted(losses) if isinstance(losses, dict) else type(losses).__name__
    report["weights"] = ({str(name): _number(weight) for name, weight in weights.items()}
                         if isinstance(weights, dict) else type(weights).__name__)
    names = sorted(model.output_names)
    if not (isinstance(weights, dict) and report["losses"] == sorted(report["weights"]) == names):
        return report
    values = {}
    for name in model.output_names:
        try:
            values[name] = _number(losses[name](masks, logits))
        except Exception:  # TensorFlow rejects the label 255 unless the loss ignores it
            values[name] = None
    report["loss_values"] = values
    if None in values.values() or None in report["weights"].values():
        return report
    model.compile(optimizer="sgd", loss=losses, loss_weights=weights)
    targets = {name: masks for name in model.output_names}
    report["logged"] = model.evaluate(images, targets, batch_size=len(images), verbose=0,
                                      return_dict=True)["loss"]
    outputs = model.predict(images, batch_size=len(images), verbose=0)
    report["outputs"] = {name: np.asarray(value) for name, value in outputs.items()}
    return report


def _sparse_cross_entropy(masks: np.ndarray, logits: np.ndarray) -> float:
    """Mean over non-ignored pixels of -log softmax(logits)[label]."""
    logits = logits.astype("float64")
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    valid = masks != IGNORE_LABEL
    labels = np.where(valid, masks, 0)[..., None]
    return float(-np.take_along_axis(log_probs, labels, axis=-1)[..., 0][valid].mean())


@LAB.check("intermediate_supervision", forbid=[train.per_output, train.default_loss],
           fallback=_library_stack_losses)
@in_float32
def intermediate_supervision(stack_losses: Answer) -> None:
    """``stack_losses(model) -> (losses, loss_weights)``: dicts keyed by the output names, a
    sparse cross-entropy on logits ignoring 255 and weight 1.0 for every stack."""
    images, masks = _batch(stack_losses.rng)
    logits = stack_losses.rng.normal(size=(*masks.shape, _NUM_CLASSES)).astype("float32")
    report = stack_losses.probe(_probe_stack_losses, images, masks, logits)
    require(report["answer"] == "tuple" and "losses" in report,
            "Return a pair (losses, loss_weights) of dicts.")
    names = sorted(report["output_names"])
    for label, value in (("losses", report["losses"]), ("loss_weights", report["weights"])):
        keys = sorted(value) if isinstance(value, dict) else value  # else: the type's name
        require(keys == names,
                f"{label} must be a dict with one entry per model output, keyed by "
                f"model.output_names ({', '.join(names)} for a {_LOSS_STACKS}-stack model); got "
                f"{keys}.")
    weights = report["weights"]
    require(all(weights[name] == _STACK_WEIGHT for name in names),
            f"Every stack's loss gets weight {_STACK_WEIGHT}, as in the paper: intermediate "
            "supervision trains each stack on its own prediction as much as the last one (a "
            f"tiny or zero weight turns it off); got {weights}.")
    expected = _sparse_cross_entropy(masks, logits)
    for name in names:
        value = report["loss_values"][name]
        require(value is not None and abs(value - expected) < 1e-3,
                f"The loss of {name} gives "
                f"{'an error' if value is None else format(value, '.4f')} where sparse "
                f"categorical cross-entropy on logits ignoring pixels labelled {IGNORE_LABEL} "
                f"gives {expected:.4f}: use from_logits=True (the model outputs logits) and "
                f"ignore_class={IGNORE_LABEL}.")
    total = sum(weights[name] * _sparse_cross_entropy(masks, report["outputs"][name])
                for name in names)
    require(abs(report["logged"] - total) < 1e-3 * max(1.0, total),
            f"Compiled with your dicts the model's loss is {report['logged']:.4f}, expected the "
            f"weighted sum of the stacks' losses {total:.4f}.")


# --- exercise 3: the inference model -----------------------------------------------------------

@probe
def _probe_final_stack(make_final: Callable, images: np.ndarray) -> dict:
    """Probe: the answer's inference model of a 10-stack model: its output count, whether it
    shares the model's weights, its prediction and every stack's on ``images``."""
    model = _stacked_model(_FINAL_STACKS)
    final = make_final(model)
    if not isinstance(final, keras.Model):
        return {"model": type(final).__name__}
    own = {id(weight) for weight in model.weights}
    outputs = keras.tree.flatten(final.outputs)
    report = {"model": "Model", "outputs": len(outputs),
              "shares": all(id(weight) in own for weight in final.weights)}
    if len(outputs) == 1:
        prediction = keras.tree.flatten(final(images, training=False))[0]
        report["prediction"] = keras.ops.convert_to_numpy(prediction)
        report["stacks"] = {name: keras.ops.convert_to_numpy(value)
                            for name, value in model(images, training=False).items()}
    return report


@LAB.check("final_stack", forbid=[library.final_stack_model], fallback=library.final_stack_model)
@in_float32
def final_stack(make_final: Answer) -> None:
    """``make_final(model)``: a model with one output, the last stack's logits, sharing the
    trained model's layers and weights."""
    images, _ = _batch(make_final.rng)
    report = make_final.probe(_probe_final_stack, images)
    require(report["model"] == "Model",
            f"Return a keras.Model (keras.Model(inputs, output)), not a {report['model']}.")
    require(report["outputs"] == 1,
            f"The inference model should have one output (the last stack), it has "
            f"{report['outputs']}.")
    require(report["shares"],
            "The inference model has weights of its own: build it from the trained model's "
            "input and last output tensor (no new layers), so it shares the trained weights.")
    last = f"stack_{_FINAL_STACKS}"
    chosen = [name for name, value in report["stacks"].items()
              if value.shape == report["prediction"].shape
              and np.allclose(value, report["prediction"], atol=1e-4)]
    alphabetical = sorted(report["stacks"])[-1]  # stack_9
    require(last in chosen or alphabetical not in chosen,
            f"Your model outputs {alphabetical} of a {_FINAL_STACKS}-stack model: "
            "model.output_names is in alphabetical order (stack_10 before stack_2), so neither "
            f"its last name nor max() is the last stack; the last is {last}: "
            "stack_<number of stacks>.")
    require_close(report["prediction"], report["stacks"][last],
                  f"The output should be the last stack's logits ({last} of a "
                  f"{_FINAL_STACKS}-stack model), the most refined prediction")


PRIVATE = (_library_stack_losses, _identity_hourglass, _max_pool, _nearest_upsample,
           _expected_residuals_per_size, _sparse_cross_entropy)
"""The references of this module's judges: refused if a student's code calls them."""
