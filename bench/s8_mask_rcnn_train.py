"""Train segkeras' Mask R-CNN on built-in shapes within a CPU-time budget; report box and mask AP.

    python bench/s8_mask_rcnn_train.py [--minutes 10] [--learning-rate 2e-3] [--seed 0]
        [--threads 1] [--save model.keras] [--key NAME]

MobileNetV2 encoder from random initialisation (weights=None: no ImageNet weights offline), FPN
neck read at stride 8, RPN, box head and mask head trained end to end with ``model.fit`` on
``shapes.generate`` images at 128x128 (Adam, a cosine over the CPU budget, the global gradient
norm clipped at 10 as torchvision's script does); evaluated on 300 held-out images (the same for
every seed) from **predicted** boxes (``predict_instances`` + ``detection_ap``: COCO box and mask
AP), and, for comparison, the same mask head on the ground-truth boxes. The budget is CPU time of
this process (``time.process_time``, all threads), so other work on the machine does not count;
wall time is printed too. ``--threads 1`` (the default) runs TensorFlow on one thread: its CPU
time is then work done, not time spent waiting for a second thread, even on a shared machine (the
side-by-side runs use it for both systems). Inference: images per CPU second of
``predict_instances`` in the settings of ``s8_mask_rcnn_record.INFERENCE_SETTINGS``. ``--stop-at
HH:MM`` also ends training at that wall-clock time; the CPU time actually trained is reported.
The record (with the losses every 50 steps) goes to ``bench/results/mask_rcnn.json`` under
``--key``.
"""

from __future__ import annotations

import datetime
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from s8_mask_rcnn_record import (  # noqa: E402
    HELD_OUT_SEED,
    common_arguments,
    cosine_factor,
    inference_inputs,
    report,
    save,
    save_inference,
    speed_record,
)

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
        factor = cosine_factor(progress)
        self.model.optimizer.learning_rate.assign(self.learning_rate * factor)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.spent() > self.seconds:
            self.model.stop_training = True


class Budget(CPUBudget):
    """:class:`CPUBudget` that also stops at a wall-clock time (the cosine then runs over
    whichever of the two ends first) and logs the mean losses of every 50 steps."""

    def __init__(self, seconds: float, learning_rate: float, stop_at: str | None):
        super().__init__(seconds, learning_rate)
        self.deadline, self.history, self.window, self.epoch_sums = None, [], {}, {}
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

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_sums = {}

    def on_train_batch_begin(self, batch, logs=None):
        progress = self.spent() / self.seconds
        if self.deadline:
            progress = max(progress, (time.perf_counter() - self.started_wall) / self.wall_seconds)
        factor = cosine_factor(progress)
        self.model.optimizer.learning_rate.assign(self.learning_rate * factor)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.deadline and datetime.datetime.now() >= self.deadline:
            self.model.stop_training = True
        # Keras' logs are means since the epoch began: the sums give this step's losses.
        sums = {name: float(value) * (batch + 1) for name, value in (logs or {}).items()}
        for name, total in sums.items():
            self.window[name] = self.window.get(name, 0.0) + total - self.epoch_sums.get(name, 0)
        self.epoch_sums = sums
        if self.steps % 50 == 0:  # the mean of the last 50 steps, as torchvision's script logs
            values = {name: round(total / 50, 4) for name, total in self.window.items()}
            self.window = {}
            self.history.append({"step": self.steps, "cpu_s": round(self.spent(), 1), **values})
            print(f"step {self.steps} cpu {self.spent():.0f}s " + " ".join(
                f"{k}={v:.3f}" for k, v in values.items()), flush=True)


def predict(model, images) -> tuple[list[dict], float, float]:
    """``predict_instances`` after a warm-up on 20 images (batches of 8, 8 and 4: Keras traces
    the detector and the mask branch for their first shapes, then once more for any batch size
    and count of detections); detections, CPU and wall seconds."""
    predict_instances(model, images[:20])
    started_cpu, started_wall = time.process_time(), time.perf_counter()
    detections = predict_instances(model, images, batch_size=8)
    return detections, time.process_time() - started_cpu, time.perf_counter() - started_wall


def inference_speeds(model, args, held_out) -> dict:
    """``INFERENCE_SETTINGS``: img per CPU-s, img/s wall and detections per image, each setting
    on a twin of ``model`` built for its image size and score threshold (the same weights)."""
    speeds = {}
    for name, (images, score_threshold, nms_threshold) in inference_inputs(held_out).items():
        print(f"inference, {name}:")
        twin = build(held_out.num_classes, args, (*images.shape[1:3], 3), score_threshold,
                     nms_threshold)
        twin.set_weights(model.get_weights())
        detections, cpu, wall = predict(twin, images)
        speeds[name] = speed_record(len(images), cpu, wall, detections)
    return speeds


def build(num_classes: int, args, input_shape, score_threshold: float = 0.05,
          nms_threshold: float = 0.5):
    """The bench's Mask R-CNN (torchvision's script builds the same)."""
    return mask_rcnn(
        num_classes, args.backbone, weights=None, input_shape=input_shape,
        anchor_sizes=tuple(args.anchor_sizes), fpn_channels=args.fpn_channels,
        box_head_units=args.box_head_units, mask_head_channels=args.mask_head_channels,
        rpn_pre_nms=600, rpn_pre_nms_test=600, rpn_post_nms_train=200, rpn_post_nms_test=100,
        rois_per_image=args.rois_per_image, max_detections=100,
        score_threshold=score_threshold, nms_threshold=nms_threshold, seed=args.seed)


def rounded(scores: dict) -> dict:
    return {name: round(float(value), 4) for name, value in scores.items()}


def main() -> None:
    parser = common_arguments(__doc__.splitlines()[0], "segkeras")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--fpn-channels", type=int, default=128)
    parser.add_argument("--box-head-units", type=int, default=256)
    parser.add_argument("--mask-head-channels", type=int, default=64)
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--anchor-sizes", type=float, nargs="+", default=[16, 32, 64])
    args = parser.parse_args()
    if args.threads and keras.backend.backend() == "tensorflow":  # before TensorFlow runs an op
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(args.seed)

    size = args.image_size
    if args.inference_only:
        held_out = shapes.generate(args.val_images, size, seed=HELD_OUT_SEED)
        model = keras.saving.load_model(args.inference_only)
        save_inference(args.key, inference_speeds(model, args, held_out))
        return
    train = shapes.generate(args.train_images, size, seed=args.seed)
    held_out = shapes.generate(args.val_images, size, seed=HELD_OUT_SEED)
    dataset = mask_rcnn_dataset(train, size, args.batch_size, max_instances=6, seed=args.seed)
    model = build(train.num_classes, args, (size, size, 3))
    budget = Budget(args.minutes * 60, args.learning_rate, args.stop_at)
    model.compile(keras.optimizers.Adam(args.learning_rate, global_clipnorm=10.0),
                  jit_compile=False)
    model.fit(dataset, epochs=1000, callbacks=[budget], verbose=0,
              shuffle=False)  # the budget stops it; the dataset shuffles itself
    cpu_seconds, wall_seconds = budget.spent(), time.perf_counter() - budget.started_wall
    if args.save:
        model.save(args.save)

    detections, inference_cpu, inference_wall = predict(model, held_out.images)
    scores = detection_ap(held_out, detections)
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
                    gt_box_mask=rounded(gt_box_scores), losses=budget.history)
    print(f"held-out mask AP={gt_box_scores['AP']:.3f} AP50={gt_box_scores['AP50']:.3f} "
          f"AP75={gt_box_scores['AP75']:.3f} (ground-truth boxes, same mask head)")
    record["inference"] = inference_speeds(model, args, held_out)
    save(args.key, record)


if __name__ == "__main__":
    main()
