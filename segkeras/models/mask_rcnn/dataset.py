"""Training data for Mask R-CNN: the instance pipeline with ground-truth boxes (no jitter).

Each batch is ``({"image", "boxes", "class_ids"}, targets)`` from
:func:`segkeras.data.instances.make_instance_dataset` with ``jitter=0``: padded ground-truth
boxes and class ids (0 = padding) and each object's mask over its own box at 28x28, from which the
model resamples the mask target of every region it samples (:mod:`.masks`).
"""

from __future__ import annotations

import warnings

import numpy as np

from segkeras.data.core import SegmentationData, parse_size
from segkeras.data.instances import clip_boxes, make_instance_dataset
from segkeras.errors import SegkerasError


def mask_rcnn_dataset(data: SegmentationData, image_size: int | tuple[int, int] = 256,
                      batch_size: int = 4, max_instances: int = 16, augment: bool = True,
                      shuffle: bool = True, seed: int = 0):
    """A ``tf.data.Dataset`` for ``MaskRCNN.fit``; ``image_size`` is the model's input size.

    Bad ground truth is handled before any training step, so that no NaN reaches a loss:

    - refused (SegkerasError): NaN, infinite or out-of-range pixels, NaN or infinite box
      coordinates, boxes with ``x2 < x1`` or ``y2 < y1``, class ids outside ``1..C-1`` or not
      whole numbers, masks whose size is not the image's, and objects whose masks, boxes and
      class ids are not equally many;
    - clipped: boxes reaching outside the image (the part inside is kept);
    - dropped with a warning: boxes without area inside the image (zero width or height, or
      entirely outside it);
    - truncated with a warning: images with more than ``max_instances`` objects keep their first
      ``max_instances`` (the rest are not trained on, so they count as background); raise
      ``max_instances`` to keep them.

    Images without objects are fine (all regions are background). ``augment`` mirrors images
    left-right at random.
    """
    if data.instances is None:
        raise SegkerasError("This dataset has no instances; Mask R-CNN needs instance masks "
                            "(e.g. segkeras.data.shapes.generate(...)).")
    kept = _objects_with_area(data)
    if sum(kept) < sum(len(objects) for objects in data.instances):
        dropped = sum(len(objects) for objects in data.instances) - sum(kept)
        warnings.warn(f"{dropped} ground-truth boxes have no area inside their image (zero width "
                      "or height, or outside the image) and are dropped; check the annotations.",
                      stacklevel=2)
    crowded = sum(count > max_instances for count in kept)
    if crowded:
        warnings.warn(f"{crowded} of {len(data)} images have more than max_instances="
                      f"{max_instances} objects (up to {max(kept)}); only the first "
                      f"{max_instances} are trained on. Pass max_instances={max(kept)} to keep "
                      "them all.", stacklevel=2)
    return make_instance_dataset(data, parse_size(image_size), batch_size, max_instances,
                                 jitter=0.0, augment=augment, shuffle=shuffle, seed=seed)


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
