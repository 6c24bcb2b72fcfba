"""segkeras benchmarks: speed, quality against a reference recipe, scaling and memory.

    python bench/run.py                          # quick (make bench), every section
    python bench/run.py --sections demo flops    # re-measure some sections, keep the others
    python bench/run.py --full                   # every architecture x backbone x size x batch

Writes BENCHMARKS.md. Every section starts with the line saying when and by which command it was
measured, the load average around it, the wall and CPU (user+sys) seconds of its worker processes
and this machine's matmul calibration (:mod:`segkeras.calibration`), so a number taken on a busy
machine is recognisable as such. Sections not re-measured are kept from the previous file with
their own line. Every measurement runs in its own subprocess so that peak RSS belongs to that
configuration alone. Random weights throughout (no download needed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPORT = os.path.join(BENCH_DIR, os.pardir, "BENCHMARKS.md")
RESULTS = os.path.join(BENCH_DIR, "results")
NOTES_MARKER = "<!-- hand-written notes below are kept by bench/run.py -->"
NUM_CLASSES = 4  # background + the three shapes every lab uses by default
# Assumed sustained training throughput of a Colab T4 (peak 8.1 TFLOP/s fp32, 65 fp16 tensor core);
# conv nets of this size typically sustain 40-50% in fp32 and about 3x that with mixed precision.
T4_FP32_FLOPS = 3.5e12
T4_MIXED_FLOPS = 10e12


# ----------------------------------------------------------------------------- workers


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


MASK_HEAD = "mask_head"  # the instance head: not a semantic builder, so not in the registry
ARCH_OPTIONS = {"hourglass": {"num_stacks": 2}, "deconvnet": {"skips": True}}


def architectures() -> list[str]:
    """The registry's builders, then the mask head."""
    from segkeras.models import registry

    return [*registry.names(), MASK_HEAD]


def _build(arch: str, backbone: str, size: int, trainable: bool = False):
    from segkeras.models import registry
    from segkeras.models.mask_head import instance_segmenter

    common = dict(weights=None, encoder_trainable=trainable, input_shape=(size, size, 3))
    if arch == MASK_HEAD:
        return instance_segmenter(NUM_CLASSES, backbone, **common)
    return registry.build(arch, NUM_CLASSES, backbone=backbone, **common,
                          **ARCH_OPTIONS.get(arch, {}))


def _batch_for(model, arch: str, batch: int, size: int):
    """Random inputs and targets with the structure ``model`` trains on, and its loss."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    if arch == "mask_head":
        from segkeras.models.mask_head import MaskedBinaryCrossentropy

        count = model.input["boxes"].shape[1]
        corners = rng.uniform(0, size * 0.5, (batch, count, 2))
        boxes = np.concatenate([corners, corners + size * 0.4], axis=-1).astype("float32")
        class_ids = rng.integers(1, NUM_CLASSES, (batch, count)).astype("int32")
        targets = rng.integers(0, 2, (batch, count, 28, 28)).astype("float32")
        inputs = {"image": images, "boxes": boxes, "class_ids": class_ids}
        return inputs, targets, MaskedBinaryCrossentropy()
    masks = rng.integers(0, NUM_CLASSES, (batch, size, size)).astype("int32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    if len(model.outputs) > 1:
        return images, [masks] * len(model.outputs), [loss] * len(model.outputs)
    return images, masks, loss


def _rate(step, batch: int, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def worker_throughput(arch: str, backbone: str, size: int, batch: int, steps: int) -> dict:
    """Train and inference img/s, parameters and peak RSS of one config (encoder frozen)."""
    import keras

    model = _build(arch, backbone, size)
    inputs, targets, loss = _batch_for(model, arch, batch, size)
    model.compile(keras.optimizers.Adam(1e-3), loss)
    train = _rate(lambda: model.train_on_batch(inputs, targets), batch, steps)
    infer = _rate(lambda: model.predict_on_batch(inputs), batch, steps)
    return {"params": model.count_params(), "train": train, "infer": infer,
            "rss": _peak_rss_mib()}


def worker_flops(plan: list[list]) -> dict:
    """Forward and training GFLOPs/img (encoder frozen) of every ``(arch, backbone, size)``."""
    import keras
    from flops import forward_flops_per_image, training_flops_per_image

    counts = {}
    for arch, backbone, size in plan:
        model = _build(arch, backbone, size)
        counts[f"{arch}|{backbone}|{size}"] = {
            "forward": forward_flops_per_image(model) / 1e9,
            "train": training_flops_per_image(model) / 1e9}
        keras.backend.clear_session()
    return counts


def worker_pipeline(size: int, batch: int, count: int) -> dict:
    """Images per second the augmented tf.data pipeline delivers (after the cache is filled)."""
    from segkeras.data import pipeline, shapes

    data = shapes.generate(count, image_size=size, seed=0)
    dataset = pipeline.make_dataset(data, size, batch, augment=True, shuffle=True)
    for _ in dataset:
        pass
    start = time.perf_counter()
    for _ in dataset:
        pass
    return {"pipeline": count / (time.perf_counter() - start), "rss": _peak_rss_mib()}


def worker_roi_align(boxes: int, batch: int, height: int, channels: int) -> dict:
    """Milliseconds per RoIAlign call (14x14, sampling 2) on a random feature map."""
    import keras
    import numpy as np
    from bench_roi_align import compiled, random_boxes, time_call

    from segkeras.layers import RoIAlign

    rng = np.random.default_rng(0)
    features = rng.normal(size=(batch, height, height, channels)).astype("float32")
    box_array, indices = random_boxes(boxes, height * 16, batch, rng)
    layer = RoIAlign(14, sampling_ratio=2, spatial_scale=1 / 16)
    args = [keras.ops.convert_to_tensor(a) for a in (features, box_array, indices)]
    forward = time_call(compiled(layer, backward=False), args, repeats=5)
    backward = time_call(compiled(layer, backward=True), args, repeats=5)
    return {"forward_ms": forward * 1000, "backward_ms": backward * 1000}


def worker_demo(out: str) -> dict:
    """``python -m segkeras demo`` in a subprocess; its metrics.json (timings and scores)."""
    done = subprocess.run([sys.executable, "-m", "segkeras", "demo", "--out", out],
                          capture_output=True, text=True, cwd=os.path.join(BENCH_DIR, os.pardir))
    if done.returncode != 0:
        raise RuntimeError(f"demo failed:\n{done.stderr[-3000:]}")
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as metrics:
        return json.load(metrics)


WORKERS = {"throughput": worker_throughput, "flops": worker_flops, "pipeline": worker_pipeline,
           "roi_align": worker_roi_align}


def run_worker(task: str, **kwargs) -> dict:
    """Run one measurement in a fresh Python process; returns its JSON result."""
    command = [sys.executable, __file__, "--worker", json.dumps({"task": task, **kwargs})]
    print("  ", task, kwargs, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, cwd=BENCH_DIR)
    if done.returncode != 0:
        raise RuntimeError(f"{task} {kwargs} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _read_table(text: str) -> list[dict]:
    """The rows of the first markdown table in ``text`` as ``{header: cell}`` dicts."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    if len(lines) < 2:
        return []
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row, strict=True)) for row in cells[2:]]


def _machine() -> str:
    import keras
    import numpy
    import tensorflow

    cpu = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info
                     if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"TensorFlow {tensorflow.__version__}, Keras {keras.__version__} "
            f"(backend {keras.backend.backend()}), NumPy {numpy.__version__}")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(title: str, command: str, calibration, body) -> tuple[str, object]:
    """Run ``body()`` -> ``(text, value)``; the section ``## title`` with its provenance line."""
    load, cpu, wall = os.getloadavg()[0], _children_cpu(), time.perf_counter()
    text, value = body()
    line = (f"_Measured {datetime.datetime.now():%Y-%m-%d %H:%M} by `{command}`: worker wall "
            f"{time.perf_counter() - wall:.0f} s, CPU (user+sys) {_children_cpu() - cpu:.0f} s; "
            f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after "
            f"({os.cpu_count()} cores); {calibration}._")
    return f"## {title}\n\n{line}\n\n{text}", value


def section_throughput(full: bool) -> tuple[str, dict]:
    backbones = ("mobilenetv2", "resnet50")
    plan = [(a, b, s, n) for a in architectures() for b in backbones
            for s in (128, 256) for n in (8, 16)]
    if not full:
        plan = [(a, b, 128, 8) for a in architectures() for b in backbones]
    results = {}
    for arch, backbone, size, batch in plan:
        results[(arch, backbone, size, batch)] = run_worker(
            "throughput", arch=arch, backbone=backbone, size=size, batch=batch,
            steps=10 if full else 5)
    return render_throughput(results), results


def render_throughput(results: dict) -> str:
    rows = [[arch, backbone, f"{size}²", batch, f"{r['params'] / 1e6:.1f}M", f"{r['train']:.1f}",
             f"{r['infer']:.1f}", f"{r['rss']:.0f}"]
            for (arch, backbone, size, batch), r in results.items()]
    return ("Encoder frozen (the transfer-learning stage); deconvnet with skips; hourglass: 2 "
            "stacks on the backbone's P2; mask head: 8 boxes per image. Training FLOPs and the "
            "GFLOP/s these rates achieve: section 6.\n\n"
            + _table(["model", "backbone", "size", "batch", "params", "train img/s",
                      "inference img/s", "peak RSS MiB"], rows))


def throughput_from_table(text: str) -> dict:
    """Section 1's results read back from its table (a section kept from an earlier run)."""
    results = {}
    for row in _read_table(text):
        key = (row["model"], row["backbone"], int(row["size"].rstrip("²")), int(row["batch"]))
        results[key] = {"params": float(row["params"].rstrip("M")) * 1e6,
                        "train": float(row["train img/s"]), "infer": float(row["inference img/s"]),
                        "rss": float(row["peak RSS MiB"])}
    return results


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def section_versus() -> tuple[str, None]:
    """Section 2 from bench/versus.py: quality records (measured beforehand, any load) and a
    short speed run per model now."""
    import versus

    quality_file = os.path.join(RESULTS, "versus_quality.json")
    speed_file = os.path.join(RESULTS, "versus_speed.json")
    if not os.path.exists(quality_file):
        subprocess.run([sys.executable, "versus.py", "quality", "--out", quality_file],
                       check=True, cwd=BENCH_DIR)
    if os.path.exists(speed_file):
        os.remove(speed_file)
    subprocess.run([sys.executable, "versus.py", "speed", "--out", speed_file], check=True,
                   cwd=BENCH_DIR)
    with open(quality_file, encoding="utf-8") as file:
        quality = json.load(file)
    with open(speed_file, encoding="utf-8") as file:
        speed = {r["model"]: r for r in json.load(file)["records"]}
    by_model = {}
    for record in quality["records"]:
        by_model.setdefault(record["model"], []).append(record)
    recipe = quality["recipe"]
    rows, mean = [], {}
    for kind in versus.MODELS:
        runs, fast = by_model.get(kind, []), speed.get(kind)
        if not runs or fast is None:
            continue
        mious = [r["miou"] for r in runs]
        mean[kind] = statistics.mean(mious)
        batch_stats = [r["miou_batch_statistics"] for r in runs if "miou_batch_statistics" in r]
        rows.append([kind, f"{fast['params'] / 1e6:.2f}M", f"{fast['size']}²",
                     f"{fast['img_per_s']:.1f}", f"{fast['cpu_ms_per_img']:.1f}",
                     _mean_sd(mious), f"{min(mious):.3f}–{max(mious):.3f}", len(runs),
                     _mean_sd(batch_stats) if batch_stats else "",
                     f"{sum(r['wall_s'] for r in runs) / 60:.0f} / "
                     f"{sum(r['cpu_s'] for r in runs) / 60:.0f}",
                     f"{min(r['load_before'] for r in runs):.0f}–"
                     f"{max(r['load_after'] for r in runs):.0f}"])
    text = (f"Built-in shapes ({recipe['n_train']} training / {recipe['n_val']} held-out images "
            f"at {recipe['size']}²; the tutorial's recipe resizes them to "
            f"{quality['tutorial_size']}²), batch {recipe['batch']}, {recipe['steps']} steps, "
            f"Adam {recipe['learning_rate']}, sparse cross-entropy, random initialisation; seeds "
            "change the initial weights and the shuffle. Models: see `bench/versus.py` "
            "(`segkeras`: light decoder, BatchNorm trained with momentum 0.99; "
            "`reference_bn099`: the tutorial's U-Net with the same BatchNorm treatment; "
            "`reference_bn0999`: keras.applications' momentum 0.999; `reference_tutorial`: frozen "
            "encoder at 128², random because offline — the tutorial's is ImageNet-pretrained). "
            f"mIoU: `{quality['command']}` (the score depends on the steps, not the load); speed: "
            "`python bench/versus.py speed`, 30 timed steps, at the load given above.\n\n"
            + _table(["model", "params", "size", "train img/s", "CPU ms/img",
                      "held-out mIoU (mean ± sd)", "min–max", "seeds",
                      "mIoU, BatchNorm on batch statistics", "quality runs wall / CPU min",
                      "load during quality runs"], rows))
    notes = []
    if "segkeras" in mean and "reference_bn099" in mean:
        notes.append("Like for like (both BatchNorm momentum 0.99): segkeras "
                     f"{mean['segkeras'] - mean['reference_bn099']:+.3f} mIoU, "
                     f"{speed['segkeras']['img_per_s'] / speed['reference_bn099']['img_per_s']:.2f}"
                     "x the reference's img/s.")
    runs = by_model.get("reference_bn0999", [])
    if runs and "miou_batch_statistics" in runs[0]:
        moving = statistics.mean(r["miou"] for r in runs)
        batch = statistics.mean(r["miou_batch_statistics"] for r in runs)
        notes.append(f"The reference with momentum 0.999 scores {moving:.3f} with its moving "
                     f"BatchNorm statistics and {batch:.3f} with the same weights on batch "
                     "statistics: the difference is what its moving statistics, still near their "
                     f"initial values after {recipe['steps']} steps, cost.")
    return text + ("\n\n" + " ".join(notes) if notes else ""), None


def section_pipeline(model_rate: float, rate_source: str) -> tuple[str, None]:
    r = run_worker("pipeline", size=128, batch=16, count=1024)
    return (_table(["what", "img/s"], [
                ["make_dataset(128², batch 16, augment=True, shuffle=True)",
                 f"{r['pipeline']:.0f}"],
                [f"segkeras U-Net (mobilenetv2) training at 128², batch 8 ({rate_source})",
                 f"{model_rate:.1f}"],
            ])
            + f"\n\nThe pipeline delivers **{r['pipeline'] / model_rate:.0f}x** what training "
            "consumes (target: at least 5x)."), None


def section_scaling(full: bool) -> tuple[str, None]:
    sizes = (64, 128, 256, 512) if full else (64, 128, 256)
    batches = (1, 4, 8, 16, 32) if full else (4, 8, 16)
    rows, step_ms = [], {}
    for size, batch in [(s, 8) for s in sizes] + [(128, b) for b in batches if b != 8]:
        r = run_worker("throughput", arch="unet", backbone="mobilenetv2", size=size, batch=batch,
                       steps=5 if size <= 256 else 3)
        step_ms[(size, batch)] = 1000 * batch / r["train"]
        rows.append([f"{size}²", batch, f"{step_ms[(size, batch)]:.0f}",
                     f"{1000 * batch / r['infer']:.0f}", f"{r['train']:.1f}", f"{r['rss']:.0f}"])
    doubling = ", ".join(f"{a}²→{b}²: {step_ms[(b, 8)] / step_ms[(a, 8)]:.1f}x"
                         for a, b in zip(sizes, sizes[1:]))
    batch_growth = ", ".join(f"{a}→{b}: {step_ms[(128, b)] / step_ms[(128, a)]:.1f}x"
                             for a, b in zip(sorted({*batches, 8}), sorted({*batches, 8})[1:]))
    return (_table(["size", "batch", "train ms/step", "inference ms/step", "train img/s",
                    "peak RSS MiB"], rows)
            + f"\n\nTraining step time per doubling of the side (4x the pixels), batch 8: "
              f"{doubling}. Per doubling of the batch at 128²: {batch_growth}."), None


def section_roi_align(full: bool) -> tuple[str, None]:
    counts = (16, 64, 128, 256, 512, 1024) if full else (16, 128, 512, 1024)
    rows, forward = [], {}
    for batch, height in ((1, 32), (2, 64)):
        for boxes in counts:
            r = run_worker("roi_align", boxes=boxes, batch=batch, height=height, channels=256)
            forward[(height, boxes)] = r["forward_ms"]
            rows.append([f"({batch}, {height}, {height}, 256)", boxes, f"{r['forward_ms']:.2f}",
                         f"{r['backward_ms']:.2f}", f"{boxes / r['forward_ms'] * 1000:.0f}"])
    low, high = counts[0], counts[-1]
    return (_table(["features", "boxes", "forward ms", "forward+grad ms", "boxes/s"], rows)
            + f"\n\nForward time from {low} to {high} boxes ({high // low}x): "
              f"{forward[(32, high)] / forward[(32, low)]:.0f}x on (1, 32, 32, 256); at {high} "
              f"boxes the (2, 64, 64, 256) map takes {forward[(64, high)] / forward[(32, high)]:.2f}"
              "x the time of the (1, 32, 32, 256) one."), None


def section_flops(rates: dict, rate_source: str, calibration) -> tuple[str, None]:
    plan = sorted({(arch, backbone, size) for arch, backbone, size, _ in rates})
    counts = run_worker("flops", plan=[list(key) for key in plan])
    rows, fractions = [], []
    for (arch, backbone, size, batch), r in rates.items():
        count = counts[f"{arch}|{backbone}|{size}"]
        achieved = count["train"] * r["train"]
        fractions.append(achieved / calibration.gflops)
        rows.append([arch, backbone, f"{size}²", f"{count['forward']:.2f}",
                     f"{count['train']:.2f}", f"{r['train']:.1f}", f"{achieved:.0f}",
                     f"{100 * achieved / calibration.gflops:.0f}%",
                     f"{T4_FP32_FLOPS / 1e9 / count['train']:.0f}",
                     f"{T4_MIXED_FLOPS / 1e9 / count['train']:.0f}"])
    verdict = ("every model stays below it" if max(fractions) < 1 else
               "**some exceed it: their img/s and the calibration were not measured under the "
               "same load, or a FLOP count is wrong**")
    return ("Training GFLOPs per image with the encoder frozen (`bench/flops.py`: convolutions "
            "and dense layers; a frozen layer costs its forward pass, a trained one 3x). "
            f"Achieved GFLOP/s = training GFLOPs x train img/s ({rate_source}); the matmul peak "
            f"of the calibration above is {calibration.gflops:.0f} GFLOP/s and {verdict} "
            f"(highest: {100 * max(fractions):.0f}%). No GPU was lent to the session that wrote "
            f"this file: the GPU columns are estimates, a T4 sustaining "
            f"{T4_FP32_FLOPS / 1e12:.1f} TFLOP/s in float32 and {T4_MIXED_FLOPS / 1e12:.0f} "
            "TFLOP/s with mixed precision (assumptions, not measurements; ±50%).\n\n"
            + _table(["model", "backbone", "size", "forward GFLOPs/img", "train GFLOPs/img",
                      "train img/s", "achieved GFLOP/s", "of matmul peak", "est. T4 fp32 img/s",
                      "est. T4 mixed img/s"], rows)), None


def section_demo() -> tuple[str, None]:
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        metrics = worker_demo(out)
    timing, recipe = metrics["timing"], metrics["recipe"]
    per_class = ", ".join(f"{name} {iou:.3f}" for name, iou in metrics["iou"].items())
    return (f"`python -m segkeras demo`: U-Net (MobileNetV2, {recipe['weights']} weights) on "
            f"{recipe['train_images']} built-in shapes at {recipe['image_size']}², batch "
            f"{recipe['batch_size']}, {recipe['epochs']} epochs.\n\n"
            + _table(["wall (whole command)", "CPU user+sys", "of which training", "held-out mIoU",
                      "per class", "demo's own calibration"],
                     [[f"{timing['wall_s'] // 60:.0f} min {timing['wall_s'] % 60:02.0f} s",
                       f"{timing['cpu_s']:.0f} s", f"{timing['train_s']:.0f} s wall",
                       f"{metrics['mean_iou']:.3f}", per_class,
                       f"{timing['calibration_gflops']:.0f} GFLOP/s (load "
                       f"{timing['load_average']:.1f})"]])), None


TITLES = {
    "throughput": "1. Throughput and memory per architecture",
    "versus": "2. segkeras U-Net vs the TensorFlow tutorial's U-Net",
    "pipeline": "3. Input pipeline vs model",
    "scaling": "4. Scaling (U-Net, mobilenetv2, encoder frozen)",
    "roi_align": "5. RoIAlign (14x14, sampling ratio 2, compiled)",
    "flops": "6. FLOPs, achieved GFLOP/s and GPU estimates",
    "demo": "7. The demo (`make demo`)",
}


def old_sections() -> tuple[dict, str, str]:
    """The previous file's sections by number, its date and its hand-written notes."""
    if not os.path.exists(REPORT):
        return {}, "", "\n"
    with open(REPORT, encoding="utf-8") as old:
        text = old.read()
    body, _, notes = text.partition(NOTES_MARKER)
    date = body.split("Date: ", 1)[1].split(";", 1)[0] if "Date: " in body else "an earlier run"
    sections = {}
    for chunk in body.split("\n## ")[1:]:
        number = chunk.split(".", 1)[0]
        sections[number] = "## " + chunk.strip()
    return sections, date, notes or "\n"


def provenance(text: str | None, date: str) -> str:
    """The ``_Measured ..._`` line of an old section, or one for the file's date."""
    for line in (text or "").splitlines():
        if line.startswith("_Measured") or line.startswith("_(kept"):
            return line
    return (f"_Measured {date} by `python bench/run.py` on a quiet machine (before load and "
            "calibration were recorded)._")


def kept(number: str, sections: dict, date: str) -> str:
    """An old section, marked as not re-measured by this run, with its provenance line."""
    text = sections.get(number, f"## {number}. (not measured yet)")
    title, _, rest = text.partition("\n\n")
    line = provenance(rest, date)
    if line.startswith("_(kept"):
        return text
    body = rest.replace(line + "\n\n", "", 1)
    return f"{title}\n\n_(kept from an earlier run, not re-measured)_ {line}\n\n{body}"


def write_report(sections: list[str], header: str, notes: str) -> None:
    with open(REPORT, "w", encoding="utf-8") as report:
        report.write("\n\n".join([header, *sections]) + f"\n\n{NOTES_MARKER}{notes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every configuration, longer budgets")
    parser.add_argument("--sections", nargs="*", choices=tuple(TITLES), default=list(TITLES),
                        help="sections to measure (default: all); the others are kept")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(WORKERS[spec.pop("task")](**spec)))
        return
    sys.path.insert(0, BENCH_DIR)
    from segkeras.calibration import matmul_gflops

    start = time.perf_counter()
    command = "python bench/run.py" + (" --full" if args.full else "") + (
        "" if set(args.sections) == set(TITLES) else " --sections " + " ".join(args.sections))
    calibration = matmul_gflops()
    print(calibration, flush=True)
    old, old_date, notes = old_sections()
    out, values = {}, {}
    bodies = {
        "throughput": lambda: section_throughput(args.full),
        "versus": section_versus,
        "scaling": lambda: section_scaling(args.full),
        "roi_align": lambda: section_roi_align(args.full),
        "demo": section_demo,
    }
    for name in ("throughput", "versus", "scaling", "roi_align", "demo"):
        if name in args.sections:
            print(TITLES[name], flush=True)
            out[name], values[name] = measured(TITLES[name], command, calibration, bodies[name])
    number = {name: title.split(".", 1)[0] for name, title in TITLES.items()}
    if "throughput" in values:
        rates, source = values["throughput"], "section 1, this run"
    else:
        rates = throughput_from_table(old.get(number["throughput"], ""))
        source = f"section 1, measured {old_date}"
    if "pipeline" in args.sections:
        out["pipeline"], _ = measured(TITLES["pipeline"], command, calibration, lambda: (
            section_pipeline(rates[("unet", "mobilenetv2", 128, 8)]["train"], source)))
    if "flops" in args.sections:
        out["flops"], _ = measured(TITLES["flops"], command, calibration,
                                   lambda: section_flops(rates, source, calibration))
    if "throughput" not in out and rates:  # re-rendered: the old table's FLOP column was wrong
        out["throughput"] = kept(number["throughput"], {number["throughput"]: (
            f"## {TITLES['throughput']}\n\n{provenance(old.get(number['throughput']), old_date)}"
            f"\n\n{render_throughput(rates)}")}, old_date)
    sections = [out.get(name) or kept(number[name], old, old_date) for name in TITLES]
    header = (f"# Benchmarks\n\nMachine: {_machine()}\n\nLast run: {datetime.date.today()}, "
              f"`{command}` ({(time.perf_counter() - start) / 60:.1f} min); {calibration} at its "
              "start. Each section says when it was measured. Regenerate with `make bench` "
              "(quick) or `python bench/run.py --full`.\n")
    write_report(sections, header, notes)
    print(f"wrote {os.path.normpath(REPORT)} in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
