"""RoIAlign throughput on the active Keras backend: ms per call and boxes/s.

    KERAS_BACKEND=tensorflow python bench/bench_roi_align.py [--backward]

Feature maps (1, 32, 32, 256) and (2, 64, 64, 256) at stride 16, 16..1024 random boxes of
8..256 pixels, 14x14 output, sampling_ratio 2. The call is compiled (tf.function / jax.jit; torch
runs eagerly). ``--backward`` times forward + gradient w.r.t. the features instead. Wall time
depends on what else runs on the machine; CPU time (all threads of this process) much less.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from segkeras.layers import RoIAlign  # noqa: E402

STRIDE = 16


def compiled(layer: RoIAlign, backward: bool):
    """The layer call (or the gradient of its sum) compiled for the active backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def grad(features, boxes, indices):
            with tf.GradientTape() as tape:
                tape.watch(features)
                total = tf.reduce_sum(layer(features, boxes, indices))
            return tape.gradient(total, features)

        return tf.function(grad if backward else layer.call)
    if backend == "jax":
        import jax

        def total(features, boxes, indices):
            return layer.call(features, boxes, indices).sum()

        return jax.jit(jax.grad(total) if backward else layer.call)
    import torch

    def torch_grad(features, boxes, indices):
        features = features.detach().requires_grad_(True)
        layer.call(features, boxes, indices).sum().backward()
        return features.grad

    return torch_grad if backward else torch.no_grad()(layer.call)


def random_boxes(count: int, image_size: int, batch: int, rng: np.random.Generator):
    centres = rng.uniform(0, image_size, (count, 2))
    sizes = rng.uniform(8, 256, (count, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype("float32")
    return boxes, rng.integers(0, batch, count).astype("int32")


def to_array(x: np.ndarray):
    return keras.ops.convert_to_tensor(x)


def time_call(fn, args, repeats: int) -> float:
    """Best wall-clock seconds of one call."""
    return measure(fn, args, repeats)[0]


def measure(fn, args, repeats: int) -> tuple[float, float]:
    """Best wall-clock and best CPU seconds (all threads) of one call."""
    keras.ops.convert_to_numpy(fn(*args))  # compile and warm up
    wall = cpu = float("inf")
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        keras.ops.convert_to_numpy(fn(*args))
        wall = min(wall, time.perf_counter() - start_wall)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    layer = RoIAlign(output_size=14, sampling_ratio=2, spatial_scale=1.0 / STRIDE)
    fn = compiled(layer, args.backward)
    mode = "forward+backward" if args.backward else "forward"
    print(f"backend={keras.backend.backend()} {mode}, best of {args.repeats}, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'features':>18} {'boxes':>6} {'ms/call':>9} {'boxes/s':>10} {'CPU ms/call':>12}")
    for shape in [(1, 32, 32, 256), (2, 64, 64, 256)]:
        features = to_array(rng.standard_normal(shape).astype("float32"))
        for count in (16, 128, 512, 1024):
            boxes, indices = random_boxes(count, shape[1] * STRIDE, shape[0], rng)
            wall, cpu = measure(fn, (features, to_array(boxes), to_array(indices)), args.repeats)
            print(f"{str(shape):>18} {count:>6} {wall * 1e3:>9.2f} {count / wall:>10.0f} "
                  f"{cpu * 1e3:>12.1f}")


if __name__ == "__main__":
    main()
