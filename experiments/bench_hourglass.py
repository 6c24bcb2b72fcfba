"""Parameters and throughput of the stacked hourglass for 1, 2 and 4 stacks.

    python experiments/bench_hourglass.py [--stacks 1 2 4] [--size 128] [--batch 8] [--steps 5]

Prints one row per stack count: parameters, inference img/s (compiled predict step, all stacks'
outputs) and training img/s (compiled train step, a loss and mean IoU on every stack), each after
one warm-up batch, per wall-clock second and per CPU second of this process (the latter is
steadier on a shared machine). Runs on whatever ``KERAS_BACKEND`` selects.
"""

from __future__ import annotations

import argparse
import os
import time

import keras
import numpy as np

from segkeras import train
from segkeras.models.hourglass import hourglass

NUM_CLASSES = 4


def images_per_second(step, batch: int, steps: int) -> tuple[float, float]:
    """Images per wall-clock second and per CPU second of this process (all its threads)."""
    step()  # warm-up: tracing / compilation
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    images = batch * steps
    return images / (time.perf_counter() - wall), images / (time.process_time() - cpu)


def measure(num_stacks: int, size: int, batch: int, steps: int, depth: int, filters: int) -> dict:
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    masks = rng.integers(0, NUM_CLASSES, (batch, size, size)).astype("int32")
    model = hourglass(NUM_CLASSES, num_stacks=num_stacks, depth=depth, filters=filters,
                      input_shape=(size, size, 3))
    train.compile_model(model, loss=train.default_loss(),
                        metrics=[train.default_metrics(NUM_CLASSES) for _ in range(num_stacks)])
    targets = train.targets_for_outputs(model, masks)
    row = {
        "params": model.count_params(),
        "infer": images_per_second(lambda: model.predict_on_batch(images), batch, steps),
        "train": images_per_second(lambda: model.train_on_batch(images, targets), batch, steps),
    }
    keras.backend.clear_session()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--filters", type=int, default=128)
    args = parser.parse_args()
    print(f"backend={keras.backend.backend()} size={args.size} batch={args.batch} "
          f"depth={args.depth} filters={args.filters} cpus={os.cpu_count()}")
    print(f"{'stacks':>6} {'params':>10} {'infer img/s':>12} {'img/cpu-s':>10} "
          f"{'train img/s':>12} {'img/cpu-s':>10}")
    for num_stacks in args.stacks:
        row = measure(num_stacks, args.size, args.batch, args.steps, args.depth, args.filters)
        (infer, infer_cpu), (train, train_cpu) = row["infer"], row["train"]
        print(f"{num_stacks:>6} {row['params']:>10,} {infer:>12.1f} {infer_cpu:>10.1f} "
              f"{train:>12.1f} {train_cpu:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
