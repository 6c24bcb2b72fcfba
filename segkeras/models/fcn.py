"""FCN-32s, FCN-16s and FCN-8s.

Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015.
A classification network made fully convolutional scores every class at stride 32 (``score_fr``);
FCN-16s and FCN-8s add finer scores from pool4 (stride 16) and pool3 (stride 8), the "skip"
layers, each fused by addition after a learned x2 upsampling; a last upsampling returns to the
input size. The paper trains the three in stages (32s, then 16s from it, then 8s from it):
:func:`segkeras.fcn_stages.initialize_from` and :func:`segkeras.fcn_stages.train_in_stages`.

What follows the paper:
    * the skips read the stage outputs at strides 8 and 16 (``P3``, ``P4``): ``block3_pool`` and
      ``block4_pool`` on VGG16, the paper's pool3 and pool4; on other backbones the outputs of the
      stages ending at those strides;
    * ``score_fr`` and the skip score layers (``score_P4``, ``score_P3``) are 1x1 convolutions that
      start at zero, so each stage starts from the coarser net;
    * the x2 upsamplings (``upscore_to_P4``, ``upscore_to_P3``) are ``Conv2DTranspose`` layers
      (kernel 4, stride 2, no bias) initialised to bilinear interpolation, then learned;
    * fusion is a sum; the final upsampling (``upscore32/16/8``) is fixed bilinear interpolation.

What is simplified:
    * fc6/fc7: the paper's convolutionalised VGG classifier (7x7 then 1x1 convolutions, 4096
      channels, with the ImageNet fc weights) becomes a 3x3 and a 1x1 convolution with
      ``fc_filters`` channels, new weights (ReLU and dropout 0.5 kept); ``fc_filters=None`` scores
      P5 directly;
    * alignment: no 100-pixel input padding and no ``Crop`` layers; inputs are multiples of 32 and
      every layer pads "same", so the maps line up by construction;
    * the final upsampling is ``UpSampling2D(interpolation="bilinear")`` (borders clamped) rather
      than a frozen bilinear deconvolution (zero-padded borders);
    * the paper's training recipe (batch size 1, unnormalised loss, momentum 0.99, a learning rate
      per stage) is left to the caller: :mod:`segkeras.train` and the lab choose their own.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

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

# The skip levels fused, coarsest first, for each variant.
VARIANTS = {"32s": (), "16s": ("P4",), "8s": ("P4", "P3")}


def convolutionize(dense: layers.Dense, window: tuple[int, int] = (1, 1)) -> layers.Conv2D:
    """The ``Conv2D`` that computes what ``dense`` computes on a flattened ``window`` x channels
    map, at every position of a larger map (Long et al., section 3.1: "convolutionalization")."""
    kernel, bias = dense.get_weights()
    height, width = window
    channels = kernel.shape[0] // (height * width)
    conv = layers.Conv2D(dense.units, window, activation=dense.activation)
    conv.build((None, None, None, channels))
    conv.set_weights([kernel.reshape(height, width, channels, dense.units), bias])
    return conv


def fuse_skip(scores, skip, level: str):
    """FCN's skip fusion (Figure 3): the coarse ``scores`` upsampled x2 by a learned transposed
    convolution (bilinear at first) plus zero-initialised 1x1 class scores of the ``skip`` features.
    Layers are named after ``level`` (``upscore_to_P4``, ``score_P4``, ``fuse_P4``)."""
    num_classes = scores.shape[-1]
    upsampled = layers.Conv2DTranspose(
        num_classes, 4, strides=2, padding="same", use_bias=False,
        kernel_initializer=BilinearUpsampling(), name=f"upscore_to_{level}",
    )(scores)
    skip_scores = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name=f"score_{level}")(
        skip
    )
    return layers.Add(name=f"fuse_{level}")([upsampled, skip_scores])


def fcn_head(features: dict, num_classes: int, variant: str, fuse: Callable = fuse_skip):
    """FCN-32s/16s/8s class scores at the image size from ``features["P5"]`` (scored by
    ``score_fr``) and the variant's skips, fused coarsest first with ``fuse``."""
    scores = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name="score_fr")(
        features["P5"]
    )
    for level in VARIANTS[variant]:
        scores = fuse(scores, features[level], level)
    stride = 32 // 2 ** len(VARIANTS[variant])
    return layers.UpSampling2D(stride, interpolation="bilinear", name=f"upscore{stride}")(scores)


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

    See the module docstring for what follows the paper and what is simplified.

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
    scores = fcn_head({**features, "P5": x}, num_classes, variant)
    return keras.Model(image, float32_logits(scores), name=model_name(f"fcn{variant}", encoder))
