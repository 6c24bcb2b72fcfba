"""U-Net with a pretrained encoder.

Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015: a contracting path (here an ImageNet encoder, P1..P5) and a symmetric expanding path.
Each decoder block upsamples x2, concatenates the encoder features of that resolution (the "copy
and crop" arrows of the paper's figure; with padded convolutions nothing needs cropping) and applies
two 3x3 convolutions, here each followed by BatchNorm and ReLU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import keras

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

layers = keras.layers
UPSAMPLING = ("transpose", "bilinear")


def decoder_block(x, skip, filters: int, name: str, upsampling: str = "transpose"):
    """One step up the expanding path: upsample ``x`` by 2, concatenate ``skip`` (None: no skip),
    then twice conv 3x3 -> BatchNorm -> ReLU; every layer's name starts with ``name``.

    ``upsampling``: ``"transpose"``, the paper's learned 2x2 "up-convolution" (stride 2), or
    ``"bilinear"``, fixed interpolation (no weights, no checkerboard artefacts).
    """
    check_choice("upsampling", upsampling, UPSAMPLING)
    if upsampling == "transpose":
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    else:
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_upsample")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    for part in ("a", "b"):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_{part}_conv")(x)
        x = layers.BatchNormalization(name=f"{name}_{part}_bn")(x)
        x = layers.ReLU(name=f"{name}_{part}_relu")(x)
    return x


def unet(
    num_classes: int,
    backbone: str | keras.Model = "mobilenetv2",
    decoder_filters: Sequence[int] = (256, 128, 64, 32, 16),
    upsampling: str = "transpose",
    weights: str | None = "imagenet",
    encoder_trainable: bool = False,
    input_shape: tuple = ANY_SIZE,
    block: Callable | None = None,
) -> keras.Model:
    """A U-Net (Ronneberger et al., MICCAI 2015) named e.g. ``"unet_mobilenetv2"``.

    The bottleneck is P5 (stride 32); the blocks at strides 16, 8, 4 and 2 concatenate P4, P3, P2
    and P1. The fifth block returns to full resolution without a skip: the only stride-1 tensor is
    the raw image, whose information P1 already carries.

    Args:
        num_classes: classes including the background, >= 2.
        backbone: a name from ``segkeras.backbones.available()`` or an encoder model made by
            ``segkeras.backbones.build_encoder`` (used as it is).
        decoder_filters: the width of the five decoder blocks, stride 16 -> 8 -> 4 -> 2 -> 1.
        upsampling: ``"transpose"`` (learned 2x2 up-convolution, as in the paper) or
            ``"bilinear"`` (fixed interpolation, no weights, no checkerboard artefacts).
        weights: encoder weights: ``"imagenet"``, ``None`` or a weights file.
        encoder_trainable: train the encoder too (fine-tuning) or keep it frozen.
        input_shape: ``(H, W, 3)``, H and W multiples of 32 or None.
        block: the decoder block, ``block(x, skip, filters, name)`` with ``skip`` None for the
            last one (e.g. a lab student's); default :func:`decoder_block` with ``upsampling``.

    Returns:
        A ``keras.Model`` from raw RGB in [0, 255] to logits ``(batch, H, W, num_classes)``.
    """
    num_classes = check_num_classes(num_classes)
    decoder_filters = check_decoder_filters(decoder_filters)
    check_choice("upsampling", upsampling, UPSAMPLING)
    encoder = resolve_encoder(backbone, input_shape, weights, encoder_trainable)
    image, features = encode(encoder)

    if block is None:
        block = functools.partial(decoder_block, upsampling=upsampling)
    x = features["P5"]
    stride = 32
    for filters, level in zip(decoder_filters, DECODER_LEVELS, strict=True):
        stride //= 2
        skip = features[level] if level else None
        x = block(x, skip, filters, f"up{stride}")
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    return keras.Model(image, float32_logits(x), name=model_name("unet", encoder))
