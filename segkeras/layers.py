"""Small serializable layers and initialisers shared by the segmentation heads.

Everything here uses ``keras.ops`` only, so it runs on the TensorFlow, JAX and PyTorch backends,
and is registered so that ``.keras`` files reload without ``custom_objects``.
"""

from __future__ import annotations

import numbers

import keras
import numpy as np
from keras import ops

from segkeras.errors import SegkerasError

# Per-channel constants of the ImageNet preprocessing conventions used by keras.applications.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")


@keras.saving.register_keras_serializable(package="segkeras")
class Preprocess(keras.layers.Layer):
    """Map raw RGB in [0, 255] to what an ImageNet backbone was trained on.

    Modes follow ``keras.applications.imagenet_utils.preprocess_input``:
    ``"caffe"`` (RGB -> BGR, subtract the ImageNet mean; VGG, ResNet),
    ``"tf"`` (scale to [-1, 1]; ResNetV2, MobileNetV2),
    ``"torch"`` (scale to [0, 1], normalise by the ImageNet mean/std; DenseNet),
    ``"none"`` (the backbone preprocesses inside itself; EfficientNet, MobileNetV3, ConvNeXt).
    """

    def __init__(self, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"Preprocess mode must be one of {PREPROCESSING_MODES}, got {mode!r}.")
        self.mode = mode

    def call(self, images):
        x = ops.cast(images, self.compute_dtype)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_BGR_MEAN, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, self.compute_dtype)
            std = ops.convert_to_tensor(_TORCH_STD, self.compute_dtype)
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def bilinear_kernel(size: int, channels_out: int, channels_in: int) -> np.ndarray:
    """The bilinear interpolation kernel FCN initialises its upsampling layers with.

    Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015.
    Returned in Keras' ``Conv2DTranspose`` layout ``(size, size, channels_out, channels_in)``;
    channel ``c`` is upsampled from channel ``c`` only. With ``kernel_size = 2 * stride`` and
    ``padding="same"`` the layer reproduces half-pixel-centred bilinear resizing away from the
    borders.
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = 1.0 - np.abs(np.arange(size) - center) / factor
    kernel_2d = np.outer(taps, taps)
    kernel = np.zeros((size, size, channels_out, channels_in), dtype="float32")
    for c in range(min(channels_out, channels_in)):
        kernel[:, :, c, c] = kernel_2d
    return kernel


@keras.saving.register_keras_serializable(package="segkeras")
class BilinearUpsampling(keras.initializers.Initializer):
    """Initialiser for ``Conv2DTranspose`` kernels: bilinear upsampling (FCN, Long et al. 2015)."""

    def __call__(self, shape, dtype=None):
        size_h, size_w, channels_out, channels_in = shape
        if size_h != size_w:
            raise ValueError(f"BilinearUpsampling needs a square kernel, got {size_h}x{size_w}.")
        return ops.convert_to_tensor(
            bilinear_kernel(size_h, channels_out, channels_in), dtype=dtype)

    def get_config(self):
        return {}


def _axis_taps(start, length, bins: int, sampling_ratio: int, size):
    """Bilinear taps of RoIAlign's samples along one axis, for every box.

    Returns ``(indices, weights)`` of shape ``(K, bins, 2 * sampling_ratio)``: the two neighbouring
    pixels of each of the ``sampling_ratio`` samples of each bin, and their weights (already
    divided by ``sampling_ratio``, zero for samples beyond one pixel outside the map).
    """
    sub_bins = (np.arange(sampling_ratio) + 0.5) / sampling_ratio
    offsets = ops.convert_to_tensor((np.arange(bins)[:, None] + sub_bins).astype("float32"))
    coords = start[:, None, None] + offsets[None] * (length / bins)[:, None, None]
    size = ops.cast(size, "float32")
    inside = ops.cast((coords >= -1.0) & (coords <= size), "float32") / sampling_ratio
    coords = ops.maximum(coords, 0.0)
    low = ops.floor(coords)
    at_end = low >= size - 1.0
    low = ops.where(at_end, size - 1.0, low)
    coords = ops.where(at_end, low, coords)
    high = ops.where(at_end, low, low + 1.0)
    frac = coords - low
    indices = ops.cast(ops.concatenate([low, high], axis=-1), "int32")
    weights = ops.concatenate([(1.0 - frac) * inside, frac * inside], axis=-1)
    return indices, weights


def concrete_value(tensor) -> np.ndarray | None:
    """The tensor's values as a numpy array when they are known (eager execution), else None:
    a symbolic tensor inside a compiled graph (``tf.function``, ``jax.jit``) has no values yet,
    and each backend raises its own error type when asked for them."""
    try:
        return np.asarray(ops.convert_to_numpy(tensor))
    except Exception:  # noqa: BLE001 - tf, jax and torch raise different types for symbolic tensors
        return None


def _check_known_boxes(features, boxes, box_indices) -> None:
    """SegkerasError naming the first bad box, when the values are known (see RoIAlign)."""
    boxes, box_indices = concrete_value(boxes), concrete_value(box_indices)
    batch = features.shape[0]
    if boxes is None or box_indices is None or batch is None:
        return
    boxes = boxes.reshape(-1, 4).astype(np.float64)
    box_indices = box_indices.reshape(-1)
    for k, (box, index) in enumerate(zip(boxes, box_indices, strict=True)):
        if not np.isfinite(box).all():
            problem = "has NaN or infinite coordinates; pass finite pixel values"
        elif box[2] < box[0] or box[3] < box[1]:
            problem = ("has x2 < x1 or y2 < y1; boxes are x1, y1, x2, y2 (from x, y, w, h: "
                       "x2 = x + w, y2 = y + h)")
        elif not 0 <= index < batch:
            problem = (f"has image index {index}, outside 0..{batch - 1}; box_indices give the "
                       "image of each box in the batch")
        else:
            continue
        raise SegkerasError(f"RoIAlign: box {k} {box.tolist()} {problem}.")


def _sampling_grid(output_size, sampling_ratio) -> tuple[tuple[int, int], int]:
    """RoIAlign's checked ``(output_size pair, sampling_ratio)``."""
    size = (output_size, output_size) if np.ndim(output_size) == 0 else tuple(output_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"output_size must be a positive int or a pair, got {output_size!r}.")
    if int(sampling_ratio) < 1:
        raise ValueError(
            f"sampling_ratio must be a positive int (adaptive sampling is not supported), "
            f"got {sampling_ratio!r}."
        )
    return (int(size[0]), int(size[1])), int(sampling_ratio)


def _pool_boxes(flat, boxes, box_indices, batch, spatial_scale, height, width, base,
                output_size: tuple[int, int], sampling_ratio: int, aligned: bool, dtype):
    """RoIAlign (see :class:`RoIAlign`) of K boxes from ``flat``, feature maps stacked as rows
    (image-major, then row, then column): box ``k`` reads the ``height x width`` map of image
    ``box_indices[k]`` whose first row is ``base`` at ``spatial_scale``. The geometry is either
    one number for every box or, for a pyramid, (K, 1, 1) per box (``spatial_scale`` (K,))."""
    boxes = ops.stop_gradient(ops.cast(boxes, "float32"))
    box_indices = ops.cast(box_indices, "int32")
    usable = (
        ops.all(ops.isfinite(boxes), axis=-1)
        & (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
        & (box_indices >= 0) & (box_indices < batch)
    )
    boxes = ops.where(usable[:, None], boxes, 0.0)  # a harmless box, its crop zeroed below
    box_indices = ops.where(usable, box_indices, 0)
    channels = ops.shape(flat)[-1]
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (boxes[:, i] * spatial_scale - offset for i in range(4))
    box_width, box_height = x2 - x1, y2 - y1
    if not aligned:
        box_width, box_height = ops.maximum(box_width, 1.0), ops.maximum(box_height, 1.0)
    bins_y, bins_x = output_size
    rows, row_weights = _axis_taps(y1, box_height, bins_y, sampling_ratio, height)
    cols, col_weights = _axis_taps(x1, box_width, bins_x, sampling_ratio, width)
    first_row = box_indices[:, None, None] * height
    row_weights = ops.cast(row_weights, dtype)
    col_weights = ops.cast(col_weights, dtype)
    pooled = 0.0
    for i in range(2 * sampling_ratio):
        row_start = (first_row + rows[:, :, i : i + 1]) * width + base
        for j in range(2 * sampling_ratio):
            index = ops.reshape(row_start + cols[:, None, :, j], (-1,))
            weight = row_weights[:, :, i, None, None] * col_weights[:, None, :, j, None]
            taps = ops.reshape(ops.take(flat, index, axis=0), (-1, bins_y, bins_x, channels))
            pooled = pooled + weight * taps
    return pooled * ops.cast(usable, dtype)[:, None, None, None]


@keras.saving.register_keras_serializable(package="segkeras")
class RoIAlign(keras.layers.Layer):
    """RoIAlign: a fixed-size feature crop per box (He et al., "Mask R-CNN", ICCV 2017).

    Called on ``(features, boxes, box_indices)``: ``features`` (B, H, W, C), ``boxes`` (K, 4) as
    ``x1, y1, x2, y2`` in image pixels, ``box_indices`` (K,) int, the image of each box. Returns
    (K, P, P, C) with ``P = output_size``. Same definition as detectron2's ``ROIAlign`` and
    ``torchvision.ops.roi_align``; along each axis (y shown, x alike):

    - box in feature-map pixels: ``y1' = y1 * s - o``, ``h = y2 * s - o - y1'`` with
      ``s = spatial_scale`` and ``o = 0.5`` if ``aligned`` (pixel centres at integer + 0.5) else 0,
      where then ``h = max(h, 1)``;
    - bin ``p`` (0..P-1) takes ``r = sampling_ratio`` samples at its sub-bin centres
      ``y = y1' + (p + (i + 0.5) / r) * h / P``, ``i = 0..r-1``;
    - a sample at ``(y, x)`` with ``y < -1``, ``y > H``, ``x < -1`` or ``x > W`` is 0; otherwise
      ``y`` is clamped to ``[0, H - 1]`` (and ``x`` to ``[0, W - 1]``) and the map is
      interpolated bilinearly between its four neighbouring pixels;
    - the bin's value is the mean of its ``r * r`` samples (zeros included).

    Implemented with ``keras.ops`` gathers over all boxes at once (no loop over boxes), so it
    runs on every backend and is differentiable w.r.t. the features (not the boxes).

    Bad boxes: a box with a NaN or infinite coordinate, ``x2 < x1`` or ``y2 < y1``, or a box
    index outside ``0..B-1`` (e.g. -1) raises :class:`SegkerasError` where the values are known
    (an eager call, as in a notebook). Inside a compiled graph (``model.fit``/``predict``,
    ``tf.function``, ``jax.jit``) values are unknown when the graph is built, so such a box gives
    an all-zero crop instead of a backend error or a crop from another image. The public entry
    points (``predict_masks_in_boxes``, ``make_instance_dataset``) refuse bad boxes before any
    graph.
    """

    def __init__(
        self,
        output_size: int | tuple[int, int] = 14,
        sampling_ratio: int = 2,
        spatial_scale: float = 1.0 / 16,
        aligned: bool = True,
        **kwargs,
    ):
        super().__init__(autocast=False, **kwargs)
        self.output_size, self.sampling_ratio = _sampling_grid(output_size, sampling_ratio)
        if spatial_scale <= 0:
            raise ValueError(f"spatial_scale must be positive, got {spatial_scale!r}.")
        self.spatial_scale = float(spatial_scale)
        self.aligned = bool(aligned)

    def __call__(self, features, boxes, box_indices, **kwargs):
        _check_known_boxes(features, boxes, box_indices)  # before Keras wraps errors of call()
        return super().__call__(features, boxes, box_indices, **kwargs)

    def call(self, features, boxes, box_indices):
        batch, height, width, channels = ops.shape(features)
        flat = ops.reshape(ops.cast(features, self.compute_dtype), (-1, channels))
        return _pool_boxes(flat, boxes, box_indices, batch, self.spatial_scale, height, width, 0,
                           self.output_size, self.sampling_ratio, self.aligned,
                           self.compute_dtype)

    def compute_output_shape(self, features_shape, boxes_shape, box_indices_shape):
        return (boxes_shape[0], *self.output_size, features_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "output_size": self.output_size,
            "sampling_ratio": self.sampling_ratio,
            "spatial_scale": self.spatial_scale,
            "aligned": self.aligned,
        }


CANONICAL_SCALE, CANONICAL_LEVEL = 224.0, 4
"""Eq. 1 of the FPN paper: an RoI of ImageNet's canonical size 224 maps to level 4 (P4)."""


def check_canonical_size(value) -> float:
    """``value`` as eq. 1's canonical RoI side (a positive, finite number of pixels), or a
    :class:`SegkerasError` saying so."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            0 < value < float("inf")):
        raise SegkerasError(f"roi_canonical_size must be a positive RoI side in pixels (224 in "
                            f"the FPN paper), got {value!r}.")
    return float(value)


def fpn_levels(boxes, min_level: int = 2, max_level: int = 5,
               canonical_size: float = CANONICAL_SCALE):
    """(..., 4) boxes -> (...) int32 pyramid levels by eq. 1 of Lin et al., "Feature Pyramid
    Networks for Object Detection", CVPR 2017: ``k = floor(4 + log2(sqrt(w h) / 224))`` clamped
    to ``[min_level, max_level]`` (plus 1e-6 inside the floor, as torchvision's ``LevelMapper``,
    so a side of exactly 112, 224, 448 is not lost to rounding; empty boxes go to ``min_level``).
    ``canonical_size``: the side that maps to level 4 instead of 224 (Detectron2's
    ``canonical_box_size``; 112 moves every box one level coarser).
    """
    boxes = ops.cast(boxes, "float32")
    sides = ops.maximum(boxes[..., 2:] - boxes[..., :2], 0.0)
    scale = ops.sqrt(sides[..., 0] * sides[..., 1])
    level = ops.floor(CANONICAL_LEVEL + ops.log2(scale / float(canonical_size)) + 1e-6)
    return ops.cast(ops.clip(level, min_level, max_level), "int32")


@keras.saving.register_keras_serializable(package="segkeras")
class MultiScaleRoIAlign(keras.layers.Layer):
    """RoIAlign over a feature pyramid (Lin et al. 2017; He et al., "Mask R-CNN", ICCV 2017):
    each box is pooled from the one level eq. 1 assigns it (:func:`fpn_levels`).

    Called on ``(features, boxes, box_indices)``: ``features`` a list of (B, H_l, W_l, C) maps
    at ``strides`` (finest first, each twice the previous: level ``log2(stride)``), ``boxes``
    (K, 4) and ``box_indices`` (K,) as for :class:`RoIAlign`, which it equals on the assigned
    level. The levels are stacked into one table of rows and each box gathers its samples from
    its own level's rows (one gather per sample, as a single-level RoIAlign: no level is pooled
    for boxes it does not hold, and shapes stay static). Bad boxes as in :class:`RoIAlign`.
    ``canonical_size``: the box side eq. 1 maps to level 4 (224 in the paper).
    """

    def __init__(self, output_size: int | tuple[int, int] = 7, sampling_ratio: int = 2,
                 strides: tuple[int, ...] = (4, 8, 16, 32), aligned: bool = True,
                 canonical_size: float = CANONICAL_SCALE, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.output_size, self.sampling_ratio = _sampling_grid(output_size, sampling_ratio)
        self.aligned = bool(aligned)
        self.canonical_size = check_canonical_size(canonical_size)
        strides = tuple(int(stride) for stride in strides)
        levels = np.log2(strides)
        if not strides or np.any(levels != np.round(levels)) or np.any(np.diff(levels) != 1):
            raise ValueError(f"strides must be consecutive powers of two, finest first, got "
                             f"{strides!r}.")
        self.strides = strides
        self.min_level, self.max_level = int(levels[0]), int(levels[-1])

    def __call__(self, features, boxes, box_indices, **kwargs):
        _check_known_boxes(features[0], boxes, box_indices)
        return super().__call__(list(features), boxes, box_indices, **kwargs)

    def call(self, features, boxes, box_indices):
        if len(features) != len(self.strides):
            raise SegkerasError(f"MultiScaleRoIAlign got {len(features)} feature maps for "
                                f"{len(self.strides)} strides {self.strides}.")
        batch, channels = ops.shape(features[0])[0], ops.shape(features[0])[-1]
        heights = [int(ops.shape(level)[1]) for level in features]
        widths = [int(ops.shape(level)[2]) for level in features]
        flat = ops.concatenate([ops.reshape(ops.cast(level, self.compute_dtype), (-1, channels))
                                for level in features], axis=0)
        first_rows = np.cumsum([0] + [h * w for h, w in zip(heights, widths, strict=True)])[:-1]
        finite = ops.all(ops.isfinite(ops.cast(boxes, "float32")), axis=-1)[:, None]
        level = fpn_levels(ops.where(finite, boxes, 0.0), self.min_level, self.max_level,
                           self.canonical_size) - self.min_level  # a bad box's crop: zeroed below

        def per_box(values, dtype):
            return ops.take(ops.convert_to_tensor(np.asarray(values), dtype), level)

        scale = per_box([1.0 / stride for stride in self.strides], "float32")
        height = per_box(heights, "int32")[:, None, None]
        width = per_box(widths, "int32")[:, None, None]
        base = per_box(first_rows, "int32")[:, None, None] * ops.cast(batch, "int32")
        return _pool_boxes(flat, boxes, box_indices, batch, scale, height, width, base,
                           self.output_size, self.sampling_ratio, self.aligned,
                           self.compute_dtype)

    def compute_output_shape(self, features_shape, boxes_shape, box_indices_shape):
        return (boxes_shape[0], *self.output_size, features_shape[0][-1])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size,
                "sampling_ratio": self.sampling_ratio, "strides": self.strides,
                "aligned": self.aligned, "canonical_size": self.canonical_size}


def _round_half_away(values):
    """``std::round`` (what torchvision's RoIPool rounds with): halves away from zero."""
    return ops.sign(values) * ops.floor(ops.abs(values) + 0.5)


def _pool_bins(start, end, bins: int, size: int):
    """(K, bins, size) bool: the feature rows (or columns) in each of RoIPool's bins, for boxes
    from cell ``start`` to cell ``end`` (both included, already rounded), on a map ``size`` long."""
    bin_size = ops.maximum(end - start + 1.0, 1.0) / bins
    edges = ops.convert_to_tensor(np.arange(bins, dtype="float32"))
    low = ops.floor(edges[None] * bin_size[:, None]) + start[:, None]
    high = ops.ceil((edges[None] + 1.0) * bin_size[:, None]) + start[:, None]
    low, high = ops.clip(low, 0.0, float(size)), ops.clip(high, 0.0, float(size))
    cells = ops.convert_to_tensor(np.arange(size, dtype="float32"))
    return (cells[None, None] >= low[..., None]) & (cells[None, None] < high[..., None])


@keras.saving.register_keras_serializable(package="segkeras")
class RoIPool(keras.layers.Layer):
    """RoIPool, the quantised crop of Fast R-CNN (Girshick, ICCV 2015) that RoIAlign replaced
    (He et al., ICCV 2017, Sec. 3 and Table 2c); for ablations against :class:`RoIAlign`, whose
    arguments and inputs it takes: ``(features (B, H, W, C), boxes (K, 4) x1, y1, x2, y2 in image
    pixels, box_indices (K,))`` -> (K, P, P, C).

    Same definition as ``torchvision.ops.roi_pool`` (Caffe's): the box is scaled by
    ``spatial_scale`` and **rounded** to whole cells (``x1' = round(x1 * s)``, ``x2' = round(x2 *
    s)``, inclusive, at least one cell wide); bin ``p`` of P covers cells ``floor(p * w / P)`` to
    ``ceil((p + 1) * w / P)`` (exclusive) after ``x1'``, clipped to the map; its value is the
    **maximum** over those cells, 0 for an empty bin. Vectorised with ``keras.ops`` (a masked
    maximum over rows and then columns, no loop over boxes); computes in float32.
    """

    def __init__(self, output_size: int | tuple[int, int] = 14, spatial_scale: float = 1.0 / 16,
                 **kwargs):
        super().__init__(autocast=False, **kwargs)
        size = (output_size, output_size) if np.ndim(output_size) == 0 else tuple(output_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"output_size must be a positive int or a pair, got {output_size!r}.")
        if spatial_scale <= 0:
            raise ValueError(f"spatial_scale must be positive, got {spatial_scale!r}.")
        self.output_size = (int(size[0]), int(size[1]))
        self.spatial_scale = float(spatial_scale)

    def __call__(self, features, boxes, box_indices, **kwargs):
        _check_known_boxes(features, boxes, box_indices)
        return super().__call__(features, boxes, box_indices, **kwargs)

    def call(self, features, boxes, box_indices):
        features = ops.cast(features, "float32")
        boxes = ops.stop_gradient(ops.cast(boxes, "float32"))
        crops = ops.take(features, ops.cast(box_indices, "int32"), axis=0)  # (K, H, W, C)
        height, width = features.shape[1], features.shape[2]
        if height is None or width is None:
            raise ValueError("RoIPool needs a feature map of known height and width.")
        x1, y1, x2, y2 = (_round_half_away(boxes[:, i] * self.spatial_scale) for i in range(4))
        rows = _pool_bins(y1, y2, self.output_size[0], height)  # (K, P, H)
        cols = _pool_bins(x1, x2, self.output_size[1], width)  # (K, Q, W)
        lowest = np.finfo("float32").min
        # max over each bin's columns, then over its rows: (K, H, Q, C), then (K, P, Q, C)
        by_cols = ops.max(ops.where(cols[:, None, :, :, None], crops[:, :, None], lowest), axis=3)
        pooled = ops.max(ops.where(rows[:, :, :, None, None], by_cols[:, None], lowest), axis=2)
        empty = ~(ops.any(rows, axis=-1)[:, :, None] & ops.any(cols, axis=-1)[:, None, :])
        return ops.where(empty[..., None], 0.0, pooled)

    def compute_output_shape(self, features_shape, boxes_shape, box_indices_shape):
        return (boxes_shape[0], *self.output_size, features_shape[-1])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size,
                "spatial_scale": self.spatial_scale}
