"""Train segkeras' Mask R-CNN on built-in shapes within a CPU-time budget; report box and mask AP.

    python bench/s8_mask_rcnn_train.py [--minutes 20] [--save model.keras] [--stop-at 02:55]

MobileNetV2 encoder from random initialisation (weights=None: no ImageNet weights offline), FPN
neck read at stride 8, RPN, box head and mask head trained end to end with ``model.fit`` on
``shapes.generate`` images at 128x128; evaluated on held-out images (another seed) from
**predicted** boxes (``predict_instances`` + ``detection_ap``: COCO box and mask AP), and, for
comparison, the same mask head on the ground-truth boxes. The budget is CPU time of this process
(``time.process_time``, all threads), so other work on the machine does not count; wall time is
printed too. Inference speed: CPU seconds per image of ``predict_instances`` at 128x128 with up to
100 detections per image. The model is evaluated as ``model.fit`` leaves it (BatchNorm moving
statistics with the builder's momentum 0.9), then again after
:meth:`~segkeras.models.mask_rcnn.MaskRCNN.recalibrate_batchnorm` on 25 training batches.
``--stop-at HH:MM`` also ends training at that wall-clock time (a loaded machine); the CPU time
actually trained is reported. ``--threads 1`` runs TensorFlow on one thread: its CPU time is then
work done, not time spent waiting for a second thread, even on a shared machine (the side-by-side
runs use it for both systems). Results go to ``bench/results/mask_rcnn.json`` (key ``segkeras``).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from s8_mask_rcnn_record import report, save  # noqa: E402

from segkeras.data import shapes  # noqa: E402
from segkeras.evaluate.instances import detection_ap, mask_ap  # noqa: E402
from segkeras.models.mask_rcnn import (  # noqa: E402
    mask_rcnn,
    mask_rcnn_dataset,
    predict_instances,
    predict_masks_in_boxes,
)


class CPUBudget(keras.callbacks.Callback):
    """Train for ``seconds`` of CPU time (all threads of this process, so other work on the
    machine does not count): the learning rate follows a cosine from ``learning_rate`` to 5 % of
    it over the spent fraction of the budget, and training stops when the budget is spent."""

    def __init__(self, seconds: float, learning_rate: float):
        super().__init__()
        self.seconds = seconds
        self.learning_rate = learning_rate
        self.started_cpu = self.started_wall = None
        self.steps = 0

    def spent(self) -> float:
        return time.process_time() - self.started_cpu

    def on_train_begin(self, logs=None):
        self.started_cpu, self.started_wall = time.process_time(), time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        progress = min(self.spent() / self.seconds, 1.0)
        factor = 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))
        self.model.optimizer.learning_rate.assign(self.learning_rate * factor)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.spent() > self.seconds:
            self.model.stop_training = True


class Budget(CPUBudget):
    """:class:`CPUBudget` that also stops at a wall-clock time (the cosine then runs over
    whichever of the two ends first) and logs the losses."""

    def __init__(self, seconds: float, learning_rate: float, stop_at: str | None):
        super().__init__(seconds, learning_rate)
        self.deadline = None
        if stop_at:
            hour, minute = map(int, stop_at.split(":"))
            now = datetime.datetime.now()
            self.deadline = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
            if self.deadline < now:
                self.deadline += datetime.timedelta(days=1)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.deadline:
            wall = (self.deadline - datetime.datetime.now()).total_seconds()
            self.wall_seconds = wall

    def on_train_batch_begin(self, batch, logs=None):
        progress = self.spent() / self.seconds
        if self.deadline:
            progress = max(progress, (time.perf_counter() - self.started_wall) / self.wall_seconds)
        factor = 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        self.model.optimizer.learning_rate.assign(self.learning_rate * factor)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.deadline and datetime.datetime.now() >= self.deadline:
            self.model.stop_training = True
        if self.steps % 50 == 0:
            print(f"step {self.steps} cpu {self.spent():.0f}s " + " ".join(
                f"{k}={v:.3f}" for k, v in (logs or {}).items()), flush=True)


def evaluate(model, held_out) -> tuple[dict, float, float]:
    """COCO box and mask AP from predicted boxes; inference CPU and wall seconds."""
    predict_instances(model, held_out.images[:8])  # warm up (tracing) before timing
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    detections = predict_instances(model, held_out.images, batch_size=8)
    inference_cpu = time.process_time() - started_cpu
    inference_wall = time.perf_counter() - started_wall
    return detection_ap(held_out, detections), inference_cpu, inference_wall


def rounded(scores: dict) -> dict:
    return {name: round(float(value), 4) for name, value in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training CPU-time budget")
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--fpn-channels", type=int, default=128)
    parser.add_argument("--box-head-units", type=int, default=256)
    parser.add_argument("--mask-head-channels", type=int, default=64)
    parser.add_argument("--rois-per-image", type=int, default=32)
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--anchor-sizes", type=float, nargs="+", default=[16, 32, 64])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra- and inter-op threads (0: one per core)")
    parser.add_argument("--stop-at", help="also stop training at this wall-clock time, HH:MM")
    parser.add_argument("--key", default="segkeras", help="key in bench/results/mask_rcnn.json")
    parser.add_argument("--save", help="write the trained model to this .keras file")
    args = parser.parse_args()
    if args.threads and keras.backend.backend() == "tensorflow":  # before TensorFlow runs an op
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(args.seed)

    size = args.image_size
    train = shapes.generate(args.train_images, size, seed=args.seed)
    held_out = shapes.generate(args.val_images, size, seed=args.seed + 1000)
    dataset = mask_rcnn_dataset(train, size, args.batch_size, max_instances=6, seed=args.seed)
    model = mask_rcnn(
        train.num_classes, args.backbone, weights=None, input_shape=(size, size, 3),
        anchor_sizes=tuple(args.anchor_sizes), fpn_channels=args.fpn_channels,
        box_head_units=args.box_head_units, mask_head_channels=args.mask_head_channels,
        rpn_pre_nms=600, rpn_post_nms_train=200, rpn_post_nms_test=100,
        rois_per_image=args.rois_per_image, max_detections=100, seed=args.seed)
    budget = Budget(args.minutes * 60, args.learning_rate, args.stop_at)
    model.compile(keras.optimizers.Adam(args.learning_rate, clipnorm=10.0), jit_compile=False)
    model.fit(dataset, epochs=1000, callbacks=[budget], verbose=0,
              shuffle=False)  # the budget stops it; the dataset shuffles itself
    cpu_seconds, wall_seconds = budget.spent(), time.perf_counter() - budget.started_wall
    if args.save:
        model.save(args.save)

    scores, inference_cpu, inference_wall = evaluate(model, held_out)
    gt_masks = predict_masks_in_boxes(
        model, held_out.images, [objects.boxes for objects in held_out.instances],
        [objects.class_ids for objects in held_out.instances])
    gt_box_scores = mask_ap(held_out, gt_masks)
    print(f"backend={keras.backend.backend()} {model.name} params={model.count_params():,} "
          f"fpn={args.fpn_channels} box_units={args.box_head_units} "
          f"mask_channels={args.mask_head_channels} rois/img={args.rois_per_image}")
    record = report(budget.steps, args.batch_size, len(train), cpu_seconds, wall_seconds,
                    scores, len(held_out), inference_cpu, inference_wall,
                    backend=keras.backend.backend(), model=model.name,
                    params=model.count_params(), config=vars(args),
                    gt_box_mask=rounded(gt_box_scores))
    print(f"held-out mask AP={gt_box_scores['AP']:.3f} AP50={gt_box_scores['AP50']:.3f} "
          f"AP75={gt_box_scores['AP75']:.3f} (ground-truth boxes, same mask head)")
    save(args.key, record)
    batches = model.recalibrate_batchnorm(dataset.take(25))
    scores, _, _ = evaluate(model, held_out)
    print(f"after recalibrate_batchnorm on {batches} batches:")
    for kind in ("box", "mask"):
        print(f"held-out {kind} AP={scores[kind]['AP']:.3f} AP50={scores[kind]['AP50']:.3f} "
              f"AP75={scores[kind]['AP75']:.3f}")
    record["recalibrated"] = {kind: rounded(scores[kind]) for kind in ("box", "mask")}
    save(args.key, record)


if __name__ == "__main__":
    main()
