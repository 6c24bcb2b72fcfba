"""What the training-batch metrics cost the demo: wall ms per step with and without them.

    python bench/demo_metrics_cost.py          # on a quiet machine: it times wall clock

The demo's U-Net and recipe (MobileNetV2 from scratch, light decoder, 64x64, batch 8, cross-entropy
+ Dice, ``steps_per_execution`` 25) on 800 built-in shapes, 50 warm-up steps, then 250 timed steps,
compiled once with ``segkeras.train.default_metrics`` (mean IoU, pixel accuracy) and once with
none. Prints wall ms per step and the share of two cores kept busy (CPU time / wall time).

On 2026-12-01 (quiet, 2 cores) the step ran either at about 100 ms with 170 % CPU or at 164 ms
with about 105 % CPU, and which one did not follow the metrics: separate processes gave 164 ms on
and 98-111 ms off, this script 105 ms on and then 164 ms off. Which state TensorFlow lands in is
the open question (the demo's 3 min 27 s is about 128 ms per step).
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from demo_speed import demo_model  # noqa: E402

from segkeras import train  # noqa: E402
from segkeras.cli import DEMO_RECIPE  # noqa: E402
from segkeras.data import shapes  # noqa: E402
from segkeras.data.pipeline import make_dataset  # noqa: E402
from segkeras.losses import SparseCEDice  # noqa: E402


def step_time(with_metrics: bool, steps: int = 250, warmup: int = 50) -> tuple[float, float]:
    """(wall ms per step, CPU time / wall time) of ``steps`` timed demo training steps."""
    size, batch = DEMO_RECIPE["image_size"], DEMO_RECIPE["batch_size"]
    model = demo_model()
    data = make_dataset(shapes.generate(800, size, seed=0), image_size=size, batch_size=batch,
                        num_classes=4, seed=0, shuffle=True).repeat()
    model.compile(keras.optimizers.Adam(DEMO_RECIPE["learning_rate"]),
                  SparseCEDice(4, dice_weight=DEMO_RECIPE["dice_weight"]),
                  metrics=train.default_metrics(4) if with_metrics else [],
                  steps_per_execution=DEMO_RECIPE["steps_per_execution"])
    model.fit(data, steps_per_epoch=warmup, epochs=1, verbose=0)
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return 1000 * wall / steps, cpu / wall


if __name__ == "__main__":
    print(f"load average {os.getloadavg()[0]:.1f}")
    for with_metrics in (True, False):
        ms, busy = step_time(with_metrics)
        print(f"training metrics {'on ' if with_metrics else 'off'}: {ms:.1f} ms per step, "
              f"{100 * busy:.0f} % CPU")
