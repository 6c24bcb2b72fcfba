"""segkeras' U-Net against the TensorFlow segmentation tutorial's U-Net, over several seeds.

    python bench/s2_versus_runs.py quality --seeds 0 1 2 --out results/versus_quality.json
    python bench/s2_versus_runs.py speed --out results/versus_speed.json

``quality``: held-out mean IoU after a fixed number of steps, one fresh process per (model, seed),
with per-class IoU, the share of pixels predicted as each class, and the mIoU of the same weights
with BatchNorm on batch statistics (``training=True``: what the moving statistics cost).
The score depends on the steps taken, not on how fast they ran, so it may be measured on a busy
machine; each record keeps its wall and CPU seconds and the load average anyway. ``speed``: a short
timed run per model (training img/s), to be taken on a quiet machine.

The models (MobileNetV2 encoder, random initialisation, no download):

- ``segkeras``: ``unet(decoder_filters=LIGHT_DECODER)`` trained end to end from scratch (BatchNorm
  trained, momentum 0.99: ``segkeras.backbones.train_from_scratch``).
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
MODELS = ("segkeras", "reference_bn099", "reference_bn0999", "reference_tutorial")
RECIPE = {"size": 64, "batch": 8, "steps": 1500, "n_train": 3000, "n_val": 256,
          "learning_rate": 5e-3, "schedule": "cosine", "loss": "cross-entropy + Dice"}
"""The demo's recipe (``segkeras.cli.demo.DEMO_RECIPE``: 3000 images seen 4 times at batch 8, Adam
5e-3, cross-entropy + Dice) for every model, so that only the architecture and the BatchNorm
treatment differ. ``schedule``: the learning rate decays to 0 over the steps (cosine), so that the
score is the end of a settled run rather than a snapshot of Adam's noise at full rate. (An earlier
recipe, batch 16 x 500 steps at 1e-3 with cross-entropy alone, left every model labelling nearly
every pixel background: segkeras 0.233 +- 0.009, the reference 0.198;
results/versus_quality_[a-e].json.)"""
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

    if kind == "segkeras":
        return unet(NUM_CLASSES, "mobilenetv2", decoder_filters=LIGHT_DECODER, weights=None,
                    encoder_trainable=True, input_shape=(size, size, 3))
    if kind == "reference_tutorial":
        return reference_unet(size, encoder_trainable=False)
    model = reference_unet(size)
    if kind == "reference_bn099":
        train_from_scratch(model.get_layer("tutorial_encoder"), momentum=0.99)
    return model


def _size(kind: str) -> int:
    return TUTORIAL_SIZE if kind == "reference_tutorial" else RECIPE["size"]


def _compiled(kind: str, steps: int):
    import keras

    from segkeras.losses import SparseCEDice

    model = build(kind, _size(kind))
    rate = keras.optimizers.schedules.CosineDecay(RECIPE["learning_rate"], steps)
    model.compile(keras.optimizers.Adam(rate), SparseCEDice(NUM_CLASSES, dice_weight=1.0))
    return model


def _datasets(size: int):
    from segkeras.data import pipeline, shapes

    data = shapes.generate(RECIPE["n_train"] + RECIPE["n_val"], image_size=RECIPE["size"], seed=1)
    train, val = data.split(RECIPE["n_val"] / len(data))
    batch = RECIPE["batch"]
    return (pipeline.make_dataset(train, size, batch, shuffle=True).repeat(),
            pipeline.make_dataset(val, size, batch), data.class_names)


def quality(kind: str, seed: int, steps: int = RECIPE["steps"]) -> dict:
    """Held-out mIoU of ``kind`` after ``steps`` steps from seed ``seed``."""
    import keras
    import numpy as np

    from segkeras.evaluate.semantic import evaluate_semantic

    keras.utils.set_random_seed(seed)  # weights and shuffle; the data are the same for every seed
    train, val, class_names = _datasets(_size(kind))
    model = _compiled(kind, steps)
    model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0)
    scored = evaluate_semantic(model, val, class_names)
    confusion = np.asarray(scored["confusion_matrix"])
    return {"model": kind, "seed": seed, "steps": steps, "miou": scored["mean_iou"],
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


def speed(kind: str, steps: int = 100, warmup: int = 10) -> dict:
    """Training img/s of ``kind`` over ``steps`` timed steps (wall and CPU of this process)."""
    train, _, _ = _datasets(_size(kind))
    model = _compiled(kind, warmup + steps)
    model.fit(train, steps_per_epoch=warmup, epochs=1, verbose=0)
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    images = steps * RECIPE["batch"]
    return {"model": kind, "img_per_s": images / wall, "cpu_ms_per_img": 1000 * cpu / images,
            "params": model.count_params(), "size": _size(kind)}


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
    parser.add_argument("task", nargs="?", choices=("quality", "speed"))
    parser.add_argument("--models", nargs="*", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="training steps (quality) or timed steps (speed)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="speed: timed runs per model, the models taking turns")
    parser.add_argument("--out", help="JSON file; records are appended to the ones already there")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        task, kwargs = json.loads(args.worker)
        print(json.dumps({"quality": quality, "speed": speed}[task](**kwargs)))
        return
    records = []
    if args.out and os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as old:
            records = json.load(old)["records"]
    plan = ([{"kind": m, "seed": s} for m in args.models for s in args.seeds]
            if args.task == "quality"
            else [{"kind": m} for _ in range(args.rounds) for m in args.models])
    if args.steps:
        plan = [{**kwargs, "steps": args.steps} for kwargs in plan]
    for kwargs in plan:
        record = _in_subprocess(args.task, **kwargs)
        print(json.dumps(record), flush=True)
        records.append(record)
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w", encoding="utf-8") as out:
                json.dump({"recipe": RECIPE, "tutorial_size": TUTORIAL_SIZE,
                           "command": "python bench/s2_versus_runs.py " + " ".join(sys.argv[1:]),
                           "records": records}, out, indent=1)


if __name__ == "__main__":
    main()
