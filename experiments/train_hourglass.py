"""Does stack 2 refine stack 1? Per-stack mIoU of hourglass models after a fixed CPU budget.

    python experiments/train_hourglass.py [--stacks 1 2 4] [--cpu-seconds 180] [--size 64]

For each stack count: a hourglass trained from scratch on the built-in shapes (a loss on every
stack, equal weights, ``segkeras.train.fit_two_stage`` end to end) until this process has used
``--cpu-seconds`` of CPU time after the first, compiling, batch (CPU time is steadier than
wall-clock on a shared machine); then the mean IoU of every stack on held-out shapes (another
seed).
"""

from __future__ import annotations

import argparse
import time

import keras

from segkeras.data import shapes
from segkeras.data.pipeline import make_dataset
from segkeras.models.hourglass import hourglass, output_names
from segkeras.train import default_metrics, fit_two_stage, targets_for_outputs


class CpuBudget(keras.callbacks.Callback):
    """Stop training once this process has used ``seconds`` of CPU time after the first batch
    (which includes tracing and compiling the train step, not counted)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.start = None
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.start is None:
            self.start = time.process_time()
        elif time.process_time() - self.start > self.seconds:
            self.model.stop_training = True


def run(num_stacks: int, train, val, num_classes: int, args) -> dict:
    keras.utils.set_random_seed(0)
    model = hourglass(num_classes, num_stacks=num_stacks, depth=args.depth, filters=args.filters,
                      input_shape=(args.size, args.size, 3))
    budget = CpuBudget(args.cpu_seconds)
    wall = time.perf_counter()
    history = fit_two_stage(model, train, head_epochs=0, finetune_epochs=args.max_epochs,
                            learning_rate=args.learning_rate,
                            metrics=[default_metrics(num_classes) for _ in range(num_stacks)],
                            callbacks=[budget], verbose=0)
    wall = time.perf_counter() - wall
    scores = model.evaluate(targets_for_outputs(model, val), return_dict=True, verbose=0)
    prefix = "{}_" if num_stacks > 1 else ""
    return {
        "params": model.count_params(),
        "epochs": len(history.epoch),
        "images": budget.batches * args.batch,
        "wall": wall,
        "miou": [scores[prefix.format(name) + "mean_iou"] for name in output_names(num_stacks)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--cpu-seconds", type=float, default=180.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--max-epochs", type=int, default=1000)
    args = parser.parse_args()

    train_data = shapes.generate(args.train_images, image_size=args.size, seed=0)
    val_data = shapes.generate(args.val_images, image_size=args.size, seed=1)
    train = make_dataset(train_data, args.size, args.batch, augment=True, shuffle=True)
    val = make_dataset(val_data, args.size, args.batch)
    num_classes = train_data.num_classes

    print(f"backend={keras.backend.backend()} shapes {args.size}x{args.size}, "
          f"{args.train_images} train / {args.val_images} held-out images, depth={args.depth} "
          f"filters={args.filters} batch={args.batch}, {args.cpu_seconds:.0f} CPU-s per model")
    print(f"{'stacks':>6} {'params':>9} {'epochs':>6} {'images':>7} {'wall s':>7}  "
          "held-out mIoU per stack (stack_1 .. stack_N)")
    for num_stacks in args.stacks:
        row = run(num_stacks, train, val, num_classes, args)
        mious = "  ".join(f"{value:.3f}" for value in row["miou"])
        print(f"{num_stacks:>6} {row['params']:>9,} {row['epochs']:>6} {row['images']:>7} "
              f"{row['wall']:>7.0f}  {mious}", flush=True)
        keras.backend.clear_session()


if __name__ == "__main__":
    main()
