"""Checks for lab 03, U-Net and transfer learning: the decoder block, freezing the encoder for
transfer learning, unfreezing it for fine-tuning.

Each check builds or runs the student's answer on a small model and tests what it must do."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from segkeras import backbones
from segkeras.checks.core import exercise, in_float32, require
from segkeras.models.unet import unet

# Odd channel counts, so that mixing up the widths shows in the output shape.
_LOW_SHAPE, _SKIP_SHAPE, _FILTERS = (8, 8, 24), (16, 16, 12), 20
_CENTRE = 8  # the skip pixel whose influence is traced
_RECEPTIVE_FIELD = 5  # two 3x3 convolutions: one input pixel reaches a 5x5 output window




def _inputs(seed: int, shape: tuple) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2, *shape)).astype("float32")


def _changed_window(difference: np.ndarray) -> tuple[int, int]:
    """Height and width of the box around the output pixels that changed."""
    rows, cols = np.nonzero(difference)
    if not len(rows):
        return 0, 0
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@exercise("decoder_block", points=3)
@in_float32
def decoder_block(block: Callable) -> None:
    """``block(x, skip, filters, name)``: upsample x by 2, concatenate ``skip``, then twice
    conv 3x3 -> BatchNorm -> ReLU."""
    low, skip = keras.Input(_LOW_SHAPE, name="low"), keras.Input(_SKIP_SHAPE, name="skip")
    output = block(low, skip, _FILTERS, "check_block")
    require(output is not None, "decoder_block returns nothing: `return x` at the end.")
    expected = (None, *_SKIP_SHAPE[:2], _FILTERS)
    require(tuple(output.shape) == expected,
            f"For x of shape (8, 8, 24), a skip of shape (16, 16, 12) and filters=20 the block "
            f"should return (16, 16, 20): upsample x by 2 to the skip's size and end with a conv "
            f"of `filters` channels; got {tuple(output.shape)[1:]}.")
    model = keras.Model([low, skip], output)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    require(len(norms) >= 2,
            f"Each of the two 3x3 convolutions is followed by BatchNormalization (then ReLU); "
            f"the block has {len(norms)} BatchNormalization layer(s).")

    x, s = _inputs(0, _LOW_SHAPE), _inputs(1, _SKIP_SHAPE)
    reference = keras.ops.convert_to_numpy(model([x, s], training=False)).astype("float64")
    require(reference.min() >= 0.0,
            "The block's output has negative values: end with ReLU (conv -> BN -> ReLU, twice).")

    other_low = keras.ops.convert_to_numpy(model([_inputs(2, _LOW_SHAPE), s], training=False))
    require(not np.allclose(other_low, reference),
            "The output does not depend on x (the upsampled decoder input): use it.")
    other_skip = keras.ops.convert_to_numpy(model([x, _inputs(3, _SKIP_SHAPE)], training=False))
    require(not np.allclose(other_skip, reference),
            "The output does not change when only the skip changes: concatenate the skip "
            "(the encoder features) with the upsampled x before the convolutions.")

    poked = s.copy()
    poked[:, _CENTRE, _CENTRE, :] += 10.0
    changed = keras.ops.convert_to_numpy(model([x, poked], training=False)) - reference
    window = _changed_window(np.abs(changed).max(axis=(0, 3)) > 1e-6)
    require(window == (_RECEPTIVE_FIELD, _RECEPTIVE_FIELD),
            f"Changing one skip pixel should change a 5x5 window of the output (two 3x3 "
            f"convolutions with padding='same' after the concatenation); it changed "
            f"{window[0]}x{window[1]}. Check the kernel sizes and that there are exactly two.")


def _small_unet(encoder_trainable: bool) -> keras.Model:
    """A 64x64 U-Net; ``encoder_trainable``: every encoder layer trainable, BatchNorm included."""
    model = unet(3, "mobilenetv2", decoder_filters=(16, 16, 8, 8, 8), weights=None,
                 input_shape=(64, 64, 3))
    backbones.find_encoder(model).trainable = encoder_trainable
    return model


def _encoder_runs_in_inference_mode(encoder: keras.Model) -> bool:
    """A non-trainable BatchNormalization uses its moving statistics even when training=True."""
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    training = encoder(images, training=True)
    inference = encoder(images, training=False)
    return all(np.allclose(keras.ops.convert_to_numpy(training[level]),
                           keras.ops.convert_to_numpy(inference[level]), atol=1e-4)
               for level in backbones.LEVELS)


def _decoder_layers(model: keras.Model, encoder: keras.Model) -> list:
    return [layer for layer in model.layers if layer is not encoder and layer.weights]


def _require_same_model(answer, model: keras.Model) -> None:
    require(answer is model, "Return the model you were given (changed in place): `return model`.")


@exercise("freeze_encoder", points=2)
@in_float32
def freeze_encoder(freeze: Callable) -> None:
    """``freeze(model)``: encoder frozen (BatchNorm in inference mode), decoder trainable."""
    model = _small_unet(encoder_trainable=True)
    _require_same_model(freeze(model), model)
    encoder = backbones.find_encoder(model)
    require(not encoder.trainable_weights,
            f"{len(encoder.trainable_weights)} encoder weights are still trainable: freeze the "
            "whole encoder (backbones.find_encoder(model), then `.trainable = False`).")
    decoder = _decoder_layers(model, encoder)
    require(all(layer.trainable for layer in decoder) and model.trainable_weights,
            "The decoder must stay trainable (it is what transfer learning trains): freeze only "
            "the encoder, not the whole model.")
    require(_encoder_runs_in_inference_mode(encoder),
            "The frozen encoder's BatchNormalization still normalises with batch statistics "
            "when training=True: set trainable = False on the encoder model itself, which also "
            "puts its BatchNormalization layers in inference mode.")


@exercise("prepare_finetuning", points=2)
@in_float32
def prepare_finetuning(prepare: Callable, learning_rate: float = 1e-3) -> None:
    """``prepare(model, learning_rate)``: encoder trainable except BatchNorm, recompiled with a
    lower learning rate than ``learning_rate`` (the rate of the frozen-encoder stage)."""
    model = _small_unet(encoder_trainable=False)
    model.compile(keras.optimizers.Adam(learning_rate), keras.losses.MeanSquaredError())
    first_optimizer = model.optimizer
    _require_same_model(prepare(model, learning_rate), model)
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
            "each): small fine-tuning batches would overwrite the ImageNet statistics.")
    require(_encoder_runs_in_inference_mode(encoder),
            "The encoder's BatchNormalization layers must stay in inference mode (frozen).")
    require(all(layer.trainable for layer in _decoder_layers(model, encoder)),
            "The decoder must stay trainable while fine-tuning.")
    require(model.optimizer is not None and model.optimizer is not first_optimizer,
            "Recompile the model after changing `trainable` (model.compile(...)), with a new "
            "optimizer at the lower learning rate.")
    rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    require(0.0 < rate <= learning_rate / 2,
            f"Fine-tune with a learning rate well below the first stage's {learning_rate:g} "
            f"(e.g. learning_rate / 10); the optimizer has {rate:g}.")
