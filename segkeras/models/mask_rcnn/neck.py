"""Feature Pyramid Network neck (Lin et al., "Feature Pyramid Networks for Object Detection",
CVPR 2017, Fig. 3): a 1x1 lateral convolution on each encoder level, a top-down path that
upsamples the coarser map x2 (nearest neighbour) and adds it, and a 3x3 convolution that smooths
the merged map.

The FPN paper assigns an RoI of size ``w x h`` to level ``k = floor(k0 + log2(sqrt(w h) / 224))``
with ``k0 = 4``, clamped to the pyramid. Here the RPN and both RoI heads read **one level**, the
finest merged map (P3, stride 8), which carries the semantics of P4 and P5 through the top-down
path: on the small images this detector is meant for (objects below ~112 px), that rule would put
every RoI on the lowest level anyway.
"""

from __future__ import annotations

import keras
from keras import layers

PYRAMID_LEVELS = ("P3", "P4", "P5")
"""Encoder levels the neck merges, finest first; the output has the first one's stride."""


def feature_pyramid(features: dict, channels: int):
    """The finest FPN map (stride of P3) from the encoder's ``{"P3", "P4", "P5"}`` features."""
    merged = None
    for level in reversed(PYRAMID_LEVELS):
        lateral = layers.Conv2D(channels, 1, name=f"fpn_lateral_{level}")(features[level])
        if merged is not None:
            upsampled = layers.UpSampling2D(2, interpolation="nearest",
                                            name=f"fpn_upsample_{level}")(merged)
            lateral = layers.Add(name=f"fpn_add_{level}")([lateral, upsampled])
        merged = lateral
    return layers.Conv2D(channels, 3, padding="same", name="fpn_output",
                         kernel_initializer=keras.initializers.HeUniform())(merged)
