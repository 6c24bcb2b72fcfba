"""What both Mask R-CNN benchmarks print and record (plain Python: the torchvision venv has no
Keras). Each run stores its numbers under its own key of ``bench/results/mask_rcnn.json``, which
``bench/s8_mask_rcnn.py`` renders into BENCHMARKS.md."""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import math
import os
import platform
import sys
import tempfile

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mask_rcnn.json")
HELD_OUT_SEED = 1000
"""Seed of the 300 held-out images, the same for every training seed."""
INFERENCE_SETTINGS = {
    "128": "the 300 held-out 128x128 images, score > 0.05 (end to end)",
    "128, 100 per image": "the first 80 of them, score threshold 0 and no final NMS: the 100 "
                          "best of the 300 class-box candidates on both sides (equal detection "
                          "counts)",
    "640x480": "16 shapes images of 640x480 run at that size (no resizing), score > 0.05",
}
"""Inference measurements of every run: name -> what is measured (batch 8, <= 100 detections,
masks pasted at each image's full resolution)."""


def inference_inputs(held_out) -> dict:
    """:data:`INFERENCE_SETTINGS`' images and thresholds: name -> (images, score threshold, final
    NMS's IoU threshold; 1.0 suppresses nothing, the IoU must be above it)."""
    from segkeras.data import shapes  # here: the torchvision venv imports it with torch Keras

    wide = shapes.generate(16, 640, seed=HELD_OUT_SEED + 1).images[:, 80:560]
    return {"128": (held_out.images, 0.05, 0.5),
            "128, 100 per image": (held_out.images[:80], 0.0, 1.0),
            "640x480": (wide, 0.05, 0.5)}


def speed_record(images: int, cpu_seconds: float, wall_seconds: float, detections) -> dict:
    """Images per CPU second and per wall second, detections per image; printed too."""
    per_image = sum(len(d["scores"]) for d in detections) / images
    record = {"img_per_cpu_s": round(images / cpu_seconds, 3),
              "img_per_s_wall": round(images / wall_seconds, 3),
              "detections_per_image": round(per_image, 2)}
    print(f"  {images} images: {record['img_per_cpu_s']:.2f} img per CPU-s "
          f"({record['img_per_s_wall']:.2f} img/s wall), {per_image:.1f} detections per image",
          flush=True)
    return record


def cosine_factor(progress: float) -> float:
    """The learning rate's factor after ``progress`` (0..1, clipped) of the budget: a cosine from
    1 to 5 %, the schedule of both systems' runs."""
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _training_arguments(description: str, minutes: float, train_images: int, val_images: int,
                        batch_size: int, learning_rate: float,
                        rois_per_image: int) -> argparse.ArgumentParser:
    """The options every Mask R-CNN training script of section 8 takes, with its defaults."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--minutes", type=float, default=minutes, help="training CPU-time budget")
    parser.add_argument("--train-images", type=int, default=train_images)
    parser.add_argument("--val-images", type=int, default=val_images)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--learning-rate", type=float, default=learning_rate)
    parser.add_argument("--rois-per-image", type=int, default=rois_per_image)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of the process (0 with TensorFlow: one per core)")
    parser.add_argument("--stop-at", help="also stop training at this wall-clock time, HH:MM")
    parser.add_argument("--save", help="write the trained model to this file")
    return parser


def common_arguments(description: str, key: str) -> argparse.ArgumentParser:
    """The options of both systems' scripts, with the side by side's recipe as defaults."""
    parser = _training_arguments(description, minutes=10.0, train_images=3000, val_images=300,
                                 batch_size=8, learning_rate=2e-3, rois_per_image=32)
    parser.add_argument("--key", default=key, help="key in bench/results/mask_rcnn.json")
    parser.add_argument("--inference-only", metavar="MODEL",
                        help="train nothing: measure the inference of this saved model again "
                             "(the --key record keeps its training numbers)")
    return parser


def multiscale_arguments(description: str, learning_rate: float) -> argparse.ArgumentParser:
    """The options of both systems' multi-scale scripts, with the runs' recipe as defaults."""
    parser = _training_arguments(description, minutes=60.0, train_images=1500, val_images=100,
                                 batch_size=4, learning_rate=learning_rate, rois_per_image=128)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--key", help="key in bench/results/mask_rcnn_multiscale.json")
    return parser


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
          f"({val_images / inference_wall:.2f} img/s wall), <= 100 detections")
    return {
        "steps": steps, "batch_size": batch_size, "train_images": train_images,
        "train_cpu_s": round(cpu_seconds, 1), "train_wall_s": round(wall_seconds, 1),
        "train_img_per_cpu_s": round(steps * batch_size / cpu_seconds, 3),
        "val_images": val_images,
        "box": {k: round(float(v), 4) for k, v in scores["box"].items()},
        "mask": {k: round(float(v), 4) for k, v in scores["mask"].items()},
        "inference_img_per_cpu_s": round(val_images / inference_cpu, 3),
        "inference_img_per_s_wall": round(val_images / inference_wall, 3), **extra}


def run_key(system: str, rate: float, seed: int) -> str:
    """The results key of one side-by-side run."""
    return f"{system} lr={rate:g} seed={seed}"


def parse_run_key(key: str) -> tuple[str, float, int]:
    """``(system, rate, seed)`` of a :func:`run_key`."""
    system, rate, seed = key.split(" ")
    return system, float(rate.split("=")[1]), int(seed.split("=")[1])


def best_rate(results: dict, system: str, seed: int) -> float | None:
    """The learning rate of ``system``'s run with ``seed`` that scores the highest box AP + mask
    AP, or None when there is none."""
    scored = [(record["box"]["AP"] + record["mask"]["AP"], rate)
              for key, record in results.items()
              for s, rate, run_seed in [parse_run_key(key)] if (s, run_seed) == (system, seed)]
    return max(scored)[1] if scored else None


def stored(results: str = RESULTS) -> dict:
    """Every record of ``results`` by key (empty when the file does not exist yet)."""
    if not os.path.exists(results):
        return {}
    with open(results) as file:
        return json.load(file)


def recorded(key: str, results: str = RESULTS) -> dict:
    """The record stored under ``key`` (SystemExit when there is none)."""
    records = stored(results)
    if key not in records:
        raise SystemExit(f"no record {key!r} in {results}: train that run first")
    return records[key]


def save_inference(key: str, speeds: dict) -> None:
    """Replace the inference numbers of the record under ``key`` with ``speeds``, measured again
    (``--inference-only``), noting the command and date."""
    record = recorded(key)
    record["inference"] = speeds
    record["inference_measured"] = {"command": " ".join(["python", *sys.argv]),
                                    "date": datetime.datetime.now().isoformat("T", "minutes")}
    save(key, record)


def save(key: str, record: dict, results: str = RESULTS) -> None:
    """Store ``record`` (with the command line and date) under ``key`` of ``results``."""
    record = {"command": " ".join(["python", *sys.argv]),
              "date": datetime.datetime.now().isoformat(timespec="minutes"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", **record}
    os.makedirs(os.path.dirname(results), exist_ok=True)
    with open(os.path.join(tempfile.gettempdir(), "segkeras_mask_rcnn.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = stored(results)
        records[key] = record
        with open(results + ".tmp", "w") as file:
            json.dump(records, file, indent=1, sort_keys=True)
            file.write("\n")
        os.replace(results + ".tmp", results)
