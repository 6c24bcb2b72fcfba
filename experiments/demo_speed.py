"""CPU time per training image of the demo's model, with and without XLA, at a few batch sizes.

    python experiments/demo_speed.py --batches 8 16 --steps 20

The demo's U-Net (MobileNetV2, light decoder, 64x64, trained from scratch) on one random batch;
``--xla`` compiles with ``jit_compile=True``. Prints CPU ms per image (user+sys of this process,
little disturbed by other processes), wall ms per step and CPU/wall (cores kept busy: only
meaningful on a quiet machine) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def demo_model():
    """The demo's U-Net (MobileNetV2 from scratch, light decoder), seeded, not compiled."""
    import keras

    from segkeras.cli.demo import DEMO_RECIPE
    from segkeras.models.unet import unet

    size = DEMO_RECIPE["image_size"]
    keras.utils.set_random_seed(0)
    return unet(4, "mobilenetv2", weights=None, encoder_trainable=True,
                decoder_filters=DEMO_RECIPE["decoder_filters"], input_shape=(size, size, 3))


def measure(batch: int, xla: bool, steps: int, warmup: int = 3) -> dict:
    """CPU ms/img, wall ms/step and cores used by ``steps`` timed training steps."""
    import keras
    import numpy as np

    from segkeras.cli.demo import DEMO_RECIPE
    from segkeras.losses import SparseCEDice

    size = DEMO_RECIPE["image_size"]
    model = demo_model()
    model.compile(keras.optimizers.Adam(1e-3), SparseCEDice(4), jit_compile=xla)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    masks = rng.integers(0, 4, (batch, size, size)).astype("int32")
    for _ in range(warmup):
        model.train_on_batch(images, masks)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        model.train_on_batch(images, masks)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    keras.backend.clear_session()
    return {"batch": batch, "xla": xla, "cpu_ms_per_img": 1000 * cpu / (steps * batch),
            "wall_ms_per_step": 1000 * wall / steps, "cores_busy": cpu / wall,
            "load_average": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="*", type=int, default=[8, 16])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--xla", choices=("off", "on", "both"), default="both")
    args = parser.parse_args()
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.xla]
    for batch in args.batches:
        for xla in modes:
            print(json.dumps(measure(batch, xla, args.steps)), flush=True)


if __name__ == "__main__":
    main()
