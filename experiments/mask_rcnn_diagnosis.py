"""Where a trained Mask R-CNN loses box AP on held-out built-in shapes.

    python experiments/mask_rcnn_diagnosis.py MODEL.keras [--val-images 300] [--seed 1000]
    python experiments/mask_rcnn_diagnosis.py MODEL.keras --pyramid [--val-images 300]
    python experiments/mask_rcnn_diagnosis.py MODEL.keras --pyramid --sampling-ratio 3

Prints the RPN's recall (share of ground-truth objects that one of the test-time proposals
covers at IoU >= 0.5, 0.7 and 0.85), COCO box and mask AP with and without the classes (every
class id set to 1: what perfect classification would give), the recall of the final detections
with the right class at IoU 0.5, 0.75 and 0.9 (finding an object, and placing its box),
detections per image, and score quantiles. The held-out images are
``shapes.generate(val_images, 128, seed)``, the set ``bench/s8_mask_rcnn_train.py`` scores.

``--pyramid``: the feature pyramid's setting instead: the multi-scale held-out set
(``shapes.generate_multiscale(val_images, seed)``: images of 256-512 px a side, objects of about
6-250 px), each image resized keeping its aspect ratio as ``predict_instances`` does, and every
number also by COCO object size (small < 32x32 px, medium, large), AP_S/M/L included. The model
may be either kind (single level or pyramid; the proposals always come from the model's own
test-time RPN path, per level on a pyramid), so that the two can be compared on the same set.

``--sampling-ratio N``: the same trained model with its box and mask heads' RoIAlign taking
N x N samples per bin at test time instead of the ratio it was trained with (RoIAlign has no
weights): whether a model is limited by how sparsely its large RoIs are read.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import segkeras  # noqa: E402,F401  (registers the model's classes)
from segkeras.boxes import box_iou  # noqa: E402
from segkeras.data import shapes  # noqa: E402
from segkeras.data.core import Instances  # noqa: E402
from segkeras.evaluate.instances import detection_ap  # noqa: E402
from segkeras.models.mask_rcnn import predict_instances  # noqa: E402
from segkeras.models.mask_rcnn.inference import model_input  # noqa: E402

SIZES = (("small", 0, 32**2), ("medium", 32**2, 96**2), ("large", 96**2, float("inf")))
"""COCO's object sizes by mask area in pixels."""
DETECTION_IOUS = (0.5, 0.75, 0.9)
"""Box IoUs at which the detections' recall is counted: finding the object, and placing it."""


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(box_iou(a[None].astype("float32"), b[None].astype("float32")))[0]


def _by_size(found: list, areas: list) -> str:
    """Share of ``found`` per COCO object size, as text."""
    found, areas = np.asarray(found, bool), np.asarray(areas)
    parts = []
    for name, low, high in SIZES:
        inside = (areas >= low) & (areas < high)
        parts.append(f"{name} {found[inside].mean():.3f} ({inside.sum()})" if inside.any()
                     else f"{name} - (0)")
    return ", ".join(parts)


def rpn_recall(model, held_out, thresholds=(0.5, 0.7, 0.85), batch: int = 20) -> dict:
    """Per threshold, for every ground-truth object whether a test-time proposal covers it at
    IoU >= threshold. The images go in as ``predict_instances`` puts them (aspect ratio kept,
    padded), the proposals come from the model's own RPN path (``MaskRCNN._proposals``:
    per level on a pyramid, the test-time ``rpn_pre_nms_test`` and ``rpn_post_nms_test``)."""
    hits = {threshold: [] for threshold in thresholds}
    for start in range(0, len(held_out), batch):
        inputs = [model_input(model, image) for image in held_out.images[start:start + batch]]
        images = np.stack([image for image, _ in inputs]).astype("float32")
        features = model.features(images, training=False)
        _, _, proposals, valid = model._proposals(features, training=False)
        proposals, valid = np.asarray(proposals), np.asarray(valid)
        for k, objects in enumerate(held_out.instances[start:start + batch]):
            truth = objects.boxes * inputs[k][1]  # in the model's input pixels
            best = _iou(proposals[k][valid[k]], truth).max(0) if valid[k].any() else \
                np.zeros(len(objects))
            for threshold in thresholds:
                hits[threshold] += list(best >= threshold)
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--pyramid", action="store_true",
                        help="the pyramid's setting: the multi-scale held-out set at each "
                             "image's own size, everything also by object size (AP_S/M/L)")
    parser.add_argument("--batch-size", type=int, default=20,
                        help="images per prediction batch (fewer: less memory)")
    parser.add_argument("--sampling-ratio", type=int, default=None,
                        help="RoIAlign samples per bin and axis in the box and mask heads at "
                             "test time (default: the model's own)")
    args = parser.parse_args()
    model = keras.models.load_model(args.model)
    if args.sampling_ratio is not None:
        if args.sampling_ratio < 1:
            parser.error(f"--sampling-ratio must be a positive int, got {args.sampling_ratio}")
        model.box_align.sampling_ratio = model.mask_align.sampling_ratio = args.sampling_ratio
    print(f"{model.name}: {'pyramid P2-P6' if model.pyramid else 'single level'}, input "
          f"{model.image_size[0]}x{model.image_size[1]}, RoIAlign "
          f"{model.box_align.sampling_ratio} x {model.box_align.sampling_ratio} samples per bin")
    if args.pyramid:
        held_out = shapes.generate_multiscale(args.val_images, seed=args.seed)
    else:
        held_out = shapes.generate(args.val_images, model.image_size[0], seed=args.seed)
    areas = [area for objects in held_out.instances
             for area in np.asarray(objects.masks).sum(axis=(1, 2))]
    recall = rpn_recall(model, held_out, batch=args.batch_size)
    print(f"RPN recall of {model.config['rpn_post_nms_test']} proposals: "
          + ", ".join(f"IoU >= {t}: {np.mean(r):.3f}" for t, r in recall.items()))
    if args.pyramid:
        for threshold, found in recall.items():
            print(f"  at IoU >= {threshold} by object size: {_by_size(found, areas)}")
    detections = predict_instances(model, held_out.images, batch_size=args.batch_size)
    with_classes = detection_ap(held_out, detections, by_size=args.pyramid)
    one_class = detection_ap(
        [Instances(o.masks, o.boxes, np.ones_like(o.class_ids)) for o in held_out.instances],
        [{**d, "class_ids": np.ones_like(d["class_ids"])} for d in detections],
        by_size=args.pyramid)
    for name, scores in (("with classes", with_classes), ("classes ignored", one_class)):
        print(f"{name:>15}: " + "; ".join(
            f"{kind} " + " ".join(f"{key} {value:.3f}" for key, value in s.items())
            for kind, s in scores.items()))
    best = []  # per object, the best box IoU of a detection of its class
    for found_here, objects in zip(detections, held_out.instances, strict=True):
        if len(found_here["boxes"]) == 0:
            best += [0.0] * len(objects)
            continue
        same = found_here["class_ids"][:, None] == objects.class_ids[None]
        best += list((_iou(found_here["boxes"], objects.boxes) * same).max(0))
    best = np.asarray(best)
    scores = np.concatenate([d["scores"] for d in detections])
    print(f"detections: {np.mean([len(d['boxes']) for d in detections]):.1f} per image; score "
          f"quantiles 10/50/90 %: "
          f"{np.percentile(scores, [10, 50, 90]).round(3) if len(scores) else '-'}")
    for threshold in DETECTION_IOUS:
        found = best >= threshold
        print(f"  recall at IoU >= {threshold} with the right class {np.mean(found):.3f}"
              + (f" ({_by_size(found, areas)})" if args.pyramid else ""))


if __name__ == "__main__":
    main()
