"""Section 2: segkeras' U-Net against the TensorFlow segmentation tutorial's U-Net.

Renders the held-out mIoU of the stored ``results/versus_quality*.json`` runs (written by
``python bench/s2_versus_runs.py quality``: long, valid on a busy machine) and measures the
training speed now (``s2_versus_runs.py speed``: take it on a quiet machine).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import s2_versus_runs as versus_runs
from common import BENCH_DIR, PATHS, smoke, table

TITLE = "2. segkeras U-Net vs the TensorFlow tutorial's U-Net"
SPEED_MODELS = ("segkeras", "reference_bn099")  # issue 27: like for like, alternating
SPEED_SIZE, SPEED_BATCH = 128, 16  # issue 27's like-for-like setting
CANDIDATE_SETTINGS = ((128, 16), (128, 8), (256, 16), (256, 8))
"""The (size, batch) of the decoder candidates' CPU table (``s2_versus_runs.py cpu``)."""
CODE = ("segkeras/models/unet.py", "segkeras/backbones.py", "segkeras/losses.py",
        "segkeras/data/pipeline.py")


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def _versus_quality(recipe: dict, current: tuple = ()) -> tuple[list[dict], list[str], list[str]]:
    """The quality records of every ``results/versus_quality*.json`` run with ``recipe`` and the
    commands that wrote them; runs with another recipe (an older one, not one of ``current``) are
    not mixed in but summarised, one sentence per file."""
    import glob

    records, commands, others = [], [], []
    for path in sorted(glob.glob(os.path.join(PATHS["results"], "versus_quality*.json"))):
        with open(path, encoding="utf-8") as file:
            stored = json.load(file)
        if stored["recipe"] == recipe:
            records += stored["records"]
            commands.append(stored["command"])
            continue
        if stored["recipe"] in current:
            continue
        older = {"loss": "cross-entropy", **stored["recipe"]}  # before "loss" was recorded
        changed = ", ".join(f"{key} {older.get(key)}" for key in recipe
                            if older.get(key) != recipe[key])
        by_model = {}
        for record in stored["records"]:
            by_model.setdefault(record["model"], []).append(record["miou"])
        others.append(f"`{os.path.basename(path)}`, {changed}: "
                      + "; ".join(f"`{kind}` {_mean_sd(mious)} ({len(mious)} seeds)"
                                  if len(mious) > 1 else f"`{kind}` {mious[0]:.3f} (1 seed)"
                                  for kind, mious in by_model.items()))
    return records, commands, others


def measure(full: bool) -> dict:
    """A short speed run per model now; the quality records come from
    ``results/versus_quality*.json`` (``python bench/runs.py quality --out ...``: long, and
    valid on a busy machine)."""
    speed_file = os.path.join(PATHS["results"], "versus_speed.json")
    if os.path.exists(speed_file):
        os.remove(speed_file)
    models = ["--models", *SPEED_MODELS] if not smoke() else ["--models", "segkeras"]
    tiny = ["--steps", "1", "--rounds", "1"] if smoke() else []
    subprocess.run([sys.executable, "s2_versus_runs.py", "speed", "--size", str(SPEED_SIZE),
                    "--batch", str(SPEED_BATCH), *models, "--out", speed_file, *tiny],
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


def _decoder(kind: str) -> str:
    """The candidate's decoder in words, from its ``unet()`` arguments over ``unet()``'s
    defaults."""
    if kind not in versus_runs.CANDIDATES:
        return "the tutorial's U-Net"
    import inspect

    from segkeras.models.unet import unet

    given = versus_runs.CANDIDATES[kind]
    options = {name: parameter.default
               for name, parameter in inspect.signature(unet).parameters.items()} | given
    return (str(options["decoder_filters"])
            + (", projected skips" if options["skip_projection"] else ", skips as they are")
            + {0: ", no block at full resolution (stride-2 logits upsampled bilinearly)",
               1: ", one 3x3 convolution at full resolution", 2: ""}[options["final_convs"]]
            + (", bilinear upsampling" if options["upsampling"] == "bilinear" else "")
            + ("" if given else " (`unet()`'s default)"))


def _candidates() -> str:
    """Issue 27's table: each U-Net decoder's CPU ms per training image at every size and batch
    (the ``results/versus_candidates_cpu*.json`` runs, medians over them), its ratio to the
    tutorial's U-Net, and its held-out mIoU at the demo's recipe and at 128²."""
    import glob

    paths = sorted(glob.glob(os.path.join(PATHS["results"], "versus_candidates_cpu*.json")))
    if not paths:
        return ""
    cpu, cpu_commands = {}, []
    for run, path in enumerate(paths):
        with open(path, encoding="utf-8") as file:
            stored = json.load(file)
        cpu_commands.append(stored["command"])
        for record in stored["records"]:
            key = (record["model"], record["size"], record["batch"])
            cpu.setdefault(key, []).append({**record, "run": run})
    demo, _, _ = _versus_quality(versus_runs.RECIPE, (versus_runs.RECIPE_128,))
    large, commands, _ = _versus_quality(versus_runs.RECIPE_128, (versus_runs.RECIPE,))

    def miou(records: list[dict], kind: str) -> str:
        mious = [r["miou"] for r in records if r["model"] == kind]
        if len(mious) == 1:
            return f"{mious[0]:.3f} (1)"
        return f"{_mean_sd(mious)} ({len(mious)})" if mious else "not measured"

    def ms(kind: str, size: int, batch: int) -> str:
        """The median CPU time over the runs, and the median of the reference's time over the
        candidate's within each run (the same process, one after the other)."""
        runs = cpu.get((kind, size, batch), [])
        reference = {r["run"]: r["cpu_ms_per_img"]
                     for r in cpu.get(("reference_bn099", size, batch), [])}
        if not runs:
            return ""
        ratios = [reference[r["run"]] / r["cpu_ms_per_img"] for r in runs if r["run"] in reference]
        value = statistics.median(r["cpu_ms_per_img"] for r in runs)
        return f"{value:.0f}" + (f" ({statistics.median(ratios):.2f}x)" if ratios else "")

    measured = {key[0] for key in cpu} | {r["model"] for r in demo + large}
    kinds = [kind for kind in (*versus_runs.CANDIDATES, "reference_bn099") if kind in measured]
    params = {r["model"]: r["params"] for r in [*demo, *large, *(r for runs in cpu.values()
                                                                  for r in runs)] if "params" in r}
    rows = [[kind, _decoder(kind), f"{params[kind] / 1e6:.2f}M" if kind in params else "",
             *(ms(kind, size, batch) for size, batch in CANDIDATE_SETTINGS),
             miou(demo, kind), miou(large, kind)] for kind in kinds]
    recipe_128 = versus_runs.RECIPE_128
    return ("\n\nThe U-Net decoders compared for `unet()`'s default (issue 27): CPU milliseconds "
            "per training image (the median of single steps timed with the process's CPU clock, "
            "random 4-class images, cross-entropy + Dice, everything trainable, BatchNorm "
            "trained; " + "; ".join(f"`{c}`" for c in cpu_commands)
            + "; CPU time survives a busy machine, img/s does not) "
            "and, in brackets, the tutorial's U-Net's time over the candidate's in the same "
            "process (the median over the runs that measured both); held-out mIoU "
            "(mean ± sd (seeds)) at the demo's recipe (the table above) and with the shapes "
            f"drawn at {recipe_128['size']}², {recipe_128['steps']} steps, the rest of the recipe "
            "the same (" + ("; ".join(f"`{c}`" for c in commands) or "not measured") + ").\n\n"
            + table(["model", "decoder", "params",
                     *(f"CPU ms/img {size}²×{batch}" for size, batch in CANDIDATE_SETTINGS),
                     "mIoU, demo recipe", f"mIoU, {recipe_128['size']}²"], rows))


def render(speed: dict) -> str:
    recipe = versus_runs.RECIPE
    records, commands, others = _versus_quality(recipe, (versus_runs.RECIPE_128,))
    by_model, timings = {}, {}
    for record in speed["records"]:
        timings.setdefault(record["model"], []).append(record)
    fast = {kind: {"params": runs[0]["params"],
                   "img_per_s": statistics.median(r["img_per_s"] for r in runs),
                   "img_per_s_range": (min(r["img_per_s"] for r in runs),
                                       max(r["img_per_s"] for r in runs)),
                   "cpu_ms_per_img": statistics.median(r["cpu_ms_per_img"] for r in runs),
                   **{key: runs[0][key] for key in ("size", "batch") if key in runs[0]},
                   "runs": len(runs)} for kind, runs in timings.items()}
    for record in records:
        by_model.setdefault(record["model"], []).append(record)
    classes = next((list(r["iou"]) for r in records if "iou" in r), [])
    rows, mean, sd = [], {}, {}
    for kind in versus_runs.MODELS:
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
            f"{versus_runs.TUTORIAL_SIZE if kind == 'reference_tutorial' else recipe['size']}²"
            + (f" ({timed['size']}²×{timed['batch']})" if "batch" in timed else ""),
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
            f"{versus_runs.TUTORIAL_SIZE}²), batch {recipe['batch']}, {recipe['steps']} steps, "
            f"Adam {recipe['learning_rate']} with {recipe['schedule']} decay to 0, "
            f"{recipe['loss']} (the demo's recipe, for every model), random initialisation; a "
            "seed sets the initial weights and the shuffle. Models (`bench/s2_versus_runs.py`): "
            "`segkeras`, `unet()` as it is (its default decoder: the candidates table below), "
            "`segkeras_full1` the default before the logits were upsampled (one 3x3 "
            "convolution at full resolution), "
            "`segkeras_light`, the demo's and the labs' decoder (the same widths, skips as they "
            "are, two convolutions per block), `segkeras_paper` the paper-like widths (256, 128, "
            "64, 32, 16), skips as they are, `segkeras_slim_proj` the default before issue 27 "
            "(64, 32, 16, 16, 8), projected skips, two convolutions per block: all "
            "MobileNetV2 trained from scratch, BatchNorm momentum 0.99; "
            "`reference_bn099`, the tutorial's U-Net with the same BatchNorm "
            "treatment (like for like); `reference_bn0999`, with keras.applications' momentum "
            "0.999; `reference_tutorial`, as the tutorial runs it: frozen encoder at 128², random "
            "because offline (the tutorial's is ImageNet-pretrained). mIoU: "
            + ("; ".join(f"`{c}`" for c in commands) or "**not measured yet**")
            + ", one process per run (a score after a fixed number of steps does not depend on "
            "the load); img/s and CPU ms/img: this section's command, 100 timed steps at "
            f"{SPEED_SIZE}², batch {SPEED_BATCH} (in brackets: where the records say so), the "
            "median (min–max) of "
            f"{max((t['runs'] for t in fast.values()), default=0)} runs per model, the models "
            "taking turns (one process per run), from the demo's pipeline (tf.data's autotuner "
            "off: note 3).\n\n"
            + table(["model", "params", "size", "train img/s", "CPU ms/img",
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
    notes += _versus_explanation(by_model, classes)
    history = ("\n\nSuperseded recipes (older runs in `bench/results/`, not comparable with the "
               "table):\n\n" + "\n".join(f"- {line}" for line in others)) if others else ""
    return (text + "".join(f"\n\n- {note}" if i == 0 else f"\n- {note}"
                           for i, note in enumerate(notes)) + _candidates() + history)


def headline(speed: dict) -> tuple[str, str]:
    """segkeras' mIoU and img/s against the like-for-like reference."""
    records, _, _ = _versus_quality(versus_runs.RECIPE, (versus_runs.RECIPE_128,))
    kinds = ("segkeras", "reference_bn099")
    mious = {kind: [r["miou"] for r in records if r["model"] == kind] for kind in kinds}
    speeds = {kind: [r["img_per_s"] for r in speed["records"] if r["model"] == kind]
              for kind in kinds}
    said = {kind: (_mean_sd(mious[kind]) if mious[kind] else "not measured") + ", "
            + (f"{statistics.median(speeds[kind]):.1f} train img/s" if speeds[kind]
               else "img/s not measured") for kind in kinds}
    return (f"segkeras U-Net: held-out mIoU {said['segkeras']}",
            f"the tutorial's U-Net, same BatchNorm: {said['reference_bn099']}")


