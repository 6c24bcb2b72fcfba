"""Region proposal network (Ren, He, Girshick & Sun, "Faster R-CNN", NIPS 2015, Sec. 3.1).

A 3x3 convolution slides over the feature map; at each position two sibling 1x1 convolutions
predict, for each of the k anchors there, an objectness logit and box deltas (the coder of
:mod:`segkeras.boxes`). Proposals: the top-scoring anchors, decoded, clipped to the image,
reduced by NMS (IoU 0.7) to a fixed number per image. On a feature pyramid (Lin et al., CVPR
2017, Sec. 4.1) the same head, weights included, runs on every level, each level with anchors of
one size; the levels' anchors are concatenated, so targets and losses are those of one level.

Training targets (Sec. 3.1.2): an anchor is positive with IoU >= 0.7 with a ground-truth box, and
so is the best anchor of each ground-truth box; negative below 0.3 (every anchor of an image
without objects); the rest is ignored. Each image contributes 256 sampled anchors, at most half
positive. Losses: binary cross-entropy on the sampled anchors and smooth L1 on the positives'
deltas, both divided by the number of sampled anchors in the batch.

Your own matcher and box coder can make these targets (``mask_rcnn(anchor_matcher=...,
box_encoder=...)``, lab 6): written for one image, they run on each image of a batch
(``keras.ops.map``), so they must be ``keras.ops`` code:

- ``anchor_matcher(anchors (A, 4), gt_boxes (N, 4), gt_valid (N,) bool)`` -> ``(labels, matched)``,
  (A,) ints: label 1 positive, 0 negative, -1 ignored; ``matched`` the index of each anchor's
  ground-truth box (read for positives only);
- ``box_encoder(anchors (A, 4), boxes (A, 4), weights)`` -> (A, 4) codes ``(dx, dy, dw, dh)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

from segkeras.boxes import (
    clip_to_image,
    decode_boxes,
    encode_boxes,
    gather_rows,
    non_max_suppression,
)
from segkeras.models.mask_rcnn.sampling import (
    count_true,
    ignored_by,
    match_to_ground_truth,
    sample_subset,
    smooth_l1,
)

RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
POSITIVE_IOU, NEGATIVE_IOU = 0.7, 0.3
SMOOTH_L1_BETA = 1.0 / 9


def rpn_head(feature_shape: tuple, channels: int, anchors_per_location: int) -> keras.Model:
    """(B, h, w, C) features -> ``{"objectness": (B, h*w*k), "deltas": (B, h*w*k, 4)}``.
    On a pyramid (``feature_shape`` ``(None, None, C)``) the same head runs on every level."""
    small = keras.initializers.RandomNormal(stddev=0.01)
    features = keras.Input(feature_shape, name="rpn_features")
    x = layers.Conv2D(channels, 3, padding="same", activation="relu", kernel_initializer=small,
                      name="rpn_conv")(features)
    objectness = layers.Conv2D(anchors_per_location, 1, kernel_initializer=small,
                               name="rpn_objectness")(x)
    deltas = layers.Conv2D(4 * anchors_per_location, 1, kernel_initializer=small,
                           name="rpn_deltas")(x)
    outputs = {"objectness": layers.Reshape((-1,), name="rpn_objectness_flat")(objectness),
               "deltas": layers.Reshape((-1, 4), name="rpn_deltas_flat")(deltas)}
    return keras.Model(features, outputs, name="rpn")


def propose(anchors, objectness, deltas, image_size: tuple[int, int], pre_nms: int,
            post_nms: int, nms_threshold: float = 0.7, min_size: float = 1e-3,
            level_sizes: Sequence[int] | None = None):
    """``(proposals (B, post_nms, 4), valid (B, post_nms))``, best first; no gradient flows.

    The ``pre_nms`` best anchors of each image are decoded and clipped; boxes thinner than
    ``min_size`` pixels are dropped; NMS keeps at most ``post_nms``. On a pyramid,
    ``level_sizes`` gives the number of anchors of each level (consecutive in ``anchors``): this
    is done on each level (``pre_nms`` per level; levels do not suppress each other, as in
    torchvision and Detectron), then the ``post_nms`` best over all levels are kept.
    """
    objectness = ops.stop_gradient(ops.cast(objectness, "float32"))
    deltas = ops.stop_gradient(ops.cast(deltas, "float32"))
    level_sizes = (ops.shape(objectness)[1],) if level_sizes is None else tuple(level_sizes)
    boxes, scores, valid, start = [], [], [], 0
    for count in level_sizes:
        level = slice(start, start + count)
        start += count
        top, index = ops.top_k(objectness[:, level], min(pre_nms, count))
        level_boxes = decode_boxes(ops.take(anchors[level], index, axis=0),
                                   gather_rows(deltas[:, level], index), RPN_BOX_WEIGHTS)
        level_boxes = clip_to_image(level_boxes, *image_size)
        large_enough = ops.all(level_boxes[..., 2:] - level_boxes[..., :2] >= min_size, axis=-1)
        keep, kept = non_max_suppression(level_boxes, top, nms_threshold, post_nms,
                                         large_enough)
        boxes.append(gather_rows(level_boxes, keep))
        scores.append(gather_rows(top, keep))
        valid.append(kept)
    if len(level_sizes) == 1:
        return boxes[0], valid[0]
    valid = ops.concatenate(valid, axis=1)
    scores = ops.where(valid, ops.concatenate(scores, axis=1), float("-inf"))
    _, best = ops.top_k(scores, post_nms)
    return gather_rows(ops.concatenate(boxes, axis=1), best), gather_rows(valid, best)


def anchor_labels(anchors, gt_boxes, gt_valid):
    """``(positive, negative, matched)``: (B, A) bool, bool and int32 ground-truth index."""
    best, matched, iou = match_to_ground_truth(anchors, gt_boxes, gt_valid)
    best_of_truth = ops.max(iou, axis=1, keepdims=True)  # (B, 1, N): each truth's best anchor
    is_best = ops.any((iou == best_of_truth) & (best_of_truth > 0), axis=2)
    positive = (best >= POSITIVE_IOU) | is_best
    negative = (best < NEGATIVE_IOU) & ~positive
    return positive, negative, matched


def _labels_per_image(anchor_matcher, anchors, gt_boxes, gt_valid):
    """:func:`anchor_labels` from a one-image ``anchor_matcher`` run on every image."""

    def one_image(truth):
        labels, matched = anchor_matcher(anchors, truth[0], truth[1])
        return ops.cast(labels, "int32"), ops.cast(matched, "int32")

    labels, matched = ops.map(one_image, (ops.cast(gt_boxes, "float32"), gt_valid))
    return labels == 1, labels == 0, matched


def rpn_losses(anchors, objectness, deltas, gt_boxes, gt_valid, uniform,
               anchors_per_image: int = 256, positive_fraction: float = 0.5,
               anchor_matcher=None, box_encoder=None, ignore_boxes=None):
    """``(objectness_loss, box_loss)`` of a batch; ``uniform`` (B, A) random keys in [0, 1).
    ``anchor_matcher``, ``box_encoder``: one-image replacements for the library's (see above).
    ``ignore_boxes`` (B, K, 4): crowd regions and untrained objects; a negative anchor inside one
    (:func:`~segkeras.models.mask_rcnn.sampling.ignored_by`) is ignored instead."""
    if anchor_matcher is None:
        positive, negative, matched = anchor_labels(anchors, gt_boxes, gt_valid)
    else:
        positive, negative, matched = _labels_per_image(anchor_matcher, anchors, gt_boxes,
                                                        gt_valid)
    if ignore_boxes is not None:
        negative = negative & ~ignored_by(anchors, ignore_boxes)
    max_positive = int(anchors_per_image * positive_fraction)
    positive = sample_subset(positive, ops.minimum(count_true(positive), max_positive),
                             max_positive, uniform)
    negative = sample_subset(negative, anchors_per_image - count_true(positive),
                             anchors_per_image, uniform)
    sampled = ops.cast(positive | negative, "float32")
    total = ops.maximum(ops.sum(sampled), 1.0)
    logits = ops.cast(objectness, "float32")
    cross_entropy = ops.binary_crossentropy(ops.cast(positive, "float32"), logits,
                                            from_logits=True)
    objectness_loss = ops.sum(cross_entropy * sampled) / total
    truth = gather_rows(gt_boxes, matched)
    if box_encoder is None:
        targets = encode_boxes(anchors, truth, RPN_BOX_WEIGHTS)
    else:
        targets = ops.map(
            lambda boxes: ops.cast(box_encoder(anchors, boxes, RPN_BOX_WEIGHTS), "float32"), truth)
    targets = ops.where(positive[..., None], targets, 0.0)
    errors = smooth_l1(ops.cast(deltas, "float32") - targets, SMOOTH_L1_BETA)
    box_loss = ops.sum(errors * ops.cast(positive, "float32")[..., None]) / total
    return objectness_loss, box_loss
