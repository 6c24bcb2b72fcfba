"""Section 5: RoIAlign (14x14, sampling ratio 2) forward and forward+gradient time.

Feature maps (1, 32, 32, 256) and (2, 64, 64, 256) at stride 16, random boxes of 8..256 pixels;
the call is compiled for the active Keras backend (tf.function / jax.jit; torch runs eagerly), so
``KERAS_BACKEND=jax python bench/run.py --sections roi_align`` times JAX's.
"""

from __future__ import annotations

import time

from common import run_worker, smoke, table

TITLE = "5. RoIAlign (14x14, sampling ratio 2, compiled)"
CODE = ("segkeras/layers.py",)
STRIDE = 16


def compiled(layer, backward: bool):
    """The layer call (or the gradient of its sum) compiled for the active backend."""
    import keras

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


def random_boxes(count: int, image_size: int, batch: int, rng):
    """``count`` boxes of 8..256 pixels centred anywhere in the image, and their image index."""
    import numpy as np

    centres = rng.uniform(0, image_size, (count, 2))
    sizes = rng.uniform(8, 256, (count, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype("float32")
    return boxes, rng.integers(0, batch, count).astype("int32")


def best_seconds(fn, args, repeats: int) -> float:
    """Best wall-clock seconds of one call, after one compiling call."""
    import keras

    keras.ops.convert_to_numpy(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        keras.ops.convert_to_numpy(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def worker(boxes: int, batch: int, height: int, channels: int) -> dict:
    """Milliseconds per RoIAlign call (14x14, sampling 2) on a random feature map."""
    import keras
    import numpy as np

    from segkeras.layers import RoIAlign

    rng = np.random.default_rng(0)
    features = rng.normal(size=(batch, height, height, channels)).astype("float32")
    box_array, indices = random_boxes(boxes, height * STRIDE, batch, rng)
    layer = RoIAlign(14, sampling_ratio=2, spatial_scale=1 / STRIDE)
    args = [keras.ops.convert_to_tensor(a) for a in (features, box_array, indices)]
    forward = best_seconds(compiled(layer, backward=False), args, repeats=5)
    backward = best_seconds(compiled(layer, backward=True), args, repeats=5)
    return {"forward_ms": forward * 1000, "backward_ms": backward * 1000}


def measure(full: bool) -> list[dict]:
    counts = (16, 64, 128, 256, 512, 1024) if full else (16, 128, 512, 1024)
    if smoke():
        counts = (16, 32)
    return [{"batch": batch, "height": height, "boxes": boxes,
             **run_worker("s5_roi_align", boxes=boxes, batch=batch, height=height,
                          channels=256)}
            for batch, height in ((1, 32), (2, 64)) for boxes in counts]


def render(rows: list[dict]) -> str:
    forward = {(r["height"], r["boxes"]): r["forward_ms"] for r in rows}
    counts = sorted({r["boxes"] for r in rows})
    low, high = counts[0], counts[-1]
    return (table(["features", "boxes", "forward ms", "forward+grad ms", "boxes/s"],
                  [[f"({r['batch']}, {r['height']}, {r['height']}, 256)", r["boxes"],
                    f"{r['forward_ms']:.2f}", f"{r['backward_ms']:.2f}",
                    f"{r['boxes'] / r['forward_ms'] * 1000:.0f}"] for r in rows])
            + f"\n\nForward time from {low} to {high} boxes ({high // low}x as many): "
              f"{forward[(32, high)] / forward[(32, low)]:.0f}x on (1, 32, 32, 256); at {high} "
              f"boxes the (2, 64, 64, 256) map takes "
              f"{forward[(64, high)] / forward[(32, high)]:.2f}x the time of (1, 32, 32, 256).")


def headline(rows: list[dict]) -> tuple[str, str]:
    counts = sorted({r["boxes"] for r in rows})
    small = {r["boxes"]: r for r in rows if r["height"] == 32}
    low, high = small[counts[0]], small[counts[-1]]
    return (f"{high['forward_ms']:.1f} ms forward for {counts[-1]} boxes on (1, 32, 32, 256)",
            f"{low['forward_ms']:.2f} ms for {counts[0]} boxes "
            f"({high['forward_ms'] / low['forward_ms']:.0f}x the time for "
            f"{counts[-1] // counts[0]}x the boxes)")
