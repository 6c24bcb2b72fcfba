"""What several commands share: argument types, output checks, loading data and models, saving a
run, and the translation of the Python API's argument names into the CLI's flags."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import tempfile
import time
import warnings
import zipfile

from segkeras import runs
from segkeras.errors import SegkerasError
from segkeras.models import registry

_START = time.perf_counter()


# ----------------------------------------------------------------------------- argument types


def whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive(text: str) -> int:
    value = whole(text)
    if value < 1:
        hint = f"; did you mean {-value}?" if value < 0 else ""
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}{hint}")
    return value


def non_negative(text: str) -> int:
    value = whole(text)
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


def fraction(text: str) -> float:
    return _number(text, lambda value: 0.0 < value < 1.0,
                   "a fraction between 0 and 1 (e.g. 0.2)")


def score(text: str) -> float:
    return _number(text, lambda value: 0.0 <= value <= 1.0, "a score between 0 and 1 (e.g. 0.5)")


def learning_rate(text: str) -> float:
    return _number(text, lambda value: 0.0 < value < math.inf, "a positive number (e.g. 1e-3)")


# ----------------------------------------------------------------------------- checks


def check_size(size: int) -> int:
    from segkeras.backbones import check_input_shape

    try:
        check_input_shape((size, size, 3))
    except SegkerasError as error:
        raise SegkerasError(f"--image-size {size}: {error}") from error
    return size


def check_output_folder(folder: str, flag: str) -> None:
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


def check_output_file(path: str, flag: str) -> None:
    """The folder that will hold ``path`` exists (or is created) and is writable."""
    if os.path.isdir(path):
        raise SegkerasError(f"{flag} {path} is a folder; pass a file name, e.g. scores.json")
    check_output_folder(os.path.dirname(os.path.abspath(path)), flag)


def check_num_classes(num_classes: int, data, spec: str) -> None:
    if data.num_classes != num_classes:
        raise SegkerasError(
            f"the model predicts {num_classes} classes but --data {spec} has "
            f"{data.num_classes} ({', '.join(data.class_names)}); use the data it was "
            "trained on."
        )


def check_finite_loss(history, learning_rate: float) -> None:
    """SegkerasError when training stopped on a NaN or infinite loss (nothing is saved)."""
    losses = history.history.get("loss", [])
    bad = [epoch for epoch, loss in enumerate(losses) if not math.isfinite(loss)]
    if bad:
        raise SegkerasError(
            f"training stopped in epoch {bad[0] + 1}: the loss became {losses[bad[0]]}; nothing "
            f"was saved. Lower --lr (was {learning_rate:g}) or check the masks of --data")


# ----------------------------------------------------------------------------- flag terms


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


def in_flag_terms(message: str) -> str:
    """An error message of the Python API with its argument names replaced by the CLI flags."""
    for pattern, flag in _FLAG_SPELLINGS:
        message = pattern.sub(flag, message)
    return message


@contextlib.contextmanager
def warnings_in_flag_terms(command: str):
    """Warnings of the Python API inside the block, printed as one line each in CLI terms."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        message = " ".join(in_flag_terms(str(warning.message)).split())
        print(f"segkeras {command}: warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- loading


def load_data(spec: str, n: int, image_size: int, seed: int, split: str, stream: bool = False):
    """A SegmentationData for a ``--data`` value. ``split``: "train" or "test" (pets only).
    ``stream``: a COCO-format source comes as a :class:`~segkeras.data.coco.CocoIndex` (read
    image by image when used) instead of being loaded into memory."""
    from segkeras.data import coco, sources

    try:
        files = sources.coco_files(spec) if stream else None
        if files is not None:
            return coco.CocoIndex(*files, limit=n)
        return sources.load(spec, n, image_size, seed=seed, split=split)
    except SegkerasError as error:
        raise type(error)(f"--data {spec}: {error}") from error


def load_model(path: str):
    """The Keras model saved at ``path`` (uncompiled); SegkerasError if it is not one."""
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


def build_model(args: argparse.Namespace, num_classes: int, weights):
    """The ``--model`` of ``train`` with its ``--backbone``, ``--image-size`` and options."""
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


def model_size(model, requested: int | None) -> int:
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
    return check_size(requested or 128)


# ----------------------------------------------------------------------------- writing


def checkpoint_path(args: argparse.Namespace) -> str | None:
    """Where ``train`` keeps its per-epoch checkpoint (none with --distribute)."""
    from segkeras.train import CHECKPOINT

    return None if getattr(args, "distribute", None) else os.path.join(args.out, CHECKPOINT)


OUTPUT_SUFFIXES = ("_mask.png", "_overlay.png", "_instances.png")
"""What ``predict`` writes per image (semantic: mask and overlay; Mask R-CNN: instances)."""


def output_path(args: argparse.Namespace, image_path: str, suffix: str) -> str:
    """``STEM{suffix}`` in --out, else beside the image, made unique over all of ``args.images``
    (``args.output_plan``, from :func:`segkeras.runs.output_paths`: never an input's name,
    never another output's)."""
    return args.output_plan[image_path][suffix]


def save_outputs(out: str, model, history, result, run_id: str | None = None) -> str:
    """model.keras, history.json, history.png and metrics.json under ``out``, atomically, in
    that order, with one run id (:func:`segkeras.runs.save_run`); ``model=None``: already saved
    with ``run_id``. Returns the run id."""
    return runs.save_run(out, model, history.to_dict(), result, history_figure(history), run_id)


def history_figure(history):
    """The training curves with a dotted line where fine-tuning starts."""
    from segkeras import viz

    figure = viz.training_curves(history)
    if 0 < history.stage_boundary < len(history.epoch):
        for axes in figure.axes:
            axes.axvline(history.stage_boundary + 0.5, color="gray", linestyle=":")
    return figure


def elapsed() -> str:
    """Time since the command started, e.g. ``2 min 05.3 s``."""
    seconds = time.perf_counter() - _START
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def seconds_since_start() -> float:
    return time.perf_counter() - _START
