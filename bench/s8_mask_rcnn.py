"""Section 8: Mask R-CNN on built-in shapes, segkeras against torchvision at equal CPU budget.

Rendered from ``results/mask_rcnn.json``; ``bench/run.py`` does not re-measure it (two runs of
20 CPU-minutes). The records come from

    python bench/s8_mask_rcnn_train.py --minutes 20
    PYTHONPATH=. /work/venvs/mrcnn/bin/python bench/s8_mask_rcnn_torchvision.py --minutes 20

each of which stores its record under its own key (``segkeras``, ``torchvision``) through
``bench/s8_mask_rcnn_record.py``.
"""

from __future__ import annotations

from common import load_results, table

TITLE = "8. Mask R-CNN on built-in shapes: segkeras vs torchvision"
CODE = ("segkeras/models/mask_rcnn", "segkeras/boxes.py", "segkeras/layers.py",
        "segkeras/models/mask_head.py")
MEASURED_BY = ("python bench/s8_mask_rcnn_train.py --minutes 20",
               "python bench/s8_mask_rcnn_torchvision.py --minutes 20")
"""Not measured by ``bench/run.py``: these commands write ``results/mask_rcnn.json``."""

SETUP = (
    "Both systems: built-in shapes, 3000 training images (seed 0), 300 held-out (seed 1000), "
    "128x128, batch 8, random left-right flips, Adam {learning_rate:g} with a cosine to 5 % over "
    "the budget, gradient norm clipped at 10; a randomly initialised MobileNetV2 (no ImageNet "
    "weights offline) -> FPN of 128 channels over P3..P5 read at stride 8 only; anchors 16/32/64 x "
    "ratios 0.5/1/2; RPN 600 -> NMS 0.7 -> 200 (training) / 100 (test) proposals, 256 sampled "
    "anchors (<= 50 % positive); box head RoIAlign 7x7 -> 2 FC of 256 -> classes + "
    "class-specific deltas, {rois_per_image} RoIs per image (<= 25 % foreground); mask head "
    "RoIAlign 14x14 -> 4 conv of 64 -> deconv -> 28x28; <= 100 detections, score > 0.05, "
    "per-class NMS 0.5. "
    "segkeras: `mask_rcnn(..., 'mobilenetv2', weights=None)` trained by `model.fit`, its "
    "BatchNorm with the builder's default momentum 0.9 (from scratch); torchvision: "
    "`torchvision.models.detection.MaskRCNN` with the same pieces (`MobileNetV2FPN` in the "
    "script, torch's BatchNorm momentum 0.1 = Keras 0.9). Threads per process: segkeras "
    "{segkeras_threads}, torchvision {torchvision_threads} (`--threads`: TensorFlow's intra- and "
    "inter-op threads, `torch.set_num_threads`); on one thread the CPU time is work done, not "
    "time a second thread spent waiting, so the two can share the machine fairly. "
    "The budget is the CPU time of the training process (`time.process_time`, all threads), "
    "so other work on the shared machine does not count; a run may also stop at a wall-clock "
    "deadline (`--stop-at`), and then the table shows the CPU time it actually trained. AP: "
    "pycocotools on the 300 held-out images from **predicted** boxes (`predict_instances` + "
    "`segkeras.evaluate.detection_ap`); \"GT-box mask AP\": the same mask head on the "
    "ground-truth boxes (`predict_masks_in_boxes`), the mask quality without detection errors. "
    "Inference: the held-out images at 128x128, batch 8, <= 100 detections, masks pasted at "
    "full resolution.")


def _ap(scores: dict | None) -> str:
    if not scores:
        return ""
    return f"{scores['AP']:.3f} / {scores['AP50']:.3f} / {scores['AP75']:.3f}"


def _row(name: str, r: dict) -> list[str]:
    return [name, r.get("versions") or r.get("backend", ""), f"{r['params'] / 1e6:.2f}M",
            f"{r['train_cpu_s'] / 60:.1f} ({r['train_wall_s'] / 60:.0f})",
            f"{r['steps']} x {r['batch_size']}", f"{r['train_img_per_cpu_s']:.2f}",
            _ap(r["box"]), _ap(r["mask"]), _ap(r.get("gt_box_mask")),
            f"{r['inference_img_per_cpu_s']:.2f} ({r['inference_img_per_s_wall']:.2f})"]


def render(results: dict | None = None) -> str:
    """The section's text (without its title)."""
    results = results or load_results("mask_rcnn")
    if not results:
        return f"Not measured yet: `{MEASURED_BY[0]}` and `{MEASURED_BY[1]}`."
    header = ["system", "backend", "params", "train CPU min (wall min)", "steps x batch",
              "train img per CPU-s", "box AP / AP50 / AP75", "mask AP / AP50 / AP75",
              "GT-box mask AP / AP50 / AP75", "inference img per CPU-s (img/s wall)"]
    rows, lines = [], []
    for name in ("segkeras", "torchvision"):
        if name not in results:
            continue
        record = results[name]
        rows.append(_row(name, record))
        if "recalibrated" in record:
            recalibrated = record["recalibrated"]
            rows.append([f"{name}, BatchNorm recalibrated", "", "", "", "", "",
                         _ap(recalibrated["box"]), _ap(recalibrated["mask"]), "", ""])
        lines.append(f"- {name}: measured {record['date']} by `{record['command']}` "
                     f"({record['machine']}).")
    if "segkeras" in results:
        r = results["segkeras"]
        reached = r["box"]["AP"] >= 0.75 and r["mask"]["AP"] >= 0.70
        lines.append(f"- segkeras targets (box AP >= 0.75, mask AP >= 0.70): "
                     f"{'reached' if reached else '**not reached**'} after "
                     f"{r['train_cpu_s'] / 60:.1f} of the 20 CPU-minutes allowed.")
    config = results.get("segkeras", {}).get("config", {})
    threads = {name: results.get(name, {}).get("config", {}).get("threads") or "default"
               for name in ("segkeras", "torchvision")}
    setup = SETUP.format(learning_rate=config.get("learning_rate", 2e-3),
                         rois_per_image=config.get("rois_per_image", 32),
                         segkeras_threads=threads["segkeras"],
                         torchvision_threads=threads["torchvision"])
    return (setup + "\n\n" + table(header, rows) + "\n\n" + "\n".join(lines)
            + "\n\nTargets of issue 12 (after <= 20 CPU-minutes): box AP >= 0.75 and mask AP >= "
            "0.70 from predicted boxes. \"BatchNorm recalibrated\": the same weights after "
            "`MaskRCNN.recalibrate_batchnorm` on 25 training batches (precise BN).")


def headline(results: dict) -> tuple[str, str]:
    ours, theirs = results["segkeras"], results["torchvision"]
    return (f"segkeras Mask R-CNN after {ours['train_cpu_s'] / 60:.0f} CPU-min: box AP "
            f"{ours['box']['AP']:.3f}, mask AP {ours['mask']['AP']:.3f}",
            f"torchvision, same recipe and budget: {theirs['box']['AP']:.3f} / "
            f"{theirs['mask']['AP']:.3f}; targets 0.75 / 0.70")


def measured(results: dict) -> str:
    """The date of the older of the two records."""
    return min(record["date"] for record in results.values()).replace("T", " ")
