"""Anchors of Mask R-CNN's RPN: counts, strides, centres, sizes and ratios."""

import numpy as np
import pytest

from segkeras.models.mask_rcnn.anchors import anchor_grid, anchor_shapes

pytestmark = pytest.mark.fast


def test_anchor_shapes_keep_area_and_ratio():
    shapes = anchor_shapes((16, 32), (0.5, 1.0, 2.0))
    assert shapes.shape == (6, 2)
    widths, heights = shapes[:, 0], shapes[:, 1]
    np.testing.assert_allclose(widths * heights, [256] * 3 + [1024] * 3, rtol=1e-5)
    np.testing.assert_allclose(heights / widths, [0.5, 1, 2, 0.5, 1, 2], rtol=1e-5)


def test_anchor_grid_counts_strides_and_order():
    anchors = anchor_grid((3, 5), 8, (16, 32), (0.5, 1.0, 2.0))
    assert anchors.shape == (3 * 5 * 6, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    grid = centres.reshape(3, 5, 6, 2)
    # every anchor of a position shares its centre: the receptive-field centre (j + .5) * stride
    np.testing.assert_allclose(grid[..., 0], np.broadcast_to(
        (np.arange(5)[None, :, None] + 0.5) * 8, (3, 5, 6)), atol=1e-5)
    np.testing.assert_allclose(grid[..., 1], np.broadcast_to(
        (np.arange(3)[:, None, None] + 0.5) * 8, (3, 5, 6)), atol=1e-5)
    # position-major, then size, then ratio: the 4th anchor of position (0, 0) is 32 x 32 / 0.5
    x1, y1, x2, y2 = anchors[3]
    np.testing.assert_allclose([x2 - x1, y2 - y1], [32 / np.sqrt(0.5), 32 * np.sqrt(0.5)],
                               rtol=1e-5)
    # neighbouring positions along a row are one stride apart
    np.testing.assert_allclose(anchors[6] - anchors[0], [8, 0, 8, 0], atol=1e-5)
    np.testing.assert_allclose(anchors[5 * 6] - anchors[0], [0, 8, 0, 8], atol=1e-5)
