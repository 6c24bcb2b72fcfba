"""Mask R-CNN end to end (He et al., ICCV 2017): region proposals, box head and mask head.

``mask_rcnn(...)`` builds the model, ``mask_rcnn_dataset(...)`` feeds ``model.fit``, and
``predict_instances(model, images)`` returns each image's boxes, class ids, scores and masks
in the image's own pixels (any size; bool or RLE), no boxes needed;
``predict_masks_in_boxes(model, images, boxes, class_ids)`` (:mod:`segkeras.models.mask_head`)
the masks its mask branch draws in given boxes.
"""

from segkeras.models.mask_head import predict_masks_in_boxes
from segkeras.models.mask_rcnn.dataset import mask_rcnn_dataset
from segkeras.models.mask_rcnn.inference import predict_instances
from segkeras.models.mask_rcnn.model import MaskRCNN, mask_rcnn

__all__ = ["MaskRCNN", "mask_rcnn", "mask_rcnn_dataset", "predict_instances",
           "predict_masks_in_boxes"]
