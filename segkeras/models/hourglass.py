"""Stacked hourglass network with intermediate supervision.

Newell, Yang & Deng, "Stacked Hourglass Networks for Human Pose Estimation", ECCV 2016: U-Net-like
blocks repeated one after another; each block ("stack") predicts a segmentation that the next one
refines, and every stack has its own loss. Here the per-stack heads predict class logits instead
of keypoint heatmaps.

The network works at 1/4 of the input resolution; every stack's logits are upsampled (fixed
bilinear) to the input resolution, so one (image, mask) dataset trains all stacks:
:func:`repeat_targets` gives each output, ``"stack_1"`` .. ``"stack_N"``, the same mask, and
:func:`hourglass_losses`, :func:`hourglass_loss_weights` and :func:`hourglass_metrics` build the
per-output dictionaries for ``model.compile``::

    model = hourglass(num_classes=4, num_stacks=2)
    model.compile("adam", loss=hourglass_losses(2), loss_weights=hourglass_loss_weights(2),
                  metrics=hourglass_metrics(4, 2))
    model.fit(repeat_targets(train_ds, 2), validation_data=repeat_targets(val_ds, 2))
    predict = final_stack_model(model)  # one output: the last, most refined stack
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np

from segkeras import backbones
from segkeras.data.core import IGNORE_LABEL
from segkeras.errors import SegkerasError
from segkeras.layers import BilinearUpsampling
from segkeras.metrics import segmentation_metrics

layers = keras.layers
STEM_STRIDE = 4


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


def _hourglass_module(x, depth: int, filters: int, name: str):
    """One hourglass, recursively (Newell et al., Fig. 3): a residual branch at this resolution,
    plus max-pool, residual, a (depth-1) hourglass (at the bottom a residual), residual, upsample.
    """
    prefix = f"{name}_d{depth}"
    skip = _residual(x, filters, f"{prefix}_skip")
    low = layers.MaxPooling2D(2, name=f"{prefix}_pool")(x)
    low = _residual(low, filters, f"{prefix}_down")
    if depth > 1:
        low = _hourglass_module(low, depth - 1, filters, name)
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


def _backbone_stem(image, filters: int, backbone: str, input_shape, weights, trainable: bool):
    """The pretrained encoder's stride-4 features (P2), projected to ``filters`` channels, and the
    backbone's registry name.

    The nested encoder is cut after P2 (a model named ``"<name>_encoder"`` with output
    ``{"P2": ...}``), so the deeper backbone stages are neither computed nor trained.
    """
    full = backbones.build_encoder(backbone, input_shape, weights=weights, trainable=trainable)
    encoder = keras.Model(full.input, {"P2": full.output["P2"]}, name=full.name)
    if trainable:
        backbones.unfreeze(encoder)
    else:
        backbones.freeze(encoder)
    x = _conv_bn_relu(encoder(image)["P2"], filters, 1, "stem_project")
    return _residual(x, filters, "stem_res"), encoder.name.removesuffix(backbones.ENCODER_SUFFIX)


def _bilinear_upsampling(logits, num_classes: int, name: str):
    """Fixed (non-trainable) bilinear upsampling from 1/4 to the input resolution, float32.

    A ``Conv2DTranspose`` with FCN's bilinear kernel rather than ``UpSampling2D(interpolation=
    "bilinear")``, which cannot be traced by TensorFlow when H and W are unknown.
    """
    return layers.Conv2DTranspose(
        num_classes, 2 * STEM_STRIDE, strides=STEM_STRIDE, padding="same", use_bias=False,
        kernel_initializer=BilinearUpsampling(), trainable=False, dtype="float32", name=name,
    )(logits)


def _check_arguments(num_classes, num_stacks, depth, filters, backbone, input_shape) -> tuple:
    for label, value, minimum in (("num_classes", num_classes, 1), ("num_stacks", num_stacks, 1),
                                  ("depth", depth, 1), ("filters", filters, 4)):
        if not isinstance(value, (int, np.integer)) or value < minimum:
            raise SegkerasError(f"{label} must be an integer >= {minimum}, got {value!r}.")
    if filters % 4:
        below = filters // 4 * 4
        raise SegkerasError(
            f"filters must be a multiple of 4, got {filters}; use {below} or {below + 4}."
        )
    stride = STEM_STRIDE * 2**depth
    if backbone is not None:
        stride = math.lcm(stride, 32)
    why = f"4 * 2**depth for depth={depth}" + (" and 32 for the backbone" if backbone else "")
    try:
        return backbones.check_input_shape(tuple(input_shape), stride)
    except SegkerasError as error:
        raise SegkerasError(
            f"hourglass needs H, W multiples of {stride} ({why}): {error}"
        ) from None


def hourglass(
    num_classes: int,
    num_stacks: int = 2,
    depth: int = 4,
    filters: int = 128,
    backbone: str | None = None,
    weights: str | None = "imagenet",
    encoder_trainable: bool = False,
    input_shape: tuple = (None, None, 3),
) -> keras.Model:
    """Stacked hourglass network (Newell, Yang & Deng, ECCV 2016) for semantic segmentation.

    Args:
        num_classes: output channels (classes including background).
        num_stacks: hourglasses in sequence; each one refines the previous stack's prediction.
        depth: poolings inside each hourglass (the paper uses 4: 64x64 down to 4x4).
        filters: channels of every residual module (the paper uses 256).
        backbone: ``None`` for the paper's own stem (7x7 stride-2 conv, residual, max-pool), or a
            name from :func:`segkeras.backbones.available` to start from its pretrained stride-4
            features (P2), the encoder being a nested layer named ``"<name>_encoder"``.
        weights: encoder weights, as in :func:`segkeras.backbones.build_encoder` (backbone only).
        encoder_trainable: whether the encoder starts trainable (backbone only).
        input_shape: ``(H, W, 3)`` raw RGB in [0, 255]; H, W multiples of ``4 * 2**depth``
            (and of 32 with a backbone) or None.

    Returns:
        A ``keras.Model`` returning a dict ``{"stack_1": ..., "stack_N": ...}`` (a dict for one
        stack too): each stack's logits ``(B, H, W, num_classes)`` at input resolution, made by
        a float32 layer of the same name.
    """
    input_shape = _check_arguments(num_classes, num_stacks, depth, filters, backbone, input_shape)
    image = keras.Input(shape=input_shape, name="image")
    model_name = f"hourglass{num_stacks}"
    if backbone is None:
        x = _paper_stem(image, filters)
    else:
        x, key = _backbone_stem(image, filters, backbone, input_shape, weights, encoder_trainable)
        model_name += f"_{key}"

    outputs = {}
    for stack, output_name in enumerate(output_names(num_stacks), 1):
        name = f"hg{stack}"
        features = _hourglass_module(x, depth, filters, name)
        features = _residual(features, filters, f"{name}_out_res")
        features = _conv_bn_relu(features, filters, 1, f"{name}_out")
        logits = layers.Conv2D(num_classes, 1, name=f"{name}_logits")(features)
        outputs[output_name] = _bilinear_upsampling(logits, num_classes, output_name)
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


def repeat_targets(data, num_stacks: int):
    """Give every stack the same mask: ``{"stack_1": mask, ..., "stack_N": mask}``.

    ``data`` is a ``tf.data.Dataset`` of ``(image, mask)`` pairs (mapped lazily) or a mask array.
    """
    names = output_names(num_stacks)
    if hasattr(data, "map"):
        return data.map(lambda image, mask: (image, {name: mask for name in names}))
    return {name: data for name in names}


def hourglass_losses(num_stacks: int, loss: keras.losses.Loss | None = None) -> dict:
    """A loss for every stack (intermediate supervision), keyed by output name.

    Default: sparse categorical cross-entropy on logits, pixels labelled 255 ignored.
    """
    if loss is None:
        loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=IGNORE_LABEL
        )
    return {name: loss for name in output_names(num_stacks)}


def hourglass_loss_weights(num_stacks: int, weights: Sequence[float] | None = None) -> dict:
    """``loss_weights`` for ``compile``: one per stack (default all 1, as in the paper)."""
    weights = [1.0] * num_stacks if weights is None else [float(w) for w in weights]
    if len(weights) != num_stacks or any(weight < 0 for weight in weights):
        raise SegkerasError(
            f"Need {num_stacks} non-negative loss weights (one per stack), got {weights}."
        )
    return dict(zip(output_names(num_stacks), weights, strict=True))


def hourglass_metrics(num_classes: int, num_stacks: int) -> dict:
    """Pixel accuracy and mean IoU for every stack (:func:`segkeras.metrics.segmentation_metrics`),
    keyed by output name: the History shows ``stack_1_mean_iou`` .. ``stack_N_mean_iou``."""
    return {name: segmentation_metrics(num_classes) for name in output_names(num_stacks)}
