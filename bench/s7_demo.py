"""Section 7: ``python -m segkeras demo`` (what ``make demo`` runs), timed as a whole command,
with its held-out scores and the machine's matmul calibration it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from common import ROOT, children_cpu, smoke, table

TITLE = "7. The demo (`make demo`)"
CODE = ("segkeras/cli/demo.py", "segkeras/train.py", "segkeras/models/unet.py",
        "segkeras/data/pipeline.py", "segkeras/data/shapes.py", "segkeras/losses.py",
        "segkeras/backbones.py")


def _run_demo(out: str) -> dict:
    """``python -m segkeras demo`` in a subprocess; its metrics.json (scores, the demo's own
    timings) and the whole command's wall and CPU seconds, interpreter start included."""
    cpu, wall = children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "segkeras", "demo", "--out", out,
                           *(["--quick"] if smoke() else [])],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"demo failed:\n{done.stderr[-3000:]}")
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as metrics:
        return {**json.load(metrics), "command_wall_s": time.perf_counter() - wall,
                "command_cpu_s": children_cpu() - cpu}


def measure(full: bool) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        metrics = _run_demo(out)
    return {key: metrics[key] for key in ("mean_iou", "pixel_accuracy", "iou", "recipe", "timing",
                                          "command_wall_s", "command_cpu_s")}


def render(d: dict) -> str:
    timing, recipe = d["timing"], d["recipe"]
    per_class = ", ".join(f"{name} {iou:.3f}" for name, iou in d["iou"].items())
    wall = d["command_wall_s"]
    return (f"`python -m segkeras demo` (what `make demo` runs after installing): U-Net "
            f"(MobileNetV2, {recipe['weights']} initialisation, decoder "
            f"{recipe['decoder_filters']}) on {recipe['train_images']} built-in shapes at "
            f"{recipe['image_size']}², batch "
            f"{recipe['batch_size']}, {recipe['epochs']} epochs; scored on "
            f"{recipe['test_images']} held-out images.\n\n"
            + table(["wall, whole command", "CPU user+sys", "training (wall)", "held-out mIoU",
                      "IoU per class", "the demo's calibration"],
                     [[f"{int(wall // 60)} min {wall % 60:02.0f} s", f"{d['command_cpu_s']:.0f} s",
                       f"{timing['train_s']:.0f} s", f"{d['mean_iou']:.3f}", per_class,
                       f"{timing['calibration_gflops']:.0f} GFLOP/s (load average "
                       f"{timing['load_average']:.1f} at the end)"]]))


def headline(d: dict) -> tuple[str, str]:
    wall = d["command_wall_s"]
    return (f"`python -m segkeras demo`: held-out mIoU {d['mean_iou']:.3f} in {int(wall // 60)} "
            f"min {wall % 60:02.0f} s wall ({d['timing']['calibration_gflops']:.0f} GFLOP/s "
            "machine)", "the target: mIoU >= 0.90 within 3 min on a quiet 2-core machine")
