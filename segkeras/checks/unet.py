"""Checks for lab 03, U-Net and transfer learning: the decoder block (upsample with a 2x2
up-convolution, *concatenate* the skip, two 3x3 convolutions), freezing the encoder for transfer
learning, unfreezing it for fine-tuning.

Each check builds or runs the student's answer on a small model and tests what it must do; the
lab trains the U-Net built from the student's block (:func:`use`)."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from segkeras import backbones
from segkeras.checks.core import CheckFailed, Lab, answer_model, in_float32, require
from segkeras.grading.answer import Answer
from segkeras.grading.probes import probe
from segkeras.models.unet import decoder_block as library_block
from segkeras.models.unet import unet

LAB = Lab("03_unet_transfer_learning",
          {"decoder_block": 3, "freeze_encoder": 2, "prepare_finetuning": 2})

# Odd channel counts, so that mixing up the widths shows in the output shape.
_LOW_SHAPE, _SKIP_SHAPE, _FILTERS = (8, 8, 24), (16, 16, 12), 20
_CENTRE = 8  # the skip pixel whose influence is traced
_RECEPTIVE_FIELD = 5  # two 3x3 convolutions: one input pixel reaches a 5x5 output window
# one pixel of x: a 2x2 up-convolution with stride 2 makes a 2x2 patch of it, the two 3x3
# convolutions widen that by 4 (bilinear upsampling reaches 4x4, hence 8x8)
_UPCONV_FIELD = 2 + _RECEPTIVE_FIELD - 1
# Fine-tuning's learning rate: the lab asks for one 10x lower than the first stage's; float32
# rounding and `learning_rate * 0.1` against `/ 10` differ by far less than the tolerance.
_FINETUNING_RATIO, _RATIO_TOLERANCE = 10.0, 0.01


def _library_decoder_block(x, skip, filters: int, name: str):
    return library_block(x, skip, filters, name)


def _library_freeze_encoder(model: keras.Model) -> keras.Model:
    backbones.freeze(backbones.find_encoder(model))
    return model


def _library_prepare_finetuning(model: keras.Model, learning_rate: float) -> keras.Model:
    from segkeras.losses import SparseCEDice

    backbones.unfreeze(backbones.find_encoder(model), keep_batchnorm_frozen=True)
    model.compile(keras.optimizers.Adam(learning_rate / 10),
                  SparseCEDice(int(model.output.shape[-1])))
    return model


def _inputs(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    return rng.normal(size=(2, *shape)).astype("float32")


def _changed_window(difference: np.ndarray) -> tuple[int, int]:
    """Height and width of the box around the output pixels that changed."""
    rows, cols = np.nonzero(difference)
    if not len(rows):
        return 0, 0
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def _window_of_one_pixel(model, inputs: list, which: int) -> tuple[int, int]:
    """The output window that changes when one pixel of input ``which`` changes."""
    reference = keras.ops.convert_to_numpy(model(inputs, training=False))
    poked = [array.copy() for array in inputs]
    row = _CENTRE if which == 1 else _CENTRE // 2
    poked[which][:, row, row, :] += 10.0
    changed = keras.ops.convert_to_numpy(model(poked, training=False)) - reference
    return _changed_window(np.abs(changed).max(axis=(0, 3)) > 1e-6)


def _convolutions(model: keras.Model, kernel: tuple) -> list:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
            and tuple(layer.kernel_size) == kernel]


def _output(model: keras.Model, inputs: list) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(inputs, training=False)).astype("float64")


def _input_shape(layer) -> tuple | None:
    try:
        return tuple(layer.input.shape[1:])
    except (AttributeError, ValueError):  # a layer used more than once
        return None


def _check_learned_upsampling(model: keras.Model, rng: np.random.Generator) -> None:
    """The x2 upsampling is a trainable stride-2 Conv2DTranspose of x itself, and the output
    responds to its kernel (not a fixed UpSampling2D followed by a 1x1, stride-1 one)."""
    upconvs = [layer for layer in model.layers
               if isinstance(layer, keras.layers.Conv2DTranspose) and layer.trainable
               and tuple(layer.strides) == (2, 2)
               and _input_shape(layer) == _LOW_SHAPE]
    require(bool(upconvs),
            "The up-convolution itself must double the resolution of x: "
            "layers.Conv2DTranspose(filters, 2, strides=2) applied to x (a fixed UpSampling2D "
            "followed by a stride-1 Conv2DTranspose only learns a 1x1 projection: each 2x2 "
            "patch gets four copies of one value).")
    inputs = [_inputs(rng, _LOW_SHAPE), _inputs(rng, _SKIP_SHAPE)]
    before = _output(model, inputs)
    layer = upconvs[0]
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    layer.kernel.assign(kernel + rng.normal(size=kernel.shape).astype(kernel.dtype))
    after = _output(model, inputs)
    layer.kernel.assign(kernel)
    require(not np.allclose(after, before, atol=1e-6),
            "The output must respond to the up-convolution's weights (they are what U-Net "
            "learns to upsample with): x goes through layers.Conv2DTranspose(filters, 2, "
            "strides=2), nothing else.")


def _check_nonlinearity_between(model: keras.Model, rng: np.random.Generator) -> None:
    """Between the two 3x3 convolutions there is a ReLU: what the second one reads is not an
    affine function of the block's inputs (with BatchNorm in inference mode, conv -> BN -> conv
    is one linear map)."""
    second = _convolutions(model, (3, 3))[1]
    try:
        first_half = answer_model(model.inputs, second.input)
    except (AttributeError, ValueError) as error:
        raise CheckFailed(f"Use each 3x3 convolution layer once ({error}).") from None
    u = [_inputs(rng, _LOW_SHAPE), _inputs(rng, _SKIP_SHAPE)]
    v = [_inputs(rng, _LOW_SHAPE), _inputs(rng, _SKIP_SHAPE)]
    zero = [np.zeros_like(array) for array in u]
    both = [a + b for a, b in zip(u, v, strict=True)]
    f = {name: _output(first_half, arrays)
         for name, arrays in (("u", u), ("v", v), ("both", both), ("zero", zero))}
    interaction = np.abs(f["both"] - f["u"] - f["v"] + f["zero"]).max()
    require(interaction > 1e-3 * (1.0 + np.abs(f["both"]).max()),
            "Put a ReLU between the two 3x3 convolutions (conv -> BatchNorm -> ReLU, twice): "
            "with only BatchNormalization between them, two convolutions make one linear map.")


def _shape(tensor) -> list | None:
    shape = getattr(tensor, "shape", None)
    return None if shape is None else list(shape[1:])


@probe
def decoder_block_models(block: Callable) -> dict:
    """What ``block`` builds: the model of one block (x 8x8x24, skip 16x16x12, 20 filters; None
    unless its output has the right shape), the output's shape, and for a second, last block
    (no skip) on top: the error it raised, its output's shape, and the error of a model holding
    both (layer names that clash)."""
    low, skip = keras.Input(_LOW_SHAPE, name="low"), keras.Input(_SKIP_SHAPE, name="skip")
    output = block(low, skip, _FILTERS, "check_block")
    facts = {"model": None, "shape": _shape(output), "last_error": None, "last_shape": None,
             "clash": None}
    if facts["shape"] != [*_SKIP_SHAPE[:2], _FILTERS]:
        return facts
    facts["model"] = answer_model([low, skip], output)
    try:
        top = block(output, None, 8, "check_last")
    except Exception as error:
        facts["last_error"] = type(error).__name__
        return facts
    facts["last_shape"] = _shape(top)
    if top is not None:
        try:  # two blocks in one model: their layer names must differ
            keras.Model([low, skip], top)
        except ValueError as error:
            facts["clash"] = str(error)
    return facts


@LAB.check("decoder_block", forbid=[library_block, unet], fallback=_library_decoder_block)
@in_float32
def decoder_block(answer: Answer) -> None:
    """``block(x, skip, filters, name)``: a 2x2 up-convolution (stride 2) of x to ``filters``
    channels, concatenated with ``skip``, then twice conv 3x3 -> BatchNorm -> ReLU; with
    ``skip=None`` the same without the concatenation."""
    facts = answer.probe(decoder_block_models)
    require(facts["shape"] is not None, "decoder_block returns nothing: `return x` at the end.")
    require(facts["model"] is not None,
            f"For x of shape (8, 8, 24), a skip of shape (16, 16, 12) and filters=20 the block "
            f"should return (16, 16, 20): upsample x by 2 to the skip's size and end with a conv "
            f"of `filters` channels; got {tuple(facts['shape'])}.")
    model = facts["model"]
    require(any(isinstance(layer, keras.layers.Conv2DTranspose) for layer in model.layers),
            "Upsample with the paper's learned 2x2 up-convolution, "
            "layers.Conv2DTranspose(filters, 2, strides=2), not with fixed interpolation "
            "(UpSampling2D, bilinear or nearest).")
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    require(len(norms) >= 2,
            f"Each of the two 3x3 convolutions is followed by BatchNormalization (then ReLU); "
            f"the block has {len(norms)} BatchNormalization layer(s).")
    seen = [int(layer.kernel.shape[2]) for layer in _convolutions(model, (3, 3))]
    wanted = _FILTERS + _SKIP_SHAPE[-1]
    require(bool(seen) and seen[0] == wanted,
            f"U-Net concatenates the skip with the upsampled x (layers.Concatenate), so the "
            f"first 3x3 convolution reads {_FILTERS} + {_SKIP_SHAPE[-1]} = {wanted} channels "
            f"(the up-convolution's `filters` plus all of the skip's); yours reads "
            f"{seen[0] if seen else 'no 3x3 convolution'}. Adding a projected skip is FCN's "
            "fusion, not U-Net's concatenation.")

    rng = answer.rng
    x, s = _inputs(rng, _LOW_SHAPE), _inputs(rng, _SKIP_SHAPE)
    reference = keras.ops.convert_to_numpy(model([x, s], training=False)).astype("float64")
    require(reference.min() >= 0.0,
            "The block's output has negative values: end with ReLU (conv -> BN -> ReLU, twice).")
    other_low = keras.ops.convert_to_numpy(model([_inputs(rng, _LOW_SHAPE), s], training=False))
    require(not np.allclose(other_low, reference),
            "The output does not depend on x (the upsampled decoder input): use it.")
    other_skip = keras.ops.convert_to_numpy(model([x, _inputs(rng, _SKIP_SHAPE)],
                                                  training=False))
    require(not np.allclose(other_skip, reference),
            "The output does not change when only the skip changes: concatenate the skip "
            "(the encoder features) with the upsampled x before the convolutions.")
    _check_learned_upsampling(model, rng)

    window = _window_of_one_pixel(model, [x, s], which=1)
    require(window == (_RECEPTIVE_FIELD, _RECEPTIVE_FIELD),
            f"Changing one skip pixel should change a 5x5 window of the output (two 3x3 "
            f"convolutions with padding='same' after the concatenation); it changed "
            f"{window[0]}x{window[1]}. Check the kernel sizes and that there are exactly two.")
    window = _window_of_one_pixel(model, [x, s], which=0)
    require(window == (_UPCONV_FIELD, _UPCONV_FIELD),
            f"Changing one pixel of x should change a {_UPCONV_FIELD}x{_UPCONV_FIELD} window: "
            f"the 2x2 up-convolution with stride 2 turns it into a 2x2 patch, the two 3x3 "
            f"convolutions widen that by 4. It changed {window[0]}x{window[1]}: upsample with "
            "layers.Conv2DTranspose(filters, 2, strides=2) (kernel 2, stride 2, nothing else).")
    _check_nonlinearity_between(model, rng)

    last_block = ("The last block of the U-Net has no skip (skip is None): upsample and "
                  "convolve without concatenating; for filters=8 it should return (32, 32, 8)")
    require(facts["last_error"] is None, f"{last_block}; yours raised {facts['last_error']}.")
    require(facts["last_shape"] == [32, 32, 8], f"{last_block}.")
    require(facts["clash"] is None,
            f"Two blocks in one model clash ({facts['clash']}): give every layer a name "
            "starting with `name`, e.g. f\"{name}_upconv\".")


def _small_unet(encoder_trainable: bool) -> keras.Model:
    """A 32x32 U-Net on a tiny shapesnet encoder (built without ``backbones.freeze``, which a
    check forbids); ``encoder_trainable``: every encoder layer trainable, BatchNorm included."""
    from segkeras.pretrain import shapesnet_encoder

    encoder = shapesnet_encoder((32, 32, 3), widths=(4, 4, 8, 8, 8), name="checknet")
    encoder.trainable = encoder_trainable
    return unet(3, encoder, decoder_filters=(8, 8, 8, 8, 8), skip_projection=False)


def _images(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (4, 32, 32, 3)).astype("float32")


def _encoder_runs_in_inference_mode(encoder: keras.Model) -> bool:
    """A non-trainable BatchNormalization uses its moving statistics even when training=True."""
    images = _images()
    training, inference = encoder(images, training=True), encoder(images, training=False)
    return all(np.allclose(keras.ops.convert_to_numpy(training[level]),
                           keras.ops.convert_to_numpy(inference[level]), atol=1e-4)
               for level in backbones.LEVELS)


def _decoder_layers(model: keras.Model, encoder: keras.Model) -> list:
    return [layer for layer in model.layers if layer is not encoder and layer.weights]


def _require_same_model(same: bool) -> None:
    require(same, "Return the model you were given (changed in place): `return model`.")


@probe
def frozen_model(freeze: Callable, model: keras.Model) -> dict:
    """``freeze(model)``: whether it returned ``model`` itself, and the model it changed."""
    return {"same": freeze(model) is model, "model": model}


@LAB.check("freeze_encoder", forbid=[backbones.freeze], fallback=_library_freeze_encoder)
@in_float32
def freeze_encoder(answer: Answer) -> None:
    """``freeze(model)``: encoder frozen (BatchNorm in inference mode), decoder trainable."""
    facts = answer.probe(frozen_model, _small_unet(encoder_trainable=True))
    _require_same_model(facts["same"])
    model = facts["model"]
    encoder = backbones.find_encoder(model)
    require(not encoder.trainable_weights,
            f"{len(encoder.trainable_weights)} encoder weights are still trainable: freeze the "
            "whole encoder (backbones.find_encoder(model), then `.trainable = False`), "
            "BatchNormalization included.")
    decoder = _decoder_layers(model, encoder)
    require(all(layer.trainable for layer in decoder) and model.trainable_weights,
            "The decoder must stay trainable (it is what transfer learning trains): freeze only "
            "the encoder, not the whole model.")
    require(_encoder_runs_in_inference_mode(encoder),
            "The frozen encoder's BatchNormalization still normalises with batch statistics "
            "when training=True: set trainable = False on the encoder model itself, which also "
            "puts its BatchNormalization layers in inference mode.")


def _learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


_LOSS_HINT = ("compile with a classification loss on logits (batch, H, W, classes) and integer "
              "masks (batch, H, W), e.g. SparseCEDice(num_classes) or "
              "keras.losses.SparseCategoricalCrossentropy(from_logits=True)")


def _masks(seed: int, shape: tuple) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, shape).astype("int32")


def _prefers_the_true_class(loss) -> bool:
    """Whether ``loss`` is lower for logits that score each pixel's class than for logits that
    score another class."""
    masks = _masks(2, (2, 8, 8))
    one_hot = np.eye(3, dtype="float32")
    right, wrong = one_hot[masks] * 8 - 4, one_hot[(masks + 1) % 3] * 8 - 4
    try:
        return float(loss(masks, right)) < float(loss(masks, wrong))
    except Exception:  # e.g. a regression loss: masks (2, 8, 8) against logits (2, 8, 8, 3)
        return False


def _train_one_step(model: keras.Model) -> dict:
    """One training step, run eagerly (tracing the train function takes ten times longer than
    the step): its loss (or the error it raised), whether the encoder's trainable weights moved
    and whether its non-trainable ones (BatchNorm statistics) stayed."""
    encoder = backbones.find_encoder(model)
    model.run_eagerly = True
    moving = [keras.ops.convert_to_numpy(w).copy() for w in encoder.non_trainable_weights]
    kernels = [keras.ops.convert_to_numpy(w).copy() for w in encoder.trainable_weights]
    try:
        loss = model.train_on_batch(_images(), _masks(1, (4, 32, 32)))
    except Exception as error:  # a loss that does not fit segmentation masks
        return {"error": type(error).__name__}
    return {"error": None, "loss": float(np.ravel(loss)[0]),
            "kernels_moved": any(
                not np.allclose(before, keras.ops.convert_to_numpy(after))
                for before, after in zip(kernels, encoder.trainable_weights, strict=True)),
            "statistics_kept": all(
                np.array_equal(before, keras.ops.convert_to_numpy(after))
                for before, after in zip(moving, encoder.non_trainable_weights, strict=True))}


@probe
def finetuning_facts(prepare: Callable, model: keras.Model, learning_rate: float) -> dict:
    """``prepare(model, learning_rate)`` on ``model`` compiled for the first stage (no loss:
    Keras keeps the previous loss when a recompile names none): whether it returned the model,
    recompiled it with a new optimizer and a loss, that loss's preference for the true class,
    the learning rate, then one training step (:func:`_train_one_step`); and the model."""
    model.compile(keras.optimizers.Adam(learning_rate))
    first_optimizer = model.optimizer
    same = prepare(model, learning_rate) is model
    facts = {"same": same, "model": model,
             "recompiled": model.optimizer is not None and model.optimizer is not first_optimizer,
             "has_loss": model.loss is not None, "prefers_true_class": False, "rate": None,
             "step": None}
    if facts["has_loss"]:
        loss = keras.losses.get(model.loss) if isinstance(model.loss, str) else model.loss
        facts["prefers_true_class"] = callable(loss) and _prefers_the_true_class(loss)
    if model.optimizer is not None:
        facts["rate"] = _learning_rate(model)
        facts["step"] = _train_one_step(model)
    return facts


@LAB.check("prepare_finetuning", forbid=[backbones.unfreeze, backbones.train_from_scratch],
           fallback=_library_prepare_finetuning)
@in_float32
def prepare_finetuning(answer: Answer) -> None:
    """``prepare(model, learning_rate)``: encoder trainable except BatchNorm, recompiled with a
    segmentation loss and a learning rate 10x lower than ``learning_rate`` (the rate of the
    frozen-encoder stage, drawn at random)."""
    learning_rate = float(10 ** answer.rng.uniform(-3.5, -2.0))
    facts = answer.probe(finetuning_facts, _small_unet(encoder_trainable=False), learning_rate)
    _require_same_model(facts["same"])
    model = facts["model"]
    encoder = backbones.find_encoder(model)
    is_norm = [isinstance(layer, keras.layers.BatchNormalization) for layer in encoder.layers]
    expected = {weight.path for layer, norm in zip(encoder.layers, is_norm, strict=True)
                if not norm for weight in layer.weights}
    trainable = {weight.path for weight in encoder.trainable_weights}
    frozen_convs = len(expected - trainable)
    require(not frozen_convs,
            f"{frozen_convs} encoder weights (convolution kernels) are still frozen: make the "
            "encoder trainable (encoder.trainable = True) for fine-tuning.")
    require(not any(layer.trainable for layer, norm in zip(encoder.layers, is_norm, strict=True)
                    if norm),
            "Keep the encoder's BatchNormalization layers frozen (layer.trainable = False for "
            "each): small fine-tuning batches would overwrite the pretrained statistics.")
    require(_encoder_runs_in_inference_mode(encoder),
            "The encoder's BatchNormalization layers must stay in inference mode (frozen).")
    require(all(layer.trainable for layer in _decoder_layers(model, encoder)),
            "The decoder must stay trainable while fine-tuning.")
    require(facts["recompiled"],
            "Recompile the model after changing `trainable` (model.compile(...)), with a new "
            "optimizer at the lower learning rate.")
    require(facts["has_loss"],
            f"Compile with a loss: without one, fit has nothing to minimise; {_LOSS_HINT}.")
    require(facts["prefers_true_class"],
            f"Your loss is not lower for logits that score each pixel's true class: {_LOSS_HINT}.")
    rate, wanted = facts["rate"], learning_rate / _FINETUNING_RATIO
    require(abs(rate - wanted) <= _RATIO_TOLERANCE * wanted,
            f"Fine-tune with a learning rate 10x lower than the first stage's: for "
            f"learning_rate={learning_rate:.4g} the optimizer should have learning_rate / 10 = "
            f"{wanted:.4g}, yours has {rate:.4g} ({learning_rate / rate if rate else 0:.3g}x "
            "lower). Much lower barely moves the encoder; compute it from the argument.")
    step = facts["step"]
    require(step["error"] is None,
            f"One training step failed ({step['error']}): {_LOSS_HINT}.")
    require(np.isfinite(step["loss"]),
            f"One training step gave the loss {step['loss']}: {_LOSS_HINT}.")
    require(step["kernels_moved"],
            "One training step left the encoder's convolutions unchanged: fine-tuning must "
            "train them (encoder trainable, then recompile).")
    require(step["statistics_kept"],
            "One training step changed the encoder's BatchNorm statistics: keep BatchNorm "
            "frozen (inference mode) while fine-tuning.")


PRIVATE = ()  # no references of its own: the fallbacks call the library, forbidden as answers

start, use, guard, total = LAB.start, LAB.use, LAB.guard, LAB.total
