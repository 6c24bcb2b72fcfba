"""Train segkeras' Mask R-CNN on built-in shapes within a CPU-time budget; report box and mask AP.

    python bench/train_mask_rcnn.py [--minutes 20] [--save model.keras]

MobileNetV2 encoder from random initialisation (weights=None: no ImageNet weights offline), FPN
neck read at stride 8, RPN, box head and mask head trained end to end with ``model.fit`` on
``shapes.generate`` images at 128x128; evaluated on held-out images (another seed) from
**predicted** boxes (``predict_instances`` + ``detection_ap``: COCO box and mask AP), and, for
comparison, the same mask head on the ground-truth boxes. The budget is CPU time of this process
(``time.process_time``, all threads), so other work on the machine does not count; wall time is
printed too. Inference speed: CPU seconds per image of ``predict_instances`` at 128x128 with up to
100 detections per image.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from mask_rcnn_report import print_report  # noqa: E402
from train_mask_head import CPUBudget  # noqa: E402

from segkeras.data import shapes  # noqa: E402
from segkeras.evaluate.instances import detection_ap, mask_ap  # noqa: E402
from segkeras.models.mask_rcnn import (  # noqa: E402
    mask_rcnn,
    mask_rcnn_dataset,
    predict_instances,
    predict_masks_in_boxes,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training CPU-time budget")
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--fpn-channels", type=int, default=128)
    parser.add_argument("--box-head-units", type=int, default=256)
    parser.add_argument("--mask-head-channels", type=int, default=64)
    parser.add_argument("--rois-per-image", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write the trained model to this .keras file")
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)

    size = args.image_size
    train = shapes.generate(args.train_images, size, seed=args.seed)
    held_out = shapes.generate(args.val_images, size, seed=args.seed + 1000)
    dataset = mask_rcnn_dataset(train, size, args.batch_size, max_instances=6, seed=args.seed)
    model = mask_rcnn(
        train.num_classes, "mobilenetv2", weights=None, input_shape=(size, size, 3),
        anchor_sizes=(16, 32, 64), fpn_channels=args.fpn_channels,
        box_head_units=args.box_head_units, mask_head_channels=args.mask_head_channels,
        rpn_pre_nms=600, rpn_post_nms_train=200, rpn_post_nms_test=100,
        rois_per_image=args.rois_per_image, max_detections=100, seed=args.seed)
    budget = CPUBudget(args.minutes * 60, args.learning_rate)
    model.compile(keras.optimizers.Adam(args.learning_rate, clipnorm=10.0), jit_compile=False)
    model.fit(dataset, epochs=1000, callbacks=[budget], verbose=2)  # the budget stops it
    cpu_seconds, wall_seconds = budget.spent(), time.perf_counter() - budget.started_wall
    if args.save:
        model.save(args.save)

    predict_instances(model, held_out.images[:8])  # warm up (tracing) before timing
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    detections = predict_instances(model, held_out.images, batch_size=8)
    inference_cpu = time.process_time() - started_cpu
    inference_wall = time.perf_counter() - started_wall
    scores = detection_ap(held_out, detections)
    gt_masks = predict_masks_in_boxes(
        model, held_out.images, [objects.boxes for objects in held_out.instances],
        [objects.class_ids for objects in held_out.instances])
    gt_box_scores = mask_ap(held_out, gt_masks)

    print(f"backend={keras.backend.backend()} {model.name} params={model.count_params():,} "
          f"fpn={args.fpn_channels} box_units={args.box_head_units} "
          f"mask_channels={args.mask_head_channels} rois/img={args.rois_per_image}")
    print_report(budget.steps, args.batch_size, len(train), cpu_seconds, wall_seconds, scores,
                 len(held_out), inference_cpu, inference_wall)
    print(f"held-out mask AP={gt_box_scores['AP']:.3f} AP50={gt_box_scores['AP50']:.3f} "
          f"AP75={gt_box_scores['AP75']:.3f} (ground-truth boxes, same mask head)")


if __name__ == "__main__":
    main()
