"""Data throughput: the shapes generator (one core) and the tf.data pipeline with augmentation.

    taskset -c 0 python experiments/bench_data.py     # generator on one core, as the issue asks
    python experiments/bench_data.py --only pipeline  # the pipeline with every core

Prints images/s (best of ``--repeats`` wall-clock runs) and CPU milliseconds per image (user +
system time of the process, which a busy machine inflates less than wall time). Targets: the
generator >= 1000 img/s at 128x128 on one core; the pipeline >= 500 img/s at 128x128, batch 16,
augment on (a MobileNetV2 U-Net trains at 30-60 img/s on a laptop CPU).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from segkeras import resources  # noqa: E402
from segkeras.data import pipeline, shapes  # noqa: E402

SAMPLE_DIR = resources.path("sample")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(run, count: int, repeats: int) -> tuple[float, float]:
    """(best images/s, CPU ms per image of that run) of ``run()``, which handles ``count``."""
    best_rate, best_cpu = 0.0, 0.0
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), cpu_seconds()
        run()
        rate = count / (time.perf_counter() - wall)
        if rate > best_rate:
            best_rate, best_cpu = rate, (cpu_seconds() - cpu) * 1000 / count
    return best_rate, best_cpu


def bench_generator(size: int, count: int, repeats: int) -> None:
    shapes.generate(8, size)  # warm up
    rate, cpu = measure(lambda: shapes.generate(count, size), count, repeats)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"shapes.generate({count}, {size}): {rate:7.0f} img/s  {cpu:.3f} CPU ms/img  "
          f"(process allowed on {cores} core(s))")


def bench_pipeline(size: int, count: int, batch: int, repeats: int) -> None:
    data = shapes.generate(count, size)
    for augment in (False, True):
        dataset = pipeline.make_dataset(data, size, batch, augment=augment, shuffle=True)
        for _ in dataset:  # first epoch fills the cache and traces the functions
            pass

        def epoch(dataset=dataset):
            for _ in dataset:
                pass

        rate, cpu = measure(epoch, count, repeats)
        print(f"make_dataset({size}x{size}, batch {batch}, augment={augment}): {rate:7.0f} img/s  "
              f"{cpu:.3f} CPU ms/img")


def sample_size() -> None:
    total = sum(os.path.getsize(os.path.join(folder, name))
                for folder, _, files in os.walk(SAMPLE_DIR) for name in files)
    print(f"segkeras/resources/sample: {total / 1024:.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=2000, help="images generated per run")
    parser.add_argument("--pipeline-images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("generator", "pipeline"))
    args = parser.parse_args()
    if args.only != "pipeline":
        bench_generator(args.size, args.images, args.repeats)
    if args.only != "generator":
        bench_pipeline(args.size, args.pipeline_images, args.batch, args.repeats)
    sample_size()


if __name__ == "__main__":
    main()
