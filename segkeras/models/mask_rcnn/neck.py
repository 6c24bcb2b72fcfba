"""Feature Pyramid Network neck (Lin et al., "Feature Pyramid Networks for Object Detection",
CVPR 2017, Fig. 3): a 1x1 lateral convolution on each encoder level, a top-down path that
upsamples the coarser map x2 (nearest neighbour) and adds it, and a 3x3 convolution that smooths
each merged map.

Two ways to read it:

- :func:`feature_pyramid_levels`, the paper's pyramid for real images: P2-P5 (strides 4-32) from
  the encoder's P2-P5, plus P6 (stride 64), a stride-2 subsampling of P5 (Sec. 4.1; torchvision's
  ``LastLevelMaxPool``), for the RPN's largest anchors only. The RPN reads every level, the RoI
  heads P2-P5, each RoI on the level eq. 1 assigns it (:func:`segkeras.layers.fpn_levels`).
- :func:`feature_pyramid`, the small CPU option: the finest merged map of P3-P5 (stride 8) only,
  which carries the semantics of P4 and P5 through the top-down path. On small images (objects
  below ~112 px) eq. 1 would put every RoI on the lowest level anyway.
"""

from __future__ import annotations

import keras
from keras import layers

PYRAMID_LEVELS = ("P3", "P4", "P5")
"""Encoder levels the single-level neck merges, finest first; its output has P3's stride."""
FPN_LEVELS = ("P2", "P3", "P4", "P5")
"""Encoder levels the full pyramid merges, finest first; P6 is added on top."""
FPN_STRIDES = (4, 8, 16, 32, 64)
"""Strides of :func:`feature_pyramid_levels`' outputs P2-P6."""


def _top_down(features: dict, levels: tuple[str, ...], channels: int) -> dict:
    """The merged maps (lateral + upsampled coarser map) of ``levels``, by level name."""
    merged, previous = {}, None
    for level in reversed(levels):
        lateral = layers.Conv2D(channels, 1, name=f"fpn_lateral_{level}")(features[level])
        if previous is not None:
            upsampled = layers.UpSampling2D(2, interpolation="nearest",
                                            name=f"fpn_upsample_{level}")(previous)
            lateral = layers.Add(name=f"fpn_add_{level}")([lateral, upsampled])
        merged[level] = previous = lateral
    return merged


def _smooth(x, channels: int, name: str):
    return layers.Conv2D(channels, 3, padding="same", name=name,
                         kernel_initializer=keras.initializers.HeUniform())(x)


def feature_pyramid(features: dict, channels: int):
    """The finest FPN map (stride of P3) from the encoder's ``{"P3", "P4", "P5"}`` features."""
    merged = _top_down(features, PYRAMID_LEVELS, channels)
    return _smooth(merged[PYRAMID_LEVELS[0]], channels, "fpn_output")


def feature_pyramid_levels(features: dict, channels: int) -> list:
    """``[P2, P3, P4, P5, P6]`` (strides :data:`FPN_STRIDES`, ``channels`` each) from the
    encoder's ``{"P2", ..., "P5"}`` features."""
    merged = _top_down(features, FPN_LEVELS, channels)
    outputs = [_smooth(merged[level], channels, f"fpn_output_{level}") for level in FPN_LEVELS]
    outputs.append(layers.MaxPooling2D(1, strides=2, name="fpn_P6")(outputs[-1]))
    return outputs
