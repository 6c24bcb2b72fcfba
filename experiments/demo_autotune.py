"""What tf.data's autotuner costs the demo's training step on a CPU with few cores.

    python experiments/demo_autotune.py --pairs 3      # on a quiet machine: it times wall clock

The demo's U-Net and recipe (MobileNetV2 from scratch, light decoder, 64x64, batch 8, cross-entropy
+ Dice, training metrics, ``steps_per_execution`` 25) on 800 built-in shapes from ``make_dataset``,
with tf.data's autotuner on (tf.data's default) and off (``make_dataset``'s default); ``--augment``
augments the batches as the labs and ``segkeras train`` do.
Each run is its own process (the state a process lands in is what varies): 50 warm-up steps, then
``--reps`` fits of ``--steps`` timed steps, each recorded as wall ms per step and the share of the
cores kept busy (CPU time / wall time). Runs alternate on and off; writes
``bench/results/demo_autotune.json`` (``demo_autotune_augment.json`` with ``--augment``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "bench", "results")
RESULT = os.path.join(RESULTS, "demo_autotune.json")
RESULT_AUGMENTED = os.path.join(RESULTS, "demo_autotune_augment.json")


def one_run(autotune: bool, reps: int, steps: int, augment: bool, warmup: int = 50) -> list[dict]:
    """Timed fits of the demo's step in this process: [{"ms_per_step", "cores_busy"}, ...]."""
    import keras
    from demo_speed import demo_model

    from segkeras import train
    from segkeras.cli.demo import DEMO_RECIPE
    from segkeras.data import shapes
    from segkeras.data.pipeline import make_dataset
    from segkeras.losses import SparseCEDice

    size, batch = DEMO_RECIPE["image_size"], DEMO_RECIPE["batch_size"]
    model = demo_model()
    data = make_dataset(shapes.generate(800, size, seed=0), image_size=size, batch_size=batch,
                        num_classes=4, seed=0, shuffle=True, augment=augment,
                        autotune=autotune).repeat()
    model.compile(keras.optimizers.Adam(DEMO_RECIPE["learning_rate"]),
                  SparseCEDice(4, dice_weight=DEMO_RECIPE["dice_weight"]),
                  metrics=train.default_metrics(4),
                  steps_per_execution=DEMO_RECIPE["steps_per_execution"])
    model.fit(data, steps_per_epoch=warmup, epochs=1, verbose=0)
    fits = []
    for _ in range(reps):
        wall, cpu = time.perf_counter(), time.process_time()
        model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        fits.append({"ms_per_step": 1000 * wall / steps, "cores_busy": cpu / wall})
    return fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="processes per setting")
    parser.add_argument("--reps", type=int, default=6, help="timed fits per process")
    parser.add_argument("--steps", type=int, default=100, help="steps per timed fit")
    parser.add_argument("--augment", action="store_true",
                        help="augment the batches, as the labs and `segkeras train` do")
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.child == "on", args.reps, args.steps, args.augment)))
        return
    runs = []
    for _ in range(args.pairs):
        for setting in ("on", "off"):
            output = subprocess.run(
                [sys.executable, __file__, "--child", setting, "--reps", str(args.reps),
                 "--steps", str(args.steps), *(["--augment"] if args.augment else [])],
                check=True, capture_output=True, text=True).stdout
            fits = json.loads(output.strip().splitlines()[-1])
            runs.append({"autotune": setting, "load_average": os.getloadavg()[0], "fits": fits})
            print(setting, " ".join(f"{f['ms_per_step']:.0f} ms/{100 * f['cores_busy']:.0f} %"
                                    for f in fits), flush=True)
    record = {"measured": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
              "steps_per_fit": args.steps, "augment": args.augment, "runs": runs}
    with open(RESULT_AUGMENTED if args.augment else RESULT, "w") as file:
        json.dump(record, file, indent=1)
    for setting in ("on", "off"):
        fits = [f for run in runs if run["autotune"] == setting for f in run["fits"]]
        slow = [f for f in fits if f["cores_busy"] < 1.2]
        print(f"autotune {setting}: {len(slow)} of {len(fits)} fits below 120 % CPU; "
              f"ms per step {min(f['ms_per_step'] for f in fits):.0f}-"
              f"{max(f['ms_per_step'] for f in fits):.0f}")


if __name__ == "__main__":
    main()
