"""torchvision's Mask R-CNN with its feature pyramid on the multi-scale shapes, on the data, CPU
budget and heads of bench/s8_mask_rcnn_multiscale.py --pyramid.

    PYTHONPATH=. /work/venvs/mrcnn/bin/python bench/s8_mask_rcnn_multiscale_torchvision.py \
        [--minutes 60] [--learning-rate 1e-3] [--seed 0] [--save FILE.pt]

(the venv of bench/s8_mask_rcnn_torchvision.py). Configured like segkeras' pyramid model piece by
piece: a randomly initialised MobileNetV2 tapped where segkeras taps it (the expanded activations
entering the stride-2 blocks 3, 6 and 13, 144/192/576 channels at strides 4/8/16, and the
1280-channel map at stride 32), torchvision's own ``FeaturePyramidNetwork`` of 128 channels with
``LastLevelMaxPool`` (P2-P6, as segkeras' ``feature_pyramid_levels``), anchors 16-256 (one size per
level) x ratios 0.5, 1, 2, RPN 1000 per level -> NMS 0.7 -> 500 (train) / 300 (test) proposals,
RoIs pooled from the level of eq. 1 with ``aligned=True`` RoIAlign
(:class:`AlignedMultiScaleRoIAlign`), two FC of 256, 128 RoIs per image at 25 % foreground, four
3x3 convs of 64 in the mask head;
images resized keeping the aspect ratio to a longer side of ``--image-size`` (torchvision's
transform with ``min_size = max_size``; it pads each batch to its largest image rounded up to 32,
segkeras pads to the square input), batch 4, Adam with the cosine over the CPU budget, the global
gradient norm clipped at 10, random left-right flips (the training loop of
bench/s8_mask_rcnn_torchvision.py). Evaluation: box and mask AP with AP_S/M/L on the same 100
held-out images. The record goes to ``bench/results/mask_rcnn_multiscale.json`` under ``--key``.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import torch
import torchvision
from s8_mask_rcnn_record import HELD_OUT_SEED, multiscale_arguments, report, save
from s8_mask_rcnn_torchvision import _load_evaluation, predict, train
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops._utils import convert_boxes_to_roi_format
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import _filter_input, _setup_scales

os.environ.setdefault("KERAS_BACKEND", "torch")  # segkeras imports Keras; this venv has no TF
from segkeras.data import shapes  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "mask_rcnn_multiscale.json")
ANCHOR_SIZES = ((16,), (32,), (64,), (128,), (256,))
"""One anchor size per level P2-P6, as bench/s8_mask_rcnn_multiscale.py --pyramid."""


class MobileNetV2Pyramid(nn.Module):
    """Random MobileNetV2 tapped at segkeras' P2-P5 (Keras' ``block_3_expand_relu``,
    ``block_6_expand_relu``, ``block_13_expand_relu`` and ``out_relu``: torchvision's
    ``features[4]``, ``features[7]`` and ``features[14]`` after their expansion, and the last
    map) -> torchvision's ``FeaturePyramidNetwork`` with P6 by ``LastLevelMaxPool``."""

    def __init__(self, channels: int):
        super().__init__()
        features = torchvision.models.mobilenet_v2(weights=None).features
        self.stages = nn.ModuleList([features[:4], features[5:7], features[8:14], features[15:]])
        self.expansions = nn.ModuleList(features[k].conv[0] for k in (4, 7, 14))
        self.rests = nn.ModuleList(features[k].conv[1:] for k in (4, 7, 14))
        self.fpn = FeaturePyramidNetwork([144, 192, 576, 1280], channels, LastLevelMaxPool())
        self.out_channels = channels

    def forward(self, x):
        levels = OrderedDict()
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index < 3:
                x = self.expansions[index](x)
                levels[str(index)] = x
                x = self.rests[index](x)
        levels["3"] = x
        return self.fpn(levels)


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (each RoI on the level of eq. 1, its ``LevelMapper``)
    with the half-pixel offset (``aligned=True``, as segkeras' ``MultiScaleRoIAlign``);
    torchvision's pooler has ``aligned=False``."""

    def forward(self, features, boxes, image_shapes):
        maps = _filter_input(features, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                maps, image_shapes, self.canonical_scale, self.canonical_level)
        rois = convert_boxes_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        pooled = maps[0].new_zeros((len(rois), maps[0].shape[1], *self.output_size))
        for level, (level_map, scale) in enumerate(zip(maps, self.scales, strict=True)):
            chosen = torch.where(levels == level)[0]
            pooled[chosen] = torchvision.ops.roi_align(
                level_map, rois[chosen], self.output_size, scale, self.sampling_ratio,
                aligned=True).to(pooled.dtype)
        return pooled


def build(num_classes: int, image_size: int, rois_per_image: int) -> MaskRCNN:
    levels = ["0", "1", "2", "3"]
    return MaskRCNN(
        MobileNetV2Pyramid(128), min_size=image_size, max_size=image_size,
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
        rpn_anchor_generator=AnchorGenerator(ANCHOR_SIZES, ((0.5, 1.0, 2.0),) * 5),
        rpn_pre_nms_top_n_train=1000, rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_train=500, rpn_post_nms_top_n_test=300,
        box_roi_pool=AlignedMultiScaleRoIAlign(levels, 7, 2),
        box_head=TwoMLPHead(128 * 49, 256), box_predictor=FastRCNNPredictor(256, num_classes),
        box_batch_size_per_image=rois_per_image, box_detections_per_img=100,
        mask_roi_pool=AlignedMultiScaleRoIAlign(levels, 14, 2),
        mask_head=MaskRCNNHeads(128, [64] * 4, 1),
        mask_predictor=MaskRCNNPredictor(64, 64, num_classes),
    )


def main() -> None:
    parser = multiscale_arguments(__doc__.splitlines()[0], learning_rate=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    train_data = shapes.generate_multiscale(args.train_images, seed=args.seed)
    held_out = shapes.generate_multiscale(args.val_images, seed=HELD_OUT_SEED)
    model = build(train_data.num_classes, args.image_size, args.rois_per_image)
    steps, cpu_seconds, wall_seconds, history = train(model, train_data, args, rng)
    if args.save:
        torch.save(model.state_dict(), args.save)

    detections, inference_cpu, inference_wall = predict(model, held_out.images)
    scores = _load_evaluation().detection_ap(held_out, detections, by_size=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"torch={torch.__version__} torchvision={torchvision.__version__} params={params:,}")
    record = report(steps, args.batch_size, len(train_data), cpu_seconds, wall_seconds, scores,
                    len(held_out), inference_cpu, inference_wall, backend="torch",
                    versions=f"torch {torch.__version__}, torchvision {torchvision.__version__}",
                    threads=torch.get_num_threads(), params=params, config=vars(args),
                    losses=history)
    for kind in ("box", "mask"):
        print(f"held-out {kind} AP_S={scores[kind]['AP_S']:.3f} AP_M={scores[kind]['AP_M']:.3f} "
              f"AP_L={scores[kind]['AP_L']:.3f}")
    save(args.key or f"torchvision pyramid seed={args.seed}", record, RESULTS)


if __name__ == "__main__":
    main()
