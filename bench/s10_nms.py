"""Section 10: exact greedy NMS (``segkeras.boxes.non_max_suppression``) at real candidate counts.

Candidates as an RPN gives them: boxes of 16..400 pixels in clusters around objects of a
1024x1024 image (25 candidates per object on average), random scores, IoU threshold 0.7, half of
them kept at most. The call is compiled for the active Keras backend (tf.function / jax.jit;
torch runs eagerly) and timed in **CPU** time (``time.process_time``, all threads), so other
work on a shared machine does not count; the median call over the repeats, per image.
"""

from __future__ import annotations

import statistics
import time

from common import run_worker, smoke, table

TITLE = "10. Non-maximum suppression (exact greedy, compiled, CPU time)"
CODE = ("segkeras/boxes.py",)
IMAGE = 1024
THRESHOLD = 0.7


def candidates(count: int, batch: int, rng):
    """(batch, count, 4) boxes in clusters and (batch, count) scores, float32."""
    import numpy as np

    objects = max(count // 25, 1)
    centres = rng.uniform(0, IMAGE, (batch, objects, 2))
    sizes = np.exp(rng.uniform(np.log(16), np.log(400), (batch, objects, 2)))
    which = rng.integers(0, objects, (batch, count))
    centre = np.take_along_axis(centres, which[..., None], axis=1)
    size = np.take_along_axis(sizes, which[..., None], axis=1)
    centre = centre + rng.normal(0, 0.15, centre.shape) * size
    size = size * np.exp(rng.normal(0, 0.2, size.shape))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=-1).clip(0, IMAGE)
    return boxes.astype("float32"), rng.uniform(size=(batch, count)).astype("float32")


def compiled(fn):
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    import torch

    return torch.no_grad()(fn)


def worker(count: int, batch: int, min_cpu_s: float = 2.0, max_calls: int = 50) -> dict:
    """Median CPU and wall milliseconds per image of one compiled NMS call."""
    import keras
    import numpy as np

    from segkeras.boxes import non_max_suppression

    boxes, scores = candidates(count, batch, np.random.default_rng(0))
    args = [keras.ops.convert_to_tensor(a) for a in (boxes, scores)]
    call = compiled(lambda b, s: non_max_suppression(b, s, THRESHOLD, count // 2))
    kept = keras.ops.convert_to_numpy(call(*args)[1])  # compiles
    cpu, wall, spent = [], [], 0.0
    while len(cpu) < max_calls and (spent < min_cpu_s or len(cpu) < 5):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        keras.ops.convert_to_numpy(call(*args)[1])
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
        spent += cpu[-1]
    return {"cpu_ms_per_image": statistics.median(cpu) * 1000 / batch,
            "wall_ms_per_image": statistics.median(wall) * 1000 / batch,
            "calls": len(cpu), "kept_per_image": float(kept.sum() / batch),
            "backend": keras.backend.backend()}


def measure(full: bool) -> list[dict]:
    counts = (300, 600, 1000, 2000, 4000) if full else (600, 2000)
    if smoke():
        counts = (100,)
    return [{"count": count, "batch": 2, **run_worker("s10_nms", count=count, batch=2)}
            for count in counts]


def render(rows: list[dict]) -> str:
    return (table(["candidates", "batch", "CPU ms / image", "wall ms / image", "kept / image",
                   "backend"],
                  [[r["count"], r["batch"], f"{r['cpu_ms_per_image']:.2f}",
                    f"{r['wall_ms_per_image']:.2f}", f"{r['kept_per_image']:.0f}", r["backend"]]
                   for r in rows])
            + f"\n\nIoU threshold {THRESHOLD}, at most half of the candidates kept; the median "
              "of up to 50 calls.")


def headline(rows: list[dict]) -> tuple[str, str]:
    low, high = rows[0], rows[-1]
    return (f"{high['cpu_ms_per_image']:.1f} CPU ms per image at {high['count']} candidates",
            f"{low['cpu_ms_per_image']:.1f} ms at {low['count']}")
