"""Instances of new images with Mask R-CNN: no boxes needed (He et al., ICCV 2017, Sec. 3).

Each image is resized to the model's input size, detected (boxes, classes, scores, 28x28 masks of
the top ``max_detections``), and every mask is pasted over its box at the image's own resolution
(:func:`segkeras.models.mask_head.paste_masks`) and thresholded at 0.5. For masks of given boxes
use :func:`segkeras.models.mask_head.predict_instances` with an ``instance_segmenter``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from segkeras.data.images import resize_image
from segkeras.errors import SegkerasError
from segkeras.models.mask_head import paste_masks
from segkeras.models.mask_rcnn.model import MaskRCNN


def predict_instances(model: MaskRCNN, images: np.ndarray | Sequence[np.ndarray],
                      batch_size: int = 8, min_score: float = 0.0) -> list[dict]:
    """Per image a dict: ``"boxes"`` (D, 4) ``x1, y1, x2, y2`` in the image's pixels,
    ``"class_ids"`` (D,) int32, ``"scores"`` (D,) float32 (best first) and ``"masks"``
    (D, H, W) bool, for the detections scoring at least ``min_score``.

    Images are HxWx3 RGB in [0, 255] of any size (an array or a list of arrays).
    """
    if not isinstance(model, MaskRCNN):
        raise SegkerasError(f"predict_instances needs a MaskRCNN model (mask_rcnn(...)), got "
                            f"{type(model).__name__}; for given boxes use "
                            "segkeras.models.mask_head.predict_instances.")
    if len(images) == 0:
        return []
    for i, image in enumerate(images):
        if np.ndim(image) != 3 or np.shape(image)[-1] != 3:
            raise SegkerasError(f"Image {i} has shape {np.shape(image)}; pass HxWx3 RGB images.")
    size = model.image_size
    batch = np.stack([resize_image(image, size) for image in images])
    outputs = model.predict(batch, batch_size=batch_size, verbose=0)
    results = []
    for i, image in enumerate(images):
        height, width = np.shape(image)[:2]
        keep = outputs["valid"][i] & (outputs["scores"][i] >= min_score)
        scale = np.array([width / size[1], height / size[0]] * 2, np.float32)
        boxes = outputs["boxes"][i][keep] * scale
        probabilities = 1.0 / (1.0 + np.exp(-outputs["mask_logits"][i][keep]))
        results.append({
            "boxes": boxes.astype(np.float32),
            "class_ids": outputs["class_ids"][i][keep].astype(np.int32),
            "scores": outputs["scores"][i][keep].astype(np.float32),
            "masks": paste_masks(probabilities, boxes, height, width) >= 0.5,
        })
    return results


def predict_masks_in_boxes(model: MaskRCNN, images: np.ndarray | Sequence[np.ndarray],
                           boxes: Sequence[np.ndarray], class_ids: Sequence[np.ndarray]
                           ) -> list[np.ndarray]:
    """(N_i, H_i, W_i) bool masks of given boxes and classes (e.g. the ground truth), from the
    detector's own mask head: the mask quality without the detection errors."""
    if not len(images) == len(boxes) == len(class_ids):
        raise SegkerasError(f"Got {len(images)} images, {len(boxes)} box arrays and "
                            f"{len(class_ids)} class-id arrays; pass one of each per image.")
    size = model.image_size
    masks = []
    for image, image_boxes, ids in zip(images, boxes, class_ids, strict=True):
        height, width = np.shape(image)[:2]
        image_boxes = np.asarray(image_boxes, np.float32).reshape(-1, 4)
        ids = np.asarray(ids, np.int32).reshape(-1)
        if len(ids) == 0:
            masks.append(np.zeros((0, height, width), bool))
            continue
        scale = np.array([size[1] / width, size[0] / height] * 2, np.float32)
        features = model.features(resize_image(image, size)[None], training=False)
        pooled = model.mask_align(features, image_boxes * scale, np.zeros(len(ids), np.int32))
        logits = np.asarray(keras.ops.convert_to_numpy(model.mask_head(pooled, training=False)))
        own = np.moveaxis(logits, -1, 1)[np.arange(len(ids)), ids]
        probabilities = 1.0 / (1.0 + np.exp(-own))
        masks.append(paste_masks(probabilities, image_boxes, height, width) >= 0.5)
    return masks
