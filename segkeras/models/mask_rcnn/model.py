"""Mask R-CNN (He, Gkioxari, Dollár & Girshick, ICCV 2017): Faster R-CNN (Ren et al., NIPS 2015)
with a third, mask head, over a ``keras.applications`` encoder and an FPN neck (Lin et al., 2017).

    image -> encoder P2..P5 -> FPN P2..P6 -> RPN (shared by the levels) -> proposals
          -> RoIAlign 7x7 on each RoI's level -> box head -> class scores + boxes
          -> per-class NMS -> detections
          -> RoIAlign 14x14 on each detection's level -> mask head -> 28x28 mask of its class

That is ``pyramid=True``, the papers' model for real images. The default, ``pyramid=False``, is
the small CPU option for small images: the encoder's P3..P5 merged into one map (stride 8) that
the RPN and both RoI heads read.

:class:`MaskRCNN` is a ``keras.Model`` subclass: ``call`` runs the detector; with
``training=True`` and ground truth in the inputs it also samples the training regions and computes
the RPN and box-head losses, and :meth:`MaskRCNN.compute_loss` adds the mask loss, so plain
``model.compile(optimizer)`` + ``model.fit(dataset)`` trains all three stages end to end (the
"approximate joint training" of Faster R-CNN: no gradient flows through the proposals' coordinates).
Data: :func:`segkeras.models.mask_rcnn.dataset.mask_rcnn_dataset`.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Sequence

import keras
from keras import ops

from segkeras import backbones
from segkeras.boxes import box_area, clip_to_image
from segkeras.errors import SegkerasError
from segkeras.layers import (
    CANONICAL_SCALE,
    MultiScaleRoIAlign,
    RoIAlign,
    check_canonical_size,
)
from segkeras.models.common import check_num_classes
from segkeras.models.mask_head import (
    FlattenBoxes,
    MaskedBinaryCrossentropy,
    SelectClassMask,
    mask_branch,
)
from segkeras.models.mask_rcnn.anchors import anchor_grid, pyramid_anchors
from segkeras.models.mask_rcnn.masks import region_mask_targets
from segkeras.models.mask_rcnn.neck import FPN_STRIDES, feature_pyramid, feature_pyramid_levels
from segkeras.models.mask_rcnn.roi_heads import box_head, box_head_losses, detect, sample_rois
from segkeras.models.mask_rcnn.rpn import propose, rpn_head, rpn_losses

FEATURE_STRIDE = backbones.STRIDES["P3"]
BOX_ROI_SIZE, MASK_ROI_SIZE, MASK_SIZE = 7, 14, 28
LOSS_NAMES = ("rpn_objectness_loss", "rpn_box_loss", "class_loss", "box_loss", "mask_loss")
ROI_STRIDES = FPN_STRIDES[:-1]
"""The pyramid levels the RoI heads read (P2-P5); P6 serves the RPN only."""
DEFAULTS = {
    False: dict(anchor_sizes=(16, 32, 64, 128), rpn_pre_nms=1000, rpn_post_nms_train=500,
                rpn_post_nms_test=200, rois_per_image=256),
    True: dict(anchor_sizes=(32, 64, 128, 256, 512), rpn_pre_nms=2000, rpn_post_nms_train=1000,
               rpn_post_nms_test=1000, rois_per_image=512),
}
"""The defaults of the arguments left ``None``, by ``pyramid``: the single level's are sized for
small images; the pyramid's are the papers' for real data (Lin et al. 2017, Sec. 5.1; He et al.
2017, Sec. 3.1: 2000 proposals per level before NMS and 1000 after it in training, 1000 and
1000 at test time (``rpn_pre_nms_test``), 512 sampled RoIs per image; Detectron's numbers,
torchvision keeps 2000 after NMS in training)."""


def resolve_defaults(pyramid: bool, **values) -> dict:
    """``values`` with each ``None`` replaced by :data:`DEFAULTS`; ``rpn_pre_nms_test``
    defaults to ``rpn_pre_nms`` (at most 1000 with the pyramid)."""
    resolved = {name: DEFAULTS[bool(pyramid)][name] if value is None else value
                for name, value in values.items() if name != "rpn_pre_nms_test"}
    test = values.get("rpn_pre_nms_test")
    if test is None and "rpn_pre_nms" in resolved:
        pre_nms = resolved["rpn_pre_nms"]
        test = min(pre_nms, 1000) if pyramid else pre_nms
    return {**resolved, "rpn_pre_nms_test": test}


@keras.saving.register_keras_serializable(package="segkeras")
class MaskRCNN(keras.Model):
    """Mask R-CNN; build it with :func:`mask_rcnn`, whose arguments it takes.

    Inputs: images (B, H, W, 3) raw RGB, or a dict with ``"image"`` (and, to train, ``"boxes"``
    (B, N, 4) and ``"class_ids"`` (B, N), 0 = padding). Outputs at inference: a dict of
    ``"boxes"`` (B, D, 4) in input pixels, ``"scores"`` (B, D), ``"class_ids"`` (B, D),
    ``"valid"`` (B, D) bool and ``"mask_logits"`` (B, D, 28, 28), D = ``max_detections``,
    best first, padding rows not valid.
    """

    def __init__(self, num_classes: int, backbone: str = "resnet50",
                 weights: str | None = "imagenet", input_shape: Sequence[int] = (256, 256, 3),
                 encoder_trainable: bool = True, anchor_sizes: Sequence[float] | None = None,
                 anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0), fpn_channels: int = 256,
                 box_head_units: int = 1024, mask_head_channels: int = 256,
                 rpn_pre_nms: int | None = None, rpn_pre_nms_test: int | None = None,
                 rpn_post_nms_train: int | None = None, rpn_post_nms_test: int | None = None,
                 rpn_anchors_per_image: int = 256, rois_per_image: int | None = None,
                 foreground_fraction: float = 0.25, score_threshold: float = 0.05,
                 nms_threshold: float = 0.5, max_detections: int = 100,
                 batchnorm_momentum: float = 0.9, pyramid: bool = False,
                 roi_canonical_size: float = CANONICAL_SCALE, roi_sampling_ratio: int = 2,
                 seed: int | None = None, anchor_matcher=None, box_encoder=None, nms=None,
                 **kwargs):
        super().__init__(**kwargs)
        # RPN targets and the detections' NMS from your own functions (lab 6; see rpn.py and
        # roi_heads.py); not saved in .keras files.
        self.anchor_matcher, self.box_encoder, self.nms = anchor_matcher, box_encoder, nms
        pyramid = bool(pyramid)
        sized = resolve_defaults(
            pyramid, anchor_sizes=anchor_sizes, rpn_pre_nms=rpn_pre_nms,
            rpn_pre_nms_test=rpn_pre_nms_test, rpn_post_nms_train=rpn_post_nms_train,
            rpn_post_nms_test=rpn_post_nms_test, rois_per_image=rois_per_image)
        anchor_sizes, rois_per_image = tuple(sized["anchor_sizes"]), sized["rois_per_image"]
        self.config = dict(
            num_classes=num_classes, backbone=backbone, input_shape=tuple(input_shape),
            encoder_trainable=encoder_trainable, anchor_sizes=anchor_sizes,
            anchor_ratios=tuple(anchor_ratios), fpn_channels=fpn_channels,
            box_head_units=box_head_units, mask_head_channels=mask_head_channels,
            rpn_pre_nms=sized["rpn_pre_nms"], rpn_pre_nms_test=sized["rpn_pre_nms_test"],
            rpn_post_nms_train=sized["rpn_post_nms_train"],
            rpn_post_nms_test=sized["rpn_post_nms_test"],
            rpn_anchors_per_image=rpn_anchors_per_image, rois_per_image=rois_per_image,
            foreground_fraction=foreground_fraction, score_threshold=score_threshold,
            nms_threshold=nms_threshold, max_detections=max_detections,
            batchnorm_momentum=batchnorm_momentum, pyramid=pyramid,
            roi_canonical_size=float(roi_canonical_size),
            roi_sampling_ratio=int(roi_sampling_ratio), seed=seed)
        self.pyramid = pyramid
        self.image_size = (int(input_shape[0]), int(input_shape[1]))
        self.mask_slots = int(rois_per_image * foreground_fraction)
        encoder = backbones.build_encoder(backbone, tuple(input_shape), weights,
                                          encoder_trainable)
        if backbones.trains_from_scratch(encoder):
            backbones.train_from_scratch(encoder, batchnorm_momentum)
        image = keras.Input(tuple(input_shape), name="image")
        neck = feature_pyramid_levels if pyramid else feature_pyramid
        self.features = keras.Model(image, neck(encoder(image), fpn_channels),
                                    name="encoder_fpn")
        if pyramid:  # one anchor size per level, one RPN head for all levels
            grids = [tuple(output.shape[1:3]) for output in self.features.outputs]
            self.anchors = pyramid_anchors(grids, FPN_STRIDES, anchor_sizes, anchor_ratios)
            self.level_sizes = tuple(h * w * len(anchor_ratios) for h, w in grids)
            self.rpn = rpn_head((None, None, fpn_channels), fpn_channels, len(anchor_ratios))
            self.box_align = MultiScaleRoIAlign(BOX_ROI_SIZE, roi_sampling_ratio, ROI_STRIDES,
                                                canonical_size=roi_canonical_size,
                                                name="box_roi_align")
            self.mask_align = MultiScaleRoIAlign(MASK_ROI_SIZE, roi_sampling_ratio, ROI_STRIDES,
                                                 canonical_size=roi_canonical_size,
                                                 name="mask_roi_align")
        else:
            grid = (self.image_size[0] // FEATURE_STRIDE, self.image_size[1] // FEATURE_STRIDE)
            self.anchors = anchor_grid(grid, FEATURE_STRIDE, anchor_sizes, anchor_ratios)
            self.level_sizes = None
            per_location = len(anchor_sizes) * len(anchor_ratios)
            self.rpn = rpn_head((*grid, fpn_channels), fpn_channels, per_location)
            self.box_align = RoIAlign(BOX_ROI_SIZE, roi_sampling_ratio, 1.0 / FEATURE_STRIDE,
                                      name="box_roi_align")
            self.mask_align = RoIAlign(MASK_ROI_SIZE, roi_sampling_ratio, 1.0 / FEATURE_STRIDE,
                                       name="mask_roi_align")
        self.target_align = RoIAlign(MASK_SIZE, 2, 1.0, name="mask_target_align")
        self.box_head = box_head((BOX_ROI_SIZE, BOX_ROI_SIZE, fpn_channels), box_head_units,
                                 num_classes)
        rois = keras.Input((MASK_ROI_SIZE, MASK_ROI_SIZE, fpn_channels), name="mask_rois")
        self.mask_head = keras.Model(rois, mask_branch(rois, num_classes, mask_head_channels),
                                     name="mask_head")
        self.flatten_boxes = FlattenBoxes(name="flatten_boxes")
        self.select_training_masks = SelectClassMask(self.mask_slots, name="select_train_mask")
        self.select_detection_masks = SelectClassMask(max_detections, name="select_mask")
        self.mask_loss = MaskedBinaryCrossentropy()
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_trackers = [keras.metrics.Mean(name=name) for name in LOSS_NAMES]

    def recalibrate_batchnorm(self, images) -> int:
        """"Precise BN" (Wu & He, "Rethinking ImageNet pre-training", 2018): set the moving
        statistics of an encoder trained from scratch to the average of its batch statistics over
        ``images`` (an iterable of (B, H, W, 3) batches, or of ``(inputs, targets)`` from
        :func:`mask_rcnn_dataset`), with the weights as they are now. Returns the batches used
        (0 when the encoder keeps pretrained statistics)."""
        encoder = backbones.find_encoder(self.features)
        if not backbones.trains_from_scratch(encoder):
            return 0
        batchnorm = [layer for layer in encoder.layers
                     if isinstance(layer, keras.layers.BatchNormalization)]
        momenta = [layer.momentum for layer in batchnorm]
        count = 0
        try:
            for batch in images:
                batch = batch[0] if isinstance(batch, tuple) else batch
                batch = batch["image"] if isinstance(batch, dict) else batch
                for layer in batchnorm:  # a running mean: batch i gets weight 1 / (i + 1)
                    layer.momentum = count / (count + 1.0)
                encoder(ops.convert_to_tensor(batch, "float32"), training=True)
                count += 1
        finally:
            for layer, momentum in zip(batchnorm, momenta, strict=True):
                layer.momentum = momentum
        return count

    def build(self, input_shape=None):
        """Nothing to create: every weight lives in the sub-models built in ``__init__``."""
        self.built = True

    def _roi_features(self, features):
        """What the RoI heads pool from: the single map, or the pyramid's P2-P5 (of P2-P6)."""
        if not self.pyramid:
            return features
        return [ops.convert_to_tensor(level) for level in features][:len(ROI_STRIDES)]

    def _pool(self, align, features, boxes):
        flat, image_indices = self.flatten_boxes(boxes)
        return align(self._roi_features(features), flat, image_indices)

    def _box_outputs(self, features, boxes):
        rows = ops.shape(boxes)[1]
        outputs = self.box_head(self._pool(self.box_align, features, boxes))
        classes = ops.shape(outputs["class_logits"])[-1]
        return (ops.reshape(outputs["class_logits"], (-1, rows, classes)),
                ops.reshape(outputs["deltas"], (-1, rows, classes, 4)))

    def _mask_logits(self, features, boxes, class_ids, select):
        return select(self.mask_head(self._pool(self.mask_align, features, boxes)), class_ids)

    def _rpn(self, features):
        if not self.pyramid:
            return self.rpn(features)
        levels = [self.rpn(level) for level in features]
        return {name: ops.concatenate([level[name] for level in levels], axis=1)
                for name in ("objectness", "deltas")}

    def _proposals(self, features, training):
        rpn = self._rpn(features)
        anchors = ops.convert_to_tensor(self.anchors)
        cfg = self.config
        pre_nms = cfg["rpn_pre_nms"] if training else cfg["rpn_pre_nms_test"]
        post_nms = cfg["rpn_post_nms_train"] if training else cfg["rpn_post_nms_test"]
        proposals, proposal_valid = propose(anchors, rpn["objectness"], rpn["deltas"],
                                            self.image_size, pre_nms, post_nms,
                                            level_sizes=self.level_sizes)
        return rpn, anchors, proposals, proposal_valid

    def _detect(self, features):
        _, _, proposals, proposal_valid = self._proposals(features, training=False)
        class_logits, deltas = self._box_outputs(features, proposals)
        cfg = self.config
        return detect(proposals, proposal_valid, class_logits, deltas, self.image_size,
                      cfg["score_threshold"], cfg["nms_threshold"], cfg["max_detections"],
                      nms=self.nms)

    def call(self, inputs, training=False):
        image = inputs["image"] if isinstance(inputs, dict) else inputs
        features = self.features(image, training=training)
        if training and isinstance(inputs, dict) and "boxes" in inputs:
            return self._training_outputs(inputs, features, *self._proposals(features, True))
        detections = self._detect(features)
        detections["mask_logits"] = ops.cast(self._mask_logits(
            features, detections["boxes"], detections["class_ids"], self.select_detection_masks),
            "float32")
        return detections

    def detect(self, images):
        """The detections of :meth:`call` without their masks, and the feature map(s) the
        mask branch reads (the pyramid's P2-P5): ``{"boxes", "scores", "class_ids", "valid",
        "features"}``. With :meth:`detection_mask_logits` on the kept rows only, this is
        ``call`` without running the mask branch on padding and low-scoring slots."""
        features = self.features(images, training=False)
        return {**self._detect(features), "features": self._roi_features(features)}

    def detection_mask_logits(self, features, boxes, image_indices, class_ids):
        """(K, 28, 28) float32 mask logits of K boxes (input pixels), each in the feature map
        of its image (``image_indices`` (K,) into ``features`` from :meth:`detect` or
        ``model.features(images)``), for its class id (K,)."""
        features = (self._roi_features(features) if self.pyramid
                    else ops.convert_to_tensor(features))
        pooled = self.mask_align(features, ops.cast(boxes, "float32"),
                                 ops.cast(image_indices, "int32"))
        logits = self.mask_head(pooled, training=False)
        ids = ops.clip(ops.cast(class_ids, "int32"), 0, ops.shape(logits)[-1] - 1)
        chosen = ops.take_along_axis(logits, ids[:, None, None, None], axis=-1)[..., 0]
        return ops.cast(chosen, "float32")

    def _training_outputs(self, inputs, features, rpn, anchors, proposals,
                          proposal_valid):
        cfg = self.config
        gt_boxes = clip_to_image(inputs["boxes"], *self.image_size)
        gt_class_ids = ops.cast(inputs["class_ids"], "int32")
        gt_valid = (gt_class_ids > 0) & (box_area(gt_boxes) > 0)
        ignore_boxes = inputs.get("ignore_boxes")
        anchor_keys = keras.random.uniform(ops.shape(rpn["objectness"]),
                                           seed=self.seed_generator)
        objectness_loss, rpn_box_loss = rpn_losses(
            anchors, rpn["objectness"], rpn["deltas"], gt_boxes, gt_valid, anchor_keys,
            cfg["rpn_anchors_per_image"], anchor_matcher=self.anchor_matcher,
            box_encoder=self.box_encoder, ignore_boxes=ignore_boxes)
        region_keys = keras.random.uniform(
            (ops.shape(proposals)[0], ops.shape(proposals)[1] + ops.shape(gt_boxes)[1]),
            seed=self.seed_generator)
        sample = sample_rois(proposals, proposal_valid, gt_boxes, gt_class_ids, gt_valid,
                             region_keys, cfg["rois_per_image"], cfg["foreground_fraction"],
                             ignore_boxes)
        class_logits, deltas = self._box_outputs(features, sample["rois"])
        class_loss, box_loss = box_head_losses(class_logits, deltas, sample, gt_boxes)
        slots = slice(0, self.mask_slots)  # foreground regions come first
        mask_rois = sample["rois"][:, slots]
        return {
            "rpn_objectness_loss": objectness_loss, "rpn_box_loss": rpn_box_loss,
            "class_loss": class_loss, "box_loss": box_loss,
            "mask_logits": self._mask_logits(features, mask_rois, sample["class_ids"][:, slots],
                                             self.select_training_masks),
            "mask_rois": mask_rois, "mask_matched": sample["matched"][:, slots],
            "mask_foreground": sample["foreground"][:, slots],
        }

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The sum of the five losses (each tracked as a metric); ``y``: the (B, N, H, W) masks
        of the ground-truth objects at the input's resolution (:func:`mask_rcnn_dataset`)."""
        if "rpn_box_loss" not in y_pred or y is None:
            raise SegkerasError(
                "Mask R-CNN computes its losses in training only, from inputs with 'boxes' and "
                "'class_ids' and masks (mask_rcnn_dataset); to score a model use "
                "segkeras.evaluate.detection_ap on predict_instances' output.")
        targets = region_mask_targets(y, y_pred["mask_rois"],
                                      y_pred["mask_matched"], y_pred["mask_foreground"],
                                      self.target_align)
        mask_loss = self.mask_loss.call(targets, y_pred["mask_logits"])
        losses = [y_pred[name] for name in LOSS_NAMES[:-1]] + [mask_loss]
        for tracker, value in zip(self.loss_trackers, losses, strict=True):
            tracker.update_state(value)
        return ops.sum(ops.stack(losses))

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, **self.config, "weights": None}


def _check_positive_int(name: str, value) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise SegkerasError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


OPTIONS = ("anchor_ratios", "fpn_channels", "box_head_units", "mask_head_channels", "rpn_pre_nms",
           "rpn_pre_nms_test", "rpn_post_nms_train", "rpn_post_nms_test", "rpn_anchors_per_image",
           "rois_per_image", "foreground_fraction", "score_threshold", "nms_threshold",
           "max_detections", "batchnorm_momentum", "pyramid", "roi_canonical_size",
           "roi_sampling_ratio", "seed", "anchor_matcher", "box_encoder", "nms")
"""The ``**options`` :func:`mask_rcnn` passes on to :class:`MaskRCNN` (a test keeps this list
equal to ``MaskRCNN``'s keyword arguments after ``anchor_sizes``)."""


def _check_option_names(options: dict) -> None:
    """SegkerasError naming the valid options (and the closest one) for a misspelled option."""
    for name in options:
        if name not in OPTIONS:
            close = difflib.get_close_matches(name, OPTIONS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise SegkerasError(f"mask_rcnn got an unknown option {name!r}; {hint}valid "
                                f"options: {', '.join(OPTIONS)}.")


def mask_rcnn(num_classes: int, backbone: str = "resnet50", weights: str | None = "imagenet",
              input_shape: Sequence[int] = (256, 256, 3), encoder_trainable: bool = True,
              anchor_sizes: Sequence[float] | None = None, **options) -> MaskRCNN:
    """Mask R-CNN (He et al., "Mask R-CNN", ICCV 2017) named e.g. ``"mask_rcnn_resnet50"``,
    on a feature pyramid (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR
    2017).

    Two sizes of the same detector: ``pyramid=True`` is the papers' model for real images
    (FPN P2-P6, one anchor size per level, the RPN shared by the levels, each RoI pooled from
    the level of eq. 1 for the box and mask heads; the papers' proposal counts). The default,
    ``pyramid=False``, is the small CPU option for small images such as the shapes: one merged
    map of stride 8 read by the RPN and both heads, with smaller proposal counts.

    Args:
        num_classes: classes including the background (``data.num_classes``), >= 2.
        backbone: a name from ``segkeras.backbones.available()``.
        weights: encoder weights, ``"imagenet"``, ``None`` (random) or a file.
        input_shape: fixed ``(H, W, 3)``, multiples of 32 (the anchors are laid out for it);
            :func:`~segkeras.models.mask_rcnn.inference.predict_instances` fits images of any
            size inside it (aspect ratio kept, padded) and maps results back.
        encoder_trainable: fine-tune the encoder with the heads (a random one trains its
            BatchNorm too) or keep it frozen.
        anchor_sizes: anchor sides in input pixels, each with ratios 1:2, 1:1, 2:1 by default.
            Single level: all sizes on the one map, to span the objects' sizes (default 16, 32,
            64, 128). Pyramid: one size per level P2-P6 (default 32, 64, 128, 256, 512).
        **options: further :class:`MaskRCNN` arguments: ``pyramid`` (False), ``anchor_ratios``,
            ``fpn_channels`` (256), ``box_head_units`` (1024), ``mask_head_channels`` (256);
            the RPN's ``rpn_pre_nms`` best anchors (per level) before NMS in training and
            ``rpn_pre_nms_test`` at test time, ``rpn_post_nms_train`` / ``rpn_post_nms_test``
            proposals per image after it (single level 1000, 1000, 500, 200; pyramid 2000,
            1000, 1000, 1000); ``rpn_anchors_per_image`` (256), ``rois_per_image`` (256;
            pyramid 512), ``foreground_fraction`` (0.25), ``score_threshold`` (0.05),
            ``nms_threshold`` (0.5), ``max_detections`` (100), ``batchnorm_momentum`` (0.9: the
            momentum of a from-scratch encoder's BatchNorm, low enough that its moving
            statistics, used at inference, keep up with weights that change fast; see also
            :meth:`MaskRCNN.recalibrate_batchnorm`), ``roi_canonical_size`` (224: with the
            pyramid, the RoI side that eq. 1 puts on P4; each halving moves RoIs one level
            finer, so 112 reads every RoI one level coarser), ``roi_sampling_ratio`` (2: the
            box and mask heads' RoIAlign takes ratio x ratio samples per bin; see below),
            ``seed``; ``anchor_matcher`` and
            ``box_encoder``: your own one-image functions for the RPN's training targets (the
            signatures are in :mod:`~segkeras.models.mask_rcnn.rpn`), used by ``fit``, and
            ``nms``: your own one-image per-class NMS for the final detections (signature in
            :mod:`~segkeras.models.mask_rcnn.roi_heads`); none is saved in ``.keras`` files
            (a reloaded model uses the library's). RoIAlign takes 2 x 2 samples per bin by
            default, the paper's four regular locations and torchvision's ratio; Detectron's
            adaptive ratio (about one sample per feature cell) is not supported. A larger
            ``roi_sampling_ratio`` reads large RoIs on a fine level more densely (a 200-px RoI
            on P2 spans 50 cells, which 2 x 2 samples in each of 7 x 7 bins read every 3.5
            cells) at the cost of training speed; BENCHMARKS note 7 measured 3 as no gain
            within a fixed CPU budget.

    Returns:
        A :class:`MaskRCNN`; train it with ``model.compile(optimizer)`` and ``model.fit`` on
        :func:`~segkeras.models.mask_rcnn.dataset.mask_rcnn_dataset`.
    """
    num_classes = check_num_classes(num_classes)
    if not isinstance(backbone, str):
        raise SegkerasError(f"backbone must be a name from segkeras.backbones.available(), "
                            f"got {backbone!r}.")
    shape = tuple(input_shape)
    if len(shape) != 3 or None in shape:
        raise SegkerasError(f"input_shape must be a fixed (H, W, 3), got {input_shape!r}: "
                            "Mask R-CNN lays its anchors out for one size.")
    backbones.check_input_shape(shape, 32)
    _check_option_names(options)
    pyramid = options.get("pyramid", False)
    if not isinstance(pyramid, bool):
        raise SegkerasError(f"pyramid must be True or False, got {pyramid!r}.")
    sized = resolve_defaults(pyramid, anchor_sizes=anchor_sizes, **{
        name: options.get(name) for name in ("rpn_pre_nms", "rpn_pre_nms_test",
                                             "rpn_post_nms_train", "rpn_post_nms_test",
                                             "rois_per_image")})
    anchor_sizes = sized.pop("anchor_sizes")
    if not anchor_sizes or min(anchor_sizes) <= 0:
        raise SegkerasError(f"anchor_sizes must be positive pixel sizes, got {anchor_sizes!r}.")
    if pyramid and len(anchor_sizes) != len(FPN_STRIDES):
        raise SegkerasError(f"with pyramid=True anchor_sizes holds one size per level P2-P6 "
                            f"({len(FPN_STRIDES)} sizes, e.g. (32, 64, 128, 256, 512)), got "
                            f"{anchor_sizes!r}.")
    options = {**options, **sized}
    for name in ("fpn_channels", "box_head_units", "mask_head_channels", "rpn_pre_nms",
                 "rpn_pre_nms_test", "rpn_post_nms_train", "rpn_post_nms_test",
                 "rpn_anchors_per_image", "rois_per_image", "max_detections",
                 "roi_sampling_ratio"):
        if name in options:
            _check_positive_int(name, options[name])
    check_canonical_size(options.get("roi_canonical_size", CANONICAL_SCALE))
    momentum = options.get("batchnorm_momentum", 0.9)
    if not isinstance(momentum, numbers.Real) or not 0 <= momentum < 1:
        raise SegkerasError(f"batchnorm_momentum must be in [0, 1), got {momentum!r}.")
    fraction = options.get("foreground_fraction", 0.25)
    rois = options["rois_per_image"]
    if rois > options["rpn_post_nms_train"]:
        raise SegkerasError(f"rois_per_image={rois} exceeds the proposals per training image "
                            f"(rpn_post_nms_train={options['rpn_post_nms_train']}); "
                            "lower it or raise rpn_post_nms_train.")
    if not 0 < fraction <= 1 or int(rois * fraction) < 1:
        raise SegkerasError(f"foreground_fraction={fraction} leaves no foreground slot of "
                            f"rois_per_image={rois}; use a fraction in (0, 1].")
    return MaskRCNN(num_classes, backbone, weights, shape, encoder_trainable, anchor_sizes,
                    name=f"mask_rcnn_{backbone}", **options)
