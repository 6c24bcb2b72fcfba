"""Section 3: images per second the augmented tf.data pipeline delivers, against what training
the U-Net of section 1 consumes."""

from __future__ import annotations

import time

from common import load_results, peak_rss_mib, run_worker, smoke, table

TITLE = "3. Input pipeline vs model"
CODE = ("segkeras/data/pipeline.py", "segkeras/data/shapes.py")


def worker(size: int, batch: int, count: int) -> dict:
    """Images per second the augmented tf.data pipeline delivers (after the cache is filled)."""
    from segkeras.data import pipeline, shapes

    data = shapes.generate(count, image_size=size, seed=0)
    dataset = pipeline.make_dataset(data, size, batch, augment=True, shuffle=True)
    for _ in dataset:
        pass
    start = time.perf_counter()
    for _ in dataset:
        pass
    return {"pipeline": count / (time.perf_counter() - start), "rss": peak_rss_mib()}


def measure(full: bool) -> dict:
    from s1_throughput import unet_row

    throughput = load_results("throughput")
    source = f"section 1, measured {throughput['provenance']['measured']}"
    r = run_worker("s3_pipeline", size=128, batch=16, count=64 if smoke() else 1024)
    return {"pipeline": r["pipeline"], "model_rate": unet_row(throughput["data"])["train"],
            "model_rate_source": source}


def render(d: dict) -> str:
    return (table(["what", "img/s"], [
                ["make_dataset(128², batch 16, augment=True, shuffle=True)",
                 f"{d['pipeline']:.0f}"],
                ["segkeras U-Net (mobilenetv2) training at 128², batch 8 "
                 f"({d['model_rate_source']})", f"{d['model_rate']:.1f}"]])
            + f"\n\nThe pipeline delivers {d['pipeline'] / d['model_rate']:.0f}x what training "
            "consumes (target: at least 5x).")


def headline(d: dict) -> tuple[str, str]:
    return (f"the augmented pipeline delivers {d['pipeline']:.0f} img/s",
            f"U-Net training consumes {d['model_rate']:.1f} img/s "
            f"({d['pipeline'] / d['model_rate']:.0f}x; target >= 5x)")
