"""What both Mask R-CNN benchmarks print and record (plain Python: the torchvision venv has no
Keras). Each run stores its numbers under its own key of ``bench/results/mask_rcnn.json``, which
``bench/s8_mask_rcnn.py`` renders into BENCHMARKS.md."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import platform
import sys
import tempfile

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mask_rcnn.json")


def report(steps: int, batch_size: int, train_images: int, cpu_seconds: float,
           wall_seconds: float, scores: dict, val_images: int, inference_cpu: float,
           inference_wall: float, **extra) -> dict:
    """Print training amount and speed, held-out box and mask AP and inference speed; return
    them as a record for :func:`save`."""
    print(f"trained {steps} steps ({steps * batch_size / train_images:.2f} epochs of "
          f"{train_images} images, batch {batch_size}) in {cpu_seconds / 60:.1f} CPU min "
          f"({wall_seconds / 60:.1f} min wall); {steps * batch_size / cpu_seconds:.2f} img per "
          "CPU-s")
    for kind in ("box", "mask"):
        s = scores[kind]
        print(f"held-out {kind} AP={s['AP']:.3f} AP50={s['AP50']:.3f} AP75={s['AP75']:.3f} "
              f"({val_images} images, predicted boxes)")
    print(f"inference: {val_images / inference_cpu:.2f} img per CPU-s "
          f"({val_images / inference_wall:.2f} img/s wall), 128x128, <= 100 detections")
    return {
        "steps": steps, "batch_size": batch_size, "train_images": train_images,
        "train_cpu_s": round(cpu_seconds, 1), "train_wall_s": round(wall_seconds, 1),
        "train_img_per_cpu_s": round(steps * batch_size / cpu_seconds, 3),
        "val_images": val_images,
        "box": {k: round(float(v), 4) for k, v in scores["box"].items()},
        "mask": {k: round(float(v), 4) for k, v in scores["mask"].items()},
        "inference_img_per_cpu_s": round(val_images / inference_cpu, 3),
        "inference_img_per_s_wall": round(val_images / inference_wall, 3), **extra}


def save(key: str, record: dict) -> None:
    """Store ``record`` (with the command line and date) under ``key`` of the results file."""
    record = {"command": " ".join(["python", *sys.argv]),
              "date": datetime.datetime.now().isoformat(timespec="minutes"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", **record}
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(os.path.join(tempfile.gettempdir(), "segkeras_mask_rcnn.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = {}
        if os.path.exists(RESULTS):
            with open(RESULTS) as file:
                results = json.load(file)
        results[key] = record
        with open(RESULTS, "w") as file:
            json.dump(results, file, indent=1, sort_keys=True)
            file.write("\n")
