"""A "deconvolution" decoder: learned transposed convolutions from stride 32 back to the pixels.

Noh, Hong & Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015: instead of
FCN's single bilinear jump, a deep decoder mirrors the encoder and upsamples step by step. Here
each step is ``Conv2DTranspose`` (stride 2) + BatchNorm + ReLU (the paper also un-pools with the
encoder's max-pooling switches; keras.applications backbones do not expose them).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from segkeras.models.common import (
    ANY_SIZE,
    DECODER_LEVELS,
    check_decoder_filters,
    check_num_classes,
    encode,
    float32_logits,
    model_name,
    resolve_encoder,
)

layers = keras.layers


def deconvnet(
    num_classes: int,
    backbone: str | keras.Model = "vgg16",
    skips: bool = False,
    decoder_filters: Sequence[int] = (256, 128, 64, 32, 16),
    weights: str | None = "imagenet",
    encoder_trainable: bool = False,
    input_shape: tuple = ANY_SIZE,
) -> keras.Model:
    """An encoder plus a stack of five ``Conv2DTranspose(4, stride 2)``-BN-ReLU blocks (Noh et al.,
    ICCV 2015 style), named ``"deconvnet_<backbone>"`` or ``"deconvnet_skips_<backbone>"``.

    Depth gives global understanding: every output pixel is decoded from the stride-32 features,
    which see the whole object. But those features have lost the exact boundaries, so masks come out
    blobby. ``skips=True`` adds the early, high-resolution features P4..P1 (1x1-projected, added
    before each block's BatchNorm): they give sharper masks.

    Args:
        num_classes: classes including the background, >= 2.
        backbone: a name from ``segkeras.backbones.available()`` or an encoder model made by
            ``segkeras.backbones.build_encoder`` (used as it is).
        skips: add the encoder features of the same resolution in each decoder block.
        decoder_filters: the width of the five blocks, stride 16 -> 8 -> 4 -> 2 -> 1.
        weights: encoder weights: ``"imagenet"``, ``None`` or a weights file.
        encoder_trainable: train the encoder too (fine-tuning) or keep it frozen.
        input_shape: ``(H, W, 3)``, H and W multiples of 32 or None.

    Returns:
        A ``keras.Model`` from raw RGB in [0, 255] to logits ``(batch, H, W, num_classes)``.
    """
    num_classes = check_num_classes(num_classes)
    decoder_filters = check_decoder_filters(decoder_filters)
    encoder = resolve_encoder(backbone, input_shape, weights, encoder_trainable)
    image, features = encode(encoder)

    x = features["P5"]
    stride = 32
    for filters, level in zip(decoder_filters, DECODER_LEVELS, strict=True):
        stride //= 2
        block = f"up{stride}"
        x = layers.Conv2DTranspose(
            filters, 4, strides=2, padding="same", use_bias=False, name=f"{block}_deconv"
        )(x)
        if skips and level:
            skip = layers.Conv2D(filters, 1, use_bias=False, name=f"{block}_project_{level}")(
                features[level]
            )
            x = layers.Add(name=f"{block}_add_{level}")([x, skip])
        x = layers.BatchNormalization(name=f"{block}_bn")(x)
        x = layers.ReLU(name=f"{block}_relu")(x)
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    name = model_name("deconvnet_skips" if skips else "deconvnet", encoder)
    return keras.Model(image, float32_logits(x), name=name)
