"""segkeras' U-Net against the TensorFlow segmentation tutorial's U-Net, over several seeds.

    python bench/s2_versus_runs.py quality --seeds 0 1 2 --out results/versus_quality.json
    python bench/s2_versus_runs.py speed --size 128 --batch 16 --models segkeras reference_bn099
    python bench/s2_versus_runs.py cpu --size 128 256 --batch 16 8 \\
        --out results/versus_candidates_cpu.json

``quality``: held-out mean IoU after a fixed number of steps, one fresh process per (model, seed),
with per-class IoU, the share of pixels predicted as each class, and the mIoU of the same weights
with BatchNorm on batch statistics (``training=True``: what the moving statistics cost).
The score depends on the steps taken, not on how fast they ran, so it may be measured on a busy
machine; each record keeps its wall and CPU seconds and the load average anyway. ``speed``: a short
timed run per model through ``fit`` (training img/s), to be taken on a quiet machine, the models
taking turns. ``cpu``: CPU milliseconds per training step and image of each model, one process per
size and batch: comparable on a busy machine.

The models (MobileNetV2 encoder, random initialisation, no download):

- ``segkeras``: ``unet()`` with its default decoder, trained end to end from scratch (BatchNorm
  trained, momentum 0.99: ``segkeras.backbones.train_from_scratch``); ``segkeras_light``,
  ``segkeras_paper``, ...: the same with the other decoders of :data:`CANDIDATES`.
- ``reference_bn099``: the tutorial's U-Net, everything trainable, its encoder's BatchNorm momentum
  set to 0.99 as well: the like-for-like comparison.
- ``reference_bn0999``: the same with keras.applications' own momentum 0.999 (what section 2
  published before).
- ``reference_tutorial``: as the tutorial runs it: frozen encoder at 128x128 (the tutorial's is
  ImageNet-pretrained; offline it is a frozen *random* encoder), only the decoder trains.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
NUM_CLASSES = 4
LIGHT_DECODER = (64, 48, 32, 16, 16)  # the demo's and the labs' decoder widths
CANDIDATES = {
    "segkeras": {},  # unet() as a user gets it: its default decoder
    "segkeras_full1": {"final_convs": 1},  # the default before the logits were upsampled
    "segkeras_paper": {"decoder_filters": (256, 128, 64, 32, 16), "skip_projection": False,
                       "final_convs": 2},
    "segkeras_light": {"decoder_filters": LIGHT_DECODER, "skip_projection": False,
                       "final_convs": 2},
    "segkeras_light_proj": {"decoder_filters": LIGHT_DECODER, "final_convs": 2},
    "segkeras_slim": {"decoder_filters": (64, 32, 16, 16, 8), "skip_projection": False,
                      "final_convs": 2},
    "segkeras_slim_proj": {"decoder_filters": (64, 32, 16, 16, 8), "final_convs": 2},
    "segkeras_mid_proj": {"decoder_filters": (128, 64, 32, 16, 8), "final_convs": 2},
    "segkeras_full16_proj": {"decoder_filters": (64, 32, 16, 16, 16), "final_convs": 2},
    "segkeras_bilinear": {"decoder_filters": LIGHT_DECODER, "upsampling": "bilinear",
                          "final_convs": 1},
}
"""The U-Net decoders compared (issue 27): ``unet()`` arguments besides the fixed ones."""
MODELS = (*CANDIDATES, "reference_bn099", "reference_bn0999", "reference_tutorial")
RECIPE = {"size": 64, "batch": 8, "steps": 1500, "n_train": 3000, "n_val": 256,
          "learning_rate": 5e-3, "schedule": "cosine", "loss": "cross-entropy + Dice"}
"""The demo's recipe (``segkeras.cli.demo.DEMO_RECIPE``: 3000 images seen 4 times at batch 8, Adam
5e-3, cross-entropy + Dice) for every model, so that only the architecture and the BatchNorm
treatment differ. ``schedule``: the learning rate decays to 0 over the steps (cosine), so that the
score is the end of a settled run rather than a snapshot of Adam's noise at full rate. (An earlier
recipe, batch 16 x 500 steps at 1e-3 with cross-entropy alone, left every model labelling nearly
every pixel background: segkeras 0.233 +- 0.009, the reference 0.198;
results/versus_quality_[a-e].json.)"""
RECIPE_128 = {**RECIPE, "size": 128, "steps": 600}
"""The 128² quality comparison (``quality --size 128 --steps 600``): shapes drawn at 128², fewer
steps (each costs four times the demo's)."""
TUTORIAL_SIZE = 128


def reference_unet(size: int, encoder_trainable: bool = True):
    """The TensorFlow segmentation tutorial's model: MobileNetV2 skips, pix2pix upsampling."""
    import keras

    image = keras.Input((size, size, 3))
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False,
                                          weights=None)
    names = ["block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
             "block_13_expand_relu", "block_16_project"]
    encoder = keras.Model(base.input, [base.get_layer(name).output for name in names],
                          name="tutorial_encoder")
    encoder.trainable = encoder_trainable
    frozen = {} if encoder_trainable else {"training": False}  # a frozen encoder: inference mode
    skips = encoder(keras.layers.Rescaling(1 / 255.0)(image), **frozen)
    x = skips[-1]
    for filters, skip in zip((512, 256, 128, 64), reversed(skips[:-1]), strict=True):
        x = keras.layers.Conv2DTranspose(
            filters, 3, strides=2, padding="same", use_bias=False,
            kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02))(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
        x = keras.layers.Concatenate()([x, skip])
    logits = keras.layers.Conv2DTranspose(NUM_CLASSES, 3, strides=2, padding="same")(x)
    return keras.Model(image, logits, name="tutorial_unet")


def build(kind: str, size: int):
    """The model ``kind`` (one of :data:`MODELS`) at ``size`` x ``size``."""
    from segkeras.backbones import train_from_scratch
    from segkeras.models.unet import unet

    if kind in CANDIDATES:
        return unet(NUM_CLASSES, "mobilenetv2", weights=None, encoder_trainable=True,
                    input_shape=(size, size, 3), **CANDIDATES[kind])
    if kind == "reference_tutorial":
        return reference_unet(size, encoder_trainable=False)
    model = reference_unet(size)
    if kind == "reference_bn099":
        train_from_scratch(model.get_layer("tutorial_encoder"), momentum=0.99)
    return model


def _size(kind: str, size: int | None = None) -> int:
    return size or (TUTORIAL_SIZE if kind == "reference_tutorial" else RECIPE["size"])


def _compiled(kind: str, steps: int, size: int | None = None):
    import keras

    from segkeras.losses import SparseCEDice

    model = build(kind, _size(kind, size))
    rate = keras.optimizers.schedules.CosineDecay(RECIPE["learning_rate"], steps)
    model.compile(keras.optimizers.Adam(rate), SparseCEDice(NUM_CLASSES, dice_weight=1.0))
    return model


def _datasets(size: int, batch: int = RECIPE["batch"], native: bool = False):
    """Training (repeated) and held-out batches of the shapes at ``size``: drawn at the recipe's
    size and resized, or drawn at ``size`` itself (``native``)."""
    from segkeras.data import pipeline, shapes

    data = shapes.generate(RECIPE["n_train"] + RECIPE["n_val"],
                           image_size=size if native else RECIPE["size"], seed=1)
    train, val = data.split(RECIPE["n_val"] / len(data))
    return (pipeline.make_dataset(train, size, batch, shuffle=True).repeat(),
            pipeline.make_dataset(val, size, batch), data.class_names)


def quality(kind: str, seed: int, steps: int = RECIPE["steps"], size: int | None = None) -> dict:
    """Held-out mIoU of ``kind`` after ``steps`` steps from seed ``seed``; ``size``: shapes drawn
    at that size (default: the recipe's, resized to the tutorial's 128 for its model)."""
    import keras
    import numpy as np

    from segkeras.evaluate.semantic import evaluate_semantic

    keras.utils.set_random_seed(seed)  # weights and shuffle; the data are the same for every seed
    train, val, class_names = _datasets(_size(kind, size), native=size is not None)
    model = _compiled(kind, steps, size)
    model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0)
    scored = evaluate_semantic(model, val, class_names)
    confusion = np.asarray(scored["confusion_matrix"])
    return {"model": kind, "seed": seed, "steps": steps, "size": _size(kind, size),
            "params": model.count_params(), "miou": scored["mean_iou"],
            "iou": scored["iou"],
            "predicted_fraction": dict(zip(class_names, confusion.sum(0) / confusion.sum(),
                                                strict=True)),
            "true_fraction": dict(zip(class_names, confusion.sum(1) / confusion.sum(),
                                           strict=True)),
            # the same weights, every BatchNorm on batch statistics: what the moving ones cost
            "miou_batch_statistics": _miou_on_batch_statistics(model, val, class_names)}


def _miou_on_batch_statistics(model, dataset, class_names) -> float:
    """Held-out mIoU with every BatchNorm normalising by the statistics of the batch it sees
    (``training=True``; no weight changes: nothing is optimised here, moving means aside)."""
    import keras
    import numpy as np

    from segkeras.evaluate.semantic import confusion_matrix, scores

    total = np.zeros((len(class_names),) * 2, np.int64)
    for images, masks in dataset.as_numpy_iterator():
        logits = keras.ops.convert_to_numpy(model(images, training=True))
        total += confusion_matrix(masks, np.argmax(logits, axis=-1), len(class_names))
    return scores(total, class_names)["mean_iou"]


def speed(kind: str, steps: int = 100, warmup: int = 10, size: int | None = None,
          batch: int = RECIPE["batch"]) -> dict:
    """Training img/s of ``kind`` over ``steps`` timed steps at ``size``² and ``batch`` (wall
    and CPU seconds of this process: CPU time is the comparison that survives a busy machine)."""
    train, _, _ = _datasets(_size(kind, size), batch)
    model = _compiled(kind, warmup + steps, size)
    model.fit(train, steps_per_epoch=warmup, epochs=1, verbose=0)
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    images = steps * batch
    return {"model": kind, "img_per_s": images / wall, "cpu_ms_per_img": 1000 * cpu / images,
            "params": model.count_params(), "size": _size(kind, size), "batch": batch}


def cpu(kinds: list[str], size: int, batch: int, steps: int = 5, warmup: int = 2) -> dict:
    """CPU milliseconds per training image of each of ``kinds`` at ``size``² and ``batch``: the
    median of ``steps`` single steps on random images, each step timed with this process's CPU
    clock (all its threads), the models in one process one after the other. CPU time, unlike
    img/s, stays comparable on a busy machine."""
    import keras
    import numpy as np

    from segkeras.losses import SparseCEDice

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    masks = rng.integers(0, NUM_CLASSES, (batch, size, size)).astype("int32")
    records = []
    for kind in kinds:
        keras.utils.clear_session()
        model = build(kind, size)
        model.compile(keras.optimizers.Adam(1e-3), SparseCEDice(NUM_CLASSES, dice_weight=1.0))
        times = []
        for _ in range(warmup + steps):
            start = time.process_time()
            model.train_on_batch(images, masks)
            times.append(time.process_time() - start)
        timed = sorted(times[warmup:])
        records.append({"model": kind, "size": size, "batch": batch, "steps": steps,
                        "cpu_ms_per_img": 1000 * timed[len(timed) // 2] / batch,
                        "cpu_ms_per_img_min": 1000 * timed[0] / batch,
                        "params": model.count_params(), "load": os.getloadavg()[0]})
    return {"records": records}


def _in_subprocess(task: str, **kwargs) -> dict:
    """Run ``task(**kwargs)`` in a fresh process; its result plus wall, CPU seconds and load."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load, start = os.getloadavg()[0], time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps([task, kwargs])],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{task} {kwargs} failed:\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {**json.loads(done.stdout.strip().splitlines()[-1]),
            "wall_s": time.perf_counter() - start, "cpu_s": cpu,
            "load_before": load, "load_after": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", nargs="?", choices=("quality", "speed", "cpu"))
    parser.add_argument("--models", nargs="*", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="training steps (quality) or timed steps (speed)")
    parser.add_argument("--size", type=int, nargs="+",
                        help="image size (default: the recipe's; quality: shapes drawn at it; "
                             "cpu: several)")
    parser.add_argument("--batch", type=int, nargs="+",
                        help="speed, cpu: batch size (default: the recipe's; cpu: several)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="speed: timed runs per model, the models taking turns")
    parser.add_argument("--out", help="JSON file; records are appended to the ones already there")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from segkeras.runs import atomic_write_text

    if args.worker:
        task, kwargs = json.loads(args.worker)
        print(json.dumps({"quality": quality, "speed": speed, "cpu": cpu}[task](**kwargs)))
        return
    records = []
    if args.out and os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as old:
            records = json.load(old)["records"]
    sizes, batches = args.size or [None], args.batch or [RECIPE["batch"]]
    if args.task == "cpu":  # one process per size and batch, the models in it in turn
        plan = [{"kinds": args.models, "size": size or RECIPE["size"], "batch": batch}
                for size in sizes for batch in batches]
    elif args.task == "quality":
        plan = [{"kind": m, "seed": s, "size": sizes[0]} for m in args.models for s in args.seeds]
    else:
        plan = [{"kind": m, "size": sizes[0], "batch": batches[0]}
                for _ in range(args.rounds) for m in args.models]
    plan = [{k: v for k, v in {**kwargs, "steps": args.steps}.items() if v is not None}
            for kwargs in plan]
    for kwargs in plan:
        record = _in_subprocess(args.task, **kwargs)
        print(json.dumps(record), flush=True)
        records += record.pop("records") if args.task == "cpu" else [record]
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            recipe = {**RECIPE, **({"size": sizes[0]} if args.task == "quality" and args.size
                                   else {}),
                      **({"steps": args.steps} if args.steps and args.task == "quality" else {})}
            atomic_write_text(args.out, json.dumps(
                {"recipe": recipe, "tutorial_size": TUTORIAL_SIZE,
                 "command": "python bench/s2_versus_runs.py " + " ".join(sys.argv[1:]),
                 "records": records}, indent=1))


if __name__ == "__main__":
    main()
