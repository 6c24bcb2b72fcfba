"""Mask R-CNN's mask head on a pretrained encoder, given the boxes.

He, Gkioxari, Dollár & Girshick, "Mask R-CNN", ICCV 2017 (Fig. 4, right, without the ResNet-C4
variant): RoIAlign 14x14 from the feature map -> four 3x3 convolutions with 256 channels and ReLU
-> a 2x2 transposed convolution with stride 2 and ReLU -> a 1x1 convolution with one logit per
class at 28x28. Masks are class-specific: the channel of the box's class is selected and trained
with a per-pixel sigmoid and binary cross-entropy, so classes do not compete (no softmax).

Here the boxes are given (ground-truth boxes, or jittered ones while training, see
:mod:`segkeras.data.instances`) instead of coming from a region proposal network. The model takes
``{"image": (B, H, W, 3), "boxes": (B, N, 4), "class_ids": (B, N)}`` with N = ``max_instances``
rows per image (class id 0 marks a padding row) and returns mask logits (B, N, 28, 28).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from segkeras.backbones import STRIDES
from segkeras.data.images import check_images, resize_image
from segkeras.data.instances import MASK_SIZE, check_class_ids, clip_boxes
from segkeras.errors import SegkerasError
from segkeras.layers import RoIAlign
from segkeras.models.common import (
    ANY_SIZE,
    check_choice,
    check_num_classes,
    encode,
    float32_logits,
    model_name,
    resolve_encoder,
)

layers = keras.layers
FEATURE_LEVELS = ("P4", "P3")
ROI_SIZE = MASK_SIZE // 2


@keras.saving.register_keras_serializable(package="segkeras")
class FlattenBoxes(keras.layers.Layer):
    """(B, N, 4) padded boxes -> (B*N, 4) boxes and their (B*N,) image indices, for RoIAlign."""

    def call(self, boxes):
        rows = ops.shape(boxes)[1]
        image_indices = ops.repeat(ops.arange(ops.shape(boxes)[0], dtype="int32"), rows)
        return ops.reshape(boxes, (-1, 4)), image_indices

    def compute_output_shape(self, boxes_shape):
        return (None, 4), (None,)


@keras.saving.register_keras_serializable(package="segkeras")
class SelectClassMask(keras.layers.Layer):
    """(B*N, M, M, classes) logits and (B, N) class ids -> (B, N, M, M): each box's own class.

    Ids are clipped to the valid channels, so padding rows (id 0) select channel 0, which the
    loss ignores.
    """

    def __init__(self, rows_per_image: int, **kwargs):
        super().__init__(**kwargs)
        self.rows_per_image = int(rows_per_image)

    def call(self, logits, class_ids):
        classes = ops.shape(logits)[-1]
        ids = ops.clip(ops.reshape(ops.cast(class_ids, "int32"), (-1,)), 0, classes - 1)
        chosen = ops.einsum("kpqc,kc->kpq", logits, ops.one_hot(ids, classes, dtype=logits.dtype))
        return ops.reshape(chosen, (-1, self.rows_per_image, *ops.shape(logits)[1:3]))

    def compute_output_shape(self, logits_shape, class_ids_shape):
        return (class_ids_shape[0], self.rows_per_image, *logits_shape[1:3])

    def get_config(self):
        return {**super().get_config(), "rows_per_image": self.rows_per_image}


@keras.saving.register_keras_serializable(package="segkeras")
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """Mask R-CNN's mask loss: mean per-pixel sigmoid cross-entropy over the real boxes.

    ``y_true`` (B, N, M, M) holds 0/1 targets, and a negative value
    (:data:`segkeras.data.instances.PADDING_TARGET`) on padding rows, which contribute nothing:
    the loss is the mean over non-negative target pixels of the batch, 0 if there are none.
    ``y_pred`` holds logits. Returns one number per batch.
    """

    def __init__(self, name: str = "masked_binary_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(y_true, "float32")
        counted = ops.cast(y_true >= 0, "float32")
        per_pixel = ops.binary_crossentropy(ops.clip(y_true, 0.0, 1.0), y_pred, from_logits=True)
        return ops.sum(per_pixel * counted) / ops.maximum(ops.sum(counted), 1.0)


def _freeze_layers_after(encoder: keras.Model, feature_level: str) -> None:
    """Freeze the encoder layers that do not lead to ``feature_level`` (no gradient reaches
    them; frozen, they need no optimizer state and raise no missing-gradient warnings)."""
    used = keras.Model(encoder.input, encoder.output[feature_level]).layers
    used_ids = {id(layer) for layer in used}
    for layer in encoder.layers:
        if id(layer) not in used_ids:
            layer.trainable = False


def mask_branch(rois, num_classes: int, channels: int):
    """Mask R-CNN's mask branch on (K, 14, 14, C) RoI features, shared by
    :func:`instance_segmenter` and :class:`~segkeras.models.mask_rcnn.MaskRCNN`: the paper's
    4 x (3x3 conv, ReLU) -> 2x2 deconv stride 2, ReLU -> 1x1 conv, one logit per class."""
    x = rois
    for i in range(1, 5):
        x = layers.Conv2D(channels, 3, padding="same", activation="relu",
                          kernel_initializer="he_normal", name=f"mask_conv{i}")(x)
    x = layers.Conv2DTranspose(channels, 2, strides=2, activation="relu",
                               kernel_initializer="he_normal", name="mask_deconv")(x)
    return layers.Conv2D(num_classes, 1, name="mask_predictor",
                         kernel_initializer=keras.initializers.RandomNormal(stddev=0.001))(x)


def instance_segmenter(
    num_classes: int,
    backbone: str | keras.Model = "mobilenetv2",
    weights: str | None = "imagenet",
    feature_level: str = "P4",
    encoder_trainable: bool = False,
    input_shape: tuple = ANY_SIZE,
    max_instances: int = 8,
    head_channels: int = 256,
) -> keras.Model:
    """Mask R-CNN's mask head (He et al., ICCV 2017) named e.g. ``"mask_head_mobilenetv2"``.

    Args:
        num_classes: classes including the background (``data.num_classes``), >= 2. The
            predictor has one channel per class id; channel 0 (background) is never selected.
        backbone: a name from ``segkeras.backbones.available()`` or an encoder model.
        weights: encoder weights: ``"imagenet"``, ``None`` (random: with ``encoder_trainable``
            its BatchNorm layers train too, having no ImageNet statistics to keep) or a file.
        feature_level: ``"P4"`` (stride 16, as in the paper) or ``"P3"`` (stride 8, finer).
        encoder_trainable: train the encoder too, or keep it frozen. Either way the encoder
            layers after ``feature_level`` are frozen: no gradient reaches them.
        input_shape: ``(H, W, 3)``, H and W multiples of 32 or None.
        max_instances: box rows per image (N); pad with class id 0.
        head_channels: width of the head's convolutions (256 in the paper).

    Returns:
        A ``keras.Model`` from ``{"image", "boxes", "class_ids"}`` (raw RGB in [0, 255]; boxes
        ``x1, y1, x2, y2`` in input pixels) to float32 mask logits (B, N, 28, 28). Train it with
        :class:`MaskedBinaryCrossentropy` on :func:`segkeras.data.instances.make_instance_dataset`.
    """
    num_classes = check_num_classes(num_classes)
    check_choice("feature_level", feature_level, FEATURE_LEVELS)
    if int(max_instances) != max_instances or max_instances < 1:
        raise SegkerasError(f"max_instances must be a positive int, got {max_instances!r}.")
    if int(head_channels) != head_channels or head_channels < 1:
        raise SegkerasError(f"head_channels must be a positive int, got {head_channels!r}.")
    encoder = resolve_encoder(backbone, input_shape, weights, encoder_trainable)
    _freeze_layers_after(encoder, feature_level)
    image, features = encode(encoder)
    boxes = keras.Input((max_instances, 4), name="boxes")
    class_ids = keras.Input((max_instances,), dtype="int32", name="class_ids")

    flat_boxes, image_indices = FlattenBoxes(name="flatten_boxes")(boxes)
    align = RoIAlign(ROI_SIZE, sampling_ratio=2, spatial_scale=1.0 / STRIDES[feature_level],
                     name="roi_align")
    rois = align(features[feature_level], flat_boxes, image_indices)
    logits = mask_branch(rois, num_classes, int(head_channels))
    masks = SelectClassMask(max_instances, name="select_class")(logits, class_ids)
    inputs = {"image": image, "boxes": boxes, "class_ids": class_ids}
    return keras.Model(inputs, float32_logits(masks), name=model_name("mask_head", encoder))


def paste_masks(probabilities: np.ndarray, boxes: np.ndarray, height: int, width: int):
    """(N, M, M) box-relative mask probabilities -> (N, height, width) image probabilities.

    Each mask is stretched bilinearly over its box (mask pixels cover the box exactly; pixel
    centres at +0.5) and is 0 outside it, as in detectron2's ``paste_masks_in_image``.
    """
    pasted = np.zeros((len(boxes), height, width), dtype=np.float32)
    for i, (mask, (x1, y1, x2, y2)) in enumerate(zip(probabilities, boxes, strict=True)):
        rows = _paste_weights(y1, y2, mask.shape[0], height)
        cols = _paste_weights(x1, x2, mask.shape[1], width)
        pasted[i] = rows @ mask @ cols.T
    return pasted


def _paste_weights(start: float, end: float, mask_size: int, size: int) -> np.ndarray:
    """(size, mask_size) bilinear weights of the mask pixels at each image pixel centre."""
    weights = np.zeros((size, mask_size), dtype=np.float32)
    if end <= start:
        return weights
    coords = (np.arange(size) + 0.5 - start) / (end - start) * mask_size - 0.5
    low = np.floor(coords)
    for tap, weight in ((low, 1.0 - (coords - low)), (low + 1, coords - low)):
        ok = (tap >= 0) & (tap < mask_size)
        weights[np.flatnonzero(ok), tap[ok].astype(int)] += weight[ok]
    return weights


def _model_input_size(model: keras.Model, height: int, width: int) -> tuple[int, int]:
    """The model's fixed input size, or the image's rounded to multiples of 32."""
    fixed = model.input["image"].shape[1:3]
    if None not in fixed:
        return tuple(fixed)
    return tuple(max(32, int(round(side / 32)) * 32) for side in (height, width))


def _mask_probabilities(model, images, boxes, class_ids, batch_size):
    """(N_i, 28, 28) sigmoid masks per image; images of one model input size share batches."""
    rows = model.input["boxes"].shape[1]
    probabilities = [np.zeros((len(ids), MASK_SIZE, MASK_SIZE), np.float32) for ids in class_ids]
    requests: dict[tuple, list] = {}  # model input size -> (image, slice, inputs) of each chunk
    for i, image in enumerate(images):
        height, width = np.shape(image)[:2]
        size = _model_input_size(model, height, width)
        scale = np.array([size[1] / width, size[0] / height] * 2, dtype=np.float32)
        resized = resize_image(image, size)
        for start in range(0, len(class_ids[i]), rows):
            chunk = slice(start, min(start + rows, len(class_ids[i])))
            padded_boxes = np.zeros((rows, 4), np.float32)
            padded_ids = np.zeros(rows, np.int32)
            padded_boxes[: chunk.stop - start] = boxes[i][chunk] * scale
            padded_ids[: chunk.stop - start] = class_ids[i][chunk]
            requests.setdefault(size, []).append((i, chunk, resized, padded_boxes, padded_ids))
    for chunks in requests.values():
        inputs = {key: np.stack([chunk[j] for chunk in chunks])
                  for j, key in enumerate(("image", "boxes", "class_ids"), start=2)}
        logits = model.predict(inputs, batch_size=batch_size, verbose=0)
        for (i, chunk, *_), chunk_logits in zip(chunks, logits, strict=True):
            count = chunk.stop - chunk.start
            probabilities[i][chunk] = _sigmoid(chunk_logits[:count])
    return probabilities


def _detector_mask_probabilities(model, images, boxes, class_ids):
    """(N_i, 28, 28) sigmoid masks per image from a Mask R-CNN's own mask branch."""
    size = model.image_size
    probabilities = []
    for image, image_boxes, ids in zip(images, boxes, class_ids, strict=True):
        if len(ids) == 0:
            probabilities.append(np.zeros((0, MASK_SIZE, MASK_SIZE), np.float32))
            continue
        height, width = np.shape(image)[:2]
        scale = np.array([size[1] / width, size[0] / height] * 2, np.float32)
        features = model.features(resize_image(image, size)[None], training=False)
        pooled = model.mask_align(features, image_boxes * scale, np.zeros(len(ids), np.int32))
        logits = np.asarray(ops.convert_to_numpy(model.mask_head(pooled, training=False)))
        probabilities.append(_sigmoid(np.moveaxis(logits, -1, 1)[np.arange(len(ids)), ids]))
    return probabilities


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def predict_masks_in_boxes(
    model: keras.Model,
    images: np.ndarray | Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    class_ids: Sequence[np.ndarray],
    batch_size: int = 8,
    return_scores: bool = False,
):
    """Full-resolution boolean masks of the given objects, one (N_i, H_i, W_i) array per image.

    ``model``: an :func:`instance_segmenter`, or a :class:`~segkeras.models.mask_rcnn.MaskRCNN`
    (its mask branch on the given boxes: the mask quality without the detection errors; for
    new images without boxes use :func:`segkeras.models.mask_rcnn.predict_instances`).

    Each image is resized to the model's input size (or to multiples of 32), its boxes are clipped
    to the image and run through the model (``max_instances`` at a time); each 28x28 mask is
    resized to its box (:func:`paste_masks`) and thresholded at 0.5. A box without area inside
    the image gets an empty mask. With ``return_scores`` also returns, per image, the (N_i,)
    scores: the mean mask probability inside each predicted mask (0 for an empty mask).

    Images are RGB in [0, 255] (grayscale (H, W) and RGBA images are converted to RGB; see
    :func:`segkeras.data.images.check_images` for the pixels refused). Raises SegkerasError for
    class ids outside ``1..num_classes-1``, non-finite boxes, boxes with ``x2 < x1`` or
    ``y2 < y1``, or lists of different lengths.
    """
    if not len(images) == len(boxes) == len(class_ids):
        raise SegkerasError(
            f"Got {len(images)} images, {len(boxes)} box arrays and {len(class_ids)} class-id "
            "arrays; pass one box array and one class-id array per image."
        )
    images = check_images(images)
    detector = hasattr(model, "mask_align")  # a MaskRCNN (mask_rcnn imports this module)
    num_classes = (int(model.config["num_classes"]) if detector
                   else model.get_layer("mask_predictor").filters)
    clipped, valid, checked_ids = [], [], []
    for i, image in enumerate(images):
        try:
            image_boxes, image_valid = clip_boxes(boxes[i], *np.shape(image)[:2])
        except SegkerasError as error:
            raise SegkerasError(f"Image {i}: {error}") from error
        ids = check_class_ids(np.asarray(class_ids[i]).reshape(-1), num_classes, f"Image {i}")
        if len(ids) != len(image_boxes):
            raise SegkerasError(f"Image {i} has {len(image_boxes)} boxes but {len(ids)} class ids.")
        clipped.append(image_boxes)
        valid.append(image_valid)
        checked_ids.append(ids)
    if detector:
        probabilities = _detector_mask_probabilities(model, images, clipped, checked_ids)
    else:
        probabilities = _mask_probabilities(model, images, clipped, checked_ids, batch_size)
    masks, scores = [], []
    for image, image_boxes, image_valid, image_probabilities in zip(
        images, clipped, valid, probabilities, strict=True
    ):
        pasted = paste_masks(image_probabilities, image_boxes, *np.shape(image)[:2])
        pasted *= image_valid[:, None, None]
        binary = pasted >= 0.5
        area = binary.sum(axis=(1, 2))
        masks.append(binary)
        scores.append((pasted * binary).sum(axis=(1, 2)) / np.maximum(area, 1))  # 0 if empty
    return (masks, scores) if return_scores else masks
