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

import math
from collections.abc import Iterable

import numpy as np
from skimage.transform import resize

from segkeras.data.core import Instances, SegmentationData, parse_size
from segkeras.data.images import check_pixels, fit_size, letterbox
from segkeras.errors import SegkerasError

PADDING_TARGET = -1.0
"""Target value of padding rows: the mask loss ignores every pixel below 0."""

MASK_SIZE = 28
"""Side of the mask head's output and targets (Mask R-CNN's 28x28)."""

IGNORE_ROWS = 16
"""Ignore boxes per image come in multiples of this (:func:`ignore_rows`)."""

MIN_JITTER_IOU = 0.5
"""A jittered box keeps at least this IoU with its ground-truth box (Mask R-CNN's positives)."""


def ignore_rows(needed: Iterable[int]) -> int:
    """Rows of ``ignore_boxes`` for images needing ``needed`` ignore regions each (crowd regions
    and objects beyond ``max_instances``): the largest, rounded up to a multiple of
    :data:`IGNORE_ROWS` (at least that), so that no region is left out."""
    return IGNORE_ROWS * max(1, math.ceil(max(needed, default=0) / IGNORE_ROWS))


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


def check_instances(data: SegmentationData) -> None:
    """SegkerasError (one line naming the image) unless every image of ``data`` has valid pixels,
    class ids in ``1..num_classes-1`` and finite ``x1, y1, x2, y2`` boxes: checked before any
    graph, so a bad label is a clear error, never a failure inside tf.data."""
    if data.instances is None:
        raise SegkerasError(
            "This dataset has no instances (data.instances is None); use one with instance "
            "masks, e.g. segkeras.data.shapes.generate(...)."
        )
    for i, (image, objects) in enumerate(zip(data.images, data.instances, strict=True)):
        check_class_ids(objects.class_ids, data.num_classes, f"Image {i}")
        check_pixels(image, f"Image {i}")
        clip_boxes(objects.boxes, *np.shape(image)[:2])


def prepare_instances(
    image: np.ndarray,
    objects: Instances,
    size: tuple[int, int],
    max_instances: int,
    ignore_boxes: np.ndarray | None = None,
    keep_aspect: bool = False,
    ignore_rows: int = IGNORE_ROWS,
) -> dict[str, np.ndarray]:
    """One image and its objects at the model's input ``size`` (H, W), padded to ``max_instances``.

    The image is resized bilinearly (to ``size``, or with ``keep_aspect`` to the largest size of
    the same aspect ratio inside it, at the top left, zero padding below and right), masks with
    nearest neighbour, boxes scaled and clipped; boxes left without area are skipped. Objects
    beyond the first ``max_instances`` are not dropped into the background: their boxes join
    ``ignore_boxes`` (e.g. COCO crowd regions, in the image's pixels), which training ignores
    (neither object nor background; SegkerasError if they need more than ``ignore_rows`` rows,
    see :func:`ignore_rows`). Returns numpy arrays ``images`` (H, W, 3) float32, ``masks``
    (max_instances, H, W) bool, ``boxes`` (max_instances, 4), ``class_ids`` (max_instances,)
    and ``ignore_boxes`` (ignore_rows, 4), padding rows all zeros.
    """
    height, width = size
    source_height, source_width = np.shape(image)[:2]
    fitted = fit_size(source_height, source_width, min(size), max(size), size) if keep_aspect \
        else (height, width)
    objects = resize_instances(objects, fitted)
    clipped, valid = clip_boxes(objects.boxes, *fitted)
    keep = np.flatnonzero(valid)
    kept, overflow = keep[:max_instances], keep[max_instances:]
    arrays = {
        "images": letterbox(np.asarray(image), fitted, size).astype(np.float32),
        "masks": np.zeros((max_instances, height, width), bool),
        "boxes": np.zeros((max_instances, 4), np.float32),
        "class_ids": np.zeros(max_instances, np.int32),
        "ignore_boxes": np.zeros((ignore_rows, 4), np.float32),
    }
    arrays["masks"][: len(kept), : fitted[0], : fitted[1]] = objects.masks[kept]
    arrays["boxes"][: len(kept)] = clipped[kept]
    arrays["class_ids"][: len(kept)] = objects.class_ids[kept]
    ignored = [clipped[overflow]]
    if ignore_boxes is not None and len(ignore_boxes):
        scale = np.array([fitted[1] / source_width, fitted[0] / source_height] * 2, np.float32)
        crowds, crowd_valid = clip_boxes(np.asarray(ignore_boxes, np.float32) * scale, *fitted)
        ignored.append(crowds[crowd_valid])
    ignored = np.concatenate(ignored)
    if len(ignored) > ignore_rows:
        raise SegkerasError(f"{len(ignored)} ignore regions (crowds and objects beyond "
                            f"max_instances={max_instances}) but room for {ignore_rows}: size "
                            "ignore_rows with segkeras.data.instances.ignore_rows(...).")
    arrays["ignore_boxes"][: len(ignored)] = ignored
    return arrays


EXAMPLE_KEYS = ("images", "masks", "boxes", "class_ids", "ignore_boxes")
"""The arrays of one prepared image (:func:`prepare_instances`), in this order in tf.data."""


def instance_examples(read, count: int, size: tuple[int, int], max_instances: int,
                      shuffle: bool, seed: int, ignore_rows: int = IGNORE_ROWS):
    """A ``tf.data.Dataset`` of :func:`prepare_instances` dicts, made one image at a time.

    ``read(i)`` returns image ``i``'s prepared arrays; only the image indices are held (and
    shuffled), so memory does not grow with the number of images: each element is decoded and
    resized when the pipeline asks for it (in parallel, in order).
    """
    tf = _tf()
    dtypes = (tf.float32, tf.bool, tf.float32, tf.int32, tf.float32)
    shapes = ((*size, 3), (max_instances, *size), (max_instances, 4), (max_instances,),
              (ignore_rows, 4))

    def load(index):
        arrays = read(int(index))
        return tuple(arrays[key] for key in EXAMPLE_KEYS)

    def to_dict(index):
        values = tf.numpy_function(load, [index], dtypes, stateful=False)
        return {key: tf.ensure_shape(value, shape)
                for key, value, shape in zip(EXAMPLE_KEYS, values, shapes, strict=True)}

    dataset = tf.data.Dataset.range(count)
    if shuffle:
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    return dataset.map(to_dict, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def in_memory_reader(data: SegmentationData, size: tuple[int, int], max_instances: int,
                     keep_aspect: bool = False, ignore_rows: int = IGNORE_ROWS):
    """``read(i)`` for :func:`instance_examples` over an in-memory dataset (checked first by
    :func:`check_instances`)."""
    check_instances(data)

    def read(index: int) -> dict[str, np.ndarray]:
        objects = data.instances[index]
        objects = Instances(objects.masks, objects.boxes, np.asarray(objects.class_ids, np.int32))
        return prepare_instances(data.images[index], objects, size, max_instances,
                                 keep_aspect=keep_aspect, ignore_rows=ignore_rows)

    return read


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


def flip_boxes(boxes, width):
    """Boxes mirrored left-right in an image ``width`` wide; all-zero (padding) rows stay zero."""
    tf = _tf()
    flipped = tf.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
    return tf.where(tf.reduce_any(boxes != 0, axis=1)[:, None], flipped, boxes)


def random_flip(example: dict, seed):
    """``example`` (a :func:`instance_examples` dict) mirrored left-right with probability 1/2:
    image, masks, boxes and ignore boxes alike. ``seed``: a stateless seed pair."""
    tf = _tf()
    width = tf.cast(tf.shape(example["images"])[1], tf.float32)

    def flipped():
        return {**example, "images": example["images"][:, ::-1],
                "masks": example["masks"][:, :, ::-1],
                "boxes": flip_boxes(example["boxes"], width),
                "ignore_boxes": flip_boxes(example["ignore_boxes"], width)}

    return tf.cond(tf.random.stateless_uniform((), seed) < 0.5, flipped, lambda: example)


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
    check_max_instances(max_instances)
    height, width = size = parse_size(image_size, multiple_of=32)
    rows = ignore_rows(max(0, len(objects.boxes) - max_instances)
                       for objects in data.instances or ())
    examples = instance_examples(in_memory_reader(data, size, max_instances, ignore_rows=rows),
                                 len(data), size, max_instances, shuffle, seed, rows)

    def to_example(example, random):
        if augment:
            example = random_flip(example, tf.stack([random, 2]))
        boxes, class_ids = example["boxes"], example["class_ids"]
        if jitter > 0:
            boxes = jitter_boxes(boxes, jitter, tf.stack([random, 1]), height, width)
        targets = tf.where((class_ids > 0)[:, None, None], mask_targets(example["masks"], boxes),
                           PADDING_TARGET)
        inputs = {"image": example["images"], "boxes": boxes, "class_ids": class_ids}
        return inputs, targets

    return with_randoms(examples, seed).map(
        to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    ).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def check_max_instances(max_instances) -> None:
    """SegkerasError unless ``max_instances`` is a positive int."""
    if int(max_instances) != max_instances or max_instances < 1:
        raise SegkerasError(f"max_instances must be a positive int, got {max_instances!r}.")


def with_randoms(dataset, seed: int):
    """``dataset`` zipped with a stream of random int64 seeds (a new draw every epoch)."""
    tf = _tf()
    randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip(dataset, randoms)
