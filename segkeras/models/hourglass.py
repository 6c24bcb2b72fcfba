"""Stacked hourglass network with intermediate supervision.

Newell, Yang & Deng, "Stacked Hourglass Networks for Human Pose Estimation", ECCV 2016: U-Net-like
blocks repeated one after another; each block ("stack") predicts a segmentation that the next one
refines, and every stack has its own loss. Here the per-stack heads predict class logits instead
of keypoint heatmaps.

The network works at 1/4 of the input resolution; every stack's logits are upsampled (fixed
bilinear) to the input resolution, so one (image, mask) dataset trains all stacks. The model has
one output per stack, ``"stack_1"`` .. ``"stack_N"``; :mod:`segkeras.train` gives every output
the mask and a loss (:func:`segkeras.train.targets_for_outputs`,
:func:`segkeras.train.per_output`)::

    model = hourglass(num_classes=4, num_stacks=2)
    train.fit_two_stage(model, train_ds, val_ds, head_epochs=0, finetune_epochs=10)
    predict = final_stack_model(model)  # one output: the last, most refined stack
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
from keras import layers, ops

from segkeras import backbones
from segkeras.errors import SegkerasError
from segkeras.models.common import ANY_SIZE, check_num_classes, resolve_encoder

STEM_STRIDE = 4

Module = Callable[[keras.KerasTensor, int, int, str], keras.KerasTensor]
"""``module(x, depth, filters, name)``: one hourglass returning a tensor of the shape of ``x``."""


def output_names(num_stacks: int) -> list[str]:
    """The model's output names, first stack to last: ``["stack_1", ..., "stack_N"]``."""
    return [f"stack_{i}" for i in range(1, num_stacks + 1)]


def _residual(x, filters: int, name: str):
    """The paper's bottleneck residual module, pre-activation: BN-ReLU-conv 1x1 (f/2), 3x3 (f/2),
    1x1 (f), plus the input (a 1x1 projection where the channel count changes)."""
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, name=f"{name}_skip")(x)
    for i, (width, kernel) in enumerate(((filters // 2, 1), (filters // 2, 3), (filters, 1)), 1):
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
        x = layers.Conv2D(width, kernel, padding="same", name=f"{name}_conv{i}")(x)
    return layers.Add(name=f"{name}_add")([shortcut, x])


def hourglass_module(x, depth: int, filters: int, name: str):
    """One hourglass, recursively (Newell et al., Fig. 3): a residual branch at this resolution,
    plus max-pool, residual, a (depth-1) hourglass (at the bottom a residual), residual, upsample.
    """
    prefix = f"{name}_d{depth}"
    skip = _residual(x, filters, f"{prefix}_skip")
    low = layers.MaxPooling2D(2, name=f"{prefix}_pool")(x)
    low = _residual(low, filters, f"{prefix}_down")
    if depth > 1:
        low = hourglass_module(low, depth - 1, filters, name)
    else:
        low = _residual(low, filters, f"{prefix}_bottom")
    low = _residual(low, filters, f"{prefix}_up")
    low = layers.UpSampling2D(2, interpolation="nearest", name=f"{prefix}_upsample")(low)
    return layers.Add(name=f"{prefix}_add")([skip, low])


def _conv_bn_relu(x, filters: int, kernel: int, name: str, strides: int = 1):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _paper_stem(image, filters: int):
    """7x7 stride-2 conv, residual, max-pool, two residuals: 1/4 resolution, ``filters`` channels.
    Widths keep the paper's proportions (64, 128, 128, 256 for ``filters=256``)."""
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="stem_scale")(image)
    x = _conv_bn_relu(x, filters // 4, 7, "stem", strides=2)
    x = _residual(x, filters // 2, "stem_res1")
    x = layers.MaxPooling2D(2, name="stem_pool")(x)
    x = _residual(x, filters // 2, "stem_res2")
    return _residual(x, filters, "stem_res3")


def _backbone_stem(image, encoder: keras.Model, filters: int):
    """The encoder's stride-4 features (P2), projected to ``filters`` channels.

    The encoder is cut after P2 (a :class:`segkeras.backbones.Encoder` of the same name,
    ``"<name>_encoder"``, sharing its layers, with output ``{"P2": ...}``), so the deeper stages
    are neither computed nor trained, and it runs in inference mode unless it trains from
    scratch, like every encoder. Its layers keep the trainable flags
    :func:`segkeras.backbones.build_encoder` gave them (a trainable encoder from random weights
    trains its BatchNorm too).
    """
    cut = backbones.Encoder(encoder.input, {"P2": encoder.output["P2"]}, name=encoder.name)
    x = _conv_bn_relu(cut(image)["P2"], filters, 1, "stem_project")
    return _residual(x, filters, "stem_res")


def _upsample_rows(x, factor: int):
    """Bilinear upsampling along axis 1, pixel centres as in ``tf.image.resize`` (half-pixel),
    the border row repeated outside the map (so the border is interpolated, not faded)."""
    previous = ops.concatenate([x[:, :1], x[:, :-1]], axis=1)
    following = ops.concatenate([x[:, 1:], x[:, -1:]], axis=1)
    phases = []
    for k in range(factor):
        offset = (k + 0.5) / factor - 0.5  # where output row k of each input row samples
        neighbour = previous if offset < 0 else following
        phases.append((1.0 - abs(offset)) * x + abs(offset) * neighbour)
    shape = ops.shape(x)
    return ops.reshape(ops.stack(phases, axis=2), (-1, shape[1] * factor, shape[2], shape[3]))


@keras.saving.register_keras_serializable(package="segkeras")
class BilinearResize(layers.Layer):
    """Fixed bilinear upsampling by an integer ``factor`` with correct borders: the same values
    as ``keras.ops.image.resize(x, (factor * H, factor * W), "bilinear")``, but for any H and W
    (which that op, like ``UpSampling2D``, cannot trace in a TensorFlow graph when unknown)."""

    def __init__(self, factor: int, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, x):
        x = _upsample_rows(x, self.factor)
        x = ops.transpose(_upsample_rows(ops.transpose(x, (0, 2, 1, 3)), self.factor),
                          (0, 2, 1, 3))
        return x

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        scale = lambda size: None if size is None else size * self.factor  # noqa: E731
        return (batch, scale(height), scale(width), channels)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def _check_arguments(num_stacks, depth, filters) -> None:
    for label, value, minimum in (("num_stacks", num_stacks, 1), ("depth", depth, 1),
                                  ("filters", filters, 4)):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise SegkerasError(f"{label} must be an integer >= {minimum}, got {value!r}.")
    if filters % 4:
        below = filters // 4 * 4
        raise SegkerasError(
            f"filters must be a multiple of 4, got {filters}; use {below} or {below + 4}."
        )


def _check_input_shape(input_shape: tuple, depth: int, with_backbone: bool) -> tuple:
    stride = STEM_STRIDE * 2**depth
    if with_backbone:
        stride = math.lcm(stride, 32)
    why = f"4 * 2**depth for depth={depth}" + (" and 32 for the backbone" if with_backbone else "")
    try:
        return backbones.check_input_shape(tuple(input_shape), stride)
    except SegkerasError as error:
        raise SegkerasError(
            f"hourglass needs H, W multiples of {stride} ({why}): {error}"
        ) from None


def hourglass(
    num_classes: int,
    backbone: str | keras.Model | None = None,
    num_stacks: int = 2,
    depth: int = 4,
    filters: int = 128,
    weights: str | None = "imagenet",
    encoder_trainable: bool = False,
    input_shape: tuple = ANY_SIZE,
    module: Module = hourglass_module,
) -> keras.Model:
    """Stacked hourglass network (Newell, Yang & Deng, ECCV 2016) for semantic segmentation.

    Args:
        num_classes: classes including the background, >= 2.
        backbone: ``None`` for the paper's own stem (7x7 stride-2 conv, residual, max-pool), or
            a name from :func:`segkeras.backbones.available` (or an encoder model made by
            :func:`segkeras.backbones.build_encoder`, used as it is) to start from its stride-4
            features (P2), the encoder being a nested layer named ``"<name>_encoder"``.
        num_stacks: hourglasses in sequence; each one refines the previous stack's prediction.
        depth: poolings inside each hourglass (the paper uses 4: 64x64 down to 4x4).
        filters: channels of every residual module (the paper uses 256).
        weights: encoder weights, as in :func:`segkeras.backbones.build_encoder` (backbone only).
        encoder_trainable: whether the encoder starts trainable (backbone only).
        input_shape: ``(H, W, 3)`` raw RGB in [0, 255]; H, W multiples of ``4 * 2**depth``
            (and of 32 with a backbone) or None.
        module: the hourglass, ``module(x, depth, filters, name)`` returning a tensor of the
            shape of ``x`` (default :func:`hourglass_module`; lab 4 passes the student's).

    Returns:
        A ``keras.Model`` returning a dict ``{"stack_1": ..., "stack_N": ...}`` (a dict for one
        stack too): each stack's logits ``(B, H, W, num_classes)`` at input resolution, made by
        a float32 layer of the same name.
    """
    num_classes = check_num_classes(num_classes)
    _check_arguments(num_stacks, depth, filters)
    model_name = f"hourglass{num_stacks}"
    if not isinstance(backbone, keras.Model):  # an encoder model brings its own input shape
        input_shape = _check_input_shape(input_shape, depth, with_backbone=backbone is not None)
    if backbone is None:
        image = keras.Input(shape=input_shape, name="image")
        x = _paper_stem(image, filters)
    else:
        encoder = resolve_encoder(backbone, input_shape, weights, encoder_trainable)
        image = keras.Input(shape=_check_input_shape(encoder.input.shape[1:], depth, True),
                            name="image")
        x = _backbone_stem(image, encoder, filters)
        model_name += f"_{encoder.name.removesuffix(backbones.ENCODER_SUFFIX)}"

    outputs = {}
    for stack, output_name in enumerate(output_names(num_stacks), 1):
        name = f"hg{stack}"
        features = module(x, depth, filters, name)
        features = _residual(features, filters, f"{name}_out_res")
        features = _conv_bn_relu(features, filters, 1, f"{name}_out")
        logits = layers.Conv2D(num_classes, 1, name=f"{name}_logits")(features)
        outputs[output_name] = BilinearResize(STEM_STRIDE, dtype="float32",
                                              name=output_name)(logits)
        if stack < num_stacks:
            remapped_features = layers.Conv2D(filters, 1, name=f"{name}_remap_features")(features)
            remapped_logits = layers.Conv2D(filters, 1, name=f"{name}_remap_logits")(logits)
            x = layers.Add(name=f"hg{stack + 1}_input")([x, remapped_features, remapped_logits])

    return keras.Model(image, outputs, name=model_name)


def final_stack_model(model: keras.Model) -> keras.Model:
    """The inference model: same layers and weights, only the last (most refined) stack's logits."""
    stacks = [name for name in model.output_names if name.startswith("stack_")]
    if not stacks:
        raise SegkerasError(
            f"Model {model.name!r} is not a stacked hourglass (no 'stack_N' output)."
        )
    last = model.get_layer(output_names(len(stacks))[-1])
    return keras.Model(model.input, last.output, name=f"{model.name}_final")
