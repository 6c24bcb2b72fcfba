"""Train the mask head on built-in shapes within a time budget and report COCO mask AP.

    python experiments/train_mask_head.py [--minutes 10] [--feature-level P3] [--head-channels 128]

Encoder MobileNetV2 from random initialisation (weights=None: no ImageNet weights offline),
trained end to end with the head on ``shapes.generate`` images; evaluated on held-out images
(another seed) with their ground-truth boxes via ``predict_masks_in_boxes`` and ``mask_ap``.
Prints the training time and AP / AP50 / AP75 (target: AP50 >= 0.90, AP >= 0.60 in <= 10 CPU
minutes). The budget is CPU time of this process (``time.process_time``, all threads), so the
result does not depend on what else runs on the machine; wall time is printed too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "bench"))
from s8_mask_rcnn_train import CPUBudget  # noqa: E402

from segkeras.data import shapes  # noqa: E402
from segkeras.data.instances import make_instance_dataset  # noqa: E402
from segkeras.evaluate.instances import mask_ap  # noqa: E402
from segkeras.models.mask_head import (  # noqa: E402
    MaskedBinaryCrossentropy,
    instance_segmenter,
    predict_masks_in_boxes,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training CPU-time budget")
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--feature-level", default="P3", choices=["P3", "P4"])
    parser.add_argument("--head-channels", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-instances", type=int, default=6)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--jitter", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="write the trained model to this .keras file")
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)

    train = shapes.generate(args.train_images, args.image_size, seed=args.seed)
    held_out = shapes.generate(args.val_images, args.image_size, seed=args.seed + 1000)
    dataset = make_instance_dataset(
        train, args.image_size, args.batch_size, args.max_instances, jitter=args.jitter,
        augment=True, seed=args.seed,
    )
    model = instance_segmenter(
        train.num_classes, "mobilenetv2", weights=None, feature_level=args.feature_level,
        encoder_trainable=True, input_shape=(args.image_size, args.image_size, 3),
        max_instances=args.max_instances, head_channels=args.head_channels,
    )
    budget = CPUBudget(args.minutes * 60, args.learning_rate)
    steps_per_epoch = -(-len(train) // args.batch_size)
    model.compile(keras.optimizers.Adam(args.learning_rate), loss=MaskedBinaryCrossentropy())
    model.fit(dataset, epochs=1000, callbacks=[budget], verbose=2,
              shuffle=False)  # the budget stops it; the dataset shuffles itself
    cpu_seconds, wall_seconds = budget.spent(), time.perf_counter() - budget.started_wall

    if args.save:
        model.save(args.save)
    boxes = [objects.boxes for objects in held_out.instances]
    class_ids = [objects.class_ids for objects in held_out.instances]
    masks = predict_masks_in_boxes(model, held_out.images, boxes, class_ids)
    scores = mask_ap(held_out, masks)
    print(f"backend={keras.backend.backend()} {model.name} level={args.feature_level} "
          f"head_channels={args.head_channels} params={model.count_params():,}")
    print(f"trained {budget.steps} steps ({budget.steps / steps_per_epoch:.1f} epochs of "
          f"{len(train)} images) in {cpu_seconds / 60:.1f} CPU min ({wall_seconds / 60:.1f} min "
          f"wall, {os.cpu_count()} cores)")
    print(f"held-out mask AP={scores['AP']:.3f} AP50={scores['AP50']:.3f} "
          f"AP75={scores['AP75']:.3f} ({len(held_out)} images, ground-truth boxes)")


if __name__ == "__main__":
    main()
