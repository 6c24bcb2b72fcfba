"""The CLI's run folders (issue 24): an earlier run is kept unless --overwrite, a second run into
a folder in use is refused, outputs never replace inputs or each other, --json writes only over
its own files, a stale metrics.json is one line, and a real `train` killed by SIGTERM exits 143
with its checkpoint on disk, then `--resume` finishes it."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from segkeras import runs
from segkeras.cli import common, main
from segkeras.data.images import read_rgb, write_png


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def tiny_model(size=32, classes=4):
    image = keras.Input((size, size, 3))
    return keras.Model(image, keras.layers.Conv2D(classes, 1)(image), name="tiny")


TRAIN = ["train", "--model", "unet", "--weights", "none", "--n", "8", "--image-size", "32",
         "--batch-size", "4", "--epochs", "1"]


@pytest.fixture
def tiny_training(monkeypatch):
    monkeypatch.setattr(common, "build_model", lambda args, classes, weights: tiny_model())


def test_train_keeps_an_earlier_run_unless_overwrite(tiny_training, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*TRAIN, "--out", str(out)]) == 0
    first = runs.model_run_id(out / "model.keras")
    assert json.loads((out / "metrics.json").read_text())["run_id"] == first
    assert sorted(os.listdir(out)) == ["history.json", "history.png", "metrics.json",
                                       "model.keras"]  # no checkpoint, no lock, no temporaries
    capsys.readouterr()
    assert main([*TRAIN, "--out", str(out)]) == 2
    assert "already holds a run (model.keras, metrics.json, history.json, history.png); pass " \
           "--overwrite" in error_line(capsys)
    assert runs.model_run_id(out / "model.keras") == first
    assert main([*TRAIN, "--out", str(out), "--overwrite"]) == 0
    second = runs.model_run_id(out / "model.keras")
    assert second != first and json.loads((out / "metrics.json").read_text())["run_id"] == second


def test_a_second_run_into_a_folder_in_use_is_refused(tiny_training, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / runs.LOCK).write_text(f"{holder.pid} {os.uname().nodename}")
        assert main([*TRAIN, "--out", str(out)]) == 2
        assert f"in use by another segkeras run (process {holder.pid})" in error_line(capsys)
    finally:
        holder.kill()
        holder.wait()
    assert main([*TRAIN, "--out", str(out)]) == 0  # the dead process' lock is taken over
    assert not (out / runs.LOCK).exists()


def test_resume_without_a_checkpoint_is_one_line(tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path), "--resume"]) == 2
    assert "--resume: " in error_line(capsys)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "run" / "model.keras"
    runs.save_run(path.parent, tiny_model(), {}, {"classes": ["bg", "a", "b", "c"]})
    return path


def test_predict_never_overwrites_inputs_or_its_own_outputs(model_file, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    cat, cat_mask = tmp_path / "x" / "cat.png", tmp_path / "x" / "cat_mask.png"
    other_cat = tmp_path / "y" / "cat.png"
    for path, value in ((cat, 10), (cat_mask, 20), (other_cat, 30)):
        write_png(path, np.full((12, 16, 3), value, np.uint8))
    assert main(["predict", "--model", str(model_file), str(cat), str(cat_mask),
                 str(other_cat)]) == 0
    assert read_rgb(cat_mask).max() == 20  # the user's file is still theirs
    assert (tmp_path / "x" / "x_cat_mask.png").exists()
    assert (tmp_path / "x" / "cat_mask_mask.png").exists()
    assert (tmp_path / "y" / "cat_mask.png").exists()
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_file), str(cat), str(other_cat), "--out",
                 str(out)]) == 0
    assert sorted(os.listdir(out)) == ["cat_mask.png", "cat_overlay.png", "y_cat_mask.png",
                                       "y_cat_overlay.png"]


def test_predict_refuses_a_stale_metrics_file(model_file, tmp_path, capsys):
    runs.save_model(tiny_model(), model_file, runs.new_run_id())  # killed before scoring
    image = tmp_path / "a.png"
    write_png(image, np.zeros((8, 8, 3), np.uint8))
    assert main(["predict", "--model", str(model_file), str(image)]) == 2
    assert "belongs to another run than" in error_line(capsys)


def test_evaluate_json_refuses_the_model_and_other_files(model_file, tmp_path, capsys):
    before = model_file.read_bytes()
    assert main(["evaluate", "--model", str(model_file), "--n", "4", "--image-size", "32",
                 "--json", str(model_file)]) == 2
    assert "is one of the input files" in error_line(capsys)
    assert model_file.read_bytes() == before
    photo = tmp_path / "photo.png"
    write_png(photo, np.zeros((8, 8, 3), np.uint8))
    assert main(["evaluate", "--model", str(model_file), "--n", "4", "--image-size", "32",
                 "--json", str(photo)]) == 2
    assert "exists and was not written by segkeras" in error_line(capsys)
    scores = tmp_path / "scores.json"
    for _ in range(2):  # its own file is replaced
        assert main(["evaluate", "--model", str(model_file), "--n", "4", "--image-size", "32",
                     "--json", str(scores)]) == 0
    assert json.loads(scores.read_text())["run_id"] == runs.model_run_id(model_file)


def test_data_shapes_keeps_an_existing_dataset_unless_overwrite(tmp_path, capsys):
    assert main(["data", "shapes", "--n", "2", "--image-size", "32", "--out", str(tmp_path)]) == 0
    annotations = (tmp_path / "annotations.json").read_bytes()
    assert main(["data", "shapes", "--n", "3", "--image-size", "32", "--out",
                 str(tmp_path)]) == 2
    assert "already holds a dataset (annotations.json, images, masks); pass --overwrite" in \
        error_line(capsys)
    assert (tmp_path / "annotations.json").read_bytes() == annotations
    assert main(["data", "shapes", "--n", "3", "--image-size", "32", "--out", str(tmp_path),
                 "--overwrite"]) == 0


@pytest.mark.slow
def test_sigterm_mid_training_exits_143_and_resume_finishes(tmp_path):
    """A real `python -m segkeras train`, SIGTERM after its first epoch: one line, exit 143, the
    finished epochs on disk; the same command with --resume writes the run."""
    out = tmp_path / "out"
    # VGG16's 19 layers: the U-Net whose training step traces fastest (MobileNetV2 has 155)
    command = [sys.executable, "-m", "segkeras", "train", "--model", "unet", "--backbone",
               "vgg16", "--weights", "none", "--n", "40", "--image-size", "32", "--batch-size",
               "2", "--epochs", "3", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    trainer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=env)
    checkpoint = out / "checkpoint.npz"
    deadline = time.time() + 900  # a loaded 2-core machine takes minutes to trace the model
    while not checkpoint.exists() and trainer.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), "no checkpoint after the first epoch"
    trainer.send_signal(signal.SIGTERM)
    _, stderr = trainer.communicate(timeout=120)
    assert trainer.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    # in epoch 2, or in epoch 3 when a loaded machine kept this test from signalling sooner
    saved = "(epoch 1 of 3 is|epochs 1-2 of 3 are)"
    assert re.fullmatch(f"segkeras train: interrupted by SIGTERM: {saved} saved in "
                        f"{re.escape(str(checkpoint))}; run the same command with --resume.*",
                        stderr.strip().splitlines()[-1])
    assert not (out / "model.keras").exists() and not (out / runs.LOCK).exists()
    done = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [0, 1, 2] and not checkpoint.exists()
