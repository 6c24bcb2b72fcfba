"""FCN-32s, FCN-16s and FCN-8s.

Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015.
A classification network made fully convolutional scores every class at stride 32 (``score_fr``);
FCN-16s and FCN-8s add finer scores from the stride-16 and stride-8 features ("skip" layers), each
fused by addition after a learned x2 upsampling; a last upsampling returns to the input size.
"""

from __future__ import annotations

import keras

from segkeras.layers import BilinearUpsampling
from segkeras.models.common import (
    ANY_SIZE,
    check_choice,
    check_num_classes,
    encode,
    float32_logits,
    model_name,
    resolve_encoder,
)

layers = keras.layers
# The skip levels fused, coarsest first, for each variant.
VARIANTS = {"32s": (), "16s": ("P4",), "8s": ("P4", "P3")}


def _learned_upsampling_x2(x, name: str):
    """A ``Conv2DTranspose`` that starts as (half-pixel) bilinear upsampling by 2."""
    return layers.Conv2DTranspose(
        x.shape[-1], 4, strides=2, padding="same", use_bias=False,
        kernel_initializer=BilinearUpsampling(), name=name,
    )(x)


def fcn(
    num_classes: int,
    backbone: str | keras.Model = "vgg16",
    variant: str = "8s",
    weights: str | None = "imagenet",
    encoder_trainable: bool = False,
    input_shape: tuple = ANY_SIZE,
    fc_filters: int | None = 512,
) -> keras.Model:
    """A fully convolutional network (Long et al., CVPR 2015) named e.g. ``"fcn8s_vgg16"``.

    Paper details kept: ``score_fr`` and the skip score layers (``score_P4``, ``score_P3``) start
    at zero, so training starts from the coarser net; the x2 upsamplings are ``Conv2DTranspose``
    layers initialised to bilinear interpolation, then learned; the final upsampling
    (``upscore32/16/8``) is fixed bilinear interpolation (``UpSampling2D``: the paper's frozen
    bilinear deconvolution away from the borders, without its weights, borders clamped rather than
    zero-padded). Simplified: the paper's "convolutionalised" fc6/fc7 (7x7 and 1x1 convolutions,
    4096 channels) become a 3x3 and a 1x1 convolution with ``fc_filters`` channels, each with ReLU
    and dropout 0.5 (``fc_filters=None`` scores P5 directly).

    Args:
        num_classes: classes including the background, >= 2.
        backbone: a name from ``segkeras.backbones.available()`` or an encoder model made by
            ``segkeras.backbones.build_encoder`` (used as it is).
        variant: ``"32s"``, ``"16s"`` or ``"8s"`` (finest output stride before the last upsampling).
        weights: encoder weights: ``"imagenet"``, ``None`` or a weights file.
        encoder_trainable: train the encoder too (fine-tuning) or keep it frozen.
        input_shape: ``(H, W, 3)``, H and W multiples of 32 or None.
        fc_filters: width of the fc6/fc7 convolutions on P5, or None for none.

    Returns:
        A ``keras.Model`` from raw RGB in [0, 255] to logits ``(batch, H, W, num_classes)``.
    """
    num_classes = check_num_classes(num_classes)
    check_choice("variant", variant, tuple(VARIANTS))
    encoder = resolve_encoder(backbone, input_shape, weights, encoder_trainable)
    image, features = encode(encoder)

    x = features["P5"]
    if fc_filters:
        x = layers.Conv2D(fc_filters, 3, padding="same", activation="relu", name="fc6")(x)
        x = layers.Dropout(0.5, name="drop6")(x)
        x = layers.Conv2D(fc_filters, 1, activation="relu", name="fc7")(x)
        x = layers.Dropout(0.5, name="drop7")(x)
    scores = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name="score_fr")(x)

    stride = 32
    for level in VARIANTS[variant]:
        stride //= 2
        upsampled = _learned_upsampling_x2(scores, name=f"upscore_to_{level}")
        skip = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name=f"score_{level}")(
            features[level]
        )
        scores = layers.Add(name=f"fuse_{level}")([upsampled, skip])
    scores = layers.UpSampling2D(stride, interpolation="bilinear", name=f"upscore{stride}")(scores)
    return keras.Model(image, float32_logits(scores), name=model_name(f"fcn{variant}", encoder))
