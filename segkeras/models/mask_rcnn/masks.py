"""Mask R-CNN's mask branch in training (He et al., ICCV 2017, Sec. 3): targets and loss.

The mask head (:mod:`segkeras.models.mask_head`) runs on the foreground regions sampled for the
box head. The target of a region is its matched object's mask over the region, at 28x28. The
instance pipeline (:func:`segkeras.data.instances.make_instance_dataset` with ``jitter=0``)
already gives each object's mask RoIAligned over its own ground-truth box at 28x28; the target
of a region is that mask resampled over the region (RoIAlign again, in the mask's coordinates,
zero outside the object's box) and thresholded at 0.5. Regions overlap their object by IoU >= 0.5,
so the resampling keeps about the mask's resolution. The loss is
:class:`~segkeras.models.mask_head.MaskedBinaryCrossentropy` over the foreground regions.
"""

from __future__ import annotations

from keras import ops

from segkeras.boxes import gather_rows
from segkeras.data.instances import PADDING_TARGET


def region_mask_targets(gt_masks, gt_boxes, rois, matched, foreground, align):
    """(B, F, M, M) targets of regions ``rois`` (B, F, 4) matched to objects ``matched`` (B, F).

    ``gt_masks`` (B, N, M, M): each object's mask over its box (padding rows negative, read as
    0); ``align``: a ``RoIAlign(M, spatial_scale=1, aligned=True)`` layer. Rows that are not
    ``foreground`` get :data:`PADDING_TARGET` (ignored by the loss).
    """
    batch, objects, size = ops.shape(gt_masks)[0], ops.shape(gt_masks)[1], ops.shape(gt_masks)[2]
    regions = ops.shape(rois)[1]
    rois = ops.cast(rois, "float32")
    masks = ops.clip(ops.cast(gt_masks, "float32"), 0.0, 1.0)
    # one pixel of zeros around each mask, so samples outside the object's box read 0
    masks = ops.pad(ops.reshape(masks, (-1, size, size, 1)), [[0, 0], [1, 1], [1, 1], [0, 0]])
    boxes = gather_rows(gt_boxes, matched)
    origin, extent = boxes[..., :2], ops.maximum(boxes[..., 2:] - boxes[..., :2], 1e-6)
    scale = ops.concatenate([extent, extent], axis=-1)
    local = (rois - ops.concatenate([origin, origin], axis=-1)) / scale * size + 1.0
    image = ops.arange(batch, dtype="int32")[:, None] * objects
    object_rows = ops.reshape(image + ops.cast(matched, "int32"), (-1,))
    sampled = align(masks, ops.reshape(local, (-1, 4)), object_rows)
    targets = ops.cast(ops.reshape(sampled, (-1, regions, size, size)) >= 0.5, "float32")
    return ops.where(foreground[:, :, None, None], targets, PADDING_TARGET)
