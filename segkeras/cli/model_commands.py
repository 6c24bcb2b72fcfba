"""``train``, ``evaluate`` and ``predict``: their parsers, the checks that need no data or model,
and the hand-off to the model's task, :mod:`segkeras.cli.semantic` or
:mod:`segkeras.cli.instances` (each has ``run_train``, ``run_evaluate`` and ``run_predict``)."""

from __future__ import annotations

import argparse
import os

from segkeras import runs
from segkeras.cli import common, instances, semantic
from segkeras.data.sources import SOURCES_HELP
from segkeras.errors import SegkerasError
from segkeras.models import registry

MODELS = registry.names()
TASKS = {"semantic": semantic, "instances": instances}
"""A registry task (:mod:`segkeras.models.registry`) -> the module that trains, scores and
predicts with its models."""
N_HELP = "shapes: number of images; pets and COCO: at most that many"


def add_parser(commands) -> None:
    train = commands.add_parser("train", help="train a model, write model.keras and metrics")
    train.add_argument("--model", required=True, choices=MODELS)
    defaults = ", ".join(f"{name}: {registry.get(name).default_backbone or 'none'}"
                         for name in MODELS)
    train.add_argument("--backbone", help=f"encoder name, or none for a model's own stem "
                       f"(default: {defaults})")
    train.add_argument("--data", default="shapes", help=SOURCES_HELP)
    train.add_argument("--n", type=common.positive, default=500, help=N_HELP)
    train.add_argument("--val-fraction", type=common.fraction, default=0.2,
                       help="held out for validation, in (0, 1)")
    train.add_argument("--image-size", type=common.positive, default=128, help="multiple of 32")
    train.add_argument("--batch-size", type=common.positive, default=16)
    train.add_argument("--epochs", type=common.non_negative, default=5,
                       help="epochs with the encoder frozen (all epochs when training end to end, "
                       "as maskrcnn always does)")
    train.add_argument("--finetune-epochs", type=common.non_negative, default=0,
                       help="then epochs with the encoder unfrozen at a 10x lower learning rate")
    train.add_argument("--lr", type=common.learning_rate, default=1e-3, help="learning rate")
    train.add_argument("--weights", default="imagenet", help="imagenet, none or a weights file")
    train.add_argument("--stacks", type=common.positive, default=2,
                       help="hourglass: number of stacks")
    train.add_argument("--max-instances", type=common.positive, default=16,
                       help="maskrcnn: objects trained on per image (further ones are skipped, "
                       "with a warning)")
    train.add_argument("--distribute", choices=("mirrored", "multiworker"),
                       help="mirrored: all local GPUs; multiworker: several machines, each "
                       "with its TF_CONFIG (TensorFlow backend; README: Several machines)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", default=os.path.join("outputs", "train"),
                       help="output folder; one holding an earlier run is refused unless "
                       "--overwrite or --resume")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out")
    train.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in --out from its last finished epoch "
                       "(same command otherwise; its checkpoint.npz is written every epoch)")
    train.set_defaults(run=_cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="per-class IoU, mean IoU, pixel accuracy; for a Mask R-CNN: COCO box "
        "and mask AP")
    evaluate.add_argument("--model", required=True, help="a .keras file")
    evaluate.add_argument("--data", default="shapes", help=SOURCES_HELP)
    evaluate.add_argument("--n", type=common.positive, default=200, help=N_HELP)
    evaluate.add_argument("--seed", type=int, default=1,
                          help="shapes: seed (default 1: images `train` never saw)")
    evaluate.add_argument("--image-size", type=common.positive,
                          help="default: the model's input size (128 if it takes any size)")
    evaluate.add_argument("--batch-size", type=common.positive, default=16)
    evaluate.add_argument("--json", help="also write the scores to this JSON file")
    evaluate.set_defaults(run=_cmd_evaluate)

    predict = commands.add_parser(
        "predict", help="overlay a model's predictions on images; a Mask R-CNN also writes its "
        "detections as COCO results")
    predict.add_argument("--model", required=True, help="a .keras file")
    predict.add_argument("images", nargs="+", help="image files (PNG, JPEG...)")
    predict.add_argument("--out", help="output folder (default: next to each image)")
    predict.add_argument("--score-threshold", type=common.score,
                         help="Mask R-CNN: draw the detections scoring at least this (default "
                         "0.5); the JSON keeps them all, for COCO AP")
    predict.add_argument("--json", help="Mask R-CNN: the COCO results file, image_id = the "
                         "image's position in the list from 1 (default: detections.json in --out "
                         "or beside the first image)")
    predict.add_argument("--image-size", type=common.positive,
                         help="default: the model's input size (128 if it takes any size)")
    predict.add_argument("--min-side", type=common.positive,
                         help="resize each image, aspect ratio kept, so its shorter side is "
                         "this (default: the model's input size, or --image-size)...")
    predict.add_argument("--max-side", type=common.positive,
                         help="...unless its longer side would exceed this (default: the "
                         "model's input size, or twice --image-size for a model of any size); "
                         "results come back at the image's own size")
    predict.set_defaults(run=_cmd_predict)


# ----------------------------------------------------------------------------- train


def check_train_arguments(args: argparse.Namespace) -> None:
    """Every argument error of ``train`` that can be seen without data or a model."""
    from segkeras.data.core import split_counts

    common.check_size(args.image_size)
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
    if args.distribute and args.resume:
        raise SegkerasError("--resume is not available with --distribute (no checkpoints are "
                            "written there); leave one out")
    common.check_output_folder(args.out, "--out")
    if args.resume and not os.path.isfile(common.checkpoint_path(args)):
        raise SegkerasError(f"--resume: {args.out} holds no checkpoint of an interrupted run "
                            f"({common.checkpoint_path(args)}); start without --resume")
    runs.check_existing_run(args.out, args.overwrite or args.resume)


def _cmd_train(args: argparse.Namespace) -> None:
    check_train_arguments(args)  # before loading data, building or training anything
    with runs.run_lock(args.out):
        try:
            TASKS[registry.get(args.model).task].run_train(args)
        except runs.Interrupted as interrupted:
            from segkeras.train import interrupted_message

            interrupted.message = interrupted_message(interrupted, common.checkpoint_path(args))
            raise
    checkpoint = common.checkpoint_path(args)
    if checkpoint and os.path.isfile(checkpoint):
        os.remove(checkpoint)  # the run is complete: model, history and metrics are written


# ----------------------------------------------------------------------------- evaluate


def _cmd_evaluate(args: argparse.Namespace) -> None:
    if args.json:
        common.check_output_file(args.json, "--json")
        runs.check_json_target(args.json, [args.model])
    model, task = load_task_model(args.model)
    size = common.model_size(model, args.image_size)
    data = common.load_data(args.data, args.n, size, args.seed, split="test",
                            stream=task == "instances")
    result, table = TASKS[task].run_evaluate(model, data, args, size)
    print(table)
    if args.json:
        run_id = runs.model_run_id(args.model) or runs.new_run_id()
        print(f"Wrote {runs.write_json(args.json, result, run_id)}")


# ----------------------------------------------------------------------------- predict


def _cmd_predict(args: argparse.Namespace) -> None:
    for path in args.images:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such image: {path}")
    folders = [args.out] if args.out else sorted(
        {os.path.dirname(os.path.abspath(path)) for path in args.images})
    for folder in folders:  # where the pictures (and the default --json) go
        common.check_output_folder(folder, "--out" if args.out
                                   else "--out (default: beside the images)")
    if args.json:
        common.check_output_file(args.json, "--json")
    args.output_plan = runs.output_paths(args.images, common.OUTPUT_SUFFIXES, args.out)
    model, task = load_task_model(args.model)
    if task == "instances":  # the default detections.json too: never a file it did not write
        runs.check_json_target(instances.detections_path(args), [*args.images, args.model])
    images = Images(args.images)
    TASKS[task].run_predict(model, args, images)
    if images.skipped:
        raise SegkerasError(f"{len(images.skipped)} of {len(args.images)} images skipped: "
                            + "; ".join(images.skipped))


class Images:
    """(position from 1, path, RGB pixels) of each image that can be read; ``skipped`` collects
    one line for each image that could not be read or predicted (reported at the end, the other
    images predicted)."""

    def __init__(self, paths: list[str]):
        self.paths, self.skipped = paths, []

    def __iter__(self):
        from segkeras.data.images import read_rgb

        for position, path in enumerate(self.paths, 1):
            try:
                yield position, path, read_rgb(path)
            except SegkerasError as error:
                self.skipped.append(str(error))


def load_task_model(path: str):
    """(model, task): a saved Mask R-CNN (task ``"instances"``) or semantic segmentation model
    (``"semantic"``); anything else is refused."""
    model = common.load_model(path)
    if instances.accepts(model):
        return model, "instances"
    return semantic.check_segmenter(model, path), "semantic"
