"""Mask R-CNN through the command line: train a few steps, evaluate (box and mask AP, checked
against segkeras.evaluate on the same detections), predict (overlays and a COCO results file that
pycocotools loads, checked against predict_instances); bad arguments get one line and exit 2."""

import json

import keras
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from segkeras.cli import common, main
from segkeras.cli import instances as cli_instances
from segkeras.data import shapes, sources
from segkeras.data.core import Instances, SegmentationData
from segkeras.data.images import read_rgb, write_png
from segkeras.errors import SegkerasError
from segkeras.evaluate import detection_ap, mask_ap
from segkeras.models.mask_rcnn import (
    MaskRCNN,
    mask_rcnn,
    predict_instances,
    predict_masks_in_boxes,
)

SIZE = 64
TRAIN = ["train", "--model", "maskrcnn", "--weights", "none", "--image-size", str(SIZE),
         "--batch-size", "3", "--epochs", "1"]


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
    """One epoch (1 step) of Mask R-CNN on a COCO folder of 6 shapes images: ``(folder, out,
    reads)``, ``reads`` the image ids CocoIndex decoded, in order (nothing loads it whole)."""
    from segkeras.data import coco

    folder = tmp_path_factory.mktemp("coco")
    coco.export(shapes.generate(6, SIZE, seed=0), folder, "six shapes")
    out = tmp_path_factory.mktemp("maskrcnn")
    reads, image = [], coco.CocoIndex.image

    def reading(index, position):
        reads.append(index.image_ids[position])
        return image(index, position)

    from tracing import eagerly

    # eagerly: the point is what the run reads and writes, not the traced step (tests/tracing.py)
    with pytest.MonkeyPatch.context() as patch, eagerly():
        patch.setattr(coco, "load", lambda *a, **k: pytest.fail("the folder was loaded whole"))
        patch.setattr(coco.CocoIndex, "image", reading)
        assert main([*TRAIN, "--data", str(folder), "--val-fraction", "0.5",
                     "--out", str(out)]) == 0
    return folder, out, reads


@pytest.fixture(scope="module")
def trained(coco_run):
    """The output folder of :func:`coco_run`."""
    return coco_run[1]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """An untrained small Mask R-CNN that keeps every detection (score threshold 0), saved."""
    keras.utils.set_random_seed(0)
    model = mask_rcnn(4, "vgg16", weights=None, input_shape=(SIZE, SIZE, 3),
                      score_threshold=0.0, fpn_channels=16, box_head_units=32,
                      mask_head_channels=16, rpn_pre_nms=100, rpn_post_nms_test=20,
                      max_detections=10)
    path = tmp_path_factory.mktemp("detector") / "model.keras"
    model.save(path)
    return path


@pytest.fixture
def no_training(monkeypatch):
    """Building or training a model fails the test: argument errors must come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("argument errors must be found before this")

    monkeypatch.setattr(common, "build_model", forbidden)
    monkeypatch.setattr(cli_instances, "fit", forbidden)


def test_train_writes_the_model_and_its_box_and_mask_ap(trained):
    assert isinstance(keras.saving.load_model(trained / "model.keras"), MaskRCNN)
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["classes"] == shapes.CLASS_NAMES and metrics["images"] == 3
    for key in ("box", "mask", "mask_gt_boxes"):
        assert set(metrics[key]) == {"AP", "AP50", "AP75"}
        assert all(0 <= value <= 1 for value in metrics[key].values())
    history = json.loads((trained / "history.json").read_text())["history"]
    assert {"loss", "mask_loss", "rpn_objectness_loss"} <= set(history)
    assert np.isfinite(history["loss"]).all()
    assert (trained / "history.png").stat().st_size > 0


def test_evaluate_prints_and_writes_the_aps_of_the_saved_model(trained, tmp_path, capsys, eager):
    scores = tmp_path / "scores.json"
    capsys.readouterr()
    assert main(["evaluate", "--model", str(trained / "model.keras"), "--n", "3", "--seed", "7",
                 "--json", str(scores)]) == 0
    table = capsys.readouterr().out
    for title in ("box AP (predicted boxes)", "mask AP (predicted boxes)",
                  "mask AP (ground-truth boxes)", "AP50", "AP75"):
        assert title in table
    result = json.loads(scores.read_text())
    # the same numbers straight from the library on the same images
    model = keras.saving.load_model(trained / "model.keras")
    data = shapes.generate(3, SIZE, seed=7)
    expected = detection_ap(data, predict_instances(model, data.images))
    given = predict_masks_in_boxes(model, data.images, [o.boxes for o in data.instances],
                                   [o.class_ids for o in data.instances])
    for key in ("box", "mask"):
        assert result[key] == pytest.approx(expected[key], abs=1e-6), key
    assert result["mask_gt_boxes"] == pytest.approx(mask_ap(data, given), abs=1e-6)
    assert f"{result['mask_gt_boxes']['AP']:6.3f}" in table


def test_predict_writes_overlays_and_coco_results(detector, tmp_path, eager):
    photo = shapes.generate(1, 96, seed=11).images[0]
    blank = np.zeros((50, 70, 3), np.uint8)
    write_png(tmp_path / "photo.png", photo)
    write_png(tmp_path / "blank.png", blank)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(detector), str(tmp_path / "photo.png"),
                 str(tmp_path / "blank.png"), "--out", str(out), "--score-threshold", "0.2"]) == 0
    for stem in ("photo", "blank"):
        overlay = read_rgb(out / f"{stem}_instances.png")
        assert overlay.ndim == 3 and min(overlay.shape[:2]) >= 200
    results = json.loads((out / "detections.json").read_text())

    # every detection of predict_instances, in COCO's results format
    model = keras.saving.load_model(detector)
    found = predict_instances(model, [photo, blank])
    assert len(results) == sum(len(f["scores"]) for f in found)
    for image_id, detections in enumerate(found, 1):
        rows = [r for r in results if r["image_id"] == image_id]
        assert len(rows) == len(detections["scores"]) <= 10
        for row, box, class_id, score, mask in zip(
                rows, detections["boxes"], detections["class_ids"], detections["scores"],
                detections["masks"], strict=True):
            x1, y1, x2, y2 = box
            np.testing.assert_allclose(row["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=0.02)
            assert row["category_id"] == class_id and row["score"] == pytest.approx(score, 1e-3)
            np.testing.assert_array_equal(mask_utils.decode(row["segmentation"]), mask)

    # pycocotools reads it against ground truth with those image ids
    truth = COCO()
    truth.dataset = {"images": [{"id": 1, "height": 96, "width": 96},
                                {"id": 2, "height": 50, "width": 70}],
                     "annotations": [], "categories": [{"id": c} for c in (1, 2, 3)]}
    truth.createIndex()
    assert len(results) >= 2, "a detector with score threshold 0 keeps its detections"
    loaded = truth.loadRes(str(out / "detections.json"))
    assert len(loaded.getAnnIds()) == len(results)


def test_an_image_without_objects_is_scored_and_drawn(detector, tmp_path):
    blank = tmp_path / "blank.png"
    write_png(blank, np.full((64, 64, 3), 200, np.uint8))
    target = tmp_path / "blank.json"
    assert main(["predict", "--model", str(detector), str(blank), "--json",
                 str(target), "--score-threshold", "1"]) == 0
    assert (tmp_path / "blank_instances.png").is_file()
    assert isinstance(json.loads(target.read_text()), list)


# ----------------------------------------------------------------------------- bad arguments


def test_train_refuses_distribute_and_an_output_file_before_any_work(no_training, tmp_path,
                                                                      capsys, monkeypatch):
    monkeypatch.setattr(sources, "load", lambda *a, **k: pytest.fail("data loaded"))
    assert main([*TRAIN, "--distribute", "mirrored", "--out", str(tmp_path)]) == 2
    assert "--distribute is not available for --model maskrcnn" in error_line(capsys)
    occupied = tmp_path / "file"
    occupied.write_text("")
    assert main([*TRAIN, "--out", str(occupied)]) == 2
    assert f"--out {occupied} is a file" in error_line(capsys)


def semantic_only(*args, **kwargs):
    data = shapes.generate(4, SIZE, seed=0)
    return SegmentationData(data.images, data.masks, data.class_names)


def nothing_to_validate(*args, **kwargs):
    data = shapes.generate(4, SIZE, seed=0)
    empty = Instances(np.zeros((0, SIZE, SIZE), bool), np.zeros((0, 4), np.float32),
                      np.zeros(0, np.int32))
    return SegmentationData(data.images, data.masks, data.class_names,
                            [*data.instances[:3], empty])


@pytest.mark.parametrize("load, message", [
    (semantic_only, "--data shapes has no instance masks"),
    (nothing_to_validate, "the --val-fraction 0.25 of --data shapes held out for validation has "
                          "no object"),
])
def test_train_refuses_data_it_cannot_learn_or_score_before_training(
        no_training, load, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sources, "load", load)
    assert main([*TRAIN, "--n", "4", "--val-fraction", "0.25", "--out", str(tmp_path)]) == 2
    assert message in error_line(capsys)


def test_too_many_objects_warn_in_flag_terms(monkeypatch, tmp_path, capsys):
    def stop(*args, **kwargs):
        raise SegkerasError("stopped before training")

    monkeypatch.setattr(cli_instances, "fit", stop)
    assert main([*TRAIN, "--n", "8", "--max-instances", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("segkeras train: warning:"), err
    assert "more than --max-instances 1 objects" in err[0] and "Pass --max-instances" in err[0]


def test_predict_and_evaluate_arguments_are_checked(trained, tmp_path, capsys):
    model = str(trained / "model.keras")
    photo = tmp_path / "photo.png"
    write_png(photo, np.zeros((32, 32, 3), np.uint8))
    cases = [
        (["predict", "--model", model, str(tmp_path / "missing.jpg")], "no such image"),
        (["predict", "--model", model, str(photo), "--json", str(tmp_path)],
         f"--json {tmp_path} is a folder"),
        (["predict", "--model", model, str(photo), "--score-threshold", "1.5"],
         "argument --score-threshold: must be a score between 0 and 1"),
        (["predict", "--model", model, str(photo), "--image-size", "128"],
         "--image-size 128 does not match the model's fixed input size 64"),
        (["evaluate", "--model", model, "--image-size", "96"], "--image-size 96"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        line = error_line(capsys)
        assert message in line and "Traceback" not in line, line


def test_semantic_models_refuse_the_mask_rcnn_flags(tmp_path, capsys):
    image = keras.Input((32, 32, 3))
    keras.Model(image, keras.layers.Conv2D(4, 1)(image)).save(tmp_path / "semantic.keras")
    photo = tmp_path / "photo.png"
    write_png(photo, np.zeros((32, 32, 3), np.uint8))
    for flag, value in (("--json", str(tmp_path / "d.json")), ("--score-threshold", "0.3")):
        assert main(["predict", "--model", str(tmp_path / "semantic.keras"), str(photo), flag,
                     value]) == 2
        line = error_line(capsys)
        assert f"{flag} is for Mask R-CNN models" in line, line
    assert not (tmp_path / "photo_overlay.png").exists()


def test_evaluate_refuses_data_with_other_classes(trained, monkeypatch, capsys):
    def two_classes(*args, **kwargs):
        data = shapes.generate(2, SIZE, seed=0)
        return SegmentationData(data.images, data.masks, ["background", "thing"],
                                data.instances)

    monkeypatch.setattr(sources, "load", two_classes)
    assert main(["evaluate", "--model", str(trained / "model.keras")]) == 2
    assert "the model predicts 4 classes but --data shapes has 2" in error_line(capsys)


@pytest.mark.fast
def test_the_overlay_draws_only_detections_above_the_threshold_with_labels_inside():
    masks = np.zeros((3, 40, 60), bool)
    masks[0, 0:10, 0:20] = masks[1, 20:35, 30:50] = masks[2, 5:15, 40:55] = True
    detections = {"masks": masks, "boxes": np.array([[0, 0, 20, 10], [30, 20, 50, 35],
                                                     [40, 5, 55, 15]], np.float32),
                  "class_ids": np.array([1, 2, 3]), "scores": np.array([0.9, 0.6, 0.3])}
    figure = cli_instances.overlay(np.zeros((40, 60, 3), np.uint8), detections, 0.5,
                                   shapes.CLASS_NAMES)
    texts = figure.axes[0].texts
    assert [text.get_text() for text in texts] == ["circle 0.90", "rectangle 0.60"]
    assert texts[0].get_position()[1] >= -0.5  # at the top edge: drawn inside, not cut off
    shown = np.asarray(figure.axes[0].images[0].get_array())
    assert shown[masks[0]].any() and shown[masks[1]].any() and not shown[masks[2]].any()


@pytest.mark.fast
def test_coco_results_map_classes_to_the_dataset_categories():
    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:7] = True
    detections = {"boxes": np.array([[3, 2, 7, 5]], np.float32), "class_ids": np.array([2]),
                  "scores": np.array([0.75]), "masks": mask[None]}
    (row,) = cli_instances.coco_results(detections, 4, category_ids=[1, 18, 44])
    assert row["image_id"] == 4 and row["category_id"] == 18 and row["score"] == 0.75
    assert row["bbox"] == [3, 2, 4, 3]
    np.testing.assert_array_equal(mask_utils.decode(row["segmentation"]), mask)
    json.dumps(row)  # plain JSON types only


def test_a_bomb_among_good_images_is_skipped_and_the_others_written(detector, tmp_path, capsys):
    """A 30000 x 30000 PNG header between two photos: reported in one line (exit 2), refused
    before decoding; the photos' overlays and detections are written, the user's
    cat_instances.png given beside cat.png is not replaced."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
        ">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b""))
    cat, mine = tmp_path / "cat.png", tmp_path / "cat_instances.png"
    write_png(cat, shapes.generate(1, 64, seed=3).images[0])
    write_png(mine, np.full((20, 20, 3), 7, np.uint8))
    assert main(["predict", "--model", str(detector), str(cat), str(bomb), str(mine)]) == 2
    assert "1 of 3 images skipped: " in error_line(capsys)
    assert read_rgb(mine).shape == (20, 20, 3) and read_rgb(mine).max() == 7
    results = json.loads((tmp_path / "detections.json").read_text())
    assert {row["image_id"] for row in results} <= {1, 3} and results
    assert (tmp_path / f"{tmp_path.name}_cat_instances.png").exists()
    assert (tmp_path / "cat_instances_instances.png").exists()



def test_training_on_a_coco_folder_reads_it_through_coco_index(coco_run):
    """Training decodes only the training images (one epoch, then the BatchNorm recalibration),
    scoring only the held-out ones: once for detections, once for the ground-truth boxes."""
    from segkeras.data.coco import CocoIndex

    folder, out, reads = coco_run
    train, held_out = CocoIndex(folder / "annotations.json", folder / "images").split(0.5)
    assert set(reads[:-6]) == set(train.image_ids)
    assert sorted(reads[-6:]) == sorted(held_out.image_ids * 2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["category_ids"] == [1, 2, 3] and metrics["objects"] == sum(
        held_out.object_counts())


def test_evaluate_streams_a_coco_folder_and_scores_as_detection_ap(coco_run, monkeypatch,
                                                                   tmp_path, eager):
    from segkeras.data import coco

    folder, out, _ = coco_run
    monkeypatch.setattr(coco, "load", lambda *a, **k: pytest.fail("the folder was loaded whole"))
    assert main(["evaluate", "--model", str(out / "model.keras"), "--data", str(folder),
                 "--n", "2", "--json", str(tmp_path / "scores.json")]) == 0
    result = json.loads((tmp_path / "scores.json").read_text())
    index = coco.CocoIndex(folder / "annotations.json", folder / "images", limit=2)
    model = keras.saving.load_model(out / "model.keras")
    expected = detection_ap(index, predict_instances(model, [index.image(i) for i in (0, 1)]))
    assert result["images"] == 2
    for kind in ("box", "mask"):
        assert result[kind] == pytest.approx(expected[kind], abs=1e-6, nan_ok=True)


def test_a_coco_folder_with_a_missing_or_wrong_image_is_refused_before_training(
        no_training, tmp_path, capsys):
    """The stream would meet them mid-way: each listed image's header is read first."""
    from segkeras.data import coco

    folder = tmp_path / "coco"
    coco.export(shapes.generate(4, SIZE, seed=0), folder, "four shapes")
    write_png(folder / "images" / "000001.png", np.zeros((SIZE, SIZE + 8, 3), np.uint8))
    assert main([*TRAIN, "--data", str(folder), "--out", str(tmp_path / "run")]) == 2
    line = error_line(capsys)
    assert "000001.png is 64x72 (HxW)" in line and "says 64x64" in line
    write_png(folder / "images" / "000001.png", np.zeros((SIZE, SIZE, 3), np.uint8))
    (folder / "images" / "000002.png").unlink()
    assert main([*TRAIN, "--data", str(folder), "--out", str(tmp_path / "run")]) == 2
    line = error_line(capsys)
    assert "no such image" in line and "000002.png" in line
