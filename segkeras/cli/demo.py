"""``demo``: a U-Net (MobileNetV2) trained on the built-in shapes, its per-class IoU on held-out
images, the model and pictures written to ``--out``."""

from __future__ import annotations

import argparse
import os
import time

from segkeras import runs
from segkeras.cli import common

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
image (``experiments/demo_speed.py``). ``steps_per_execution`` runs that many steps per call of the
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
    build = {"decoder_filters": recipe["decoder_filters"], "skip_projection": False,
             "final_convs": 2, "input_shape": (size, size, 3)}
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

    run_id = runs.new_run_id()  # model first, metrics last, both with this id
    runs.save_model(model, os.path.join(out, runs.MODEL), run_id)
    sample = held_out.subset(range(min(6, len(held_out))))
    logits = model.predict_on_batch(next(iter(test_set))[0])[: len(sample)]  # a traced shape
    with runs.atomic_path(os.path.join(out, "predictions.png")) as temporary:
        viz.prediction_grid(sample.images, sample.masks, logits, shapes.CLASS_NAMES).savefig(
            temporary, dpi=100)
    with runs.atomic_path(os.path.join(out, "history.png")) as temporary:
        common.history_figure(history).savefig(temporary, dpi=100)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["timing"] = {
        "wall_s": common.seconds_since_start(), "cpu_s": usage.ru_utime + usage.ru_stime,
        "train_s": train_seconds, "calibration_gflops": calibration.gflops,
        "load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
    semantic.save_json(result, os.path.join(out, runs.METRICS), run_id)
    print(f"Mean IoU on {len(held_out)} held-out images: {result['mean_iou']:.3f}. Wrote "
          f"model.keras, metrics.json, predictions.png, history.png to {out}/. "
          f"Elapsed: {common.elapsed()} (CPU {result['timing']['cpu_s']:.0f} s, training "
          f"{train_seconds:.0f} s; {calibration}).")
    return result


def add_parser(commands) -> None:
    demo = commands.add_parser(
        "demo", help="train a U-Net (MobileNetV2) on the built-in shapes and report its IoU")
    demo.add_argument("--out", default=os.path.join("outputs", "demo"),
                      help="output folder (default outputs/demo)")
    demo.add_argument("--epochs", type=common.positive,
                      help="training epochs (default: the recipe's)")
    demo.add_argument("--quick", action="store_true", help="a tiny run (~30 s) for tests")
    demo.set_defaults(run=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> None:
    common.check_output_folder(args.out, "--out")  # before minutes of training
    with runs.run_lock(args.out):  # the demo replaces its own earlier output
        run_demo(out=args.out, epochs=args.epochs, quick=args.quick)
