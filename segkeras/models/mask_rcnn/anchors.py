"""Anchors: reference boxes tiled over a feature map (Ren et al., "Faster R-CNN", NIPS 2015).

At every position of a stride-``s`` feature map sits one anchor per (size, aspect ratio) pair,
centred on the position's receptive-field centre ``((j + 0.5) s, (i + 0.5) s)`` in image pixels
(pixel centres at +0.5, the convention of the aligned RoIAlign). An anchor of size ``a`` and
ratio ``r = h / w`` has area ``a^2``: ``w = a / sqrt(r)``, ``h = a sqrt(r)``. The order is
position-major (row, column), then size, then ratio, which is how a ``(B, h, w, k)`` convolution
output flattens to ``(B, h * w * k)``.

On a feature pyramid (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017,
Sec. 4.1) each level has anchors of one size (32, 64, 128, 256, 512 on P2-P6) in every ratio,
and the levels' anchors are concatenated finest first, as the RPN's outputs are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def anchor_shapes(sizes: Sequence[float], ratios: Sequence[float]) -> np.ndarray:
    """(len(sizes) * len(ratios), 2) anchor widths and heights, sizes outer, ratios inner."""
    shapes = [(size / np.sqrt(ratio), size * np.sqrt(ratio)) for size in sizes for ratio in ratios]
    return np.asarray(shapes, dtype=np.float32)


def anchor_grid(
    feature_size: tuple[int, int], stride: int, sizes: Sequence[float], ratios: Sequence[float]
) -> np.ndarray:
    """(h * w * k, 4) anchors ``x1, y1, x2, y2`` for an ``(h, w)`` map of stride ``stride``."""
    height, width = feature_size
    shapes = anchor_shapes(sizes, ratios)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    centres = (np.stack([cols, rows], -1).reshape(-1, 1, 2) + 0.5) * stride
    corners = np.concatenate([centres - shapes / 2, centres + shapes / 2], axis=-1)
    return corners.reshape(-1, 4).astype(np.float32)


def pyramid_anchors(
    feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int], sizes: Sequence[float],
    ratios: Sequence[float],
) -> np.ndarray:
    """(sum_l h_l * w_l * len(ratios), 4) anchors of a pyramid: level ``l`` (an ``h_l x w_l``
    map of stride ``strides[l]``) holds anchors of size ``sizes[l]``, levels finest first."""
    return np.concatenate([
        anchor_grid(feature_size, stride, (size,), ratios)
        for feature_size, stride, size in zip(feature_sizes, strides, sizes, strict=True)])
