"""torchvision's Mask R-CNN on the same data and CPU budget as bench/s8_mask_rcnn_train.py.

    PYTHONPATH=. /work/venvs/mrcnn/bin/python bench/s8_mask_rcnn_torchvision.py \
        [--minutes 10] [--learning-rate 2e-3] [--seed 0] [--threads 1] [--save FILE.pt]

(torch 2.14.1 + torchvision 0.29.1 in a separate venv, never a segkeras dependency, with keras,
scikit-image and pycocotools for segkeras' data and evaluation).

Configured like segkeras' bench model, piece by piece: ``torchvision.models.detection.MaskRCNN``
over a randomly initialised MobileNetV2 tapped where segkeras taps it, segkeras' single-level FPN
(128 channels, stride 8; :class:`MobileNetV2FPN`), anchors 16, 32, 64 x ratios 0.5, 1, 2, RPN 600
-> NMS 0.7 -> 200 (train) / 100 (test) proposals, 256 sampled anchors, RoIAlign 7x7 (aligned, as
segkeras') -> two FC of 256 -> class + box, 32 RoIs per image at 25 % foreground, RoIAlign 14x14
-> four 3x3 convs of 64 -> deconv -> 28x28 masks; images 128x128 (no resizing: ``min_size =
max_size = 128``), input scaled to [-1, 1] like Keras' MobileNetV2 preprocessing; Adam with the
same cosine schedule over the CPU budget, the global gradient norm clipped at 10
(``clip_grad_norm_``; segkeras: Keras' ``global_clipnorm``), batch 8, random left-right flips.
Evaluation: COCO box and mask AP (segkeras' ``detection_ap``) on the same 300 held-out images;
training and inference images per CPU second (:func:`s8_mask_rcnn_record.INFERENCE_SETTINGS`).
``--threads`` sets ``torch.set_num_threads`` (the side-by-side runs use 1 for both systems);
``--stop-at HH:MM`` also ends training at that wall-clock time. The record (with the losses every
50 steps) goes to ``bench/results/mask_rcnn.json`` under ``--key``; ``--save`` writes the
trained weights (``state_dict``).
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import time
from collections import OrderedDict

import numpy as np
import torch
import torchvision
from s8_mask_rcnn_record import (
    HELD_OUT_SEED,
    common_arguments,
    cosine_factor,
    inference_inputs,
    report,
    save,
    save_inference,
    speed_record,
)
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

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
    """Random MobileNetV2 -> the single-level FPN of segkeras' small Mask R-CNN.

    The taps are segkeras' (``segkeras.backbones``: Keras' ``block_6_expand_relu``,
    ``block_13_expand_relu`` and ``out_relu``): the expanded activations that enter the stride-2
    blocks 6 and 13 (192 channels at stride 8, 576 at stride 16; torchvision's ``features[7]``
    and ``features[14]``, whose first layer is that expansion) and the last 1280-channel map at
    stride 32. The neck is segkeras' ``feature_pyramid``: 1x1 laterals, nearest x2 top-down
    additions, one 3x3 convolution on the stride-8 map, the only map returned."""

    def __init__(self, channels: int):
        super().__init__()
        features = torchvision.models.mobilenet_v2(weights=None).features
        self.to_stride8 = features[:7]
        self.expand6, self.rest6 = features[7].conv[0], features[7].conv[1:]
        self.to_stride16 = features[8:14]
        self.expand13, self.rest13 = features[14].conv[0], features[14].conv[1:]
        self.to_stride32 = features[15:]
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in (192, 576, 1280))
        self.smooth = nn.Conv2d(channels, channels, 3, padding=1)
        self.out_channels = channels

    def forward(self, x):
        c3 = self.expand6(self.to_stride8(x))
        c4 = self.expand13(self.to_stride16(self.rest6(c3)))
        c5 = self.to_stride32(self.rest13(c4))
        merged = self.laterals[2](c5)
        for lateral, level in ((self.laterals[1], c4), (self.laterals[0], c3)):
            merged = lateral(level) + nn.functional.interpolate(merged, size=level.shape[-2:])
        return OrderedDict([("0", self.smooth(merged))])


class AlignedRoIAlign(MultiScaleRoIAlign):
    """RoIAlign of the stride-8 map with the half-pixel offset (``aligned=True``, as segkeras'
    ``RoIAlign`` and Detectron2); torchvision's ``MultiScaleRoIAlign`` has ``aligned=False``."""

    def __init__(self, output_size: int, sampling_ratio: int, stride: int = 8):
        super().__init__(["0"], output_size, sampling_ratio)
        self.stride = stride

    def forward(self, features, boxes, image_shapes):
        return torchvision.ops.roi_align(features["0"], boxes, self.output_size, 1 / self.stride,
                                         self.sampling_ratio, aligned=True)


def build(num_classes: int, fpn_channels: int, box_units: int, mask_channels: int,
          rois_per_image: int) -> MaskRCNN:
    backbone = MobileNetV2FPN(fpn_channels)
    return MaskRCNN(
        backbone, min_size=128, max_size=128,
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
        rpn_anchor_generator=AnchorGenerator(((16, 32, 64),), ((0.5, 1.0, 2.0),)),
        rpn_pre_nms_top_n_train=600, rpn_pre_nms_top_n_test=600,
        rpn_post_nms_top_n_train=200, rpn_post_nms_top_n_test=100,
        box_roi_pool=AlignedRoIAlign(7, 2),
        box_head=TwoMLPHead(fpn_channels * 49, box_units),
        box_predictor=FastRCNNPredictor(box_units, num_classes),
        box_batch_size_per_image=rois_per_image, box_detections_per_img=100,
        mask_roi_pool=AlignedRoIAlign(14, 2),
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


def train(model, data, args, rng) -> tuple[int, float, float, list]:
    """Adam with a cosine over the CPU budget; steps, CPU and wall seconds, loss history."""
    optimizer = torch.optim.Adam(model.parameters(), args.learning_rate)
    deadline = wall_budget = None
    if args.stop_at:
        hour, minute = map(int, args.stop_at.split(":"))
        now = datetime.datetime.now()
        deadline = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        deadline += datetime.timedelta(days=1) if deadline < now else datetime.timedelta(0)
        wall_budget = (deadline - now).total_seconds()
    budget, steps, history, window = args.minutes * 60, 0, [], {}
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    model.train()
    while time.process_time() - started_cpu < budget:
        order = rng.permutation(len(data))
        for start in range(0, len(order), args.batch_size):
            spent = time.process_time() - started_cpu
            if spent >= budget or (deadline and datetime.datetime.now() >= deadline):
                budget = min(budget, spent)
                break
            progress = spent / budget
            if deadline:  # the cosine runs over whichever of CPU budget and wall time ends first
                progress = max(progress, (time.perf_counter() - started_wall) / wall_budget)
            factor = cosine_factor(progress)
            for group in optimizer.param_groups:
                group["lr"] = args.learning_rate * factor
            batch = order[start:start + args.batch_size]
            images, targets = targets_of(data, batch, rng.uniform(size=len(batch)) < 0.5)
            losses = model(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            steps += 1
            for name, value in losses.items():
                window[name] = window.get(name, 0.0) + value.item()
            if steps % 50 == 0:  # the mean losses of the last 50 steps
                values = {name: round(total / 50, 4) for name, total in window.items()}
                window = {}
                history.append({"step": steps, "cpu_s": round(spent, 1), **values})
                print(f"step {steps} cpu {spent:.0f}s " + " ".join(
                    f"{k}={v:.3f}" for k, v in values.items()), flush=True)
    return steps, time.process_time() - started_cpu, time.perf_counter() - started_wall, history


def predict(model, images, batch_size: int = 8) -> tuple[list[dict], float, float]:
    """Detections (masks thresholded at 0.5, in each image's size), CPU and wall seconds."""
    model.eval()
    detections = []
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = [torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
                     / 255.0 for image in images[start:start + batch_size]]
            for output in model(batch):
                detections.append({
                    "boxes": output["boxes"].numpy(), "class_ids": output["labels"].numpy(),
                    "scores": output["scores"].numpy(),
                    "masks": output["masks"][:, 0].numpy() >= 0.5})
    return detections, time.process_time() - started_cpu, time.perf_counter() - started_wall


def inference_speeds(model, held_out) -> dict:
    """:data:`INFERENCE_SETTINGS`: img per CPU-s, img/s wall and detections per image."""
    speeds = {}
    for name, (images, score_threshold, nms_threshold) in inference_inputs(held_out).items():
        print(f"inference, {name}:")
        model.roi_heads.score_thresh = score_threshold
        model.roi_heads.nms_thresh = nms_threshold
        height, width = images.shape[1:3]
        model.transform.min_size, model.transform.max_size = (min(height, width),), max(
            height, width)
        predict(model, images[:20])  # warm up on 20 images, as segkeras (there: tracing)
        detections, cpu, wall = predict(model, images)
        speeds[name] = speed_record(len(images), cpu, wall, detections)
    model.roi_heads.score_thresh, model.roi_heads.nms_thresh = 0.05, 0.5
    model.transform.min_size, model.transform.max_size = (128,), 128
    return speeds


def main() -> None:
    args = common_arguments(__doc__.splitlines()[0], "torchvision").parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    held_out = shapes.generate(args.val_images, 128, seed=HELD_OUT_SEED)
    model = build(held_out.num_classes, 128, 256, 64, args.rois_per_image)
    if args.inference_only:
        model.load_state_dict(torch.load(args.inference_only))
        save_inference(args.key, inference_speeds(model, held_out))
        return
    train_data = shapes.generate(args.train_images, 128, seed=args.seed)
    steps, cpu_seconds, wall_seconds, history = train(model, train_data, args, rng)
    if args.save:
        torch.save(model.state_dict(), args.save)

    detections, inference_cpu, inference_wall = predict(model, held_out.images)
    scores = _load_evaluation().detection_ap(held_out, detections)
    print(f"torch={torch.__version__} torchvision={torchvision.__version__} threads="
          f"{torch.get_num_threads()} params={sum(p.numel() for p in model.parameters()):,}")
    record = report(steps, args.batch_size, len(train_data), cpu_seconds, wall_seconds, scores,
                    len(held_out), inference_cpu, inference_wall, backend="torch",
                    versions=f"torch {torch.__version__}, torchvision {torchvision.__version__}",
                    threads=torch.get_num_threads(),
                    params=sum(p.numel() for p in model.parameters()), config=vars(args),
                    losses=history)
    record["inference"] = inference_speeds(model, held_out)
    save(args.key, record)


if __name__ == "__main__":
    main()
