"""Section 8: Mask R-CNN on built-in shapes, segkeras against torchvision at equal CPU budget.

Rendered from ``results/mask_rcnn.json``; ``bench/run.py`` does not re-measure it (hours of
CPU). The records come from ``bench/s8_mask_rcnn_sweep.py``, which runs
``bench/s8_mask_rcnn_train.py`` and ``bench/s8_mask_rcnn_torchvision.py`` over the same
learning rates and seeds; each run stores its record under ``{system} lr={rate} seed={seed}``.
"""

from __future__ import annotations

import statistics

from common import load_results, table
from s8_mask_rcnn_record import INFERENCE_SETTINGS as INFERENCE
from s8_mask_rcnn_record import best_rate, parse_run_key

TITLE = "8. Mask R-CNN on built-in shapes: segkeras vs torchvision"
CODE = ("segkeras/models/mask_rcnn", "segkeras/boxes.py", "segkeras/layers.py",
        "segkeras/models/mask_head.py")
MEASURED_BY = ("python bench/s8_mask_rcnn_sweep.py --torch-python VENV/bin/python",
               "python bench/s8_mask_rcnn_multiscale.py [--pyramid]",
               "PYTHONPATH=. VENV/bin/python bench/s8_mask_rcnn_multiscale_torchvision.py")
"""Not measured by ``bench/run.py``: the first command writes ``results/mask_rcnn.json``, the
others ``results/mask_rcnn_multiscale.json``."""
SYSTEMS = ("segkeras", "torchvision")
LOSSES = {  # (segkeras' name, torchvision's name) of the same loss
    "RPN objectness": ("rpn_objectness_loss", "loss_objectness"),
    "RPN box": ("rpn_box_loss", "loss_rpn_box_reg"),
    "classifier": ("class_loss", "loss_classifier"),
    "box": ("box_loss", "loss_box_reg"),
    "mask": ("mask_loss", "loss_mask"),
}
SETUP = (
    "Both systems, like for like: built-in shapes, 3000 training images (the run's seed), the "
    "same 300 held-out images (seed 1000), 128x128, batch 8, random left-right flips; Adam with a "
    "cosine to 5 % over the CPU budget of {minutes:g} CPU-minutes, the **global** gradient norm "
    "clipped at 10 (Keras' `global_clipnorm`, torch's `clip_grad_norm_`); a randomly initialised "
    "MobileNetV2 (no ImageNet weights offline) **tapped at the same layers** (the expanded "
    "activations entering blocks 6 and 13, 192 channels at stride 8 and 576 at stride 16, and "
    "the last 1280-channel map) -> the same single-level FPN (1x1 laterals, nearest top-down, one "
    "3x3 convolution of 128 channels at stride 8); anchors 16/32/64 x ratios 0.5/1/2; RPN 600 -> "
    "NMS 0.7 -> 200 (training) / 100 (test) proposals, 256 sampled anchors; box head RoIAlign "
    "7x7 -> 2 FC of 256 -> classes + class-specific deltas, 32 RoIs per image (<= 25 % "
    "foreground); mask head RoIAlign 14x14 -> 4 conv of 64 -> deconv -> 28x28; **RoIAlign with "
    "the half-pixel offset on both sides** (`aligned=True`); <= 100 detections, score > 0.05, "
    "per-class NMS 0.5. segkeras: `mask_rcnn(..., 'mobilenetv2', weights=None)` trained by "
    "`model.fit`, BatchNorm momentum 0.9 (from scratch); torchvision: "
    "`torchvision.models.detection.MaskRCNN` with those pieces (`MobileNetV2FPN` and "
    "`AlignedRoIAlign` in its script), torch's BatchNorm momentum 0.1 (= Keras 0.9). Each run is "
    "one process on **one thread**, two runs at a time on the 2 cores; its budget is its own CPU "
    "time, so on one thread it is work done, not waiting. **The same tuning for both**: every "
    "learning rate of {rates} with seed {first_seed}, then each system's best rate (highest box "
    "AP + mask AP) with seeds {other_seeds}. AP: pycocotools on the held-out images from "
    "**predicted** boxes; \"GT-box mask AP\": the same mask head on the ground-truth boxes. The "
    "losses, the trained models and each run's command are kept (the losses in "
    "`bench/results/mask_rcnn.json`, the models in the sweep's `--models` folder).")


MULTISCALE_SETUP = (
    "**The multi-scale shapes** (issue 23): `shapes.generate_multiscale`, images of 256-512 px a "
    "side with varied aspect ratio and objects of about 6-250 px (COCO's small, medium and large "
    "all common), {train} training images (the run's seed), the same {val} held-out images (seed "
    "1000: 907 objects, 480 small, 293 medium and 134 large by COCO's area ranges); "
    "each image resized **keeping its aspect ratio** to a longer side of {size} (segkeras pads "
    "to the square input, torchvision each batch to its largest image), batch {batch}, random "
    "left-right flips; {minutes:g} CPU-minutes of training per run (or less: see the "
    "CPU-min column), one thread each, beside other runs on the 2 cores (each budget is its "
    "own CPU time); Adam with the cosine of "
    "the runs above, the global gradient norm clipped at 10, each system at its best rate of the "
    "sweep above. The same randomly initialised MobileNetV2, heads as above but 128 RoIs per "
    "image and RPN 1000 (per level) -> NMS 0.7 -> 500 (training) / 300 (test) proposals. "
    "**pyramid**: P2-P6 (the expanded activations entering blocks 3, 6 and 13 and the last map "
    "-> 1x1 laterals, nearest top-down, a 3x3 convolution on each of P2-P5, P6 by subsampling "
    "P5), one anchor size per level (16, 32, 64, 128, 256) x ratios 0.5/1/2, the RPN shared by "
    "the levels, each RoI pooled from the level of eq. 1 (RoIAlign `aligned=True`) with the FPN "
    "paper's canonical size 224 (a 224-px RoI on P4) unless the model says otherwise "
    "(`roi_canonical_size=448`: a 448-px RoI on P4, every RoI one level finer; 896: two "
    "levels finer), 2 x 2 samples per bin unless the model says 3 x 3 "
    "(`roi_sampling_ratio=3`); "
    "torchvision's side is its own `FeaturePyramidNetwork` + `LastLevelMaxPool` with "
    "`MultiScaleRoIAlign`'s level mapper, made `aligned=True`. **single level**: segkeras' small "
    "CPU option (the stride-8 map only, anchors 16-128). AP by object size from predicted "
    "boxes; inference on the held-out images at their own sizes, masks pasted at full size.")
MULTISCALE_SYSTEMS = {"pyramid": "segkeras, pyramid", "pyramid64": "segkeras, pyramid, 64 channels",
                      "pyramid64 k448": "segkeras, pyramid, 64 channels, canonical 448",
                      "pyramid64 k896": "segkeras, pyramid, 64 channels, canonical 896",
                      "pyramid64 k896 r3": "segkeras, pyramid, 64 channels, canonical 896, "
                                           "3 x 3 samples per bin",
                      "pyramid96 k448": "segkeras, pyramid, 96 channels, canonical 448",
                      "pyramid128 k448": "segkeras, pyramid, 128 channels, canonical 448",
                      "single": "segkeras, single level",
                      "torchvision pyramid": "torchvision, pyramid"}


def render_multiscale(results: dict) -> str:
    """The multi-scale runs' table (``results/mask_rcnn_multiscale.json``)."""
    rows, first = [], next(iter(results.values()))
    for key, record in sorted(results.items(), key=lambda item: list(MULTISCALE_SYSTEMS).index(
            item[0].rsplit(" ", 1)[0])):
        system, seed = key.rsplit(" ", 1)
        sizes = [" / ".join(f"{record[kind][f'AP_{size}']:.3f}" for size in "SML")
                 for kind in ("box", "mask")]
        rows.append([MULTISCALE_SYSTEMS[system], seed.split("=")[1],
                     f"{record['params'] / 1e6:.2f}M", f"{record['config']['learning_rate']:g}",
                     f"{record['train_cpu_s'] / 60:.1f}",
                     f"{record['steps']} x {record['batch_size']}",
                     f"{record['train_img_per_cpu_s']:.2f}", _ap(record["box"]), sizes[0],
                     _ap(record["mask"]), sizes[1], f"{record['inference_img_per_cpu_s']:.2f}"])
    config = first["config"]
    setup = MULTISCALE_SETUP.format(
        train=first["train_images"], val=first["val_images"], size=config["image_size"],
        batch=first["batch_size"], minutes=config["minutes"])
    return "\n\n".join([setup, _multiscale_summary(results), table(
        ["model", "seed", "params", "learning rate", "CPU-min", "steps x batch",
         "train img per CPU-s",
         "box AP / AP50 / AP75", "box AP_S / AP_M / AP_L", "mask AP / AP50 / AP75",
         "mask AP_S / AP_M / AP_L", "inference img per CPU-s"], rows)])


def _multiscale_summary(results: dict) -> str:
    """Per system, mean ± sd over its seeds of box and mask AP, AP_S, AP_M and AP_L."""
    by_system: dict[str, list[dict]] = {}
    for key, record in results.items():
        by_system.setdefault(key.rsplit(" ", 1)[0], []).append(record)
    rows = []
    for system in (name for name in MULTISCALE_SYSTEMS if name in by_system):
        records = by_system[system]
        rows.append([MULTISCALE_SYSTEMS[system], str(len(records)),
                     *(_mean_sd([record[kind][metric] for record in records])
                       for kind in ("box", "mask") for metric in ("AP", "AP_S", "AP_M", "AP_L"))])
    return table(["model", "seeds", "box AP", "box AP_S", "box AP_M", "box AP_L", "mask AP",
                  "mask AP_S", "mask AP_M", "mask AP_L"], rows)


def _runs(results: dict) -> dict:
    """(system, rate, seed) -> record."""
    return {parse_run_key(key): record for key, record in results.items()}


def _best_rates(results: dict, first_seed: int) -> dict:
    rates = {system: best_rate(results, system, first_seed) for system in SYSTEMS}
    return {system: rate for system, rate in rates.items() if rate is not None}


def _mean_sd(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _ap(scores: dict) -> str:
    return f"{scores['AP']:.3f} / {scores['AP50']:.3f} / {scores['AP75']:.3f}"


def _loss_at(record: dict, system: int, step: int | None) -> list[str]:
    history = record.get("losses") or []
    if not history:
        return [""] * len(LOSSES)
    entry = history[-1] if step is None else min(history, key=lambda e: abs(e["step"] - step))
    return [f"{entry[names[system]]:.3f}" if names[system] in entry else ""
            for names in LOSSES.values()]


def render(results: dict | None = None) -> str:
    """The section's text (without its title)."""
    results = results or load_results("mask_rcnn")
    if not results:
        return f"Not measured yet: `{MEASURED_BY[0]}`."
    runs = _runs(results)
    seeds = sorted({seed for _, _, seed in runs})
    rates = sorted({rate for _, rate, _ in runs})
    first_seed = seeds[0]
    best = _best_rates(results, first_seed)
    minutes = next(iter(runs.values()))["config"]["minutes"]
    setup = SETUP.format(minutes=minutes, rates=", ".join(f"{r:g}" for r in rates),
                         first_seed=first_seed,
                         other_seeds=", ".join(str(s) for s in seeds[1:]) or "none")

    sweep = [[system, f"{rate:g}" + (" (best)" if best.get(system) == rate else ""),
              f"{r['steps']} x {r['batch_size']}", f"{r['train_img_per_cpu_s']:.2f}",
              _ap(r["box"]), _ap(r["mask"])]
             for (system, rate, seed), r in sorted(runs.items()) if seed == first_seed]
    text = [setup, f"**Learning-rate sweep** (seed {first_seed}, {minutes:g} CPU-minutes "
            "each):", table(["system", "learning rate", "steps x batch", "train img per CPU-s",
                             "box AP / AP50 / AP75", "mask AP / AP50 / AP75"], sweep)]

    summary, losses, speed = [], [], []
    for system in SYSTEMS:
        if system not in best:
            continue
        chosen = [r for (s, rate, _), r in sorted(runs.items())
                  if s == system and rate == best[system]]
        row = [system, f"{chosen[0]['params'] / 1e6:.2f}M", f"{best[system]:g}", str(len(chosen))]
        for kind in ("box", "mask"):
            row += [_mean_sd([r[kind][metric] for r in chosen]) for metric in ("AP", "AP50",
                                                                             "AP75")]
        gt = [r["gt_box_mask"]["AP"] for r in chosen if "gt_box_mask" in r]
        row += [_mean_sd(gt) if gt else "n/a",
                _mean_sd([r["train_img_per_cpu_s"] for r in chosen], 2)]
        summary.append(row)
        index = SYSTEMS.index(system)
        losses.append([system, "100", *_loss_at(chosen[0], index, 100)])
        losses.append([system, f"last ({chosen[0]['losses'][-1]['step']})"
                       if chosen[0].get("losses") else "last", *_loss_at(chosen[0], index, None)])
        for setting in INFERENCE:
            measured = [r["inference"][setting] for r in chosen if setting in r.get("inference",
                                                                                      {})]
            if measured:
                speed.append([setting, system,
                              _mean_sd([m["img_per_cpu_s"] for m in measured], 2),
                              _mean_sd([m["img_per_s_wall"] for m in measured], 2),
                              _mean_sd([m["detections_per_image"] for m in measured], 1)])
    text += [f"**At each system's best learning rate** (mean ± sd over seeds "
             f"{', '.join(map(str, seeds))}):",
             table(["system", "params", "learning rate", "runs", "box AP", "box AP50", "box AP75",
                    "mask AP", "mask AP50", "mask AP75", "GT-box mask AP",
                    "train img per CPU-s"], summary),
             f"**Training losses** at the best rate, seed {first_seed} (at step 100 and at the "
             "last logged step; both sides' losses are the papers' definitions, mean over "
             "sampled anchors / RoIs / mask pixels):",
             table(["system", "step", *LOSSES], losses),
             "**Inference** (one thread, batch 8, <= 100 detections, masks pasted at each "
             "image's full resolution; the best-rate models, mean ± sd over seeds; each side "
             "first predicts 20 images, so that Keras has traced every shape it needs): "
             + "; ".join(f"\"{name}\": {what}" for name, what in INFERENCE.items()) + ".",
             table(["setting", "system", "img per CPU-s", "img/s wall", "detections per image"],
                   sorted(speed, key=lambda row: list(INFERENCE).index(row[0])))]
    notes = [f"- `{key}`: {record['note']}." for key, record in sorted(results.items())
             if "note" in record]
    multiscale = load_results("mask_rcnn_multiscale")
    return "\n\n".join(text + (["\n".join(notes)] if notes else [])
                        + ([render_multiscale(multiscale)] if multiscale else []))


def headline(results: dict) -> tuple[str, str]:
    runs = _runs(results)
    first_seed = min(seed for _, _, seed in runs)
    best = _best_rates(results, first_seed)
    parts = {}
    for system in SYSTEMS:
        chosen = [r for (s, rate, _), r in runs.items() if s == system and rate == best[system]]
        parts[system] = (f"box AP {_mean_sd([r['box']['AP'] for r in chosen])}, mask AP "
                         f"{_mean_sd([r['mask']['AP'] for r in chosen])} ({len(chosen)} seeds)")
    minutes = next(iter(runs.values()))["config"]["minutes"]
    return (f"segkeras Mask R-CNN after {minutes:g} CPU-min: {parts['segkeras']}",
            f"torchvision, same recipe, budget and tuning: {parts['torchvision']}")


def measured(results: dict) -> str:
    """The date of the oldest record."""
    return min(record["date"] for record in results.values()).replace("T", " ")
