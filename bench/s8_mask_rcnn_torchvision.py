"""torchvision's Mask R-CNN on the same data and CPU budget as bench/s8_mask_rcnn_train.py.

    PYTHONPATH=. /work/venvs/mrcnn/bin/python bench/s8_mask_rcnn_torchvision.py \
        [--minutes 20] [--stop-at HH:MM]

(with scikit-image and pycocotools in that venv too, for the data and the evaluation).

Run with torch 2.14.1 + torchvision 0.29.1 in a separate venv (never a segkeras dependency).
Configured like segkeras' bench model: ``torchvision.models.detection.MaskRCNN`` over a randomly
initialised MobileNetV2 (``mobilenet_v2(weights=None).features`` split at strides 8, 16 and 32),
an FPN with 128 channels of which only the stride-8 map is used (as in segkeras), anchors 16, 32,
64 x ratios 0.5, 1, 2, RPN 600 -> NMS 0.7 -> 200 (train) / 100 (test) proposals, 256 sampled
anchors, RoIAlign 7x7 -> two FC of 256 -> class + box, 32 RoIs per image at 25 % foreground,
RoIAlign 14x14 -> four 3x3 convs of 64 -> deconv -> 28x28 masks; images 128x128 (no resizing:
``min_size = max_size = 128``), input scaled to [-1, 1] like Keras' MobileNetV2 preprocessing;
Adam 2e-3 with the same cosine schedule over the CPU budget, gradient norm clipped at 10, batch 8,
random left-right flips. Evaluation: COCO box and mask AP (segkeras' ``detection_ap``) on the
same 300 held-out images, and training / inference images per CPU second. ``--threads``
(default 2, like TensorFlow's default on this 2-core machine; the side-by-side runs use 1 for both
systems, see bench/s8_mask_rcnn_train.py) sets ``torch.set_num_threads``;
``--stop-at HH:MM`` also ends training at that wall-clock time. Results go to
``bench/results/mask_rcnn.json`` (key ``torchvision``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import math
import os
import time
from collections import OrderedDict

import numpy as np
import torch
import torchvision
from s8_mask_rcnn_record import report, save
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign

os.environ.setdefault("KERAS_BACKEND", "torch")  # segkeras imports Keras; this venv has no TF
from segkeras.data import shapes  # noqa: E402


def _load_evaluation():
    """segkeras.evaluate.instances without the package's Keras-based semantic half."""
    path = os.path.join(os.path.dirname(__file__), "..", "segkeras", "evaluate", "instances.py")
    spec = importlib.util.spec_from_file_location("segkeras_instances_ap", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class MobileNetV2FPN(nn.Module):
    """Random MobileNetV2 at strides 8, 16, 32 -> FPN -> the stride-8 map only."""

    def __init__(self, channels: int):
        super().__init__()
        features = torchvision.models.mobilenet_v2(weights=None).features
        self.stages = nn.ModuleList([features[:7], features[7:14], features[14:]])
        self.fpn = FeaturePyramidNetwork([32, 96, 1280], channels)
        self.out_channels = channels

    def forward(self, x):
        maps = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            maps[str(i)] = x
        return OrderedDict([("0", self.fpn(maps)["0"])])


def build(num_classes: int, fpn_channels: int, box_units: int, mask_channels: int,
          rois_per_image: int) -> MaskRCNN:
    backbone = MobileNetV2FPN(fpn_channels)
    return MaskRCNN(
        backbone, min_size=128, max_size=128,
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
        rpn_anchor_generator=AnchorGenerator(((16, 32, 64),), ((0.5, 1.0, 2.0),)),
        rpn_pre_nms_top_n_train=600, rpn_pre_nms_top_n_test=600,
        rpn_post_nms_top_n_train=200, rpn_post_nms_top_n_test=100,
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        box_head=TwoMLPHead(fpn_channels * 49, box_units),
        box_predictor=FastRCNNPredictor(box_units, num_classes),
        box_batch_size_per_image=rois_per_image, box_detections_per_img=100,
        mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
        mask_head=MaskRCNNHeads(fpn_channels, [mask_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
    )


def targets_of(data, indices, flips):
    images, targets = [], []
    for i, flip in zip(indices, flips, strict=True):
        image = torch.from_numpy(data.images[i]).permute(2, 0, 1).float() / 255.0
        objects = data.instances[i]
        masks = torch.from_numpy(objects.masks.astype(np.uint8))
        boxes = torch.from_numpy(objects.boxes.astype(np.float32))
        if flip:
            width = image.shape[-1]
            image, masks = image.flip(-1), masks.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0],
                                 boxes[:, 3]], 1)
        images.append(image)
        targets.append({"boxes": boxes, "labels": torch.from_numpy(
            objects.class_ids.astype(np.int64)), "masks": masks})
    return images, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training CPU-time budget")
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--rois-per-image", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stop-at", help="also stop training at this wall-clock time, HH:MM")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    deadline = None
    if args.stop_at:
        hour, minute = map(int, args.stop_at.split(":"))
        now = datetime.datetime.now()
        deadline = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        deadline += datetime.timedelta(days=1) if deadline < now else datetime.timedelta(0)
    rng = np.random.default_rng(args.seed)
    train = shapes.generate(args.train_images, 128, seed=args.seed)
    held_out = shapes.generate(args.val_images, 128, seed=args.seed + 1000)
    model = build(train.num_classes, 128, 256, 64, args.rois_per_image)
    optimizer = torch.optim.Adam(model.parameters(), args.learning_rate)
    budget, steps = args.minutes * 60, 0
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    model.train()
    wall_budget = (deadline - datetime.datetime.now()).total_seconds() if deadline else None
    while time.process_time() - started_cpu < budget:
        order = rng.permutation(len(train))
        for start in range(0, len(order), args.batch_size):
            spent = time.process_time() - started_cpu
            if spent >= budget or (deadline and datetime.datetime.now() >= deadline):
                budget = min(budget, spent)
                break
            progress = spent / budget
            if deadline:  # the cosine runs over whichever of CPU budget and wall time ends first
                progress = max(progress, (time.perf_counter() - started_wall) / wall_budget)
            factor = 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
            for group in optimizer.param_groups:
                group["lr"] = args.learning_rate * factor
            batch = order[start:start + args.batch_size]
            images, targets = targets_of(train, batch, rng.uniform(size=len(batch)) < 0.5)
            losses = model(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            steps += 1
            if steps % 50 == 0:
                print(f"step {steps} cpu {spent:.0f}s " + " ".join(
                    f"{k}={v.item():.3f}" for k, v in losses.items()), flush=True)
    cpu_seconds = time.process_time() - started_cpu
    wall_seconds = time.perf_counter() - started_wall

    model.eval()
    detections = []
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(held_out), 8):
            images = [torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
                      for image in held_out.images[start:start + 8]]
            for output in model(images):
                detections.append({
                    "boxes": output["boxes"].numpy(), "class_ids": output["labels"].numpy(),
                    "scores": output["scores"].numpy(),
                    "masks": output["masks"][:, 0].numpy() >= 0.5})
    inference_cpu = time.process_time() - started_cpu
    inference_wall = time.perf_counter() - started_wall
    scores = _load_evaluation().detection_ap(held_out, detections)
    print(f"torch={torch.__version__} torchvision={torchvision.__version__} threads="
          f"{torch.get_num_threads()} params={sum(p.numel() for p in model.parameters()):,}")
    record = report(steps, args.batch_size, len(train), cpu_seconds, wall_seconds, scores,
                    len(held_out), inference_cpu, inference_wall, backend="torch",
                    versions=f"torch {torch.__version__}, torchvision {torchvision.__version__}",
                    threads=torch.get_num_threads(),
                    params=sum(p.numel() for p in model.parameters()), config=vars(args))
    save("torchvision", record)

if __name__ == "__main__":
    main()
