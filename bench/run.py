"""segkeras benchmarks: speed, quality against a reference recipe, scaling and memory.

    python bench/run.py                          # quick (make bench), every section
    python bench/run.py --sections demo flops    # re-measure some sections, keep the others
    python bench/run.py --full                   # every architecture x backbone x size x batch
    python bench/run.py --smoke                  # every section tiny, into a scratch folder
    cd bench; python versus.py quality --out results/versus_quality_x.json   # section 2's mIoU

The plain command is the quiet-machine pass: the matmul calibration (at the start and at the
end), the demo, and every speed section, then BENCHMARKS.md. Section 2's mIoU does not depend on
the load and comes from the stored ``results/versus_quality*.json`` records.

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
SMOKE = False  # --smoke: every section at a tiny setting, into a scratch folder (tests run.py)
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
    """The registry's semantic builders, then the mask head (Mask R-CNN has section 8)."""
    from segkeras.models import registry

    return [*registry.names("semantic"), MASK_HEAD]


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
    from flops import forward_flops_per_image, tensorflow_forward_flops, training_flops_per_image

    counts = {}
    for arch, backbone, size in plan:
        model = _build(arch, backbone, size)
        counts[f"{arch}|{backbone}|{size}"] = {
            "forward": forward_flops_per_image(model) / 1e9,
            "forward_tensorflow": tensorflow_forward_flops(model) / 1e9,
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
    """``python -m segkeras demo`` in a subprocess; its metrics.json (scores, the demo's own
    timings) and the whole command's wall and CPU seconds, interpreter start included."""
    cpu, wall = _children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "segkeras", "demo", "--out", out,
                           *(["--quick"] if SMOKE else [])],
                          capture_output=True, text=True, cwd=os.path.join(BENCH_DIR, os.pardir))
    if done.returncode != 0:
        raise RuntimeError(f"demo failed:\n{done.stderr[-3000:]}")
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as metrics:
        return {**json.load(metrics), "command_wall_s": time.perf_counter() - wall,
                "command_cpu_s": _children_cpu() - cpu}


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


def _results_file(name: str) -> str:
    return os.path.join(RESULTS, f"{name}.json")


def measure(name: str, command: str, calibration, body) -> dict:
    """Run ``body()`` (the section's data) and store it in ``results/<name>.json`` with its
    provenance: when, by which command, load average, wall and CPU seconds, calibration."""
    load, cpu, wall = os.getloadavg()[0], _children_cpu(), time.perf_counter()
    data = body()
    stored = {"provenance": {
        "measured": f"{datetime.datetime.now():%Y-%m-%d %H:%M}", "command": command,
        "wall_s": round(time.perf_counter() - wall), "cpu_s": round(_children_cpu() - cpu),
        "load_before": round(load, 1), "load_after": round(os.getloadavg()[0], 1),
        "cpus": os.cpu_count(), "calibration": str(calibration),
        "calibration_gflops": round(calibration.gflops, 1)}, "data": data}
    os.makedirs(RESULTS, exist_ok=True)
    with open(_results_file(name), "w", encoding="utf-8") as file:
        json.dump(stored, file, indent=1)
    return stored


def load_results(name: str) -> dict | None:
    if not os.path.exists(_results_file(name)):
        return None
    with open(_results_file(name), encoding="utf-8") as file:
        return json.load(file)


def provenance_line(p: dict) -> str:
    if "note" in p:
        return f"_Measured {p['measured']} by `{p['command']}`; {p['note']}._"
    return (f"_Measured {p['measured']} by `{p['command']}`: worker wall {p['wall_s']} s, CPU "
            f"(user+sys) {p['cpu_s']} s; load average {p['load_before']} before, "
            f"{p['load_after']} after ({p['cpus']} cores); {p['calibration']}._")


# ----------------------------------------------------------------------------- sections


def measure_throughput(full: bool) -> list[dict]:
    backbones = ("mobilenetv2", "resnet50")
    plan = [(a, b, s, n) for a in architectures() for b in backbones
            for s in (128, 256) for n in (8, 16)]
    if not full:
        plan = [(a, b, 128, 8) for a in architectures() for b in backbones]
    if SMOKE:
        plan = [("unet", "mobilenetv2", 128, 8), (MASK_HEAD, "mobilenetv2", 64, 2)]
    return [{"arch": arch, "backbone": backbone, "size": size, "batch": batch,
             **run_worker("throughput", arch=arch, backbone=backbone, size=size, batch=batch,
                          steps=1 if SMOKE else 10 if full else 5)}
            for arch, backbone, size, batch in plan]


def render_throughput(rows: list[dict]) -> str:
    return ("Encoder frozen (the transfer-learning stage); deconvnet with skips; hourglass: 2 "
            "stacks on the backbone's P2; mask head: 8 boxes per image. Training FLOPs and the "
            "GFLOP/s these rates achieve: section 6.\n\n"
            + _table(["model", "backbone", "size", "batch", "params", "train img/s",
                      "inference img/s", "peak RSS MiB"],
                     [[r["arch"], r["backbone"], f"{r['size']}²", r["batch"],
                       f"{r['params'] / 1e6:.1f}M", f"{r['train']:.1f}", f"{r['infer']:.1f}",
                       f"{r['rss']:.0f}"] for r in rows]))


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def _versus_quality(recipe: dict) -> tuple[list[dict], list[str], list[str]]:
    """The quality records of every ``results/versus_quality*.json`` run with ``recipe`` and the
    commands that wrote them; runs with another recipe (an older one) are not mixed in but
    summarised, one sentence per file."""
    import glob

    records, commands, others = [], [], []
    for path in sorted(glob.glob(os.path.join(RESULTS, "versus_quality*.json"))):
        with open(path, encoding="utf-8") as file:
            stored = json.load(file)
        if stored["recipe"] == recipe:
            records += stored["records"]
            commands.append(stored["command"])
            continue
        older = {"loss": "cross-entropy", **stored["recipe"]}  # before "loss" was recorded
        changed = ", ".join(f"{key} {older.get(key)}" for key in recipe
                            if older.get(key) != recipe[key])
        by_model = {}
        for record in stored["records"]:
            by_model.setdefault(record["model"], []).append(record["miou"])
        others.append(f"With {changed} (`bench/results/{os.path.basename(path)}`): "
                      + "; ".join(f"`{kind}` {_mean_sd(mious)} over {len(mious)} seed(s) "
                                  f"({', '.join(f'{m:.3f}' for m in mious)})"
                                  for kind, mious in by_model.items()) + ".")
    return records, commands, others


def measure_versus() -> dict:
    """A short speed run per model now; the quality records come from
    ``results/versus_quality*.json`` (``python bench/versus.py quality --out ...``: long, and
    valid on a busy machine)."""
    speed_file = os.path.join(RESULTS, "versus_speed.json")
    if os.path.exists(speed_file):
        os.remove(speed_file)
    tiny = ["--models", "segkeras", "--steps", "1", "--rounds", "1"] if SMOKE else []
    subprocess.run([sys.executable, "versus.py", "speed", "--out", speed_file, *tiny],
                   check=True, cwd=BENCH_DIR)
    with open(speed_file, encoding="utf-8") as file:
        return json.load(file)


def _share(runs: list[dict], key: str, name: str) -> float:
    return statistics.mean(r[key][name] for r in runs)


def _versus_explanation(by_model: dict, classes: list[str]) -> list[str]:
    """Sentences derived from the per-class records: what each model predicts, and what
    scoring the same weights on batch statistics changes."""
    notes = []
    for kind, runs in by_model.items():
        if not runs or "predicted_fraction" not in runs[0]:
            continue
        background = classes[0]
        predicted, true = (_share(runs, "predicted_fraction", background),
                           _share(runs, "true_fraction", background))
        shapes = ", ".join(f"{name} {_share(runs, 'iou', name):.2f}" for name in classes[1:])
        batch = statistics.mean(r["miou_batch_statistics"] for r in runs)
        moving = statistics.mean(r["miou"] for r in runs)
        reading = []
        if predicted > true + 0.05:
            reading.append("it labels shape pixels as background more often than not"
                           if predicted > (1 + true) / 2 else
                           "it labels part of the shapes' pixels as background")
        if batch - moving > 0.05:
            reading.append("its moving BatchNorm statistics cost it "
                           f"{batch - moving:.2f} of mIoU")
        if kind == "reference_tutorial" and reading:
            reading.append("offline its frozen encoder keeps its random weights and initial "
                           "BatchNorm statistics, so only the decoder learns, from random "
                           "features (the tutorial freezes an ImageNet-pretrained encoder)")
        notes.append(
            f"`{kind}` labels {100 * predicted:.0f}% of the held-out pixels {background} "
            f"(truly {background}: {100 * true:.0f}%); mean IoU per shape {shapes}; the same "
            f"weights score {batch:.3f} with BatchNorm on batch statistics against {moving:.3f} "
            f"on the moving ones" + (": " + " and ".join(reading) if reading else "") + ".")
    return notes


def _batch_statistics_gap(by_model: dict) -> str:
    """The like-for-like difference again with every BatchNorm on batch statistics."""
    scored = [[r["miou_batch_statistics"] for r in by_model[kind] if "miou_batch_statistics" in r]
              for kind in ("segkeras", "reference_bn099")]
    if not all(scored):
        return ""
    return (f"; with BatchNorm on batch statistics, "
            f"{statistics.mean(scored[0]) - statistics.mean(scored[1]):+.3f}")


def render_versus(speed: dict) -> str:
    import versus

    recipe = versus.RECIPE
    records, commands, others = _versus_quality(recipe)
    by_model, timings = {}, {}
    for record in speed["records"]:
        timings.setdefault(record["model"], []).append(record)
    fast = {kind: {"params": runs[0]["params"],
                   "img_per_s": statistics.median(r["img_per_s"] for r in runs),
                   "img_per_s_range": (min(r["img_per_s"] for r in runs),
                                       max(r["img_per_s"] for r in runs)),
                   "cpu_ms_per_img": statistics.median(r["cpu_ms_per_img"] for r in runs),
                   "runs": len(runs)} for kind, runs in timings.items()}
    for record in records:
        by_model.setdefault(record["model"], []).append(record)
    classes = next((list(r["iou"]) for r in records if "iou" in r), [])
    rows, mean, sd = [], {}, {}
    for kind in versus.MODELS:
        runs, timed = by_model.get(kind, []), fast.get(kind, {})
        if not runs and not timed:
            continue
        mious = [r["miou"] for r in runs]
        if mious:
            mean[kind] = statistics.mean(mious)
            sd[kind] = statistics.stdev(mious) if len(mious) > 1 else float("nan")
        batch_stats = [r["miou_batch_statistics"] for r in runs if "miou_batch_statistics" in r]
        rows.append([
            kind, f"{timed['params'] / 1e6:.2f}M" if timed else "",
            f"{versus.TUTORIAL_SIZE if kind == 'reference_tutorial' else recipe['size']}²",
            (f"{timed['img_per_s']:.1f} ({timed['img_per_s_range'][0]:.0f}–"
             f"{timed['img_per_s_range'][1]:.0f})") if timed else "not measured",
            f"{timed['cpu_ms_per_img']:.1f}" if timed else "",
            _mean_sd(mious) if mious else "not measured",
            f"{min(mious):.3f}–{max(mious):.3f}" if mious else "", len(runs),
            _mean_sd(batch_stats) if batch_stats else "",
            f"{100 * _share(runs, 'predicted_fraction', classes[0]):.0f}%" if batch_stats else "",
            f"{sum(r['cpu_s'] for r in runs) / 60:.0f}" if runs else "",
            f"{min(r['load_before'] for r in runs):.0f}–{max(r['load_after'] for r in runs):.0f}"
            if runs else ""])
    text = (f"Built-in shapes ({recipe['n_train']} training / {recipe['n_val']} held-out images "
            f"at {recipe['size']}²; the tutorial's recipe resizes them to "
            f"{versus.TUTORIAL_SIZE}²), batch {recipe['batch']}, {recipe['steps']} steps, "
            f"Adam {recipe['learning_rate']} with {recipe['schedule']} decay to 0, "
            f"{recipe['loss']} (the demo's recipe, for every model), random initialisation; a "
            "seed sets the initial weights and the "
            "shuffle. Models (`bench/versus.py`): `segkeras`, the light decoder, BatchNorm trained "
            "with momentum 0.99; `reference_bn099`, the tutorial's U-Net with the same BatchNorm "
            "treatment (like for like); `reference_bn0999`, with keras.applications' momentum "
            "0.999; `reference_tutorial`, as the tutorial runs it: frozen encoder at 128², random "
            "because offline (the tutorial's is ImageNet-pretrained). mIoU: "
            + ("; ".join(f"`{c}`" for c in commands) or "**not measured yet**")
            + ", one process per run (a score after a fixed number of steps does not depend on "
            "the load); img/s and CPU ms/img: this section's command, 100 timed steps at batch "
            f"{speed.get('recipe', recipe)['batch']}, the median (min–max) of "
            f"{max((t['runs'] for t in fast.values()), default=0)} runs per model, the models "
            "taking turns (one process per run), from the demo's pipeline (tf.data's autotuner "
            "off: note 3).\n\n"
            + _table(["model", "params", "size", "train img/s", "CPU ms/img",
                      "held-out mIoU (mean ± sd)", "min–max", "seeds",
                      "mIoU, same weights, BatchNorm on batch statistics",
                      f"pixels predicted {classes[0] if classes else 'background'}",
                      "quality runs CPU min", "load during quality runs"], rows))
    notes = []
    if "segkeras" in mean and "reference_bn099" in mean:
        ratio = (f", {fast['segkeras']['img_per_s'] / fast['reference_bn099']['img_per_s']:.2f}x "
                 "the reference's img/s" if "segkeras" in fast and "reference_bn099" in fast
                 else "")
        notes.append("Like for like (both BatchNorm momentum 0.99): segkeras "
                     f"{mean['segkeras'] - mean['reference_bn099']:+.3f} mIoU (sd "
                     f"{sd['segkeras']:.3f} and {sd['reference_bn099']:.3f} over "
                     f"{len(by_model['segkeras'])} and {len(by_model['reference_bn099'])} "
                     f"seeds){ratio}" + _batch_statistics_gap(by_model) + ".")
    notes += _versus_explanation(by_model, classes) + others
    return text + ("\n\n" + " ".join(notes) if notes else "")


def measure_pipeline(unet_rate: float, rate_source: str) -> dict:
    r = run_worker("pipeline", size=128, batch=16, count=64 if SMOKE else 1024)
    return {"pipeline": r["pipeline"], "model_rate": unet_rate, "model_rate_source": rate_source}


def render_pipeline(d: dict) -> str:
    return (_table(["what", "img/s"], [
                ["make_dataset(128², batch 16, augment=True, shuffle=True)",
                 f"{d['pipeline']:.0f}"],
                ["segkeras U-Net (mobilenetv2) training at 128², batch 8 "
                 f"({d['model_rate_source']})", f"{d['model_rate']:.1f}"]])
            + f"\n\nThe pipeline delivers {d['pipeline'] / d['model_rate']:.0f}x what training "
            "consumes (target: at least 5x).")


def measure_scaling(full: bool) -> list[dict]:
    sizes = (64, 128, 256, 512) if full else (64, 128, 256)
    batches = (1, 4, 8, 16, 32) if full else (4, 8, 16)
    if SMOKE:
        sizes, batches = (64, 128), (4, 8)
    rows = []
    for size, batch in [(s, 8) for s in sizes] + [(128, b) for b in batches if b != 8]:
        r = run_worker("throughput", arch="unet", backbone="mobilenetv2", size=size, batch=batch,
                       steps=1 if SMOKE else 5 if size <= 256 else 3)
        rows.append({"size": size, "batch": batch, "train_ms": 1000 * batch / r["train"],
                     "infer_ms": 1000 * batch / r["infer"], "train": r["train"], "rss": r["rss"]})
    return rows


def render_scaling(rows: list[dict]) -> str:
    ms = {(r["size"], r["batch"]): r["train_ms"] for r in rows}
    sizes = sorted(size for size, batch in ms if batch == 8)
    batches = sorted(batch for size, batch in ms if size == 128)
    doubling = ", ".join(f"{a}²→{b}²: {ms[(b, 8)] / ms[(a, 8)]:.1f}x"
                         for a, b in zip(sizes, sizes[1:], strict=False))
    growth = ", ".join(f"{a}→{b}: {ms[(128, b)] / ms[(128, a)]:.1f}x"
                       for a, b in zip(batches, batches[1:], strict=False))
    return (_table(["size", "batch", "train ms/step", "inference ms/step", "train img/s",
                    "peak RSS MiB"],
                   [[f"{r['size']}²", r["batch"], f"{r['train_ms']:.0f}", f"{r['infer_ms']:.0f}",
                     f"{r['train']:.1f}", f"{r['rss']:.0f}"] for r in rows])
            + f"\n\nTraining step time, batch 8, per doubling of the side (4x the pixels): "
              f"{doubling}. At 128², from one batch size to the next: {growth}.")


def measure_roi_align(full: bool) -> list[dict]:
    counts = (16, 64, 128, 256, 512, 1024) if full else (16, 128, 512, 1024)
    if SMOKE:
        counts = (16, 32)
    return [{"batch": batch, "height": height, "boxes": boxes,
             **run_worker("roi_align", boxes=boxes, batch=batch, height=height, channels=256)}
            for batch, height in ((1, 32), (2, 64)) for boxes in counts]


def render_roi_align(rows: list[dict]) -> str:
    forward = {(r["height"], r["boxes"]): r["forward_ms"] for r in rows}
    counts = sorted({r["boxes"] for r in rows})
    low, high = counts[0], counts[-1]
    return (_table(["features", "boxes", "forward ms", "forward+grad ms", "boxes/s"],
                   [[f"({r['batch']}, {r['height']}, {r['height']}, 256)", r["boxes"],
                     f"{r['forward_ms']:.2f}", f"{r['backward_ms']:.2f}",
                     f"{r['boxes'] / r['forward_ms'] * 1000:.0f}"] for r in rows])
            + f"\n\nForward time from {low} to {high} boxes ({high // low}x as many): "
              f"{forward[(32, high)] / forward[(32, low)]:.0f}x on (1, 32, 32, 256); at {high} "
              f"boxes the (2, 64, 64, 256) map takes "
              f"{forward[(64, high)] / forward[(32, high)]:.2f}x the time of (1, 32, 32, 256).")


def measure_flops(throughput: dict) -> dict:
    rows = throughput["data"]
    plan = sorted({(r["arch"], r["backbone"], r["size"]) for r in rows})
    return {"counts": run_worker("flops", plan=[list(key) for key in plan])}


def render_flops(d: dict, throughput: dict) -> str:
    table, fractions = [], []
    measured = throughput["provenance"]
    peak = measured.get("calibration_gflops")  # None: the img/s predate calibrations
    agree = all(abs(c["forward_tensorflow"] - c["forward"]) <= 1e-6 * c["forward"]
                for c in d["counts"].values() if "forward_tensorflow" in c)
    for r in throughput["data"]:
        count = d["counts"][f"{r['arch']}|{r['backbone']}|{r['size']}"]
        achieved = count["train"] * r["train"]
        fractions.append(achieved / peak if peak else None)
        table.append([r["arch"], r["backbone"], f"{r['size']}²", f"{count['forward']:.2f}",
                      f"{count['train']:.2f}", f"{r['train']:.1f}", f"{achieved:.0f}",
                      f"{100 * achieved / peak:.0f}%" if peak else "—",
                      f"{T4_FP32_FLOPS / 1e9 / count['train']:.0f}",
                      f"{T4_MIXED_FLOPS / 1e9 / count['train']:.0f}"])
    if peak is None:
        verdict = ("no calibration was measured with these img/s, so the share of the matmul "
                   "peak waits for section 1's next run. ")
    else:
        verdict = (f"held against the {measured['calibration']} of the same run: "
                   + ("every model stays below it" if max(fractions) < 1 else
                      "**some exceed it: a count or a rate is wrong**")
                   + f" (highest: {100 * max(fractions):.0f}%). ")
    check = ("" if not any("forward_tensorflow" in c for c in d["counts"].values()) else
             " The forward counts " + ("equal" if agree else "**differ from**") +
             " TensorFlow's own op statistics of the traced forward graph "
             "(`flops.tensorflow_forward_flops`) for every model.")
    return ("Training GFLOPs per image, encoder frozen (`bench/flops.py`: convolutions and dense "
            "layers; a frozen layer costs its forward pass, a trained one 3x; the mask head's "
            "layers once per box, 8 boxes per image)." + check + " Achieved GFLOP/s = training "
            "GFLOPs x train img/s of section 1 (measured "
            f"{measured['measured']}); " + verdict +
            "No GPU was lent to the session that wrote this file: "
            f"the GPU columns assume a T4 sustaining {T4_FP32_FLOPS / 1e12:.1f} TFLOP/s in float32 "
            f"and {T4_MIXED_FLOPS / 1e12:.0f} TFLOP/s with mixed precision (assumptions, ±50%).\n\n"
            + _table(["model", "backbone", "size", "forward GFLOPs/img", "train GFLOPs/img",
                      "train img/s", "achieved GFLOP/s", "of matmul peak", "est. T4 fp32 img/s",
                      "est. T4 mixed img/s"], table))


def measure_demo() -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        metrics = worker_demo(out)
    return {key: metrics[key] for key in ("mean_iou", "pixel_accuracy", "iou", "recipe", "timing",
                                          "command_wall_s", "command_cpu_s")}


def render_demo(d: dict) -> str:
    timing, recipe = d["timing"], d["recipe"]
    per_class = ", ".join(f"{name} {iou:.3f}" for name, iou in d["iou"].items())
    wall = d["command_wall_s"]
    return (f"`python -m segkeras demo` (what `make demo` runs after installing): U-Net "
            f"(MobileNetV2, {recipe['weights']} initialisation, decoder "
            f"{recipe['decoder_filters']}) on {recipe['train_images']} built-in shapes at "
            f"{recipe['image_size']}², batch "
            f"{recipe['batch_size']}, {recipe['epochs']} epochs; scored on "
            f"{recipe['test_images']} held-out images.\n\n"
            + _table(["wall, whole command", "CPU user+sys", "training (wall)", "held-out mIoU",
                      "IoU per class", "the demo's calibration"],
                     [[f"{int(wall // 60)} min {wall % 60:02.0f} s", f"{d['command_cpu_s']:.0f} s",
                       f"{timing['train_s']:.0f} s", f"{d['mean_iou']:.3f}", per_class,
                       f"{timing['calibration_gflops']:.0f} GFLOP/s (load average "
                       f"{timing['load_average']:.1f} at the end)"]]))


TITLES = {
    "throughput": "1. Throughput and memory per architecture",
    "versus": "2. segkeras U-Net vs the TensorFlow tutorial's U-Net",
    "pipeline": "3. Input pipeline vs model",
    "scaling": "4. Scaling (U-Net, mobilenetv2, encoder frozen)",
    "roi_align": "5. RoIAlign (14x14, sampling ratio 2, compiled)",
    "flops": "6. FLOPs, achieved GFLOP/s and GPU estimates",
    "demo": "7. The demo (`make demo`)",
}


def mask_rcnn_section() -> str:
    """Section 8, rendered from ``results/mask_rcnn.json``, which ``train_mask_rcnn.py`` and
    ``torchvision_mask_rcnn.py`` write (20 CPU-minutes each: never re-measured here)."""
    import mask_rcnn_section

    return f"## {mask_rcnn_section.TITLE}\n\n{mask_rcnn_section.render()}"


def _use_scratch_folder() -> None:
    """--smoke: write results and the report under a temporary folder (seeded with the stored
    results, so that sections not re-measured still render), never over the real ones."""
    import shutil
    import tempfile

    global SMOKE, RESULTS, REPORT
    scratch = os.environ.get("SEGKERAS_BENCH_SCRATCH") or tempfile.mkdtemp(prefix="bench_smoke_")
    shutil.copytree(RESULTS, os.path.join(scratch, "results"), dirs_exist_ok=True)
    if os.path.exists(REPORT):
        shutil.copy(REPORT, os.path.join(scratch, "BENCHMARKS.md"))
    SMOKE, RESULTS = True, os.path.join(scratch, "results")
    REPORT = os.path.join(scratch, "BENCHMARKS.md")


def read_notes() -> str:
    if not os.path.exists(REPORT):
        return "\n"
    with open(REPORT, encoding="utf-8") as old:
        return old.read().partition(NOTES_MARKER)[2] or "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every configuration, longer budgets")
    parser.add_argument("--sections", nargs="*", choices=tuple(TITLES), default=list(TITLES),
                        help="sections to measure (default: all); the others are rendered from "
                             "their stored results in bench/results/")
    parser.add_argument("--smoke", action="store_true",
                        help="every chosen section at a tiny setting, results and report in a "
                             "scratch folder (checks this script in a few minutes)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        _use_scratch_folder()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(WORKERS[spec.pop("task")](**spec)))
        return
    sys.path.insert(0, BENCH_DIR)
    from segkeras.calibration import matmul_gflops

    start = time.perf_counter()
    command = "python bench/run.py" + (" --full" if args.full else "") + (
        " --smoke" if args.smoke else "") + (
        "" if set(args.sections) == set(TITLES) else
        " --sections " + (" ".join(args.sections) or "(none)"))
    calibration = matmul_gflops()
    print(calibration, flush=True)
    measurers = {
        "throughput": lambda: measure_throughput(args.full),
        "versus": measure_versus,
        "scaling": lambda: measure_scaling(args.full),
        "roi_align": lambda: measure_roi_align(args.full),
        "demo": measure_demo,
    }
    for name in ("demo", "throughput", "versus", "scaling", "roi_align", "pipeline", "flops"):
        if name not in args.sections:
            continue
        print(TITLES[name], flush=True)
        if name == "pipeline":
            throughput = load_results("throughput")
            unet = next(r for r in throughput["data"] if (
                r["arch"], r["backbone"], r["size"], r["batch"]) == ("unet", "mobilenetv2", 128, 8))
            source = f"section 1, measured {throughput['provenance']['measured']}"
            measure(name, command, calibration,
                    lambda rate=unet["train"], source=source: measure_pipeline(rate, source))
        elif name == "flops":
            measure(name, command, calibration,
                    lambda: measure_flops(load_results("throughput")))
        else:
            measure(name, command, calibration, measurers[name])
    renderers = {
        "throughput": render_throughput, "versus": render_versus, "pipeline": render_pipeline,
        "scaling": render_scaling, "roi_align": render_roi_align, "demo": render_demo,
        "flops": lambda d: render_flops(d, load_results("throughput")),
    }
    end_calibration = matmul_gflops()
    print(end_calibration, flush=True)
    sections = []
    for name, title in TITLES.items():
        stored = load_results(name)
        if stored is None:
            sections.append(f"## {title}\n\nNot measured yet: `python bench/run.py --sections "
                            f"{name}`.")
            continue
        fresh = "" if name in args.sections else "_(not re-measured by the last run)_ "
        sections.append(f"## {title}\n\n{fresh}{provenance_line(stored['provenance'])}\n\n"
                        f"{renderers[name](stored['data'])}")
    sections.append(mask_rcnn_section())
    header = (f"# Benchmarks\n\nMachine: {_machine()}\n\nLast run: {datetime.date.today()}, "
              f"`{command}` ({(time.perf_counter() - start) / 60:.1f} min); {calibration} at its "
              f"start, {end_calibration.gflops:.0f} GFLOP/s (load average "
              f"{end_calibration.load_average:.1f}) at its end. Every table is rendered by "
              "`bench/run.py` from `bench/results/*.json`, and "
              "each section says when and how it was measured. Regenerate with `make bench` "
              "(quick) or `python bench/run.py --full`.\n")
    notes = read_notes()  # before opening the report for writing empties it
    with open(REPORT, "w", encoding="utf-8") as report:
        report.write("\n\n".join([header, *sections]) + f"\n\n{NOTES_MARKER}{notes}")
    print(f"wrote {os.path.normpath(REPORT)} in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
