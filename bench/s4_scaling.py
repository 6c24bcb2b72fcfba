"""Section 4: how the U-Net's (MobileNetV2, encoder frozen) step time grows with the image side
and the batch, each configuration in its own process (section 1's worker)."""

from __future__ import annotations

from common import run_worker, smoke, table

TITLE = "4. Scaling (U-Net, mobilenetv2, encoder frozen)"
CODE = ("segkeras/models/unet.py", "segkeras/backbones.py")


def measure(full: bool) -> list[dict]:
    sizes = (64, 128, 256, 512) if full else (64, 128, 256)
    batches = (1, 4, 8, 16, 32) if full else (4, 8, 16)
    if smoke():
        sizes, batches = (64, 128), (4, 8)
    rows = []
    for size, batch in [(s, 8) for s in sizes] + [(128, b) for b in batches if b != 8]:
        r = run_worker("s1_throughput", arch="unet", backbone="mobilenetv2", size=size,
                       batch=batch, steps=1 if smoke() else 5 if size <= 256 else 3)
        rows.append({"size": size, "batch": batch, "train_ms": 1000 * batch / r["train"],
                     "infer_ms": 1000 * batch / r["infer"], "train": r["train"], "rss": r["rss"]})
    return rows


def _doubling(rows: list[dict]) -> list[tuple[int, int, float]]:
    """(side, doubled side, step time ratio) at batch 8."""
    ms = {r["size"]: r["train_ms"] for r in rows if r["batch"] == 8}
    sizes = sorted(ms)
    return [(a, b, ms[b] / ms[a]) for a, b in zip(sizes, sizes[1:], strict=False)]


def render(rows: list[dict]) -> str:
    ms = {(r["size"], r["batch"]): r["train_ms"] for r in rows}
    batches = sorted(batch for size, batch in ms if size == 128)
    doubling = ", ".join(f"{a}²→{b}²: {ratio:.1f}x" for a, b, ratio in _doubling(rows))
    growth = ", ".join(f"{a}→{b}: {ms[(128, b)] / ms[(128, a)]:.1f}x"
                       for a, b in zip(batches, batches[1:], strict=False))
    return (table(["size", "batch", "train ms/step", "inference ms/step", "train img/s",
                   "peak RSS MiB"],
                  [[f"{r['size']}²", r["batch"], f"{r['train_ms']:.0f}", f"{r['infer_ms']:.0f}",
                    f"{r['train']:.1f}", f"{r['rss']:.0f}"] for r in rows])
            + f"\n\nTraining step time, batch 8, per doubling of the side (4x the pixels): "
              f"{doubling}. At 128², from one batch size to the next: {growth}.")


def headline(rows: list[dict]) -> tuple[str, str]:
    a, b, ratio = _doubling(rows)[-1]
    return (f"training step {ratio:.1f}x longer from {a}² to {b}² (batch 8)",
            "4x the pixels")
