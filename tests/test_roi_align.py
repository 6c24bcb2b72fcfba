"""RoIAlign against the ramp identity, the whole-map identity and a plain-loop numpy reference."""

import keras
import numpy as np
import pytest
from keras import ops

from segkeras.layers import RoIAlign


def _bilinear(feature_map, y, x):
    """torchvision's ``bilinear_interpolate`` (roi_align_kernel.cpp), one sample, all channels."""
    height, width = feature_map.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature_map.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * feature_map[y_low, x_low] + hy * lx * feature_map[y_low, x_high]
            + ly * hx * feature_map[y_high, x_low] + ly * lx * feature_map[y_high, x_high])


def reference_roi_align(features, boxes, box_indices, output_size, sampling_ratio,
                        spatial_scale, aligned):
    """torchvision.ops.roi_align (NHWC), written with plain loops."""
    out = np.zeros((len(boxes), output_size, output_size, features.shape[-1]))
    offset = 0.5 if aligned else 0.0
    for k, (box, image) in enumerate(zip(boxes, box_indices, strict=True)):
        x1, y1, x2, y2 = (float(v) * spatial_scale - offset for v in box)
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / output_size, roi_w / output_size
        for ph in range(output_size):
            for pw in range(output_size):
                total = np.zeros(features.shape[-1])
                for iy in range(sampling_ratio):
                    y = y1 + ph * bin_h + (iy + 0.5) * bin_h / sampling_ratio
                    for ix in range(sampling_ratio):
                        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / sampling_ratio
                        total += _bilinear(features[image], y, x)
                out[k, ph, pw] = total / (sampling_ratio * sampling_ratio)
    return out


def _gradient(fn, x):
    """d sum(fn(x)) / dx with the active backend's autodiff, as numpy."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(fn(x))
        return tape.gradient(total, x).numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: fn(v).sum())(x))
    import torch

    x = torch.tensor(x, requires_grad=True)
    fn(x).sum().backward()
    return x.grad.numpy()


MIXED_BOXES = np.array([
    [3.0, 5.0, 20.0, 27.0],     # inside
    [-10.0, -6.0, 12.0, 9.0],   # partly outside (top left)
    [25.0, 20.0, 50.0, 44.0],   # partly outside (bottom right)
    [7.3, 8.1, 7.9, 8.4],       # tiny
    [-40.0, -30.0, 90.0, 70.0],  # huge
    [40.0, 40.0, 60.0, 60.0],   # fully outside
], dtype="float32")


@pytest.mark.fast
def test_linear_ramp_is_reproduced_exactly():
    height, width = 12, 10
    yy, xx = np.mgrid[:height, :width].astype("float32")
    features = np.stack([2.0 * yy + 0.5 * xx + 1.0, -yy + 3.0 * xx], axis=-1)[None]
    boxes = np.array([[2.0, 3.0, 14.0, 17.0], [4.5, 6.25, 9.0, 8.0]], dtype="float32")
    layer = RoIAlign(output_size=4, sampling_ratio=3, spatial_scale=0.5)
    out = ops.convert_to_numpy(layer(features, boxes, np.zeros(2, "int32")))
    for k, (x1, y1, x2, y2) in enumerate(boxes * 0.5 - 0.5):
        centre_y = y1 + (np.arange(4) + 0.5) * (y2 - y1) / 4
        centre_x = x1 + (np.arange(4) + 0.5) * (x2 - x1) / 4
        cy, cx = np.meshgrid(centre_y, centre_x, indexing="ij")
        np.testing.assert_allclose(out[k, ..., 0], 2.0 * cy + 0.5 * cx + 1.0, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out[k, ..., 1], -cy + 3.0 * cx, rtol=1e-5, atol=1e-5)


@pytest.mark.fast
def test_whole_map_box_returns_the_map():
    features = np.random.rand(2, 6, 8, 3).astype("float32")
    boxes = np.array([[0.0, 0.0, 32.0, 24.0]] * 2, dtype="float32")
    layer = RoIAlign(output_size=(6, 8), sampling_ratio=1, spatial_scale=0.25)
    out = ops.convert_to_numpy(layer(features, boxes, np.array([1, 0])))
    np.testing.assert_allclose(out, features[::-1], rtol=1e-6, atol=1e-6)


@pytest.mark.fast
@pytest.mark.parametrize("sampling_ratio, spatial_scale, aligned",
                         [(2, 0.5, True), (1, 0.25, True), (3, 0.5, False)])
def test_matches_plain_loop_reference(sampling_ratio, spatial_scale, aligned):
    features = np.random.randn(2, 16, 13, 5).astype("float32")
    boxes = MIXED_BOXES / (2 * spatial_scale)
    box_indices = np.array([0, 1, 1, 0, 1, 0])
    layer = RoIAlign(output_size=7, sampling_ratio=sampling_ratio, spatial_scale=spatial_scale,
                     aligned=aligned)
    out = ops.convert_to_numpy(layer(features, boxes, box_indices))
    expected = reference_roi_align(features, boxes, box_indices, 7, sampling_ratio,
                                   spatial_scale, aligned)
    assert out.shape == (6, 7, 7, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(out[-1]).max() == 0.0  # a box beyond the map's one-pixel margin is all zeros


@pytest.mark.fast
def test_gradient_is_the_adjoint_of_the_linear_map():
    features = np.random.randn(2, 9, 11, 3).astype("float32")
    probe = np.random.randn(6, 5, 5, 3).astype("float32")
    layer = RoIAlign(output_size=5, sampling_ratio=2, spatial_scale=0.25)
    boxes, box_indices = MIXED_BOXES, np.array([0, 1, 0, 1, 1, 0])

    def weighted(x):
        return layer(x, boxes, box_indices) * ops.convert_to_tensor(probe)

    gradient = _gradient(weighted, features)
    assert np.abs(gradient[0]).sum() > 0 and np.abs(gradient[1]).sum() > 0
    # RoIAlign is linear in the features, so <grad, v> == <probe, RoIAlign(v)> for any v.
    other = np.random.randn(*features.shape).astype("float32")
    lhs = float((gradient * other).sum())
    rhs = float((probe * reference_roi_align(other, boxes, box_indices, 5, 2, 0.25, True)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-4)


@pytest.mark.fast
@pytest.mark.parametrize("aligned", [True, False])
def test_zero_area_boxes_give_finite_values_and_gradients(aligned):
    features = np.random.randn(1, 8, 8, 2).astype("float32")
    boxes = np.array([[4.0, 4.0, 4.0, 4.0], [0.0, 3.0, 0.0, 9.0], [30.0, 2.0, 30.0, 2.0]],
                     dtype="float32")
    layer = RoIAlign(output_size=3, sampling_ratio=2, spatial_scale=0.5, aligned=aligned)
    out = ops.convert_to_numpy(layer(features, boxes, np.zeros(3, "int32")))
    expected = reference_roi_align(features, boxes, [0, 0, 0], 3, 2, 0.5, aligned)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    gradient = _gradient(lambda x: layer(x, boxes, np.zeros(3, "int32")), features)
    assert np.isfinite(out).all() and np.isfinite(gradient).all()


@pytest.mark.fast
def test_no_boxes_gives_an_empty_batch():
    out = RoIAlign(output_size=4)(np.ones((1, 8, 8, 3), "float32"), np.zeros((0, 4), "float32"),
                                  np.zeros((0,), "int32"))
    assert tuple(out.shape) == (0, 4, 4, 3)


def test_mixed_precision_output_is_float16_and_close():
    features = np.random.rand(1, 8, 8, 4).astype("float32")
    boxes = MIXED_BOXES[:3] / 4
    full = RoIAlign(7, spatial_scale=0.5)(features, boxes, np.zeros(3, "int32"))
    half = RoIAlign(7, spatial_scale=0.5, dtype="mixed_float16")(features, boxes,
                                                                 np.zeros(3, "int32"))
    assert keras.backend.standardize_dtype(half.dtype) == "float16"
    np.testing.assert_allclose(ops.convert_to_numpy(half), ops.convert_to_numpy(full), atol=5e-3)


@pytest.mark.fast
def test_config_round_trip_and_bad_arguments():
    layer = RoIAlign(output_size=(7, 9), sampling_ratio=3, spatial_scale=0.125, aligned=False)
    clone = RoIAlign.from_config(layer.get_config())
    assert (clone.output_size, clone.sampling_ratio, clone.spatial_scale, clone.aligned) == (
        (7, 9), 3, 0.125, False)
    with pytest.raises(ValueError, match="sampling_ratio"):
        RoIAlign(sampling_ratio=0)
    with pytest.raises(ValueError, match="output_size"):
        RoIAlign(output_size=0)
