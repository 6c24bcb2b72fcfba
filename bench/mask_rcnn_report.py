"""The lines both Mask R-CNN benchmarks print (plain Python: the torchvision venv has no Keras)."""

from __future__ import annotations


def print_report(steps: int, batch_size: int, train_images: int, cpu_seconds: float,
                 wall_seconds: float, scores: dict, val_images: int, inference_cpu: float,
                 inference_wall: float) -> None:
    """Training amount and speed, held-out box and mask AP, inference speed."""
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
