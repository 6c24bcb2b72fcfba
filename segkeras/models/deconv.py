"""DeconvNet: a decoder that mirrors the encoder, from stride 32 back to the pixels.

Noh, Hong & Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015 (their
Figure 2). Each decoder stage undoes one encoder stage: **unpooling** puts the values back where
the encoder's max pooling found its maxima (the *switches*, see
:class:`segkeras.unpooling.MaxUnpooling`), then 3x3 **deconvolution** (transposed convolution)
layers densify the sparse map. That needs an encoder that max-pools at every stage (VGG). For the
other backbones each stage is a learned x2 ``Conv2DTranspose`` instead, the FCN-like variant
(``upsampling="transposed"``).

Simplified from the paper: no fc6/fc7 (7x7 conv to 4096 and back) between encoder and decoder;
two deconvolutions per stage (VGG16 has three in stages 3-5); no instance-wise training or
ensembling with FCN. ``skips=True`` (not in the paper) adds the encoder's features of each
resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
from keras import layers

from segkeras.errors import SegkerasError
from segkeras.models.common import (
    ANY_SIZE,
    DECODER_LEVELS,
    check_choice,
    check_decoder_filters,
    check_num_classes,
    encode,
    float32_logits,
    model_name,
    resolve_encoder,
)
from segkeras.unpooling import MaxUnpooling

UPSAMPLINGS = ("auto", "unpool", "transposed")
TRANSPOSED_FILTERS = (256, 128, 64, 32, 16)


def upsampling_block(x, skip, filters: int, name: str):
    """One x2 step of the transposed decoder: ``Conv2DTranspose(filters, 4, strides=2)`` (kernel
    4 = 2 x stride: no checkerboard), plus the 1x1-projected ``skip`` if given, then BatchNorm and
    ReLU. Layers are named ``<name>_deconv``, ``<name>_project``, ``<name>_add``, ...
    """
    x = layers.Conv2DTranspose(
        filters, 4, strides=2, padding="same", use_bias=False, name=f"{name}_deconv"
    )(x)
    if skip is not None:
        skip = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(skip)
        x = layers.Add(name=f"{name}_add")([x, skip])
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def max_pooling_layers(encoder: keras.Model) -> list[keras.layers.MaxPooling2D] | None:
    """The encoder's five 2x2 max-pooling layers, shallowest first (VGG: ``block1_pool`` ..
    ``block5_pool``), or None if it does not max-pool at every stage (ResNet's 3x3 stem pool,
    strided convolutions, average pooling...)."""
    pools = [
        layer for layer in encoder.layers
        if isinstance(layer, layers.MaxPooling2D)
        and tuple(layer.pool_size) == tuple(layer.strides) == (2, 2)
        and layer.padding == "valid"
    ]
    return pools if len(pools) == len(DECODER_LEVELS) else None


def _with_switches(encoder: keras.Model, pools: list) -> keras.Model:
    """The encoder (same class, layers, weights and name) also returning each pooling layer's
    input, from which :class:`MaxUnpooling` recomputes the switches, as ``"<pool name>_input"``."""
    outputs = {**encoder.output, **{f"{pool.name}_input": pool.input for pool in pools}}
    extended = type(encoder)(encoder.input, outputs, name=encoder.name)
    if not encoder.trainable:
        extended.trainable = False
    return extended


def _unpooling_stage(x, switches, skip, filters: int, out_filters: int, name: str):
    """Unpool with the switches, then two 3x3 deconvolution-BN-ReLU (the skip joins the first)."""
    x = MaxUnpooling(name=f"{name}_unpool")([x, switches])
    for i, width in enumerate((filters, out_filters), start=1):
        x = layers.Conv2DTranspose(width, 3, padding="same", use_bias=False,
                                   name=f"{name}_deconv{i}")(x)
        if skip is not None and i == 1:
            projected = layers.Conv2D(width, 1, use_bias=False, name=f"{name}_project")(skip)
            x = layers.Add(name=f"{name}_add")([x, projected])
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def deconvnet(
    num_classes: int,
    backbone: str | keras.Model = "vgg16",
    skips: bool = False,
    upsampling: str = "auto",
    decoder_filters: Sequence[int] | None = None,
    block: Callable = upsampling_block,
    weights: str | None = "imagenet",
    encoder_trainable: bool = False,
    input_shape: tuple = ANY_SIZE,
) -> keras.Model:
    """DeconvNet (Noh et al., ICCV 2015), named ``"deconvnet_<backbone>"`` or
    ``"deconvnet_skips_<backbone>"``.

    Five decoder stages, stride 32 -> 16 -> 8 -> 4 -> 2 -> 1, then a 1x1 convolution to the class
    scores. With ``upsampling="unpool"`` a stage un-pools with the switches of the encoder's
    matching max pooling, then applies two 3x3 ``Conv2DTranspose``-BN-ReLU, the second one back to
    the width the next unpooling needs; with ``"transposed"`` a stage is ``block`` (a learned x2
    ``Conv2DTranspose``). Without skips, every pixel is decoded from the stride-32 features: the
    switches (or skips) are what bring the exact outlines back.

    Args:
        num_classes: classes including the background, >= 2.
        backbone: a name from ``segkeras.backbones.available()`` or an encoder model made by
            ``segkeras.backbones.build_encoder`` (used as it is).
        skips: add the encoder features P4..P1 (1x1-projected) in the stages of their resolution.
        upsampling: ``"unpool"`` (needs an encoder that max-pools at every stage: VGG),
            ``"transposed"``, or ``"auto"``: unpool where the encoder allows it.
        decoder_filters: the width of the five stages (stride 16 .. 1). Default: mirror the
            encoder when unpooling (VGG16: 512, 512, 256, 128, 64, as in the paper), else
            ``(256, 128, 64, 32, 16)``.
        block: ``block(x, skip, filters, name)``, the x2 step of the transposed decoder
            (default :func:`upsampling_block`); ``skip`` is None where there is none.
        weights: encoder weights: ``"imagenet"``, ``None`` or a weights file.
        encoder_trainable: train the encoder too (fine-tuning) or keep it frozen.
        input_shape: ``(H, W, 3)``, H and W multiples of 32 or None.

    Returns:
        A ``keras.Model`` from raw RGB in [0, 255] to logits ``(batch, H, W, num_classes)``.
    """
    num_classes = check_num_classes(num_classes)
    upsampling = check_choice("upsampling", upsampling, UPSAMPLINGS)
    encoder = resolve_encoder(backbone, input_shape, weights, encoder_trainable)
    pools = max_pooling_layers(encoder)
    if upsampling == "unpool" and pools is None:
        raise SegkerasError(
            f"upsampling='unpool' needs an encoder that max-pools at every stage (vgg16, vgg19); "
            f"{encoder.name!r} does not: use upsampling='transposed' (or 'auto')."
        )
    unpool = upsampling != "transposed" and pools is not None
    if unpool:
        pool_widths = [pool.input.shape[-1] for pool in reversed(pools)]  # stride 32 first
        filters = check_decoder_filters(decoder_filters or pool_widths)
        encoder = _with_switches(encoder, pools)
    else:
        filters = check_decoder_filters(decoder_filters or TRANSPOSED_FILTERS)
    image, features = encode(encoder)

    x = features["P5"]
    stride = 32
    for i, level in enumerate(DECODER_LEVELS):
        stride //= 2
        skip = features[level] if skips and level else None
        if unpool:
            pool = pools[len(pools) - 1 - i]
            out_filters = pool_widths[i + 1] if i + 1 < len(pool_widths) else filters[i]
            x = _unpooling_stage(x, features[f"{pool.name}_input"], skip, filters[i],
                                 out_filters, f"up{stride}")
        else:
            x = block(x, skip, filters[i], f"up{stride}")
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    name = model_name("deconvnet_skips" if skips else "deconvnet", encoder)
    return keras.Model(image, float32_logits(x), name=name)
