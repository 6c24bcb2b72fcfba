"""``train``, ``evaluate`` and ``predict`` for semantic segmentation models (FCN, DeconvNet, U-Net,
stacked hourglass): the transfer-learning recipe, per-class IoU, mask and overlay PNGs."""

from __future__ import annotations

import argparse
import contextlib

from segkeras.cli import common
from segkeras.errors import SegkerasError


def check_segmenter(model, path: str):
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


def run_train(args: argparse.Namespace) -> None:
    """Frozen-encoder epochs then fine-tuning (end to end without pretrained weights), scored on
    the held-out images; writes model.keras, metrics, history to ``--out``."""
    import keras

    from segkeras import train
    from segkeras.data.pipeline import make_dataset
    from segkeras.evaluate import semantic

    precision = train.configure_precision()  # before any layer exists
    strategy = train.make_strategy(args.distribute)
    data = common.load_data(args.data, args.n, args.image_size, args.seed, split="train")
    train_data, val_data = data.split(args.val_fraction)
    weights = None if args.weights == "none" else args.weights
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = common.build_model(args, data.num_classes, weights)
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
        checkpoint=common.checkpoint_path(args), resume=args.resume,
    )
    common.check_finite_loss(history, args.lr)
    if not train.is_chief(strategy):
        print(f"Worker finished; the chief evaluates and writes {args.out} "
              f"({common.elapsed()}).")
        return
    if args.distribute == "multiworker":  # the other workers are done: evaluate alone
        model = train.single_process_copy(model)
    result = semantic.evaluate_semantic(model, make_dataset(val_data, **make), data.class_names)
    print(semantic.format_table(result))
    common.save_outputs(args.out, model, history, result)
    print(f"Wrote {args.out}/model.keras, metrics.json, history.json, history.png "
          f"({common.elapsed()}).")


def run_evaluate(model, data, args: argparse.Namespace, size: int) -> tuple[dict, str]:
    """Per-class IoU, mean IoU and pixel accuracy of ``model`` on ``data``: (scores, table)."""
    from segkeras.data.pipeline import make_dataset
    from segkeras.evaluate import semantic
    from segkeras.train import model_num_classes

    num_classes = model_num_classes(model)
    common.check_num_classes(num_classes, data, args.data)
    dataset = make_dataset(data, image_size=size, batch_size=args.batch_size,
                           num_classes=num_classes)
    result = semantic.evaluate_semantic(model, dataset, data.class_names)
    return result, semantic.format_table(result)


def run_predict(model, args: argparse.Namespace, images) -> None:
    """``STEM_mask.png`` (class ids, palette) and ``STEM_overlay.png`` per image, at the image's
    own size."""
    import numpy as np

    from segkeras import runs, viz
    from segkeras.data.images import resize_image, write_png
    from segkeras.train import model_num_classes

    for flag, value in (("--json", args.json), ("--score-threshold", args.score_threshold)):
        if value is not None:
            raise SegkerasError(f"{flag} is for Mask R-CNN models; {args.model} is a semantic "
                                f"segmentation model: leave {flag} out")
    model = _last_output(model)
    size = common.model_size(model, args.image_size)
    class_names = runs.training_metrics(args.model, model_num_classes(model) - 1).get("classes")
    for _, path, image in images:
        height, width = image.shape[:2]
        logits = model.predict_on_batch(resize_image(image, (size, size))[None])
        small = np.argmax(logits[0], axis=-1).astype(np.uint8)
        rows = np.arange(height) * size // height
        cols = np.arange(width) * size // width
        mask = small[rows[:, None], cols[None, :]]  # nearest neighbour back to the original size
        write_png(common.output_path(args, path, "_mask.png"), mask, palette=True)
        target = common.output_path(args, path, "_overlay.png")
        with runs.atomic_path(target) as temporary:
            viz.overlay(image, mask, class_names=class_names).savefig(temporary, dpi=100)
        print(f"{path} -> {target}")


def _last_output(model):
    """The model predicting only its last (for a stacked hourglass: most refined) logits."""
    if len(model.outputs) == 1:
        return model
    import keras

    return keras.Model(model.input, model.outputs[-1], name=f"{model.name}_last")
