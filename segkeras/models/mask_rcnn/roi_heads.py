"""The box head of Fast/Faster R-CNN (Girshick, ICCV 2015; Ren et al., NIPS 2015) as used in
Mask R-CNN (He et al., ICCV 2017, Sec. 3): RoIAlign 7x7 of each region, two fully connected
layers with ReLU, then class logits (softmax over the classes and the background, id 0) and
class-specific box deltas (coder weights 10, 10, 5, 5, as in Detectron).

Training: the proposals and the ground-truth boxes of an image form the candidates; each takes
the class of its best ground-truth box if their IoU is >= 0.5 (foreground) and the background
otherwise; a fixed number of regions per image is sampled, at most 25 % foreground, foreground
slots first. Losses: softmax cross-entropy over the sampled regions, smooth L1 on the deltas of
the true class of the foreground ones, both divided by the number of sampled regions.

Inference: every proposal is decoded once per class and clipped; pairs scoring above a threshold
go through per-class NMS (IoU 0.5); the best ``max_detections`` are kept. Your own NMS can do that
step (``mask_rcnn(nms=...)``, lab 6): ``nms(boxes (n, 4), scores (n,), class_ids (n,),
iou_threshold, max_outputs)`` -> (max_outputs,) ints, the kept boxes' indices best first, padded
with -1, for one image; it runs on each image of a batch (``keras.ops.map``), so it must be
``keras.ops`` code.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from segkeras.boxes import (
    batched_non_max_suppression,
    clip_to_image,
    decode_boxes,
    encode_boxes,
    gather_rows,
)
from segkeras.models.mask_rcnn.sampling import (
    count_true,
    match_to_ground_truth,
    sample_subset,
    smooth_l1,
)

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
FOREGROUND_IOU = 0.5
SMOOTH_L1_BETA = 1.0 / 9
MAX_NMS_CANDIDATES = 1000
"""Class-box pairs of an image that enter the final NMS (the best-scoring ones)."""


def box_head(roi_shape: tuple, units: int, num_classes: int) -> keras.Model:
    """(K, 7, 7, C) RoI features -> ``{"class_logits": (K, classes),
    "deltas": (K, classes, 4)}``."""
    rois = keras.Input(roi_shape, name="box_rois")
    x = layers.Flatten(name="box_flatten")(rois)
    x = layers.Dense(units, activation="relu", name="box_fc1")(x)
    x = layers.Dense(units, activation="relu", name="box_fc2")(x)
    logits = layers.Dense(num_classes, name="box_class_logits",
                          kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))(x)
    deltas = layers.Dense(4 * num_classes, name="box_deltas",
                          kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))(x)
    deltas = layers.Reshape((num_classes, 4), name="box_deltas_per_class")(deltas)
    return keras.Model(rois, {"class_logits": logits, "deltas": deltas}, name="box_head")


def sample_rois(proposals, proposal_valid, gt_boxes, gt_class_ids, gt_valid, uniform,
                rois_per_image: int, foreground_fraction: float) -> dict:
    """The regions each image trains the box head on, ``rois_per_image`` slots, foreground first.

    Returns ``{"rois", "valid", "foreground", "class_ids", "matched"}``: (B, R, 4) boxes, (B, R)
    bool (slot used), bool, int32 target classes (0 = background) and int32 index of the matched
    ground-truth box. ``uniform`` (B, P + N) random keys.
    """
    candidates = ops.concatenate(
        [ops.stop_gradient(ops.cast(proposals, "float32")), ops.cast(gt_boxes, "float32")], axis=1)
    valid = ops.concatenate([proposal_valid, gt_valid], axis=1)
    best, matched, _ = match_to_ground_truth(candidates, gt_boxes, gt_valid)
    foreground = valid & (best >= FOREGROUND_IOU)
    background = valid & (best < FOREGROUND_IOU)
    max_foreground = int(rois_per_image * foreground_fraction)
    foreground = sample_subset(foreground, ops.minimum(count_true(foreground), max_foreground),
                               max_foreground, uniform)
    background = sample_subset(background, rois_per_image - count_true(foreground),
                               rois_per_image, uniform)
    priority = ops.where(foreground, 2.0 + uniform, ops.where(background, 1.0 + uniform, 0.0))
    top, index = ops.top_k(priority, rois_per_image)
    matched = gather_rows(matched, index)
    foreground = top >= 2.0
    class_ids = ops.where(foreground, gather_rows(ops.cast(gt_class_ids, "int32"), matched), 0)
    return {"rois": gather_rows(candidates, index), "valid": top > 0.0,
            "foreground": foreground, "class_ids": class_ids, "matched": matched}


def box_head_losses(class_logits, deltas, sample: dict, gt_boxes):
    """``(class_loss, box_loss)`` of a batch from :func:`sample_rois`' regions."""
    valid = ops.cast(sample["valid"], "float32")
    total = ops.maximum(ops.sum(valid), 1.0)
    cross_entropy = ops.sparse_categorical_crossentropy(
        sample["class_ids"], ops.cast(class_logits, "float32"), from_logits=True)
    class_loss = ops.sum(cross_entropy * valid) / total
    num_classes = ops.shape(class_logits)[-1]
    own_class = ops.one_hot(sample["class_ids"], num_classes, dtype="float32")[..., None]
    predicted = ops.sum(ops.cast(deltas, "float32") * own_class, axis=2)
    targets = encode_boxes(sample["rois"], gather_rows(gt_boxes, sample["matched"]), BOX_WEIGHTS)
    foreground = sample["foreground"]
    targets = ops.where(foreground[..., None], targets, 0.0)
    errors = smooth_l1(predicted - targets, SMOOTH_L1_BETA)
    box_loss = ops.sum(errors * ops.cast(foreground, "float32")[..., None]) / total
    return class_loss, box_loss


def _nms_per_image(nms, boxes, scores, class_ids, usable, iou_threshold: float,
                   max_output: int):
    """``(keep, kept)`` as :func:`batched_non_max_suppression` returns them, from a one-image
    ``nms`` (see the module's docstring) run on every image. Unusable pairs go in as empty boxes
    scoring below every usable one: they suppress nothing and come after every usable one."""

    def one_image(values):
        image_boxes, image_scores, image_classes, image_usable = values
        index = nms(ops.where(image_usable[:, None], image_boxes, 0.0),
                    ops.where(image_usable, image_scores, -1.0), image_classes, iou_threshold,
                    max_output)
        return ops.reshape(ops.cast(index, "int32"), (max_output,))

    index = ops.map(one_image, (boxes, scores, class_ids, usable))
    safe = ops.maximum(index, 0)
    kept = (index >= 0) & gather_rows(usable, safe)
    return ops.where(kept, safe, 0), kept


def detect(proposals, proposal_valid, class_logits, deltas, image_size: tuple[int, int],
           score_threshold: float, nms_threshold: float, max_detections: int,
           nms=None) -> dict:
    """Final detections: ``{"boxes" (B, D, 4), "scores" (B, D), "class_ids" (B, D) int32,
    "valid" (B, D) bool}``, best first, padding rows (valid False) zero. ``nms``: a one-image
    replacement for the library's per-class NMS (see the module's docstring)."""
    count, num_classes = ops.shape(class_logits)[1], ops.shape(class_logits)[2]
    scores = ops.softmax(ops.cast(class_logits, "float32"), axis=-1)[:, :, 1:]
    boxes = decode_boxes(proposals[:, :, None, :], ops.cast(deltas, "float32")[:, :, 1:],
                         BOX_WEIGHTS)
    boxes = clip_to_image(boxes, *image_size)
    pairs = count * (num_classes - 1)
    class_ids = ops.cast(ops.zeros_like(scores), "int32") + ops.arange(1, num_classes,
                                                                          dtype="int32")
    usable = (proposal_valid[:, :, None] & (scores > score_threshold)
              & ops.all(boxes[..., 2:] > boxes[..., :2], axis=-1))
    boxes, scores = ops.reshape(boxes, (-1, pairs, 4)), ops.reshape(scores, (-1, pairs))
    class_ids, usable = ops.reshape(class_ids, (-1, pairs)), ops.reshape(usable, (-1, pairs))
    if pairs > MAX_NMS_CANDIDATES:
        _, best = ops.top_k(ops.where(usable, scores, -1.0), MAX_NMS_CANDIDATES)
        boxes, scores = gather_rows(boxes, best), gather_rows(scores, best)
        class_ids, usable = gather_rows(class_ids, best), gather_rows(usable, best)
    if nms is None:
        keep, kept = batched_non_max_suppression(boxes, scores, class_ids, nms_threshold,
                                                 max_detections, usable)
    else:
        keep, kept = _nms_per_image(nms, boxes, scores, class_ids, usable, nms_threshold,
                                    max_detections)
    mask = ops.cast(kept, "float32")
    return {"boxes": gather_rows(boxes, keep) * mask[..., None],
            "scores": gather_rows(scores, keep) * mask,
            "class_ids": ops.where(kept, gather_rows(class_ids, keep), 0), "valid": kept}
