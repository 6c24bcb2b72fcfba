"""Training data for the mask head: padded boxes and class ids per image, 28x28 mask targets.

Mask R-CNN (He et al., ICCV 2017) trains its mask head on proposals whose IoU with a ground-truth
box is at least 0.5; the target of a proposal is the ground-truth mask of its object, RoIAligned
over the proposal to 28x28 and thresholded at 0.5. Without a region proposal network we simulate
proposals by jittering the ground-truth boxes (shift and rescale, never below IoU 0.5).

Each element of :func:`make_instance_dataset` is ``(inputs, targets)``:

- ``inputs["image"]``: (H, W, 3) float32 RGB in [0, 255];
- ``inputs["boxes"]``: (max_instances, 4) float32 ``x1, y1, x2, y2`` in pixels of that image;
- ``inputs["class_ids"]``: (max_instances,) int32; 0 marks a padding row (the valid-box mask is
  ``class_ids > 0``);
- ``targets``: (max_instances, 28, 28) float32, 1 inside the object, 0 outside and
  :data:`PADDING_TARGET` for every pixel of a padding row (the loss skips those).

TensorFlow is used here only (tf.data); it is imported when a dataset is made.
"""

from __future__ import annotations

import numpy as np
from skimage.transform import resize

from segkeras.data.core import Instances, SegmentationData, parse_size
from segkeras.data.images import check_pixels, resize_image
from segkeras.errors import SegkerasError

PADDING_TARGET = -1.0
"""Target value of padding rows: the mask loss ignores every pixel below 0."""

MASK_SIZE = 28
"""Side of the mask head's output and targets (Mask R-CNN's 28x28)."""

MIN_JITTER_IOU = 0.5
"""A jittered box keeps at least this IoU with its ground-truth box (Mask R-CNN's positives)."""


def resize_instances(instances: Instances, size: tuple[int, int]) -> Instances:
    """Masks resized with nearest neighbour, boxes scaled, to an image of ``size`` = (H, W)."""
    if len(instances) == 0:
        empty = np.zeros((0, 4), np.float32)
        return Instances(np.zeros((0, *size), bool), empty, np.zeros(0, np.int32))
    height, width = instances.masks.shape[1:]
    if (height, width) == tuple(size):
        return instances
    moved = np.moveaxis(np.asarray(instances.masks, bool), 0, -1)
    masks = np.moveaxis(resize(moved, size, order=0, anti_aliasing=False), -1, 0) > 0
    scale = np.array([size[1] / width, size[0] / height] * 2, dtype=np.float32)
    return Instances(masks, instances.boxes * scale, instances.class_ids)


def check_class_ids(class_ids: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """Class ids must be whole numbers in ``1..num_classes-1`` (0 is the background)."""
    class_ids = np.asarray(class_ids)
    if class_ids.size and not np.issubdtype(class_ids.dtype, np.integer) \
            and not (np.isfinite(class_ids).all() and (class_ids == np.round(class_ids)).all()):
        raise SegkerasError(f"{where} has class ids {class_ids.tolist()}: class ids are whole "
                            "numbers (1, 2, ...), not fractions; fix the labels.")
    if class_ids.size and (class_ids.min() < 1 or class_ids.max() >= num_classes):
        bad = class_ids.min() if class_ids.min() < 1 else class_ids.max()
        raise SegkerasError(
            f"{where} has class id {bad}, outside 1..{num_classes - 1} (num_classes={num_classes} "
            "counts the background); fix the labels or build the model for more classes."
        )
    return class_ids.astype(np.int32)


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes clipped to the image, whether each still has a positive area).

    Raises SegkerasError for non-finite coordinates, boxes with ``x2 < x1`` or ``y2 < y1`` (not
    ``x1, y1, x2, y2``: convert ``x, y, w, h`` boxes with ``x2 = x + w``) or an array that is not
    (N, 4).
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise SegkerasError(f"boxes must be an (N, 4) array of x1, y1, x2, y2, got {boxes.shape}.")
    if not np.isfinite(boxes).all():
        raise SegkerasError("boxes contain NaN or infinite coordinates; pass finite pixel values.")
    inverted = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if inverted.size:
        raise SegkerasError(
            f"box {inverted[0]} is {boxes[inverted[0]].tolist()}, with x2 < x1 or y2 < y1; boxes "
            "are x1, y1, x2, y2 in pixels (from x, y, w, h: x2 = x + w, y2 = y + h).")
    clipped = np.clip(boxes, 0.0, [width, height, width, height]).astype(np.float32)
    valid = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped, valid


def pad_instances(
    data: SegmentationData, image_size: int | tuple[int, int], max_instances: int
) -> dict[str, np.ndarray]:
    """Every image resized to ``image_size`` with its instances padded to ``max_instances``.

    Boxes are clipped to the image; boxes left without area are skipped, as are the instances
    beyond the first ``max_instances`` of an image. Returns numpy arrays ``images`` (n, H, W, 3),
    ``masks`` (n, max_instances, H, W) bool, ``boxes`` (n, max_instances, 4) and ``class_ids``
    (n, max_instances), padding rows all zeros.
    """
    if data.instances is None:
        raise SegkerasError(
            "This dataset has no instances (data.instances is None); use one with instance "
            "masks, e.g. segkeras.data.shapes.generate(...)."
        )
    if int(max_instances) != max_instances or max_instances < 1:
        raise SegkerasError(f"max_instances must be a positive int, got {max_instances!r}.")
    height, width = parse_size(image_size, multiple_of=32)
    n = len(data)
    images = np.zeros((n, height, width, 3), dtype=np.float32)
    masks = np.zeros((n, max_instances, height, width), dtype=bool)
    boxes = np.zeros((n, max_instances, 4), dtype=np.float32)
    class_ids = np.zeros((n, max_instances), dtype=np.int32)
    for i, (image, objects) in enumerate(zip(data.images, data.instances, strict=True)):
        ids = check_class_ids(objects.class_ids, data.num_classes, f"Image {i}")
        objects = resize_instances(Instances(objects.masks, objects.boxes, ids), (height, width))
        clipped, valid = clip_boxes(objects.boxes, height, width)
        keep = np.flatnonzero(valid)[:max_instances]
        images[i] = resize_image(check_pixels(image, f"Image {i}"), (height, width))
        masks[i, : len(keep)] = objects.masks[keep]
        boxes[i, : len(keep)] = clipped[keep]
        class_ids[i, : len(keep)] = ids[keep]
    return {"images": images, "masks": masks, "boxes": boxes, "class_ids": class_ids}


def _tf():
    import tensorflow as tf

    return tf


def paired_box_iou(boxes_a, boxes_b):
    """IoU of each box of ``boxes_a`` with the same row of ``boxes_b``, (N, 4) -> (N,): the
    diagonal of :func:`segkeras.boxes.box_iou`, in TensorFlow for tf.data (which runs TensorFlow
    whatever the Keras backend); 0 where the union is empty. Tested against ``box_iou``."""
    tf = _tf()
    overlap = tf.maximum(
        tf.minimum(boxes_a[:, 2:], boxes_b[:, 2:]) - tf.maximum(boxes_a[:, :2], boxes_b[:, :2]), 0.0
    )
    intersection = overlap[:, 0] * overlap[:, 1]
    union = _area(boxes_a) + _area(boxes_b) - intersection
    return tf.where(union > 0, intersection / tf.maximum(union, 1e-6), 0.0)


def _area(boxes):
    sides = _tf().maximum(boxes[:, 2:] - boxes[:, :2], 0.0)
    return sides[:, 0] * sides[:, 1]


def jitter_boxes(boxes, jitter: float, seed, height: int, width: int):
    """Simulated proposals: each box's centre moved by up to ``jitter`` times its width/height
    and its sides rescaled by up to ``exp(+-jitter)``, clipped to the image; a box that would
    fall below IoU 0.5 with the original stays the original. ``seed``: a stateless seed pair."""
    tf = _tf()
    size = boxes[:, 2:] - boxes[:, :2]
    centre = boxes[:, :2] + size / 2
    draws = tf.random.stateless_uniform(tf.shape(boxes), seed, -jitter, jitter)
    centre = centre + draws[:, :2] * size
    size = size * tf.exp(draws[:, 2:])
    limit = tf.constant([width, height, width, height], tf.float32)
    jittered = tf.clip_by_value(tf.concat([centre - size / 2, centre + size / 2], 1), 0.0, limit)
    keep = paired_box_iou(jittered, boxes) >= MIN_JITTER_IOU
    return tf.where(keep[:, None], jittered, boxes)


def _roi_align_matrix(start, length, size: int, bins: int = MASK_SIZE, sampling_ratio: int = 2):
    """(N, bins, size) weights: RoIAlign along one axis (aligned, scale 1) as a matrix."""
    tf = _tf()
    sub_bins = (np.arange(bins)[:, None] + (np.arange(sampling_ratio) + 0.5) / sampling_ratio)
    sub_bins = sub_bins.reshape(-1).astype(np.float32)
    coords = (start - 0.5)[:, None] + sub_bins * (length / bins)[:, None]
    inside = tf.cast((coords >= -1.0) & (coords <= size), tf.float32) / sampling_ratio
    coords = tf.maximum(coords, 0.0)
    low = tf.floor(coords)
    at_end = low >= size - 1
    low = tf.where(at_end, float(size - 1), low)
    frac = tf.where(at_end, 0.0, coords - low)
    high = tf.minimum(low + 1, size - 1)
    weights = (tf.one_hot(tf.cast(low, tf.int32), size) * (1 - frac)[..., None]
               + tf.one_hot(tf.cast(high, tf.int32), size) * frac[..., None]) * inside[..., None]
    return tf.reduce_sum(tf.reshape(weights, (-1, bins, sampling_ratio, size)), axis=2)


def align_masks(masks, boxes, mask_size: int = MASK_SIZE):
    """(N, H, W) masks -> (N, mask_size, mask_size) float32: mask ``i`` RoIAligned over box ``i``.

    The TensorFlow fast path of :class:`segkeras.layers.RoIAlign` (``aligned=True``,
    ``spatial_scale=1``, ``sampling_ratio=2``, one channel, box ``i`` on image ``i``) for tf.data,
    which runs TensorFlow whatever the Keras backend: the same samples, written as two matrix
    products per mask. Tested against the layer."""
    tf = _tf()
    masks = tf.cast(masks, tf.float32)
    height, width = masks.shape[1], masks.shape[2]
    rows = _roi_align_matrix(boxes[:, 1], boxes[:, 3] - boxes[:, 1], height, mask_size)
    cols = _roi_align_matrix(boxes[:, 0], boxes[:, 2] - boxes[:, 0], width, mask_size)
    return tf.einsum("nph,nhw,nqw->npq", rows, masks, cols)


def mask_targets(masks, boxes, mask_size: int = MASK_SIZE):
    """(N, mask_size, mask_size) float32 targets: each mask RoIAligned over its box
    (:func:`align_masks`), >= 0.5."""
    tf = _tf()
    return tf.cast(align_masks(masks, boxes, mask_size) >= 0.5, tf.float32)


def _flip(image, masks, boxes, valid):
    """Mirror left-right: image, masks and (valid) boxes alike."""
    tf = _tf()
    width = tf.cast(tf.shape(image)[1], tf.float32)
    flipped = tf.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
    return image[:, ::-1], masks[:, :, ::-1], tf.where(valid[:, None], flipped, boxes)


def make_instance_dataset(
    data: SegmentationData,
    image_size: int | tuple[int, int] = 128,
    batch_size: int = 8,
    max_instances: int = 8,
    jitter: float = 0.1,
    augment: bool = False,
    shuffle: bool = True,
    seed: int = 0,
):
    """A ``tf.data.Dataset`` of ``(inputs, targets)`` batches for ``instance_segmenter`` models.

    Args:
        data: images with ``instances`` (e.g. ``segkeras.data.shapes.generate``).
        image_size: the model's input size, an int or (H, W), multiples of 32; images are resized
            bilinearly, masks with nearest neighbour, boxes scaled.
        batch_size: images per batch.
        max_instances: rows per image (the model's ``max_instances``); further objects are
            skipped, like boxes that lie entirely outside the image; boxes are clipped to it.
        jitter: proposal jitter (0 = ground-truth boxes); see :func:`jitter_boxes`. A new
            draw every epoch.
        augment: also mirror images left-right at random (image, masks and boxes together).
        shuffle: reshuffle the images every epoch.
        seed: seed of the shuffling, the jitter and the flips.

    Returns:
        Batches of ``({"image", "boxes", "class_ids"}, targets)`` as in the module docstring.
    """
    tf = _tf()
    if not 0.0 <= jitter < 1.0:
        raise SegkerasError(f"jitter must be in [0, 1), got {jitter!r}.")
    if int(batch_size) != batch_size or batch_size < 1:
        raise SegkerasError(f"batch_size must be a positive int, got {batch_size!r}.")
    arrays = pad_instances(data, image_size, max_instances)
    height, width = arrays["images"].shape[1:3]

    def to_example(example, random):
        image, masks, boxes = example["images"], example["masks"], example["boxes"]
        class_ids = example["class_ids"]
        valid = class_ids > 0
        if augment:
            mirror = tf.random.stateless_uniform((), tf.stack([random, 2])) < 0.5
            image, masks, boxes = tf.cond(
                mirror, lambda: _flip(image, masks, boxes, valid), lambda: (image, masks, boxes)
            )
        if jitter > 0:
            boxes = jitter_boxes(boxes, jitter, tf.stack([random, 1]), height, width)
        targets = tf.where(valid[:, None, None], mask_targets(masks, boxes), PADDING_TARGET)
        inputs = {"image": image, "boxes": boxes, "class_ids": class_ids}
        return inputs, targets

    dataset = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        dataset = dataset.shuffle(len(data), seed=seed, reshuffle_each_iteration=True)
    randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    dataset = tf.data.Dataset.zip(dataset, randoms)
    dataset = dataset.map(to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
