"""U-Net with a pretrained encoder.

Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015: a contracting path (here an ImageNet encoder, P1..P5) and a symmetric expanding path.
Each decoder block upsamples x2, concatenates the encoder features of that resolution (the "copy
and crop" arrows of the paper's figure; with padded convolutions nothing needs cropping) and applies
two 3x3 convolutions, here each followed by BatchNorm and ReLU. By default a 1x1 convolution first
narrows each skip to the block's width (``skip_projection``): MobileNetV2's skips are its wide
expanded activations, and the first 3x3 convolution of a block over their concatenation is most of
the decoder's cost; and there is no block at full resolution (``final_convs=0``): the classifier
reads the stride-2 features and its logits are upsampled bilinearly, as FCN and DeepLab do.
"""

from __future__ import annotations

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
CONVS = (1, 2)  # 3x3 convolutions per decoder block: the paper's two, or one
FINAL_CONVS = (0, *CONVS)  # at full resolution also none: logits made at stride 2, upsampled
DEFAULT_DECODER = (64, 48, 32, 16, 16)
"""The default widths, chosen by measurement (issue 27, BENCHMARKS section 2): see :func:`unet`."""
PAPER_DECODER = (256, 128, 64, 32, 16)
"""Widths halving from the bottleneck up as in the paper (which starts at 1024): pass
``decoder_filters=PAPER_DECODER, skip_projection=False, final_convs=2`` for the paper-like U-Net."""


def decoder_block(x, skip, filters: int, name: str, upsampling: str = "transpose",
                  convs: int = 2):
    """One step up the expanding path: upsample ``x`` by 2, concatenate ``skip`` (None: no skip),
    then ``convs`` times (1 or 2; twice in the paper) conv 3x3 -> BatchNorm -> ReLU; every
    layer's name starts with ``name``.

    ``upsampling``: ``"transpose"``, the paper's learned 2x2 "up-convolution" (stride 2), or
    ``"bilinear"``, fixed interpolation (no weights, no checkerboard artefacts).
    """
    check_choice("upsampling", upsampling, UPSAMPLING)
    check_choice("convs", convs, CONVS)
    if upsampling == "transpose":
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    else:
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_upsample")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    for part in "ab"[:convs]:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_{part}_conv")(x)
        x = layers.BatchNormalization(name=f"{name}_{part}_bn")(x)
        x = layers.ReLU(name=f"{name}_{part}_relu")(x)
    return x


def unet(
    num_classes: int,
    backbone: str | keras.Model = "mobilenetv2",
    decoder_filters: Sequence[int] = DEFAULT_DECODER,
    upsampling: str = "transpose",
    weights: str | None = "imagenet",
    encoder_trainable: bool = False,
    input_shape: tuple = ANY_SIZE,
    block: Callable | None = None,
    skip_projection: bool = True,
    final_convs: int = 0,
) -> keras.Model:
    """A U-Net (Ronneberger et al., MICCAI 2015) named e.g. ``"unet_mobilenetv2"``.

    The bottleneck is P5 (stride 32); the blocks at strides 16, 8, 4 and 2 concatenate P4, P3, P2
    and P1. Full resolution has no skip (the only stride-1 tensor is the raw image, whose
    information P1 already carries): by default the stride-2 logits are upsampled to it; with
    ``final_convs`` 1 or 2, or a ``block`` given, a fifth block climbs there.

    Why the default decoder is (64, 48, 32, 16, 16) with projected skips and no block at full
    resolution (issue 27, ``bench/s2_versus_runs.py``, BENCHMARKS section 2 and note 2): trained
    from scratch on the built-in shapes (MobileNetV2, BatchNorm trained, 3 seeds each) it scores
    held-out mIoU 0.849 +- 0.022 at the demo's recipe against 0.834 +- 0.008 for the TensorFlow
    tutorial's U-Net, and 0.792 +- 0.020 at 128x128 against 0.782 +- 0.014, while training 1.67x
    as fast (128x128, batch 16, median of 3 alternating runs: 45.3 against 27.1 img/s). A 3x3
    convolution at full resolution was a quarter of the training time and added nothing
    measurable: a 1x1 classifier commutes with bilinear upsampling, so classifying the stride-2
    features and upsampling the logits is the same model without it. ``final_convs=1`` restores
    the previous default (one 3x3 convolution at full resolution). Narrower decoders were faster
    but fell behind at 128x128 ((64, 32, 16, 16, 8): 0.577). ``decoder_filters=PAPER_DECODER,
    skip_projection=False, final_convs=2`` gives the paper-like U-Net.

    Args:
        num_classes: classes including the background, >= 2.
        backbone: a name from ``segkeras.backbones.available()`` or an encoder model made by
            ``segkeras.backbones.build_encoder`` (used as it is).
        decoder_filters: the width of the five decoder blocks, stride 16 -> 8 -> 4 -> 2 -> 1;
            :data:`PAPER_DECODER` ``(256, 128, 64, 32, 16)`` for the paper-like widths.
        upsampling: ``"transpose"`` (learned 2x2 up-convolution, as in the paper) or
            ``"bilinear"`` (fixed interpolation, no weights, no checkerboard artefacts).
        weights: encoder weights: ``"imagenet"``, ``None`` or a weights file.
        encoder_trainable: train the encoder too (fine-tuning) or keep it frozen.
        input_shape: ``(H, W, 3)``, H and W multiples of 32 or None.
        block: the decoder block, ``block(x, skip, filters, name)`` with ``skip`` None for the
            last one (e.g. a lab student's); default :func:`decoder_block` with ``upsampling``.
        skip_projection: narrow each skip to the block's width with a 1x1 convolution (linear, no
            bias: the block's first convolution and BatchNorm follow) before the concatenation;
            False concatenates the encoder's features as they are, as in the paper.
        final_convs: the 3x3 convolutions at full resolution (the last block, no skip) when
            ``block`` is the default: 0, no block there (the classifier reads the stride-2
            features and its logits are upsampled x2 bilinearly; the fifth width is unused), 1,
            or 2 as in the paper (and in every other block). A ``block`` given is used for all
            five blocks.

    Returns:
        A ``keras.Model`` from raw RGB in [0, 255] to logits ``(batch, H, W, num_classes)``.
    """
    num_classes = check_num_classes(num_classes)
    decoder_filters = check_decoder_filters(decoder_filters)
    check_choice("upsampling", upsampling, UPSAMPLING)
    check_choice("final_convs", final_convs, FINAL_CONVS)
    encoder = resolve_encoder(backbone, input_shape, weights, encoder_trainable)
    image, features = encode(encoder)

    x, stride = features["P5"], 32
    for filters, level in zip(decoder_filters, DECODER_LEVELS, strict=True):
        if level is None and block is None and final_convs == 0:
            break  # no block at full resolution: the logits are upsampled below
        stride //= 2
        skip = features[level] if level else None
        if skip is not None and skip_projection:
            skip = layers.Conv2D(filters, 1, use_bias=False, name=f"up{stride}_project")(skip)
        if block is None:
            x = decoder_block(x, skip, filters, f"up{stride}", upsampling,
                              convs=2 if level else final_convs)
        else:
            x = block(x, skip, filters, f"up{stride}")
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    if stride > 1:  # in float32, as the logits are
        x = layers.UpSampling2D(stride, interpolation="bilinear", dtype="float32",
                                name="logits_upsample")(x)
    return keras.Model(image, float32_logits(x), name=model_name("unet", encoder))
