"""python -m segkeras: demo, train, evaluate, predict, data, and one-line errors (exit 2)."""

import functools
import importlib
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from segkeras.cli import main
from segkeras.data.images import read_mask, write_png


def error_line(capsys) -> str:
    """The stderr of the last command, which must be exactly one line."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from tracing import eagerly

    out = tmp_path_factory.mktemp("demo")
    with eagerly():  # two steps: the point is what the demo writes (tests/tracing.py)
        assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out


def test_demo_quick_writes_model_metrics_and_pictures(demo_dir, capsys):
    for name in ("model.keras", "metrics.json", "predictions.png", "history.png"):
        assert (demo_dir / name).stat().st_size > 0, name
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    assert metrics["classes"] == ["background", "circle", "rectangle", "triangle"]
    assert 0.0 <= metrics["mean_iou"] <= 1.0
    assert metrics["recipe"]["weights"] in ("imagenet", "random")
    model = keras.saving.load_model(demo_dir / "model.keras")
    assert model.output_shape == (None, 64, 64, 4)


def test_evaluate_prints_the_table_and_writes_json(demo_dir, tmp_path, capsys, eager):
    target = tmp_path / "scores.json"
    code = main(["evaluate", "--model", str(demo_dir / "model.keras"), "--data", "shapes",
                 "--n", "4", "--json", str(target)])
    assert code == 0
    out = capsys.readouterr().out
    assert "mean IoU" in out and "triangle" in out
    assert set(json.loads(target.read_text())["iou"]) == {
        "background", "circle", "rectangle", "triangle"}


def test_predict_writes_overlays_at_the_original_size(demo_dir, tmp_path, capsys, eager):
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    write_png(tmp_path / "photo.png", image)
    out = tmp_path / "predictions"
    assert main(["predict", "--model", str(demo_dir / "model.keras"),
                 str(tmp_path / "photo.png"), "--out", str(out)]) == 0
    assert (out / "photo_overlay.png").stat().st_size > 0
    mask = read_mask(out / "photo_mask.png")
    assert mask.shape == (50, 70) and mask.max() < 4


def test_model_with_fixed_size_rejects_another_size(demo_dir, capsys):
    code = main(["evaluate", "--model", str(demo_dir / "model.keras"), "--image-size", "128"])
    assert code == 2
    assert "does not match the model's fixed input size 64" in error_line(capsys)


def test_missing_and_unreadable_model_files(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "nope.keras")]) == 2
    assert "no such model file" in error_line(capsys)
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip file")
    assert main(["predict", "--model", str(garbage), str(garbage)]) == 2
    assert "cannot read" in error_line(capsys)


def test_missing_image(demo_dir, tmp_path, capsys):
    code = main(["predict", "--model", str(demo_dir / "model.keras"), str(tmp_path / "x.png")])
    assert code == 2
    assert "no such image" in error_line(capsys)


def test_class_count_mismatch(tmp_path, capsys):
    image = keras.Input((32, 32, 3))
    three = keras.Model(image, keras.layers.Conv2D(3, 1)(image))
    three.save(tmp_path / "three.keras")
    code = main(["evaluate", "--model", str(tmp_path / "three.keras"), "--n", "2"])
    assert code == 2
    assert "predicts 3 classes but --data shapes has 4" in error_line(capsys)


def test_bad_size_and_bad_data(tmp_path, capsys):
    common = ["train", "--model", "unet", "--weights", "none", "--out", str(tmp_path)]
    assert main([*common, "--image-size", "100"]) == 2
    assert "not a multiple of the encoder stride 32; use 96 or 128" in error_line(capsys)
    assert main([*common, "--data", "nowhere"]) == 2
    assert "--data nowhere: no dataset 'nowhere': use shapes" in error_line(capsys)
    assert main([*common, "--data", "coco:only-one-part"]) == 2
    assert "coco:ANNOTATIONS.json:IMAGE_DIR" in error_line(capsys)
    assert main(["train", "--model", "segnet"]) == 2  # argparse: usage and the error


def test_train_hourglass_writes_model_history_and_per_stack_scores(tmp_path, capsys, monkeypatch,
                                                                  eager):
    module = importlib.import_module("segkeras.models.hourglass")
    small = functools.partial(module.hourglass, depth=1, filters=8)  # the CLI path, but fast
    monkeypatch.setattr(module, "hourglass", small)
    code = main(["train", "--model", "hourglass", "--stacks", "2", "--data", "shapes", "--n", "8",
                 "--image-size", "64", "--batch-size", "4", "--epochs", "1", "--out",
                 str(tmp_path)])
    assert code == 0
    assert "training end to end" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [o["output"] for o in metrics["per_output"]] == ["stack_1", "stack_2"]
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["stage_boundary"] == 0 and len(history["epoch"]) == 1
    assert {"stack_1_loss", "stack_2_loss"} <= set(history["history"])
    assert (tmp_path / "model.keras").exists() and (tmp_path / "history.png").exists()


def test_data_shapes_exports_coco_that_evaluate_reads(demo_dir, tmp_path, capsys, eager):
    out = tmp_path / "shapes"
    assert main(["data", "shapes", "--n", "3", "--out", str(out), "--image-size", "64"]) == 0
    assert sorted(os.listdir(out / "images")) == ["000000.png", "000001.png", "000002.png"]
    capsys.readouterr()
    scores = tmp_path / "scores.json"
    for data in (str(out), f"coco:{out / 'annotations.json'}:{out / 'images'}"):
        code = main(["evaluate", "--model", str(demo_dir / "model.keras"), "--data", data,
                     "--json", str(scores)])
        assert code == 0, capsys.readouterr().err
        assert json.loads(scores.read_text())["classes"][1:] == ["circle", "rectangle", "triangle"]


def test_python_dash_m_reports_one_line_and_exit_2(tmp_path):
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip file")
    run = subprocess.run([sys.executable, "-m", "segkeras", "evaluate", "--model", str(garbage)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segkeras evaluate: error: cannot read"), lines


def test_data_folder_without_annotations(tmp_path, capsys):
    code = main(["train", "--model", "unet", "--weights", "none", "--data", str(tmp_path),
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "has no annotations.json: a COCO-format folder needs" in error_line(capsys)


def test_version_and_n_help_say_what_they_mean(capsys):
    import segkeras

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"segkeras {segkeras.__version__}"
    for command in ("train", "evaluate"):
        assert main([command, "--help"]) == 0
        assert "pets and COCO: at most that many" in " ".join(capsys.readouterr().out.split())


def test_the_grade_command_is_wired_in(capsys, tmp_path):
    """``segkeras grade`` (the grader's ``segkeras.grading.cli``) is a command like the others:
    listed in --help, its errors one line with exit 2."""
    assert main(["--help"]) == 0
    assert "grade submitted notebooks of a lab" in " ".join(capsys.readouterr().out.split())
    assert main(["grade", "99", str(tmp_path)]) == 2
    assert "no lab '99'" in error_line(capsys)
    assert main(["grade", "6", str(tmp_path / "missing")]) == 2
    assert "not a notebook or a folder of notebooks" in error_line(capsys)
