"""Training data for Mask R-CNN: the instance pipeline with ground-truth boxes (no jitter).

Each batch is ``({"image", "boxes", "class_ids"}, targets)`` from
:func:`segkeras.data.instances.make_instance_dataset` with ``jitter=0``: padded ground-truth
boxes and class ids (0 = padding) and each object's mask over its own box at 28x28, from which the
model resamples the mask target of every region it samples (:mod:`.masks`).
"""

from __future__ import annotations

import warnings

from segkeras.data.core import SegmentationData, parse_size
from segkeras.data.instances import make_instance_dataset
from segkeras.errors import SegkerasError


def mask_rcnn_dataset(data: SegmentationData, image_size: int | tuple[int, int] = 256,
                      batch_size: int = 4, max_instances: int = 16, augment: bool = True,
                      shuffle: bool = True, seed: int = 0):
    """A ``tf.data.Dataset`` for ``MaskRCNN.fit``; ``image_size`` is the model's input size.

    Images with more than ``max_instances`` objects keep their first ``max_instances`` (the rest
    are not trained on, so they count as background): a warning says how many images lose
    objects; raise ``max_instances`` to keep them. Boxes are clipped to the image and boxes
    without area inside it are dropped. ``augment`` mirrors images left-right at random.
    """
    if data.instances is None:
        raise SegkerasError("This dataset has no instances; Mask R-CNN needs instance masks "
                            "(e.g. segkeras.data.shapes.generate(...)).")
    crowded = sum(len(objects) > max_instances for objects in data.instances)
    if crowded:
        most = max(len(objects) for objects in data.instances)
        warnings.warn(f"{crowded} of {len(data)} images have more than max_instances="
                      f"{max_instances} objects (up to {most}); only the first {max_instances} "
                      f"are trained on. Pass max_instances={most} to keep them all.",
                      stacklevel=2)
    return make_instance_dataset(data, parse_size(image_size), batch_size, max_instances,
                                 jitter=0.0, augment=augment, shuffle=shuffle, seed=seed)
