"""``train``, ``evaluate`` and ``predict`` for Mask R-CNN (He et al., ICCV 2017): train end to end
on instance data, score COCO box and mask AP, draw detections and write them as COCO-format
results. :mod:`segkeras.cli.model_commands` parses the arguments and hands models of the
``"instances"`` task (:mod:`segkeras.models.registry`) to ``run_train``, ``run_evaluate`` and
``run_predict``.
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np

from segkeras import runs
from segkeras.cli import common
from segkeras.data.coco import CocoIndex
from segkeras.data.core import Instances, SegmentationData
from segkeras.errors import SegkerasError
from segkeras.models.mask_rcnn import (
    MaskRCNN,
    mask_rcnn_dataset,
    predict_instances,
    predict_masks_in_boxes,
)

ROWS = (("box", "box AP (predicted boxes)"), ("mask", "mask AP (predicted boxes)"),
        ("mask_gt_boxes", "mask AP (ground-truth boxes)"))
"""The keys of :func:`evaluate`'s scores and their row titles in :func:`format_table`."""


def accepts(model) -> bool:
    """Whether ``model`` is a detector these commands handle."""
    return isinstance(model, MaskRCNN)


def num_classes(model: MaskRCNN) -> int:
    """Classes including the background, as the model was built."""
    return int(model.config["num_classes"])


def check_data(data: SegmentationData | CocoIndex, what: str) -> None:
    """SegkerasError unless ``data`` has instances and at least one object (AP needs one)."""
    if isinstance(data, CocoIndex):
        data.check_image_files()
        counts = data.object_counts()
    elif data.instances is None:
        raise SegkerasError(f"{what} has no instance masks (only semantic ones); Mask R-CNN "
                            "needs instances: use shapes or a COCO-format dataset")
    else:
        counts = [len(objects) for objects in data.instances]
    if not any(counts):
        raise SegkerasError(f"{what} has no object in any of its {len(data)} images, so there "
                            "is nothing to learn or score; use more images")


def training_dataset(model: MaskRCNN, data: SegmentationData | CocoIndex, batch_size: int,
                     max_instances: int, seed: int):
    """``data`` at the model's input size, up to ``max_instances`` objects per image, flipped
    left-right at random (:func:`~segkeras.models.mask_rcnn.mask_rcnn_dataset`; a
    :class:`~segkeras.data.coco.CocoIndex` streams, its images keep their aspect ratio)."""
    return mask_rcnn_dataset(data, model.image_size, batch_size, max_instances, seed=seed)


RECALIBRATION_BATCHES = 25
"""Training batches over which a from-scratch encoder's BatchNorm statistics are recomputed after
training (``MaskRCNN.recalibrate_batchnorm``, "precise BN")."""


def fit(model: MaskRCNN, dataset, epochs: int, learning_rate: float, callbacks=(),
        checkpoint=None, resume: bool = False):
    """``model.fit`` end to end (encoder, RPN, box and mask heads) with Adam, the gradient norm
    clipped at 10; then a from-scratch encoder's BatchNorm statistics are recomputed on up to
    :data:`RECALIBRATION_BATCHES` batches. ``checkpoint``: a file saved at every epoch end;
    ``resume``: continue from it (:class:`segkeras.train.ResumableRun`). Returns the
    :class:`~segkeras.train.TrainingHistory`."""
    import keras

    from segkeras.train import ResumableRun

    model.compile(keras.optimizers.Adam(learning_rate, clipnorm=10.0), jit_compile=False)
    run = ResumableRun(checkpoint, {"epochs": epochs, "learning_rate": learning_rate},
                       resume, dataset)
    run.fit(model, dataset, 0, epochs, callbacks, verbose=2)  # the dataset shuffles
    history = run.finish(model)
    if all(math.isfinite(loss) for loss in history.history.get("loss", [])):
        model.recalibrate_batchnorm(dataset.take(RECALIBRATION_BATCHES))
    return history


def evaluate(model: MaskRCNN, data: SegmentationData | CocoIndex, batch_size: int = 8) -> dict:
    """COCO AP, AP50 and AP75 of the boxes and masks ``model`` predicts on ``data`` (no boxes
    given), and of its mask head on the ground-truth boxes (the mask quality without the
    detection errors). Returns ``{"box", "mask", "mask_gt_boxes"}`` of ``{"AP", "AP50",
    "AP75"}``, ``"images"`` and ``"objects"``. A :class:`~segkeras.data.coco.CocoIndex` is read
    ``batch_size`` images at a time and scored as COCO does (crowds ignored), its detections
    streamed to pycocotools as RLE."""
    from segkeras.evaluate import detection_ap, mask_ap

    check_data(data, "the evaluation data")
    if isinstance(data, CocoIndex):
        return _evaluate_stream(model, data, batch_size)
    detections = predict_instances(model, data.images, batch_size=batch_size)
    scores = detection_ap(data, detections)
    given = predict_masks_in_boxes(model, data.images,
                                   [objects.boxes for objects in data.instances],
                                   [objects.class_ids for objects in data.instances])
    scores["mask_gt_boxes"] = mask_ap(data, given)
    scores["images"] = len(data)
    scores["objects"] = sum(len(objects) for objects in data.instances)
    return scores


def _evaluate_stream(model: MaskRCNN, index: CocoIndex, batch_size: int) -> dict:
    """:func:`evaluate` on a CocoIndex, holding ``batch_size`` decoded images at a time; the
    ground-truth-box masks are scored as detections of score 1 on those boxes."""
    from segkeras.evaluate import detection_ap

    def batches():
        for start in range(0, len(index), batch_size):
            yield range(start, min(start + batch_size, len(index)))

    def detections():
        for positions in batches():
            yield from predict_instances(model, [index.image(i) for i in positions],
                                         batch_size=batch_size, mask_format="rle")

    def on_truth_boxes():
        for positions in batches():
            objects = [index.objects(i)[0] for i in positions]
            masks = predict_masks_in_boxes(model, [index.image(i) for i in positions],
                                           [found.boxes for found in objects],
                                           [found.class_ids for found in objects],
                                           batch_size=batch_size)
            for found, found_masks in zip(objects, masks, strict=True):
                yield {"boxes": found.boxes, "class_ids": found.class_ids,
                       "scores": np.ones(len(found), np.float32), "masks": found_masks}

    scores = detection_ap(index, detections())
    scores["mask_gt_boxes"] = detection_ap(index, on_truth_boxes())["mask"]
    scores["images"] = len(index)
    scores["objects"] = sum(index.object_counts())
    return scores


def format_table(result: dict) -> str:
    """:func:`evaluate`'s scores as a small text table."""
    lines = [f"{result['images']} images, {result['objects']} objects",
             f"{'':30s} {'AP':>6s} {'AP50':>6s} {'AP75':>6s}"]
    for key, title in ROWS:
        scores = result[key]
        lines.append(f"{title:30s} " + " ".join(f"{scores[name]:6.3f}"
                                                for name in ("AP", "AP50", "AP75")))
    return "\n".join(lines)


def coco_results(detections: dict, image_id: int,
                 category_ids: list[int] | None = None) -> list[dict]:
    """One image's detections in the COCO results format: ``image_id``, ``category_id``,
    ``bbox`` ``[x, y, w, h]``, ``score`` and ``segmentation`` (RLE, counts as text).

    ``detections["masks"]``: (D, H, W) bool, or RLE dicts (``predict_instances(...,
    mask_format="rle")``). ``category_ids``: the dataset's category id of class 1, 2, ... (the
    COCO loader's ``extra["category_ids"]``); None keeps the model's class ids."""
    results = []
    for box, class_id, score, mask in zip(detections["boxes"], detections["class_ids"],
                                          detections["scores"], detections["masks"],
                                          strict=True):
        x1, y1, x2, y2 = (round(float(value), 2) for value in box)
        category = int(class_id) if category_ids is None else int(category_ids[class_id - 1])
        results.append({"image_id": int(image_id), "category_id": category,
                        "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                        "score": round(float(score), 4), "segmentation": _rle(mask)})
    return results


def _rle(mask) -> dict:
    """A boolean mask (or an RLE dict, kept) as COCO RLE with text counts."""
    if isinstance(mask, dict):
        return mask
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(side) for side in rle["size"]], "counts": rle["counts"].decode("ascii")}


OVERLAY_SIDE = 1024
"""The longest side, in pixels, of the picture an overlay draws (the figure is 500 px wide):
larger photos are shown downscaled, so drawing costs no more memory than a 1-megapixel image."""


def overlay(image: np.ndarray, detections: dict, min_score: float,
            class_names: list[str] | None = None):
    """A figure of the detections scoring at least ``min_score``: masks (bool or RLE), boxes,
    class names and scores (:func:`segkeras.viz.instance_overlay`), the photo downscaled to
    :data:`OVERLAY_SIDE`."""
    from segkeras import viz
    from segkeras.data.images import resize_image

    height, width = image.shape[:2]
    scale = min(1.0, OVERLAY_SIDE / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    rows = (np.arange(size[0]) + 0.5) * height // size[0]  # nearest neighbour: mask pixels
    cols = (np.arange(size[1]) + 0.5) * width // size[1]
    rows, cols = rows.astype(int), cols.astype(int)
    keep = np.flatnonzero(np.asarray(detections["scores"]) >= min_score)
    masks = np.zeros((len(keep), *size), bool)
    for row, index in enumerate(keep):
        masks[row] = _mask_array(detections["masks"][index])[rows[:, None], cols]
    factor = np.array([size[1] / width, size[0] / height] * 2)
    boxes = np.asarray(detections["boxes"])[keep] * factor
    shown = Instances(masks, boxes.astype(np.float32), np.asarray(detections["class_ids"])[keep])
    return viz.instance_overlay(resize_image(image, size), shown, class_names,
                                scores=np.asarray(detections["scores"])[keep])


def _mask_array(mask) -> np.ndarray:
    """A (H, W) bool mask from a bool array or a COCO RLE dict."""
    if not isinstance(mask, dict):
        return np.asarray(mask, bool)
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": mask["size"], "counts": mask["counts"].encode("ascii")}
                             ).astype(bool)


def run_train(args: argparse.Namespace) -> None:
    """Trained end to end for --epochs + --finetune-epochs epochs, then scored (box and mask AP)
    on the held-out images; writes model.keras, metrics, history to ``--out``."""
    import keras

    from segkeras.train import TrainingHistory

    data = common.load_data(args.data, args.n, args.image_size, args.seed, split="train",
                            stream=True)
    check_data(data, f"--data {args.data}")
    train_data, val_data = data.split(args.val_fraction)
    check_data(val_data, f"the --val-fraction {args.val_fraction:g} of --data {args.data} held "
                         "out for validation")
    weights = None if args.weights == "none" else args.weights
    model = common.build_model(args, data.num_classes, weights)
    epochs = args.epochs + args.finetune_epochs
    parameters = sum(math.prod(weight.shape) for weight in model.weights)
    print(f"{model.name}: {parameters:,} parameters, {len(train_data)} training and "
          f"{len(val_data)} validation images; training end to end for {epochs} epochs.")
    with common.warnings_in_flag_terms("train"):
        dataset = training_dataset(model, train_data, args.batch_size, args.max_instances,
                                   args.seed)
    history = fit(model, dataset, epochs, args.lr, callbacks=[keras.callbacks.TerminateOnNaN()],
                  checkpoint=common.checkpoint_path(args), resume=args.resume)
    common.check_finite_loss(history, args.lr)
    run_id = runs.new_run_id()  # the model before scoring: a failed scoring loses no training
    runs.save_model(model, os.path.join(args.out, runs.MODEL), run_id)
    result = evaluate(model, val_data, args.batch_size)
    result.update(classes=data.class_names, category_ids=category_ids(data))
    print(format_table(result))
    record = TrainingHistory()
    record.extend(history)
    record.stage_boundary = len(record.epoch)
    common.save_outputs(args.out, None, record, result, run_id)
    print(f"Wrote {args.out}/model.keras, metrics.json, history.json, history.png "
          f"({common.elapsed()}).")


def category_ids(data: SegmentationData | CocoIndex) -> list[int] | None:
    """The COCO category id of class 1, 2, ... (None for data that did not come from COCO)."""
    if isinstance(data, CocoIndex):
        return list(data.category_ids)
    return data.extra.get("category_ids")


def run_evaluate(model: MaskRCNN, data: SegmentationData | CocoIndex, args: argparse.Namespace,
                 size: int) -> tuple[dict, str]:
    """:func:`evaluate` after checking ``data`` has the model's classes: (scores, table)."""
    common.check_num_classes(num_classes(model), data, args.data)
    check_data(data, f"--data {args.data}")
    result = evaluate(model, data, args.batch_size)
    return result, format_table(result)


def run_predict(model: MaskRCNN, args: argparse.Namespace, images) -> None:
    """An overlay per image (``STEM_instances.png``) and every detection of all images in one
    COCO results file (--json), ``image_id`` = the image's position on the command line."""
    common.model_size(model, args.image_size)  # a given --image-size must be the model's
    metrics = runs.training_metrics(args.model, num_classes(model) - 1)
    threshold = 0.5 if args.score_threshold is None else args.score_threshold
    json_path = detections_path(args)
    results = []
    for position, path, image in images:
        try:
            detections = predict_instances(  # boxes and masks in the image's own pixels
                model, [image], min_side=args.min_side, max_side=args.max_side,
                mask_format="rle")[0]
        except SegkerasError as error:  # reported at the end, the other images predicted
            images.skipped.append(f"{path}: {error}")
            continue
        results.extend(coco_results(detections, position, metrics.get("category_ids")))
        target = common.output_path(args, path, "_instances.png")
        with runs.atomic_path(target) as temporary:
            overlay(image, detections, threshold, metrics.get("classes")).savefig(temporary,
                                                                                 dpi=100)
        runs.write_json(json_path, results)  # image by image: a later failure keeps these
        shown = int((detections["scores"] >= threshold).sum())
        print(f"{path} -> {target} ({shown} objects scoring >= {threshold:g}; image_id "
              f"{position})")
    runs.write_json(json_path, results)
    print(f"Wrote {len(results)} detections to {json_path} (COCO results format).")


def detections_path(args: argparse.Namespace) -> str:
    """--json, else ``detections.json`` in --out or beside the first image."""
    return args.json or os.path.join(args.out or os.path.dirname(
        os.path.abspath(args.images[0])), "detections.json")
