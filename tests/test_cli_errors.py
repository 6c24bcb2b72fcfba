"""Bad input to ``python -m segkeras``: one line on stderr, exit 2, no traceback, the CLI's flags
in the message, and argument errors found before any data is loaded or model built."""

import json

import keras
import numpy as np
import pytest

from segkeras import train
from segkeras.cli import common, demo, main
from segkeras.data import sources
from segkeras.data.images import write_png


def error_line(capsys) -> str:
    """The stderr of the last command, which must be exactly one line."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Loading data, building a model or training fails the test: errors must come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("argument errors must be found before this")

    monkeypatch.setattr(sources, "load", forbidden)
    monkeypatch.setattr(common, "build_model", forbidden)
    monkeypatch.setattr(common, "load_model", forbidden)
    monkeypatch.setattr(train, "fit_two_stage", forbidden)


def tiny_model(size=32, classes=4):
    image = keras.Input((size, size, 3))
    return keras.Model(image, keras.layers.Conv2D(classes, 1)(image), name="tiny")


@pytest.fixture
def tiny_model_file(tmp_path):
    path = tmp_path / "tiny.keras"
    tiny_model().save(path)
    return path


TRAIN = ["train", "--model", "unet", "--weights", "none", "--n", "8", "--image-size", "32"]


def test_train_val_fraction_outside_zero_one(no_work, tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path), "--val-fraction", "1.5"]) == 2
    assert "argument --val-fraction: must be a fraction between 0 and 1 (e.g. 0.2), got '1.5'" \
        in error_line(capsys)


def test_train_lr_nan_is_refused(no_work, tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path), "--lr", "nan"]) == 2
    assert "argument --lr: must be a positive number (e.g. 1e-3), got 'nan'" in error_line(capsys)


def test_train_stops_on_a_nan_loss_exits_2_and_saves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(common, "build_model", lambda args, classes, weights: tiny_model())
    out = tmp_path / "out"
    code = main([*TRAIN, "--batch-size", "2", "--epochs", "3", "--lr", "1e38", "--out", str(out)])
    assert code == 2
    captured = capsys.readouterr()
    assert "Invalid loss, terminating training" in captured.out  # TerminateOnNaN
    assert captured.err.strip().splitlines() == [
        "segkeras train: error: training stopped in epoch 1: the loss became nan; nothing was "
        "saved. Lower --lr (was 1e+38) or check the masks of --data"]
    assert list(out.iterdir()) == []
    assert main([*TRAIN, "--batch-size", "2", "--epochs", "1", "--out", str(out)]) == 0
    assert (out / "model.keras").exists()  # the same command with a sane --lr saves


def test_train_epochs_zero_fails_before_any_work(no_work, tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path), "--epochs", "0"]) == 2
    assert error_line(capsys).endswith("--epochs 0 and --finetune-epochs 0 leave nothing to "
                                       "train; use --epochs 1 or more")


def test_train_one_image_fails_before_any_work(no_work, tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path), "--n", "1"]) == 2
    assert "--n 1 with --val-fraction 0.2: 1 image(s) cannot be split into training and " \
           "validation images; use at least 2 images" in error_line(capsys)


def test_train_unwritable_out_fails_before_any_work(no_work, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main([*TRAIN, "--out", str(a_file)]) == 2
    assert f"--out {a_file} is a file, not a folder" in error_line(capsys)
    assert main([*TRAIN, "--out", str(a_file / "sub")]) == 2  # cannot be created
    assert f"--out {a_file / 'sub'}: cannot write there" in error_line(capsys)


def test_train_missing_weights_file_fails_before_any_work(no_work, tmp_path, capsys):
    args = [*TRAIN, "--out", str(tmp_path)]
    args[args.index("none")] = str(tmp_path / "missing.h5")
    assert main(args) == 2
    assert "no such weights file" in error_line(capsys)


def test_negative_sizes_get_a_suggestion(no_work, tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path), "--image-size", "-64"]) == 2
    assert "argument --image-size: must be >= 1, got -64; did you mean 64?" in error_line(capsys)
    assert main(["backbones", "--size", "-64"]) == 2
    assert "did you mean 64?" in error_line(capsys)
    assert main([*TRAIN, "--out", str(tmp_path), "--image-size", "48"]) == 2
    assert "--image-size 48: H=48 is not a multiple of the encoder stride 32; use 32 or 64" \
        in error_line(capsys)


def test_predict_out_pointing_at_a_file(no_work, tmp_path, capsys):
    image = tmp_path / "photo.png"
    write_png(image, np.zeros((20, 20, 3), np.uint8))
    assert main(["predict", "--model", "m.keras", str(image), "--out", str(image)]) == 2
    assert f"--out {image} is a file, not a folder; pass a folder" in error_line(capsys)


def test_evaluate_json_in_a_folder_that_cannot_exist(no_work, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["evaluate", "--model", "m.keras", "--json", str(a_file / "s.json")]) == 2
    assert "--json" in error_line(capsys)


def test_predict_reports_unreadable_images_and_predicts_the_others(tiny_model_file, tmp_path,
                                                                   capsys):
    good_1, bad, good_2 = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    write_png(good_1, np.full((20, 30, 3), 50, np.uint8))
    bad.write_bytes(b"\x89PNG not really")
    write_png(good_2, np.full((24, 16, 3), 200, np.uint8))
    out = tmp_path / "out"
    code = main(["predict", "--model", str(tiny_model_file), str(good_1), str(bad), str(good_2),
                 "--out", str(out)])
    assert code == 2
    captured = capsys.readouterr()
    assert f"{good_2} -> " in captured.out  # the image after the bad one was predicted
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and f"1 of 3 images skipped: cannot read {bad} as an image" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [
        "a_mask.png", "a_overlay.png", "c_mask.png", "c_overlay.png"]


def test_garbage_keras_file_is_not_called_missing(tmp_path, capsys):
    garbage = tmp_path / "model.keras"
    garbage.write_bytes(b"definitely not a zip")
    assert main(["evaluate", "--model", str(garbage)]) == 2
    line = error_line(capsys)
    assert f"cannot read {garbage}: the file exists but is not a .keras file (a zip archive)" \
        in line
    assert "not found" not in line.lower()


def test_missing_data_folder_is_called_a_missing_folder(tmp_path, capsys):
    missing = str(tmp_path / "my_coco")
    assert main([*TRAIN, "--out", str(tmp_path / "out"), "--data", missing]) == 2
    assert f"--data {missing}: no such folder: {missing}" in error_line(capsys)


def test_messages_name_cli_flags_not_api_arguments(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    code = main([*TRAIN[:4], "imagenet", "--n", "4", "--image-size", "32",
                 "--out", str(tmp_path / "out")])
    assert code == 2
    line = error_line(capsys)
    assert "Cannot download ImageNet weights" in line and "or pass --weights none" in line
    assert "weights=" not in line
    code = main([*TRAIN, "--data", f"pets:{tmp_path / 'pets'}", "--out", str(tmp_path / "out")])
    assert code == 2
    line = error_line(capsys)
    assert "Oxford-IIIT Pet: cannot download" in line and "--data pets:FOLDER" in line
    assert "root=" not in line
    assert not (tmp_path / "pets").exists()
    assert common.in_flag_terms("Need head_epochs >= 0 and finetune_epochs >= 0") == \
        "Need --epochs >= 0 and --finetune-epochs >= 0"


def test_pets_folder_as_data_source(tmp_path, capsys, monkeypatch):
    """`--data pets:FOLDER` reads Pet files extracted there (what the message above offers)."""
    from PIL import Image

    root = tmp_path / "pets"
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    names = [f"cat_{i}" for i in range(4)]
    for name in names:
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(root / "images" / f"{name}.jpg")
        Image.fromarray(np.full((40, 40), 1, np.uint8)).save(
            root / "annotations" / "trimaps" / f"{name}.png")
    (root / "annotations" / "trainval.txt").write_text("".join(f"{n} 1 1 1\n" for n in names))
    (root / "annotations" / "test.txt").write_text("cat_0 1 1 1\n")
    data = sources.load(f"pets:{root}", n=3, image_size=32)
    assert len(data) == 3 and data.images.shape == (3, 32, 32, 3)
    assert data.extra["root"] == str(root) and (data.masks == 1).all()
    monkeypatch.setattr(common, "build_model", lambda args, classes, weights: tiny_model(32, 3))
    out = tmp_path / "out"
    assert main([*TRAIN, "--data", f"pets:{root}", "--n", "4", "--epochs", "1",
                 "--batch-size", "2", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["classes"] == [
        "background", "pet", "border"]


def test_demo_and_data_check_out_before_working(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "run_demo", lambda **kwargs: pytest.fail("trained before --out"))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["demo", "--quick", "--out", str(a_file)]) == 2
    assert f"--out {a_file} is a file, not a folder" in error_line(capsys)
    assert main(["data", "shapes", "--n", "2", "--out", str(a_file)]) == 2
    assert f"--out {a_file} is a file, not a folder" in error_line(capsys)
