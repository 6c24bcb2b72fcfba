"""Command line: ``python -m segkeras {demo,train,evaluate,predict,data,backbones}``.

Every user error (missing file, bad size, unknown name...) prints one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time
import warnings
import zipfile

from segkeras import cli_instances
from segkeras.data.sources import SOURCES_HELP
from segkeras.errors import SegkerasError
from segkeras.models import registry

EXIT_USAGE = 2
_START = time.perf_counter()

MODELS = registry.names()
DATA_HELP = SOURCES_HELP


# ----------------------------------------------------------------------------- helpers


def _check_size(size: int) -> int:
    from segkeras.backbones import check_input_shape

    try:
        check_input_shape((size, size, 3))
    except SegkerasError as error:
        raise SegkerasError(f"--image-size {size}: {error}") from error
    return size


def _check_output_folder(folder: str, flag: str) -> None:
    """Create ``folder`` and make sure files can be written there, before any work is done."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise SegkerasError(f"{flag} {folder} is a file, not a folder; pass a folder (it is "
                            "created if missing)")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise SegkerasError(f"{flag} {folder}: cannot write there ({error.strerror or error}); "
                            "pass a folder you can write to") from error


def _check_output_file(path: str, flag: str) -> None:
    """The folder that will hold ``path`` exists (or is created) and is writable."""
    if os.path.isdir(path):
        raise SegkerasError(f"{flag} {path} is a folder; pass a file name, e.g. scores.json")
    _check_output_folder(os.path.dirname(os.path.abspath(path)), flag)


_FLAG_SPELLINGS = (
    (re.compile(r"\bweights=None\b"), "--weights none"),
    (re.compile(r"\bweights='([^']*)'"), r"--weights \1"),
    (re.compile(r"\bhead_epochs\b"), "--epochs"),
    (re.compile(r"\bfinetune_epochs\b"), "--finetune-epochs"),
    (re.compile(r"\broot=FOLDER"), "--data pets:FOLDER"),
    (re.compile(r"\bimage_size\b"), "--image-size"),
    (re.compile(r"\bthe validation fraction\b"), "--val-fraction"),
    (re.compile(r"\bmax_instances=(\d+)"), r"--max-instances \1"),
)
"""What the Python API's messages call an argument -> the CLI flag that sets it."""


def _in_flag_terms(message: str) -> str:
    """An error message of the Python API with its argument names replaced by the CLI flags."""
    for pattern, flag in _FLAG_SPELLINGS:
        message = pattern.sub(flag, message)
    return message


def _load_data(spec: str, n: int, image_size: int, seed: int, split: str):
    """A SegmentationData for a ``--data`` value. ``split``: "train" or "test" (pets only)."""
    from segkeras.data import sources

    try:
        return sources.load(spec, n, image_size, seed=seed, split=split)
    except SegkerasError as error:
        raise type(error)(f"--data {spec}: {error}") from error


def _load_model(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such model file: {path}")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise SegkerasError(f"cannot read {path}: the file exists but is not a .keras file (a "
                            "zip archive); pass a model saved by segkeras (e.g. "
                            "outputs/train/model.keras)")
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises ValueError, OSError, zipfile errors...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SegkerasError(
            f"cannot read {path} as a Keras model ({reason}); pass a .keras file saved by segkeras."
        ) from error


@contextlib.contextmanager
def _warnings_in_flag_terms(command: str):
    """Warnings of the Python API inside the block, printed as one line each in CLI terms."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        message = " ".join(_in_flag_terms(str(warning.message)).split())
        print(f"segkeras {command}: warning: {message}", file=sys.stderr)


def _load_task_model(path: str):
    """(model, task): a saved Mask R-CNN (task ``"instances"``) or semantic segmentation model
    (``"semantic"``); anything else is refused."""
    model = _load_model(path)
    if cli_instances.accepts(model):
        return model, "instances"
    return _check_segmenter(model, path), "semantic"


def _check_segmenter(model, path: str):
    """``model`` if it is a semantic segmentation model: one image in, ``(batch, H, W,
    classes)`` logits out (a stacked hourglass: one such map per stack)."""
    outputs = [tuple(output.shape) for output in model.outputs]
    image_input = len(model.inputs) == 1 and len(model.inputs[0].shape) == 4
    if not image_input or not all(len(shape) == 4 and (shape[-1] or 0) >= 2 for shape in outputs):
        raise SegkerasError(
            f"{path} is not a semantic segmentation model (inputs "
            f"{', '.join(str(tuple(i.shape)) for i in model.inputs)}, outputs "
            f"{', '.join(map(str, outputs))}; expected one image in, (batch, H, W, classes) "
            "logits out) nor a Mask R-CNN; pass a model.keras written by `python -m segkeras "
            "train` or `demo`."
        )
    return model


def _last_output(model):
    """The model predicting only its last (for a stacked hourglass: most refined) logits."""
    if len(model.outputs) == 1:
        return model
    import keras

    return keras.Model(model.input, model.outputs[-1], name=f"{model.name}_last")


def _model_size(model, requested: int | None) -> int:
    """The image size to feed ``model``: its fixed input size, else ``requested`` (default 128)."""
    height, width = getattr(model, "image_size", None) or model.input_shape[1:3]
    if height is not None and height != width:
        raise SegkerasError(f"model input {height}x{width} is not square; use the Python API.")
    if height is not None:
        if requested is not None and requested != height:
            raise SegkerasError(
                f"--image-size {requested} does not match the model's fixed input size {height}; "
                f"use --image-size {height} or leave it out."
            )
        return height
    return _check_size(requested or 128)


def _training_metrics(model_path: str) -> dict:
    """The metrics.json that `train` and `demo` write beside the model (class names...), or {}."""
    metrics = os.path.join(os.path.dirname(os.path.abspath(model_path)), "metrics.json")
    if not os.path.isfile(metrics):
        return {}
    with open(metrics) as file:
        return json.load(file)


def _check_num_classes(num_classes: int, data, spec: str) -> None:
    if data.num_classes != num_classes:
        raise SegkerasError(
            f"the model predicts {num_classes} classes but --data {spec} has "
            f"{data.num_classes} ({', '.join(data.class_names)}); use the data it was "
            "trained on."
        )


def _save_outputs(out: str, model, history, result) -> None:
    """model.keras, history.json, metrics.json and history.png under ``out``."""
    from segkeras.evaluate import semantic

    os.makedirs(out, exist_ok=True)
    model.save(os.path.join(out, "model.keras"))
    with open(os.path.join(out, "history.json"), "w") as file:
        json.dump(history.to_dict(), file, indent=2)
    semantic.save_json(result, os.path.join(out, "metrics.json"))
    _history_figure(history).savefig(os.path.join(out, "history.png"), dpi=100)


def _history_figure(history):
    """The training curves with a dotted line where fine-tuning starts."""
    from segkeras import viz

    figure = viz.training_curves(history)
    if 0 < history.stage_boundary < len(history.epoch):
        for axes in figure.axes:
            axes.axvline(history.stage_boundary + 0.5, color="gray", linestyle=":")
    return figure


def _elapsed() -> str:
    seconds = time.perf_counter() - _START
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


# ----------------------------------------------------------------------------- demo


DEMO_RECIPE = {
    "image_size": 64, "train_images": 3000, "test_images": 200, "batch_size": 8, "epochs": 4,
    "learning_rate": 5e-3, "dice_weight": 1.0, "decoder_filters": (64, 48, 32, 16, 16),
    "seed": 0, "steps_per_execution": 25,
}
"""U-Net on MobileNetV2 over the built-in shapes, tuned to reach mean IoU >= 0.9 on held-out
images on a 2-core CPU from a random initialisation: small images, a narrow decoder, many fresh
images seen few times (synthetic data is free; 1000 images seen 24 times overfit at 0.70), batch 8
for many updates, Adam with cosine decay, cross-entropy + Dice. Batch 16 with the learning rate
scaled to 7e-3 scored 0.877 at about the same CPU time (BENCHMARKS.md, notes). Keras' default
``jit_compile="auto"`` means no XLA on a TensorFlow CPU; forcing it cost 3.8x the CPU time per
image (``bench/demo_speed.py``). ``steps_per_execution`` runs that many steps per call of the
compiled step (the same updates, fewer returns to Python); ``make_dataset`` turns tf.data's
autotuner off (on 2 cores it sometimes left one core idle); the held-out images are scored once,
after training, not after every epoch."""
QUICK_RECIPE = {**DEMO_RECIPE, "train_images": 16, "test_images": 8, "epochs": 1,
                "steps_per_execution": 1}


def run_demo(out: str, epochs: int | None = None, quick: bool = False) -> dict:
    """The demo: train, print per-class IoU on held-out shapes, write the model and pictures.

    Prints this machine's matmul calibration first (:mod:`segkeras.calibration`) so that the
    time can be compared across machines. Writes ``out/model.keras``, ``metrics.json`` (scores,
    recipe, and ``timing``: wall and CPU seconds, training seconds, calibration, load average),
    ``predictions.png`` and ``history.png``; returns what ``metrics.json`` holds.
    """
    import resource

    import keras

    from segkeras import train, viz
    from segkeras.calibration import matmul_gflops
    from segkeras.data import shapes
    from segkeras.data.pipeline import make_dataset
    from segkeras.errors import WeightsUnavailableError
    from segkeras.evaluate import semantic
    from segkeras.losses import SparseCEDice
    from segkeras.models.unet import unet

    calibration = matmul_gflops(repeats=2 if quick else 5)
    print(f"This machine: {calibration}.")
    recipe = dict(QUICK_RECIPE if quick else DEMO_RECIPE)
    recipe["epochs"] = epochs or recipe["epochs"]
    size, classes = recipe["image_size"], len(shapes.CLASS_NAMES)
    precision = train.configure_precision()  # before any layer exists
    keras.utils.set_random_seed(recipe["seed"])
    training = shapes.generate(recipe["train_images"], image_size=size, seed=recipe["seed"])
    held_out = shapes.generate(recipe["test_images"], image_size=size, seed=recipe["seed"] + 1)
    build = {"decoder_filters": recipe["decoder_filters"], "input_shape": (size, size, 3)}
    try:
        model = unet(classes, "mobilenetv2", weights="imagenet", **build)
        recipe["weights"] = "imagenet"
    except WeightsUnavailableError:
        print("ImageNet weights unavailable (offline?): random initialisation, trained end to end.")
        model = unet(classes, "mobilenetv2", weights=None, encoder_trainable=True, **build)
        recipe["weights"] = "random"
    pretrained = recipe["weights"] == "imagenet"
    print(f"{model.name}: {model.count_params():,} parameters, {len(training)} training and "
          f"{len(held_out)} held-out {size}x{size} images, {precision}.")
    make = {"image_size": size, "batch_size": recipe["batch_size"], "num_classes": classes,
            "seed": recipe["seed"]}
    test_set = make_dataset(held_out, **make)
    head_epochs = recipe["epochs"] // 3 if pretrained else 0
    train_start = time.perf_counter()
    history = train.fit_two_stage(
        model, make_dataset(training, shuffle=True, **make),
        head_epochs=head_epochs, finetune_epochs=recipe["epochs"] - head_epochs,
        learning_rate=recipe["learning_rate"], schedule="cosine", verbose=1,
        loss=SparseCEDice(classes, dice_weight=recipe["dice_weight"]),
        steps_per_execution=recipe["steps_per_execution"],
    )
    train_seconds = time.perf_counter() - train_start
    result = semantic.evaluate_semantic(model, test_set, shapes.CLASS_NAMES)
    result["recipe"] = recipe
    print(semantic.format_table(result))

    os.makedirs(out, exist_ok=True)
    model.save(os.path.join(out, "model.keras"))
    sample = held_out.subset(range(min(6, len(held_out))))
    logits = model.predict_on_batch(next(iter(test_set))[0])[: len(sample)]  # a traced shape
    viz.prediction_grid(sample.images, sample.masks, logits, shapes.CLASS_NAMES).savefig(
        os.path.join(out, "predictions.png"), dpi=100)
    _history_figure(history).savefig(os.path.join(out, "history.png"), dpi=100)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["timing"] = {
        "wall_s": time.perf_counter() - _START, "cpu_s": usage.ru_utime + usage.ru_stime,
        "train_s": train_seconds, "calibration_gflops": calibration.gflops,
        "load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
    semantic.save_json(result, os.path.join(out, "metrics.json"))
    print(f"Mean IoU on {len(held_out)} held-out images: {result['mean_iou']:.3f}. Wrote "
          f"model.keras, metrics.json, predictions.png, history.png to {out}/. "
          f"Elapsed: {_elapsed()} (CPU {result['timing']['cpu_s']:.0f} s, training "
          f"{train_seconds:.0f} s; {calibration}).")
    return result


def _cmd_demo(args: argparse.Namespace) -> None:
    _check_output_folder(args.out, "--out")  # before minutes of training
    run_demo(out=args.out, epochs=args.epochs, quick=args.quick)


# ----------------------------------------------------------------------------- train


def _build_model(args: argparse.Namespace, num_classes: int, weights):
    architecture = registry.get(args.model)
    backbone = args.backbone or architecture.default_backbone or "none"
    if backbone == "none" and architecture.default_backbone is not None:
        raise SegkerasError(f"--model {args.model} needs a backbone; see `python -m segkeras "
                            "backbones`.")
    tunable = {"num_stacks": args.stacks}
    # Without pretrained weights the encoder trains from scratch, BatchNorm included; a detector
    # always trains end to end.
    return architecture.build(
        num_classes, backbone=None if backbone == "none" else backbone, weights=weights,
        encoder_trainable=weights is None or architecture.task == "instances",
        input_shape=(args.image_size, args.image_size, 3),
        **{name: value for name, value in tunable.items() if name in architecture.tunable},
    )


def _check_train_arguments(args: argparse.Namespace) -> None:
    """Every argument error of ``train`` that can be seen without data or a model."""
    from segkeras.data.core import split_counts

    _check_size(args.image_size)
    if args.epochs + args.finetune_epochs == 0:
        raise SegkerasError("--epochs 0 and --finetune-epochs 0 leave nothing to train; use "
                            "--epochs 1 or more")
    try:
        split_counts(args.n, args.val_fraction)
    except SegkerasError as error:
        raise SegkerasError(f"--n {args.n} with --val-fraction {args.val_fraction}: "
                            f"{error}") from error
    if args.weights not in ("imagenet", "none") and not os.path.isfile(args.weights):
        raise FileNotFoundError(f"no such weights file: {args.weights}; pass --weights "
                                "imagenet, --weights none or an existing weights file")
    if args.distribute and registry.get(args.model).task == "instances":
        raise SegkerasError(f"--distribute is not available for --model {args.model}; leave it "
                            "out (one process uses every core)")
    _check_output_folder(args.out, "--out")


def _check_finite_loss(history, learning_rate: float) -> None:
    """SegkerasError when training stopped on a NaN or infinite loss (nothing is saved)."""
    losses = history.history.get("loss", [])
    bad = [epoch for epoch, loss in enumerate(losses) if not math.isfinite(loss)]
    if bad:
        raise SegkerasError(
            f"training stopped in epoch {bad[0] + 1}: the loss became {losses[bad[0]]}; nothing "
            f"was saved. Lower --lr (was {learning_rate:g}) or check the masks of --data")


def _cmd_train(args: argparse.Namespace) -> None:
    _check_train_arguments(args)  # before loading data, building or training anything
    _TRAINERS[registry.get(args.model).task](args)


def _train_semantic(args: argparse.Namespace) -> None:
    import keras

    from segkeras import train
    from segkeras.data.pipeline import make_dataset
    from segkeras.evaluate import semantic

    precision = train.configure_precision()  # before any layer exists
    strategy = train.make_strategy(args.distribute)
    data = _load_data(args.data, args.n, args.image_size, args.seed, split="train")
    train_data, val_data = data.split(args.val_fraction)
    weights = None if args.weights == "none" else args.weights
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = _build_model(args, data.num_classes, weights)
    pretrained = weights is not None and train.encoder_or_none(model) is not None
    head_epochs, finetune_epochs = args.epochs, args.finetune_epochs
    if not pretrained:
        print("No pretrained encoder (--weights none or no backbone): training end to end.")
        head_epochs, finetune_epochs = 0, args.epochs + args.finetune_epochs
    print(f"{model.name}: {model.count_params():,} parameters, {len(train_data)} training and "
          f"{len(val_data)} validation images, precision {precision}.")
    make = {"image_size": args.image_size, "batch_size": args.batch_size,
            "num_classes": data.num_classes, "seed": args.seed}
    train_ds = train.distributable(make_dataset(train_data, augment=True, shuffle=True, **make),
                                   strategy, args.batch_size, len(train_data))
    val_ds = train.distributable(make_dataset(val_data, **make), strategy, args.batch_size,
                                 len(val_data))
    history = train.fit_two_stage(
        model, train_ds, val_ds, head_epochs=head_epochs, finetune_epochs=finetune_epochs,
        learning_rate=args.lr, strategy=strategy, callbacks=[keras.callbacks.TerminateOnNaN()],
    )
    _check_finite_loss(history, args.lr)
    if not train.is_chief(strategy):
        print(f"Worker finished; the chief evaluates and writes {args.out} ({_elapsed()}).")
        return
    if args.distribute == "multiworker":  # the other workers are done: evaluate alone
        model = train.single_process_copy(model)
    result = semantic.evaluate_semantic(model, make_dataset(val_data, **make), data.class_names)
    print(semantic.format_table(result))
    _save_outputs(args.out, model, history, result)
    print(f"Wrote {args.out}/model.keras, metrics.json, history.json, history.png ({_elapsed()}).")


def _train_instances(args: argparse.Namespace) -> None:
    """Mask R-CNN: trained end to end for --epochs + --finetune-epochs epochs, then scored (box
    and mask AP) on the held-out images."""
    import keras

    from segkeras.train import TrainingHistory

    data = _load_data(args.data, args.n, args.image_size, args.seed, split="train")
    cli_instances.check_data(data, f"--data {args.data}")
    train_data, val_data = data.split(args.val_fraction)
    cli_instances.check_data(val_data, f"the --val-fraction {args.val_fraction:g} of --data "
                                       f"{args.data} held out for validation")
    weights = None if args.weights == "none" else args.weights
    model = _build_model(args, data.num_classes, weights)
    epochs = args.epochs + args.finetune_epochs
    parameters = sum(math.prod(weight.shape) for weight in model.weights)
    print(f"{model.name}: {parameters:,} parameters, {len(train_data)} training and "
          f"{len(val_data)} validation images; training end to end for {epochs} epochs.")
    with _warnings_in_flag_terms("train"):
        dataset = cli_instances.training_dataset(model, train_data, args.batch_size,
                                                 args.max_instances, args.seed)
    history = cli_instances.fit(model, dataset, epochs, args.lr,
                                callbacks=[keras.callbacks.TerminateOnNaN()])
    _check_finite_loss(history, args.lr)
    model.save(os.path.join(args.out, "model.keras"))  # before scoring: never lose the training
    result = cli_instances.evaluate(model, val_data, args.batch_size)
    result.update(classes=data.class_names, category_ids=data.extra.get("category_ids"))
    print(cli_instances.format_table(result))
    record = TrainingHistory()
    record.extend(history)
    record.stage_boundary = len(record.epoch)
    _save_outputs(args.out, model, record, result)
    print(f"Wrote {args.out}/model.keras, metrics.json, history.json, history.png ({_elapsed()}).")


_TRAINERS = {"semantic": _train_semantic, "instances": _train_instances}


# ----------------------------------------------------------------------------- evaluate


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from segkeras.evaluate import semantic

    if args.json:
        _check_output_file(args.json, "--json")
    model, task = _load_task_model(args.model)
    size = _model_size(model, args.image_size)
    data = _load_data(args.data, args.n, size, args.seed, split="test")
    result, table = _EVALUATORS[task](model, data, args, size)
    print(table)
    if args.json:
        print(f"Wrote {semantic.save_json(result, args.json)}")


def _evaluate_semantic(model, data, args: argparse.Namespace, size: int) -> tuple[dict, str]:
    from segkeras.data.pipeline import make_dataset
    from segkeras.evaluate import semantic
    from segkeras.train import model_num_classes

    num_classes = model_num_classes(model)
    _check_num_classes(num_classes, data, args.data)
    dataset = make_dataset(data, image_size=size, batch_size=args.batch_size,
                           num_classes=num_classes)
    result = semantic.evaluate_semantic(model, dataset, data.class_names)
    return result, semantic.format_table(result)


def _evaluate_instances(model, data, args: argparse.Namespace, size: int) -> tuple[dict, str]:
    _check_num_classes(cli_instances.num_classes(model), data, args.data)
    cli_instances.check_data(data, f"--data {args.data}")
    result = cli_instances.evaluate(model, data, args.batch_size)
    return result, cli_instances.format_table(result)


_EVALUATORS = {"semantic": _evaluate_semantic, "instances": _evaluate_instances}


# ----------------------------------------------------------------------------- predict


def _cmd_predict(args: argparse.Namespace) -> None:
    for path in args.images:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such image: {path}")
    folders = [args.out] if args.out else sorted(
        {os.path.dirname(os.path.abspath(path)) for path in args.images})
    for folder in folders:  # where the pictures (and the default --json) go
        _check_output_folder(folder, "--out" if args.out else "--out (default: beside the images)")
    if args.json:
        _check_output_file(args.json, "--json")
    model, task = _load_task_model(args.model)
    unreadable = []
    _PREDICTORS[task](model, args, _readable_images(args.images, unreadable))
    if unreadable:
        raise SegkerasError(f"{len(unreadable)} of {len(args.images)} images skipped: "
                            + "; ".join(unreadable))


def _readable_images(paths: list[str], unreadable: list[str]):
    """(position from 1, path, RGB pixels) of each image that can be read; the errors of the
    others are appended to ``unreadable`` (reported at the end, the other images predicted)."""
    from segkeras.data.images import read_rgb

    for position, path in enumerate(paths, 1):
        try:
            yield position, path, read_rgb(path)
        except SegkerasError as error:
            unreadable.append(str(error))


def _output_path(args: argparse.Namespace, image_path: str, suffix: str) -> str:
    """``STEM{suffix}`` in --out, else beside the image."""
    stem = os.path.splitext(os.path.basename(image_path))[0]
    folder = args.out or os.path.dirname(os.path.abspath(image_path))
    return os.path.join(folder, f"{stem}{suffix}")


def _predict_semantic(model, args: argparse.Namespace, images) -> None:
    import numpy as np

    from segkeras import viz
    from segkeras.data.images import resize_image, write_png

    for flag, value in (("--json", args.json), ("--score-threshold", args.score_threshold)):
        if value is not None:
            raise SegkerasError(f"{flag} is for Mask R-CNN models; {args.model} is a semantic "
                                f"segmentation model: leave {flag} out")
    model = _last_output(model)
    size = _model_size(model, args.image_size)
    class_names = _training_metrics(args.model).get("classes")
    for _, path, image in images:
        height, width = image.shape[:2]
        logits = model.predict_on_batch(resize_image(image, (size, size))[None])
        small = np.argmax(logits[0], axis=-1).astype(np.uint8)
        rows = np.arange(height) * size // height
        cols = np.arange(width) * size // width
        mask = small[rows[:, None], cols[None, :]]  # nearest neighbour back to the original size
        write_png(_output_path(args, path, "_mask.png"), mask, palette=True)
        target = _output_path(args, path, "_overlay.png")
        viz.overlay(image, mask, class_names=class_names).savefig(target, dpi=100)
        print(f"{path} -> {target}")


def _predict_instances(model, args: argparse.Namespace, images) -> None:
    """An overlay per image (``STEM_instances.png``) and every detection of all images in one
    COCO results file (--json), ``image_id`` = the image's position on the command line."""
    _model_size(model, args.image_size)  # a given --image-size must be the model's
    metrics = _training_metrics(args.model)
    threshold = 0.5 if args.score_threshold is None else args.score_threshold
    json_path = args.json or os.path.join(args.out or os.path.dirname(
        os.path.abspath(args.images[0])), "detections.json")
    results = []
    for position, path, image in images:
        detections = cli_instances.predict(model, image)
        results.extend(cli_instances.coco_results(detections, position,
                                                  metrics.get("category_ids")))
        target = _output_path(args, path, "_instances.png")
        cli_instances.overlay(image, detections, threshold, metrics.get("classes")).savefig(
            target, dpi=100)
        shown = int((detections["scores"] >= threshold).sum())
        print(f"{path} -> {target} ({shown} objects scoring >= {threshold:g}; image_id "
              f"{position})")
    with open(json_path, "w") as file:
        json.dump(results, file)
    print(f"Wrote {len(results)} detections to {json_path} (COCO results format).")


_PREDICTORS = {"semantic": _predict_semantic, "instances": _predict_instances}


# ----------------------------------------------------------------------------- data


def _cmd_data_shapes(args: argparse.Namespace) -> None:
    from segkeras.data import shapes

    _check_output_folder(args.out, "--out")
    paths = shapes.export(args.n, args.out, image_size=args.image_size, seed=args.seed)
    print(f"Wrote {args.n} images to {paths['images']}, masks to {paths['masks']} and "
          f"{paths['annotations']}.")


# ----------------------------------------------------------------------------- backbones


def _cmd_backbones(args: argparse.Namespace) -> None:
    from segkeras import backbones

    print(backbones.table(input_size=args.size))


# ----------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), like every other CLI error."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _positive(text: str) -> int:
    value = _whole(text)
    if value < 1:
        hint = f"; did you mean {-value}?" if value < 0 else ""
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}{hint}")
    return value


def _non_negative(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}; did you mean {-value}?")
    return value


def _number(text: str, valid, what: str) -> float:
    """``float(text)`` if ``valid`` of it (NaN and junk never are), else an argparse error."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value) or not valid(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _fraction(text: str) -> float:
    return _number(text, lambda value: 0.0 < value < 1.0,
                   "a fraction between 0 and 1 (e.g. 0.2)")


def _score(text: str) -> float:
    return _number(text, lambda value: 0.0 <= value <= 1.0, "a score between 0 and 1 (e.g. 0.5)")


def _learning_rate(text: str) -> float:
    return _number(text, lambda value: 0.0 < value < math.inf, "a positive number (e.g. 1e-3)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m segkeras",
        description="Segmentation with Keras 3: FCN, U-Net, hourglass, DeconvNet, Mask R-CNN.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="train a U-Net (MobileNetV2) on the built-in shapes and report its IoU")
    demo.add_argument("--out", default=os.path.join("outputs", "demo"),
                      help="output folder (default outputs/demo)")
    demo.add_argument("--epochs", type=_positive, help="training epochs (default: the recipe's)")
    demo.add_argument("--quick", action="store_true", help="a tiny run (~30 s) for tests")
    demo.set_defaults(run=_cmd_demo)

    train = commands.add_parser("train", help="train a model, write model.keras and metrics")
    train.add_argument("--model", required=True, choices=MODELS)
    defaults = ", ".join(f"{name}: {registry.get(name).default_backbone or 'none'}"
                         for name in MODELS)
    train.add_argument("--backbone", help=f"encoder name, or none for a model's own stem "
                       f"(default: {defaults})")
    train.add_argument("--data", default="shapes", help=DATA_HELP)
    train.add_argument("--n", type=_positive, default=500, help="shapes: number of images")
    train.add_argument("--val-fraction", type=_fraction, default=0.2,
                       help="held out for validation, in (0, 1)")
    train.add_argument("--image-size", type=_positive, default=128, help="multiple of 32")
    train.add_argument("--batch-size", type=_positive, default=16)
    train.add_argument("--epochs", type=_non_negative, default=5,
                       help="epochs with the encoder frozen (all epochs when training end to end, "
                       "as maskrcnn always does)")
    train.add_argument("--finetune-epochs", type=_non_negative, default=0,
                       help="then epochs with the encoder unfrozen at a 10x lower learning rate")
    train.add_argument("--lr", type=_learning_rate, default=1e-3, help="learning rate")
    train.add_argument("--weights", default="imagenet", help="imagenet, none or a weights file")
    train.add_argument("--stacks", type=_positive, default=2, help="hourglass: number of stacks")
    train.add_argument("--max-instances", type=_positive, default=16,
                       help="maskrcnn: objects trained on per image (further ones are skipped, "
                       "with a warning)")
    train.add_argument("--distribute", choices=("mirrored", "multiworker"),
                       help="mirrored: all local GPUs; multiworker: several machines, each "
                       "with its TF_CONFIG (TensorFlow backend; README: Several machines)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", default=os.path.join("outputs", "train"), help="output folder")
    train.set_defaults(run=_cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="per-class IoU, mean IoU, pixel accuracy; for a Mask R-CNN: COCO box "
        "and mask AP")
    evaluate.add_argument("--model", required=True, help="a .keras file")
    evaluate.add_argument("--data", default="shapes", help=DATA_HELP)
    evaluate.add_argument("--n", type=_positive, default=200, help="shapes: number of images")
    evaluate.add_argument("--seed", type=int, default=1,
                          help="shapes: seed (default 1: images `train` never saw)")
    evaluate.add_argument("--image-size", type=_positive,
                          help="default: the model's input size (128 if it takes any size)")
    evaluate.add_argument("--batch-size", type=_positive, default=16)
    evaluate.add_argument("--json", help="also write the scores to this JSON file")
    evaluate.set_defaults(run=_cmd_evaluate)

    predict = commands.add_parser(
        "predict", help="overlay a model's predictions on images; a Mask R-CNN also writes its "
        "detections as COCO results")
    predict.add_argument("--model", required=True, help="a .keras file")
    predict.add_argument("images", nargs="+", help="image files (PNG, JPEG...)")
    predict.add_argument("--out", help="output folder (default: next to each image)")
    predict.add_argument("--score-threshold", type=_score,
                         help="Mask R-CNN: draw the detections scoring at least this (default "
                         "0.5); the JSON keeps them all, for COCO AP")
    predict.add_argument("--json", help="Mask R-CNN: the COCO results file, image_id = the "
                         "image's position in the list from 1 (default: detections.json in --out "
                         "or beside the first image)")
    predict.add_argument("--image-size", type=_positive,
                         help="default: the model's input size (128 if it takes any size)")
    predict.set_defaults(run=_cmd_predict)

    data = commands.add_parser("data", help="write a dataset to disk")
    kinds = data.add_subparsers(dest="kind", required=True, metavar="KIND")
    shapes = kinds.add_parser("shapes", help="the built-in shapes as PNGs + COCO annotations")
    shapes.add_argument("--n", type=_positive, default=500)
    shapes.add_argument("--out", required=True)
    shapes.add_argument("--image-size", type=_positive, default=128)
    shapes.add_argument("--seed", type=int, default=0)
    shapes.set_defaults(run=_cmd_data_shapes)

    backbones = commands.add_parser("backbones", help="list the registered encoders")
    backbones.add_argument("--size", type=_positive, default=64,
                           help="probe input size (default 64)")
    backbones.set_defaults(run=_cmd_backbones)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: usage errors exit 2, --help exits 0
        return int(exit_.code or 0)
    try:
        args.run(args)
    except (SegkerasError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
        message = " ".join(_in_flag_terms(str(error)).split())  # one line
        print(f"segkeras {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return 0
