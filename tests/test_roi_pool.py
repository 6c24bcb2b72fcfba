"""segkeras.layers.RoIPool, the quantised crop RoIAlign replaced (for a RoIPool/RoIAlign
ablation), against a loop-by-loop numpy transcription of torchvision's ``roi_pool`` CPU kernel
(torchvision/csrc/ops/cpu/roi_pool_kernel.cpp, itself Caffe's): rounding with std::round,
inclusive box ends, floor/ceil bin edges, max per bin, 0 for an empty bin."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from segkeras.layers import RoIAlign, RoIPool


def torchvision_roi_pool(features, boxes, box_indices, output_size, spatial_scale):
    """features (B, H, W, C) channels-last; boxes (K, 4) x1, y1, x2, y2 -> (K, P, Q, C)."""
    def cpp_round(value):
        return math.floor(abs(value) + 0.5) * (1 if value >= 0 else -1)

    height, width = features.shape[1:3]
    pooled_h, pooled_w = output_size
    out = np.zeros((len(boxes), pooled_h, pooled_w, features.shape[3]), np.float32)
    for k, ((x1, y1, x2, y2), b) in enumerate(zip(boxes, box_indices, strict=True)):
        start_w, start_h = cpp_round(x1 * spatial_scale), cpp_round(y1 * spatial_scale)
        end_w, end_h = cpp_round(x2 * spatial_scale), cpp_round(y2 * spatial_scale)
        bin_h = max(end_h - start_h + 1, 1) / pooled_h
        bin_w = max(end_w - start_w + 1, 1) / pooled_w
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                hstart = min(max(math.floor(ph * bin_h) + start_h, 0), height)
                hend = min(max(math.ceil((ph + 1) * bin_h) + start_h, 0), height)
                wstart = min(max(math.floor(pw * bin_w) + start_w, 0), width)
                wend = min(max(math.ceil((pw + 1) * bin_w) + start_w, 0), width)
                if hend > hstart and wend > wstart:
                    out[k, ph, pw] = features[b, hstart:hend, wstart:wend].max(axis=(0, 1))
    return out


def test_roi_pool_matches_torchvisions_definition():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 9, 11, 3)).astype(np.float32)
    corners = rng.uniform(-8, 120, size=(12, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(0, 90, size=(12, 2))], axis=1)
    boxes = np.vstack([boxes, [[8, 8, 8, 8], [20, 4, 23.9, 200], [-40, -40, -20, -20]]])
    boxes = boxes.astype(np.float32)
    box_indices = rng.integers(0, 2, size=len(boxes)).astype(np.int32)
    for output_size, scale in (((2, 2), 1 / 8), ((7, 5), 1 / 16), ((3, 3), 1 / 4)):
        pooled = RoIPool(output_size, scale)(features, boxes, box_indices)
        np.testing.assert_allclose(
            ops.convert_to_numpy(pooled),
            torchvision_roi_pool(features, boxes, box_indices, output_size, scale), atol=1e-6)


def test_roi_pool_is_quantised_where_roi_align_is_not():
    """A box moved by less than half a feature cell gives the same RoIPool crop, a different
    RoIAlign crop: the misalignment RoIAlign removes."""
    features = np.arange(8 * 8, dtype=np.float32).reshape(1, 8, 8, 1)
    boxes = np.array([[16, 16, 48, 48], [19, 19, 51, 51]], np.float32)  # 0.375 cells apart
    indices = np.zeros(2, np.int32)
    pool = ops.convert_to_numpy(RoIPool(4, 1 / 8)(features, boxes, indices))
    align = ops.convert_to_numpy(RoIAlign(4, 2, 1 / 8)(features, boxes, indices))
    np.testing.assert_array_equal(pool[0], pool[1])
    assert np.abs(align[0] - align[1]).max() > 0.3


def test_roi_pool_in_a_functional_model_and_its_config():
    features = keras.Input((8, 8, 2))
    boxes, indices = keras.Input((4,), batch_size=3), keras.Input((), batch_size=3, dtype="int32")
    model = keras.Model([features, boxes, indices],
                        RoIPool((2, 3), 1 / 4, name="pool")(features, boxes, indices))
    config = model.get_layer("pool").get_config()
    assert RoIPool.from_config(config).output_size == (2, 3)
    x = np.random.default_rng(1).normal(size=(1, 8, 8, 2)).astype(np.float32)
    b = np.array([[0, 0, 16, 16], [4, 4, 30, 30], [8, 0, 12, 31]], np.float32)
    assert tuple(model([x, b, np.zeros(3, np.int32)]).shape) == (3, 2, 3, 2)


def test_roi_pool_refuses_bad_arguments():
    with pytest.raises(ValueError, match="output_size"):
        RoIPool(0)
    with pytest.raises(ValueError, match="spatial_scale"):
        RoIPool(7, 0.0)
