"""Mask R-CNN's mask branch in training (He et al., ICCV 2017, Sec. 3): targets and loss.

The mask head (:mod:`segkeras.models.mask_head`) runs on the foreground regions sampled for the
box head. The target of a region is its matched object's mask over the region, at 28x28: one
RoIAlign of the object's full mask (at the input's resolution, from
:func:`segkeras.models.mask_rcnn.dataset.mask_rcnn_dataset`) over the region, thresholded at 0.5,
as detectron2 and torchvision do (no intermediate resampling of the mask over its own box). The
loss is :class:`~segkeras.models.mask_head.MaskedBinaryCrossentropy` over the foreground regions.
"""

from __future__ import annotations

from keras import ops

from segkeras.data.instances import PADDING_TARGET


def region_mask_targets(gt_masks, rois, matched, foreground, align):
    """(B, F, M, M) targets of regions ``rois`` (B, F, 4) matched to objects ``matched`` (B, F).

    ``gt_masks`` (B, N, H, W): each object's mask at the input's resolution (bool or 0/1);
    ``align``: a ``RoIAlign(M, spatial_scale=1, aligned=True)`` layer. Rows that are not
    ``foreground`` get :data:`PADDING_TARGET` (ignored by the loss).
    """
    shape = ops.shape(gt_masks)
    objects, height, width = shape[1], shape[2], shape[3]
    batch, regions = ops.shape(rois)[0], ops.shape(rois)[1]
    masks = ops.reshape(ops.cast(gt_masks, "float32"), (-1, height, width, 1))
    image = ops.arange(batch, dtype="int32")[:, None] * objects
    object_rows = ops.reshape(image + ops.cast(matched, "int32"), (-1,))
    sampled = align(masks, ops.reshape(ops.cast(rois, "float32"), (-1, 4)), object_rows)
    size = ops.shape(sampled)[1]
    targets = ops.cast(ops.reshape(sampled, (batch, regions, size, size)) >= 0.5, "float32")
    return ops.where(foreground[:, :, None, None], targets, PADDING_TARGET)
