"""Class-id maps of photos of any size from a semantic segmentation model (FCN, DeconvNet, U-Net,
stacked hourglass).

Each image is resized keeping its aspect ratio (shorter side ``min_side``, longer at most
``max_side``) and padded below and right, to the model's fixed input or to a multiple of the
encoder stride; the logits of the image's part are resized bilinearly to the image's own size
and the argmax is taken there (:func:`segkeras.data.images.upsampled_argmax`), never squashing a
non-square photo.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np

from segkeras.data.images import check_images, check_sides, fit_size, letterbox, upsampled_argmax

ANY_SIZE_SIDE = 128
"""The default shorter side for a model that takes any size (the CLI's default --image-size)."""


def last_output(model: keras.Model) -> keras.Model:
    """The model predicting only its last (for a stacked hourglass: most refined) logits."""
    if len(model.outputs) == 1:
        return model
    return keras.Model(model.input, model.outputs[-1], name=f"{model.name}_last")


def predict_semantic(model: keras.Model, images: np.ndarray | Sequence[np.ndarray],
                     min_side: int | None = None, max_side: int | None = None,
                     stride: int = 32) -> list[np.ndarray]:
    """One (H, W) uint8 class-id map per image, at the image's own size.

    Images: RGB in [0, 255] of any size (see :func:`segkeras.data.images.check_images`).
    ``min_side`` / ``max_side``: the resized image's shorter side, unless the longer would
    exceed ``max_side``; by default the model's fixed input sides (the image then fits inside
    the input and is padded to it), or :data:`ANY_SIZE_SIDE` and twice that for a model of any
    size (padded to multiples of ``stride``).
    """
    model = last_output(model)
    fixed = tuple(model.input_shape[1:3])
    if None in fixed:
        low = ANY_SIZE_SIDE if min_side is None else min_side
        sides = check_sides(low, 2 * low if max_side is None else max_side)
    else:
        sides = check_sides(min(fixed) if min_side is None else min_side,
                            max(fixed) if max_side is None else max_side)
    results = []
    for image in check_images(images):
        height, width = image.shape[:2]
        size = fit_size(height, width, *sides, None if None in fixed else fixed)
        canvas = fixed if None not in fixed else tuple(
            math.ceil(side / stride) * stride for side in size)
        logits = np.asarray(model.predict_on_batch(letterbox(image, size, canvas)[None]))[0]
        rows = round(size[0] * logits.shape[0] / canvas[0])
        cols = round(size[1] * logits.shape[1] / canvas[1])
        results.append(upsampled_argmax(logits[:rows, :cols], (height, width)))
    return results
