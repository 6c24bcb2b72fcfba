"""segkeras benchmarks: speed, quality against a reference recipe, scaling and memory.

    python bench/run.py           # quick (make bench, about 15 minutes on 2 CPU cores)
    python bench/run.py --full    # every architecture x backbone x size x batch, longer budgets

Writes BENCHMARKS.md (tables, machine, versions, date, command). Every measurement runs in its own
subprocess so that peak RSS belongs to that configuration alone. Random weights throughout (the
speed of a network does not depend on its weights; no download needed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPORT = os.path.join(BENCH_DIR, os.pardir, "BENCHMARKS.md")
NOTES_MARKER = "<!-- hand-written notes below are kept by bench/run.py -->"
NUM_CLASSES = 4  # background + the three shapes every lab uses by default
# Assumed sustained training throughput of a Colab T4 (peak 8.1 TFLOP/s fp32, 65 fp16 tensor core);
# conv nets of this size typically sustain 40-50% in fp32 and about 3x that with mixed precision.
T4_FP32_FLOPS = 3.5e12
T4_MIXED_FLOPS = 10e12


# ----------------------------------------------------------------------------- workers


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build(arch: str, backbone: str, size: int, trainable: bool = False):
    from segkeras.models.deconv import deconvnet
    from segkeras.models.fcn import fcn
    from segkeras.models.hourglass import hourglass
    from segkeras.models.mask_head import instance_segmenter
    from segkeras.models.unet import unet

    shape = (size, size, 3)
    common = dict(weights=None, encoder_trainable=trainable, input_shape=shape)
    if arch.startswith("fcn"):
        return fcn(NUM_CLASSES, backbone, variant=arch[3:], **common)
    if arch == "deconvnet":
        return deconvnet(NUM_CLASSES, backbone, skips=True, **common)
    if arch == "unet":
        return unet(NUM_CLASSES, backbone, **common)
    if arch == "hourglass":
        return hourglass(NUM_CLASSES, num_stacks=2, backbone=backbone, **common)
    if arch == "mask_head":
        return instance_segmenter(NUM_CLASSES, backbone, **common)
    raise ValueError(f"unknown architecture {arch}")


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
    """Train and inference img/s, parameters, training GFLOPs/img and peak RSS of one config."""
    import keras
    from flops import training_flops_per_image

    model = _build(arch, backbone, size)
    inputs, targets, loss = _batch_for(model, arch, batch, size)
    model.compile(keras.optimizers.Adam(1e-3), loss)
    train = _rate(lambda: model.train_on_batch(inputs, targets), batch, steps)
    infer = _rate(lambda: model.predict_on_batch(inputs), batch, steps)
    return {
        "params": model.count_params(), "train": train, "infer": infer,
        "gflops": training_flops_per_image(model) / 1e9, "rss": _peak_rss_mib(),
    }


def _reference_unet(size: int):
    """The TensorFlow segmentation tutorial's model: MobileNetV2 skips, pix2pix upsampling."""
    import keras

    image = keras.Input((size, size, 3))
    base = keras.applications.MobileNetV2(
        input_tensor=keras.layers.Rescaling(1 / 255.0)(image), include_top=False, weights=None)
    names = ["block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
             "block_13_expand_relu", "block_16_project"]
    skips = [base.get_layer(name).output for name in names]
    x = skips[-1]
    for filters, skip in zip((512, 256, 128, 64), reversed(skips[:-1]), strict=True):
        x = keras.layers.Conv2DTranspose(
            filters, 3, strides=2, padding="same", use_bias=False,
            kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02))(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
        x = keras.layers.Concatenate()([x, skip])
    logits = keras.layers.Conv2DTranspose(NUM_CLASSES, 3, strides=2, padding="same")(x)
    return keras.Model(image, logits, name="tutorial_unet")


def worker_versus(model_kind: str, size: int, batch: int, steps: int, n_train: int,
                  decoder_filters: list[int] | None = None) -> dict:
    """Train one U-Net for ``steps`` steps on built-in shapes; img/s and held-out mIoU."""
    import keras

    from segkeras.data import pipeline, shapes
    from segkeras.evaluate.semantic import evaluate_semantic

    keras.utils.set_random_seed(0)
    data = shapes.generate(n_train + 256, image_size=size, seed=1)
    train, val = data.split(256 / len(data))
    train_ds = pipeline.make_dataset(train, size, batch, shuffle=True).repeat()
    val_ds = pipeline.make_dataset(val, size, batch)
    if model_kind == "segkeras":
        from segkeras.models.unet import unet

        extra = {"decoder_filters": tuple(decoder_filters)} if decoder_filters else {}
        model = unet(NUM_CLASSES, "mobilenetv2", weights=None, encoder_trainable=True,
                     input_shape=(size, size, 3), **extra)
    else:
        model = _reference_unet(size)
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255))
    model.fit(train_ds, steps_per_epoch=5, epochs=1, verbose=0)  # compile / warm up
    start = time.perf_counter()
    model.fit(train_ds, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    result = evaluate_semantic(model, val_ds, data.class_names)
    from flops import training_flops_per_image

    return {"train": batch * steps / seconds, "miou": result["mean_iou"],
            "params": model.count_params(), "rss": _peak_rss_mib(), "seconds": seconds,
            "gflops": training_flops_per_image(model) / 1e9}


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


WORKERS = {"throughput": worker_throughput, "versus": worker_versus,
           "pipeline": worker_pipeline, "roi_align": worker_roi_align}


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


def section_throughput(full: bool) -> tuple[str, dict]:
    archs = ["fcn32s", "fcn16s", "fcn8s", "deconvnet", "unet", "hourglass", "mask_head"]
    plan = [(a, b, s, n) for a in archs for b in ("mobilenetv2", "resnet50")
            for s in (128, 256) for n in (8, 16)]
    if not full:
        plan = [(a, b, 128, 8) for a in archs for b in ("mobilenetv2", "resnet50")]
    rows, results = [], {}
    for arch, backbone, size, batch in plan:
        r = run_worker("throughput", arch=arch, backbone=backbone, size=size, batch=batch,
                       steps=10 if full else 5)
        results[(arch, backbone, size, batch)] = r
        rows.append([arch, backbone, f"{size}²", batch, f"{r['params'] / 1e6:.1f}M",
                     f"{r['gflops']:.2f}", f"{r['train']:.1f}", f"{r['infer']:.1f}",
                     f"{r['rss']:.0f}"])
    text = ("## 1. Throughput and memory per architecture\n\nEncoder frozen (the transfer-learning "
            "stage); hourglass: 2 stacks on the backbone's P2; mask head: 8 boxes per image. "
            "GFLOPs: training FLOPs per image (3 x forward, convolutions and dense layers).\n\n"
            + _table(["model", "backbone", "size", "batch", "params", "train GFLOPs/img",
                      "train img/s", "inference img/s", "peak RSS MiB"], rows))
    return text, results


LIGHT_DECODER = (64, 48, 32, 16, 16)  # the demo's and the labs' decoder widths


def section_versus(full: bool) -> str:
    size, batch = (128, 16) if full else (64, 16)
    steps, n_train = (1500, 4096) if full else (500, 2048)
    runs = {
        "segkeras unet(mobilenetv2), default decoder": {"model_kind": "segkeras"},
        f"segkeras unet(mobilenetv2, decoder_filters={LIGHT_DECODER})": {
            "model_kind": "segkeras", "decoder_filters": list(LIGHT_DECODER)},
        "TF tutorial U-Net (reference)": {"model_kind": "reference"},
    }
    results = {name: run_worker("versus", size=size, batch=batch, steps=steps, n_train=n_train,
                                **spec) for name, spec in runs.items()}
    reference = results["TF tutorial U-Net (reference)"]
    rows = [[name, f"{r['params'] / 1e6:.2f}M", f"{r['gflops']:.2f}", f"{r['train']:.1f}",
             f"{r['train'] / reference['train']:.2f}x", f"{r['miou']:.3f}",
             f"{r['miou'] - reference['miou']:+.3f}", f"{r['rss']:.0f}"]
            for name, r in results.items()]
    text = ("## 2. segkeras U-Net vs the TensorFlow tutorial's U-Net\n\n"
            f"Same data (built-in shapes, {n_train} training / 256 held-out images, {size}²), "
            f"batch {batch}, {steps} steps each, random initialisation, everything trainable "
            "(segkeras: BatchNorm momentum 0.99 from scratch), Adam 1e-3, sparse cross-entropy.\n\n"
            + _table(["model", "params", "train GFLOPs/img", "train img/s", "speed vs reference",
                      f"held-out mIoU after {steps} steps", "mIoU vs reference", "peak RSS MiB"],
                     rows))
    return text


def section_pipeline(model_rate: float) -> str:
    r = run_worker("pipeline", size=128, batch=16, count=1024)
    return ("## 3. Input pipeline vs model\n\n"
            + _table(["what", "img/s"], [
                ["make_dataset(128², batch 16, augment=True, shuffle=True)",
                 f"{r['pipeline']:.0f}"],
                ["segkeras U-Net (mobilenetv2) training at 128², batch 8, section 1",
                 f"{model_rate:.1f}"],
            ])
            + f"\n\nThe pipeline is **{r['pipeline'] / model_rate:.0f}x** faster than training "
            "consumes it (target: at least 5x), so it is never the bottleneck.")


def section_scaling(full: bool) -> str:
    sizes = (64, 128, 256, 512) if full else (64, 128, 256)
    batches = (1, 4, 8, 16, 32) if full else (4, 8, 16)
    rows = []
    for size, batch in [(s, 8) for s in sizes] + [(128, b) for b in batches if b != 8]:
        r = run_worker("throughput", arch="unet", backbone="mobilenetv2", size=size, batch=batch,
                       steps=5 if size <= 256 else 3)
        rows.append([f"{size}²", batch, f"{1000 * batch / r['train']:.0f}",
                     f"{1000 * batch / r['infer']:.0f}", f"{r['train']:.1f}", f"{r['rss']:.0f}"])
    return ("## 4. Scaling (U-Net, mobilenetv2, encoder frozen)\n\n"
            + _table(["size", "batch", "train ms/step", "inference ms/step", "train img/s",
                      "peak RSS MiB"], rows)
            + "\n\nTime per step grows linearly with the number of pixels (4x per doubling of the "
              "side) and with the batch size once the batch fills both cores; memory grows with "
              "pixels x batch on top of a fixed cost of about 1 GiB for TensorFlow and the model.")


def section_roi_align(full: bool) -> str:
    counts = (16, 64, 128, 256, 512, 1024) if full else (16, 128, 512, 1024)
    rows = []
    for batch, height in ((1, 32), (2, 64)):
        for boxes in counts:
            r = run_worker("roi_align", boxes=boxes, batch=batch, height=height, channels=256)
            rows.append([f"({batch}, {height}, {height}, 256)", boxes, f"{r['forward_ms']:.2f}",
                         f"{r['backward_ms']:.2f}",
                         f"{boxes / r['forward_ms'] * 1000:.0f}"])
    return ("## 5. RoIAlign (14x14, sampling ratio 2, compiled)\n\n"
            + _table(["features", "boxes", "forward ms", "forward+grad ms", "boxes/s"], rows)
            + "\n\nCost is linear in the number of boxes (K x 14 x 14 x 4 samples x 4 gathers) and "
              "almost independent of the feature-map size.")


def section_gpu(throughput: dict) -> str:
    rows = []
    for (arch, backbone, size, batch), r in throughput.items():
        if size != 128 or batch != 8:
            continue
        cpu_flops = r["gflops"] * r["train"]
        rows.append([arch, backbone, f"{r['gflops']:.2f}", f"{cpu_flops:.0f}",
                     f"{T4_FP32_FLOPS / 1e9 / r['gflops']:.0f}",
                     f"{T4_MIXED_FLOPS / 1e9 / r['gflops']:.0f}"])
    return ("## 6. GPU\n\nNo GPU was lent to the session that produced this file, "
            "so GPU numbers are estimates from measured FLOPs: a T4 sustaining "
            f"{T4_FP32_FLOPS / 1e12:.1f} TFLOP/s in float32 and "
            f"{T4_MIXED_FLOPS / 1e12:.0f} TFLOP/s "
            "with mixed precision (XLA on). Treat them as +-50%.\n\n"
            + _table(["model", "backbone", "train GFLOPs/img (128²)", "this CPU GFLOP/s achieved",
                      "est. T4 fp32 img/s", "est. T4 mixed img/s"], rows))


def write_report(sections: list[str], command: str, seconds: float) -> None:
    notes = ""
    if os.path.exists(REPORT):
        with open(REPORT, encoding="utf-8") as old:
            text = old.read()
        if NOTES_MARKER in text:
            notes = text.split(NOTES_MARKER, 1)[1]
    header = (f"# Benchmarks\n\nMachine: {_machine()}\n\nDate: {datetime.date.today()}; command: "
              f"`{command}` ({seconds / 60:.1f} min). Regenerate with `make bench` (quick) or "
              "`python bench/run.py --full`.\n")
    with open(REPORT, "w", encoding="utf-8") as report:
        report.write("\n\n".join([header, *sections]) + f"\n\n{NOTES_MARKER}{notes or chr(10)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every configuration, longer budgets")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(WORKERS[spec.pop("task")](**spec)))
        return
    start = time.perf_counter()
    print("1. throughput")
    throughput_text, throughput = section_throughput(args.full)
    print("2. segkeras vs reference")
    versus_text = section_versus(args.full)
    print("3. pipeline")
    pipeline_text = section_pipeline(throughput[("unet", "mobilenetv2", 128, 8)]["train"])
    print("4. scaling")
    scaling_text = section_scaling(args.full)
    print("5. RoIAlign")
    roi_text = section_roi_align(args.full)
    sections = [throughput_text, versus_text, pipeline_text, scaling_text, roi_text,
                section_gpu(throughput)]
    command = "python bench/run.py" + (" --full" if args.full else "")
    write_report(sections, command, time.perf_counter() - start)
    print(f"wrote {os.path.normpath(REPORT)} in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
