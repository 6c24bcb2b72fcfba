"""Where a trained Mask R-CNN loses box AP on held-out built-in shapes.

    python experiments/mask_rcnn_diagnosis.py MODEL.keras [--val-images 300] [--seed 1000]

Prints the RPN's recall (share of ground-truth objects that one of the test-time proposals covers
at IoU >= 0.5 and >= 0.7), COCO box and mask AP with and without the classes (every class id set
to 1: what perfect classification would give), the recall of the final detections at IoU 0.5 with
the right class, detections per image, and score quantiles. The held-out images are
``shapes.generate(val_images, 128, seed)``, the set ``bench/s8_mask_rcnn_train.py`` scores.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import segkeras  # noqa: E402,F401  (registers the model's classes)
from segkeras.boxes import box_iou  # noqa: E402
from segkeras.data import shapes  # noqa: E402
from segkeras.data.core import Instances  # noqa: E402
from segkeras.evaluate.instances import detection_ap  # noqa: E402
from segkeras.models.mask_rcnn import predict_instances  # noqa: E402
from segkeras.models.mask_rcnn.rpn import propose  # noqa: E402


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(box_iou(a[None].astype("float32"), b[None].astype("float32")))[0]


def rpn_recall(model, held_out, thresholds=(0.5, 0.7), batch: int = 20) -> dict:
    """Share of ground-truth objects with a test-time proposal at IoU >= each threshold."""
    hits = {threshold: [] for threshold in thresholds}
    anchors = ops.convert_to_tensor(model.anchors)
    for start in range(0, len(held_out), batch):
        images = held_out.images[start:start + batch].astype("float32")
        pyramid = model.features(images)
        rpn = model.rpn(pyramid)
        proposals, valid = propose(anchors, rpn["objectness"], rpn["deltas"], model.image_size,
                                   model.config["rpn_pre_nms"], model.config["rpn_post_nms_test"])
        proposals, valid = np.asarray(proposals), np.asarray(valid)
        for k, objects in enumerate(held_out.instances[start:start + batch]):
            best = _iou(proposals[k][valid[k]], objects.boxes).max(0) if valid[k].any() else \
                np.zeros(len(objects))
            for threshold in thresholds:
                hits[threshold] += list(best >= threshold)
    return {threshold: float(np.mean(found)) for threshold, found in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args()
    model = keras.models.load_model(args.model)
    held_out = shapes.generate(args.val_images, model.image_size[0], seed=args.seed)
    recall = rpn_recall(model, held_out)
    print(f"RPN recall of {model.config['rpn_post_nms_test']} proposals: "
          + ", ".join(f"IoU >= {t}: {r:.3f}" for t, r in recall.items()))
    detections = predict_instances(model, held_out.images, batch_size=20)
    with_classes = detection_ap(held_out, detections)
    one_class = detection_ap(
        [Instances(o.masks, o.boxes, np.ones_like(o.class_ids)) for o in held_out.instances],
        [{**d, "class_ids": np.ones_like(d["class_ids"])} for d in detections])
    for name, scores in (("with classes", with_classes), ("classes ignored", one_class)):
        print(f"{name:>15}: " + "; ".join(
            f"{kind} AP {s['AP']:.3f} AP50 {s['AP50']:.3f} AP75 {s['AP75']:.3f}"
            for kind, s in scores.items()))
    found = []
    for found_here, objects in zip(detections, held_out.instances, strict=True):
        if len(found_here["boxes"]) == 0:
            found += [False] * len(objects)
            continue
        same = found_here["class_ids"][:, None] == objects.class_ids[None]
        found += list((_iou(found_here["boxes"], objects.boxes) * same).max(0) >= 0.5)
    scores = np.concatenate([d["scores"] for d in detections])
    print(f"detections: recall at IoU 0.5 with the right class {np.mean(found):.3f}, "
          f"{np.mean([len(d['boxes']) for d in detections]):.1f} per image; score quantiles "
          f"10/50/90 %: {np.percentile(scores, [10, 50, 90]).round(3) if len(scores) else '-'}")


if __name__ == "__main__":
    main()
