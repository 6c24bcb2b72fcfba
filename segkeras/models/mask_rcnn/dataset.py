"""Training data for Mask R-CNN: images, padded ground truth, ignore regions and full masks.

Each batch is ``(inputs, masks)``:

- ``inputs["image"]`` (B, H, W, 3) float32 RGB in [0, 255], at the model's input size;
- ``inputs["boxes"]`` (B, N, 4) and ``inputs["class_ids"]`` (B, N): ground truth padded to
  ``N = max_instances`` rows (class id 0 = padding);
- ``inputs["ignore_boxes"]`` (B, K, 4): regions that are neither object nor background (COCO crowd
  regions, and the objects beyond ``max_instances``); anchors and regions covered by one are not
  trained as background (:func:`segkeras.models.mask_rcnn.sampling.ignored_by`); zero rows =
  padding. K is sized from the data (the most any image needs, rounded up to a multiple of 16:
  :func:`segkeras.data.instances.ignore_rows`), so none is left out;
- ``masks`` (B, N, H, W) bool: each object's mask at the input's resolution. The model RoIAligns
  it over each sampled region to 28x28 in one step (:mod:`.masks`).

A :class:`~segkeras.data.coco.CocoIndex` streams: only image indices live in the pipeline, and
each image and its RLE/polygon masks are decoded when its batch is made, so memory does not grow
with the number of images.
"""

from __future__ import annotations

import warnings

import numpy as np

from segkeras.data.coco import CocoIndex
from segkeras.data.core import SegmentationData, parse_size
from segkeras.data.instances import (
    check_max_instances,
    clip_boxes,
    ignore_rows,
    in_memory_reader,
    instance_examples,
    prepare_instances,
    random_flip,
    with_randoms,
)
from segkeras.errors import SegkerasError

MAX_INSTANCES = 100
"""Default ground-truth rows per image: COCO images hold up to about 90 objects."""


def mask_rcnn_dataset(data: SegmentationData | CocoIndex, image_size: int | tuple[int, int] = 256,
                      batch_size: int = 4, max_instances: int = MAX_INSTANCES,
                      augment: bool = True, shuffle: bool = True, seed: int = 0,
                      keep_aspect: bool | None = None):
    """A ``tf.data.Dataset`` for ``MaskRCNN.fit``; ``image_size`` is the model's input size.

    ``data``: an in-memory dataset (e.g. ``segkeras.data.shapes.generate``) or a
    :class:`~segkeras.data.coco.CocoIndex`, read lazily. ``keep_aspect``: resize keeping the
    aspect ratio (zero padding below and right, as ``predict_instances`` does); default: yes for
    a ``CocoIndex``, no (stretch to the input) for in-memory data. ``augment`` mirrors images
    left-right at random.

    Bad ground truth is handled before any training step, so that no NaN reaches a loss:

    - refused (SegkerasError): NaN, infinite or out-of-range pixels, NaN or infinite box
      coordinates, boxes with ``x2 < x1`` or ``y2 < y1``, class ids outside ``1..C-1`` or not
      whole numbers, masks whose size is not the image's, and objects whose masks, boxes and
      class ids are not equally many;
    - clipped: boxes reaching outside the image (the part inside is kept);
    - dropped with a warning: boxes without area inside the image (zero width or height, or
      entirely outside it);
    - ignored with a warning: in images with more than ``max_instances`` objects, those beyond
      the first ``max_instances`` become ignore regions (not trained on, but not background
      either); raise ``max_instances`` to train on them.

    Images without objects are fine (all regions are background).
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise SegkerasError(f"batch_size must be a positive int, got {batch_size!r}.")
    check_max_instances(max_instances)
    size = parse_size(image_size, multiple_of=32)
    if isinstance(data, CocoIndex):
        kept = data.object_counts()
        rows = ignore_rows(crowds + max(0, count - max_instances)
                           for crowds, count in zip(data.crowd_counts(), kept, strict=True))

        def read(index: int) -> dict[str, np.ndarray]:
            image, objects, crowd_boxes = data.example(index)
            return prepare_instances(image, objects, size, max_instances, crowd_boxes,
                                     keep_aspect=keep_aspect is not False, ignore_rows=rows)
    else:
        if data.instances is None:
            raise SegkerasError("This dataset has no instances; Mask R-CNN needs instance masks "
                                "(e.g. segkeras.data.shapes.generate(...)).")
        kept = _objects_with_area(data)
        if sum(kept) < sum(len(objects) for objects in data.instances):
            dropped = sum(len(objects) for objects in data.instances) - sum(kept)
            warnings.warn(f"{dropped} ground-truth boxes have no area inside their image (zero "
                          "width or height, or outside the image) and are dropped; check the "
                          "annotations.", stacklevel=2)
        rows = ignore_rows(max(0, count - max_instances) for count in kept)
        read = in_memory_reader(data, size, max_instances, keep_aspect=bool(keep_aspect),
                                ignore_rows=rows)
    crowded = sum(count > max_instances for count in kept)
    if crowded:
        warnings.warn(f"{crowded} of {len(data)} images have more than max_instances="
                      f"{max_instances} objects (up to {max(kept)}); only the first "
                      f"{max_instances} are trained on, the others are ignored regions. Pass "
                      f"max_instances={max(kept)} to train on them all.", stacklevel=2)
    return _batches(instance_examples(read, len(data), size, max_instances, shuffle, seed, rows),
                    batch_size, augment, seed)


def _batches(examples, batch_size: int, augment: bool, seed: int):
    import tensorflow as tf

    def to_batch_element(example, random):
        if augment:
            example = random_flip(example, tf.stack([random, 2]))
        inputs = {"image": example["images"], "boxes": example["boxes"],
                  "class_ids": example["class_ids"], "ignore_boxes": example["ignore_boxes"]}
        return inputs, example["masks"]

    return with_randoms(examples, seed).map(
        to_batch_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    ).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _objects_with_area(data: SegmentationData) -> list[int]:
    """Per image, how many of its boxes keep an area once clipped to the image (SegkerasError
    for boxes that are not finite ``x1, y1, x2, y2``)."""
    counts = []
    for i, (image, objects) in enumerate(zip(data.images, data.instances, strict=True)):
        _check_shapes(f"Image {i}", np.shape(image)[:2], objects)
        try:
            _, valid = clip_boxes(objects.boxes, *np.shape(image)[:2])
        except SegkerasError as error:
            raise SegkerasError(f"Image {i}: {error}") from error
        counts.append(int(valid.sum()))
    return counts


def _check_shapes(where: str, size: tuple[int, int], objects) -> None:
    """One mask, one box and one class id per object, the masks at the image's own size: a
    mismatch would silently drop objects or stretch masks over the wrong pixels."""
    masks, boxes = np.asarray(objects.masks), np.asarray(objects.boxes)
    counts = (len(masks), len(boxes), len(np.asarray(objects.class_ids)))
    if len(set(counts)) != 1:
        raise SegkerasError(f"{where} has {counts[0]} masks, {counts[1]} boxes and {counts[2]} "
                            "class ids: give one of each per object.")
    if counts[0] and (masks.ndim != 3 or masks.shape[1:] != tuple(size)):
        raise SegkerasError(f"{where} is {size[0]}x{size[1]} but its masks are "
                            f"{'x'.join(map(str, masks.shape[1:]))}: each object's mask covers "
                            "the whole image (N, H, W), at the image's size.")
