"""The tf.data input pipeline: (image, mask) batches for ``model.fit`` on every Keras backend.

Images come out float32 RGB in [0, 255] (models normalise inside), masks int32 class ids with
255 = ignore. Resizing and augmentation keep image and mask aligned: the same geometric transform
for both (image bilinear, mask nearest neighbour, so no new label values), photometric changes on
the image only. Augmentation runs on whole batches, so the pipeline outpaces training.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from segkeras.data.core import IGNORE_LABEL, SegmentationData, parse_size
from segkeras.data.images import check_pixels
from segkeras.errors import SegkerasError

FLIP_PROBABILITY = 0.5
SCALE_RANGE = (0.9, 1.25)  # zoom factor; > 1 crops, < 1 shows more (reflected at the border)
MAX_ROTATION_DEGREES = 12.0
MAX_SHIFT = 0.08  # of the image side, on top of what the zoom leaves room for
BRIGHTNESS = 25.0  # +- intensity shift
CONTRAST_RANGE = (0.8, 1.2)
SATURATION_RANGE = (0.8, 1.2)


def make_dataset(
    source,
    image_size,
    batch_size: int,
    augment: bool = False,
    shuffle: bool = False,
    cache: bool = True,
    seed: int = 0,
    num_classes: int | None = None,
    autotune: bool = False,
) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of (images float32 (B, H, W, 3) in [0, 255], masks int32 (B, H, W)).

    Args:
        source: a :class:`SegmentationData`, or an ``(images, masks)`` pair of arrays or lists
            (grayscale and RGBA images are converted to RGB). Pixels are RGB in [0, 255]: NaN
            pixels and float images scaled to [0, 1] are refused (SegkerasError), as are masks
            with labels that are not class ids (below).
        image_size: output size, an int or ``(height, width)``; other sizes are resized (image
            bilinear with antialiasing, mask nearest neighbour).
        batch_size: images per batch (the last batch may be smaller).
        augment: random flip, zoom/crop, rotation and shift, identical for image and mask
            (border reflected), then brightness, contrast and saturation on the image only.
        shuffle: reshuffle the images every epoch.
        cache: keep the resized images in memory after the first epoch (images already of
            ``image_size`` are used from memory as they are).
        seed: seed of the shuffle and the augmentation (each epoch draws new values).
        num_classes: classes including background; every label must be below it or 255
            (default: ``source.num_classes``; not checked for an ``(images, masks)`` pair).
        autotune: let tf.data's autotuner size the buffers and the parallelism. Off by default:
            on a CPU with few cores, where training uses every core, it sometimes starves the
            training step and leaves a core idle (``python experiments/demo_autotune.py``,
            BENCHMARKS note 3); without it parallel maps use one thread per core.
    """
    images, masks = _checked_arrays(source, num_classes)
    height, width = parse_size(image_size)
    if int(batch_size) != batch_size or batch_size < 1:
        raise SegkerasError(f"batch_size must be an int >= 1, got {batch_size!r}")

    dataset = _element_dataset(images, masks)
    same_size = isinstance(images, np.ndarray) and images.shape[1:3] == (height, width)
    if not same_size:
        dataset = dataset.map(lambda image, mask: _resize(image, mask, height, width),
                              num_parallel_calls=tf.data.AUTOTUNE)
        if cache:
            dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(int(batch_size))
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda batch, batch_seed: augment_batch(*batch, batch_seed),
            num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(lambda image, mask: (tf.cast(image, tf.float32),
                                                   tf.cast(mask, tf.int32)))
    # Static spatial sizes let XLA compile one program and keep graph tracing simple.
    dataset = dataset.map(lambda image, mask: (tf.ensure_shape(image, [None, height, width, 3]),
                                               tf.ensure_shape(mask, [None, height, width])))
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    if not autotune:
        options = tf.data.Options()
        options.autotune.enabled = False
        dataset = dataset.with_options(options)
    return dataset


def augment_batch(images, masks, seed) -> tuple[tf.Tensor, tf.Tensor]:
    """Randomly augment a batch: (uint8 or float (B, H, W, 3), integer (B, H, W), seed (2,)) ->
    (float32 images in [0, 255], int32 masks). Deterministic for a given ``seed``."""
    geometry_seed, photometric_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2))
    images = tf.cast(images, tf.float32)
    transforms = _random_transforms(tf.shape(images), geometry_seed)
    output_shape = tf.shape(images)[1:3]
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=output_shape, fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT")
    masks = tf.raw_ops.ImageProjectiveTransformV3(
        images=masks[..., None], transforms=transforms, output_shape=output_shape,
        fill_value=0.0, interpolation="NEAREST", fill_mode="REFLECT")[..., 0]
    return _photometric(images, photometric_seed), tf.cast(masks, tf.int32)


def _random_transforms(shape, seed) -> tf.Tensor:
    """(B, 8) projective transforms mapping output pixels to input pixels: a flip, a rotation
    and a zoom about the image centre, then a shift."""
    batch = shape[0]
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    draws = tf.random.stateless_uniform([5, batch], seed)
    flip = tf.where(draws[0] < FLIP_PROBABILITY, -1.0, 1.0)
    zoom = SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * draws[1]
    angle = math.radians(MAX_ROTATION_DEGREES) * (2.0 * draws[2] - 1.0)
    room = tf.maximum(0.0, 1.0 - 1.0 / zoom) / 2.0 + MAX_SHIFT  # fraction of the side
    shift_x = room * width * (2.0 * draws[3] - 1.0)
    shift_y = room * height * (2.0 * draws[4] - 1.0)
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    a0, a1, b0, b1 = cos * flip, -sin, sin * flip, cos
    centre_x, centre_y = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    a2 = centre_x - a0 * centre_x - a1 * centre_y + shift_x
    b2 = centre_y - b0 * centre_x - b1 * centre_y + shift_y
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def _photometric(images: tf.Tensor, seed) -> tf.Tensor:
    """Per-image saturation and contrast change and brightness shift, clipped to [0, 255]:
    ``x -> c * (gray + s * (x - gray)) + (1 - c) * mean + b`` as one linear blend."""
    batch = tf.shape(images)[0]
    draws = tf.random.stateless_uniform([3, batch, 1, 1, 1], seed)
    saturation = SATURATION_RANGE[0] + (SATURATION_RANGE[1] - SATURATION_RANGE[0]) * draws[0]
    contrast = CONTRAST_RANGE[0] + (CONTRAST_RANGE[1] - CONTRAST_RANGE[0]) * draws[1]
    brightness = BRIGHTNESS * (2.0 * draws[2] - 1.0)
    gray = tf.reduce_mean(images, axis=-1, keepdims=True)
    mean = tf.reduce_mean(gray, axis=[1, 2, 3], keepdims=True)
    offset = (1.0 - contrast) * mean + brightness
    images = images * (contrast * saturation) + (gray * (contrast * (1.0 - saturation)) + offset)
    return tf.clip_by_value(images, 0.0, 255.0)


def _resize(image, mask, height: int, width: int):
    image = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    mask = tf.image.resize(mask[..., None], (height, width), method="nearest")[..., 0]
    return image, mask


def _element_dataset(images, masks) -> tf.data.Dataset:
    if isinstance(images, np.ndarray):
        return tf.data.Dataset.from_tensor_slices((images, masks))
    return tf.data.Dataset.from_generator(
        lambda: zip(images, masks, strict=True),
        output_signature=(tf.TensorSpec((None, None, 3), tf.uint8),
                          tf.TensorSpec((None, None), tf.uint8)))


def _checked_arrays(source, num_classes: int | None):
    """(images, masks) as uint8 RGB images and uint8 masks, validated against num_classes."""
    if isinstance(source, SegmentationData):
        images, masks = source.images, source.masks
        num_classes = source.num_classes if num_classes is None else num_classes
    elif isinstance(source, (tuple, list)) and len(source) == 2:
        images, masks = source
    else:
        raise SegkerasError(
            f"source must be a SegmentationData or an (images, masks) pair, got {type(source)}")
    if len(images) != len(masks):
        raise SegkerasError(f"{len(images)} images but {len(masks)} masks; pass one mask per image")
    if len(images) == 0:
        raise SegkerasError("no images: the source is empty")
    if isinstance(images, np.ndarray) and isinstance(masks, np.ndarray):
        images, masks = _checked_pair(images, masks, "the images", batched=True)
    else:
        pairs = [_checked_pair(image, mask, f"image {i}", batched=False)
                 for i, (image, mask) in enumerate(zip(images, masks, strict=True))]
        images, masks = [image for image, _ in pairs], [mask for _, mask in pairs]
        if len({image.shape for image in images}) == 1:  # one size: arrays are faster
            images, masks = np.stack(images), np.stack(masks)
    largest = max(_largest_label(mask) for mask in (masks if isinstance(masks, list) else [masks]))
    if num_classes is not None and largest >= num_classes:
        raise SegkerasError(
            f"mask label {largest} found but num_classes={num_classes}: labels must be "
            f"0..{num_classes - 1} or {IGNORE_LABEL} (ignore); fix the masks or num_classes")
    return images, masks


def _checked_pair(image, mask, what: str, batched: bool):
    """RGB uint8 image(s) and uint8 mask(s) with the same height and width: one image (H, W, C)
    and mask (H, W), or with ``batched`` (n, H, W, C) and (n, H, W)."""
    image, mask = np.asarray(image), np.asarray(mask)
    if image.ndim == (3 if batched else 2):  # grayscale without a channel axis
        image = image[..., None]
    if image.ndim != (4 if batched else 3) or image.shape[-1] not in (1, 3, 4):
        expected = "(n, H, W, 3)" if batched else "(H, W, 3)"
        raise SegkerasError(f"{what}: expected images shaped {expected} (or grayscale/RGBA), "
                            f"got {image.shape}")
    image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    if mask.ndim == image.ndim and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != image.shape[:-1]:
        raise SegkerasError(
            f"{what}: image shape {image.shape} does not match mask shape {mask.shape}; "
            "each mask must have its image's height and width")
    if np.issubdtype(mask.dtype, np.floating) and np.any(mask != np.round(mask)):
        raise SegkerasError(f"{what}: mask values must be whole class ids, got fractions")
    if mask.size and (mask.min() < 0 or mask.max() > IGNORE_LABEL):
        raise SegkerasError(
            f"{what}: mask values must be 0..{IGNORE_LABEL}, found {mask.min()}..{mask.max()}")
    if image.dtype != np.uint8:
        image = np.round(check_pixels(image, what)).astype(np.uint8)
    return image, mask.astype(np.uint8, copy=False)


def _largest_label(mask: np.ndarray) -> int:
    """The largest class id in a mask, ignoring the 255 (ignore) label; 0 if none."""
    return int(np.max(mask, where=mask != IGNORE_LABEL, initial=0))
