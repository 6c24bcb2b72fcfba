"""Instances of new images with Mask R-CNN: no boxes needed (He et al., ICCV 2017, Sec. 3).

Each image is resized to the model's input size, detected (boxes, classes, scores, 28x28 masks of
the top ``max_detections``), and every mask is pasted over its box at the image's own resolution
(:func:`segkeras.models.mask_head.paste_masks`) and thresholded at 0.5. For masks of given boxes
(this model's mask branch, or an ``instance_segmenter``) use
:func:`segkeras.models.mask_head.predict_masks_in_boxes`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segkeras.data.images import check_images, resize_image
from segkeras.errors import SegkerasError
from segkeras.models.mask_head import paste_masks
from segkeras.models.mask_rcnn.model import MaskRCNN


def predict_instances(model: MaskRCNN, images: np.ndarray | Sequence[np.ndarray],
                      batch_size: int = 8, min_score: float = 0.0) -> list[dict]:
    """Per image a dict: ``"boxes"`` (D, 4) ``x1, y1, x2, y2`` in the image's pixels,
    ``"class_ids"`` (D,) int32, ``"scores"`` (D,) float32 (best first) and ``"masks"``
    (D, H, W) bool, for the detections scoring at least ``min_score``.

    Images are RGB in [0, 255] of any size, a (B, H, W, 3) array or a list of arrays
    (grayscale and RGBA are converted; :func:`segkeras.data.images.check_images` says which
    pixels are refused).
    """
    if not isinstance(model, MaskRCNN):
        raise SegkerasError(f"predict_instances needs a MaskRCNN model (mask_rcnn(...)), got "
                            f"{type(model).__name__}; for given boxes use "
                            "segkeras.models.mask_head.predict_masks_in_boxes.")
    images = check_images(images)
    if not images:
        return []
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
