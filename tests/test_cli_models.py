"""Every registered builder through the command line: train, then predict and evaluate on the
saved model; bad model and weights files get one line and exit 2."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from segkeras.cli import main
from segkeras.data.images import read_mask, write_png
from segkeras.models import registry

SIZE = 64


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_the_registry_names_every_builder_with_its_default_backbone():
    assert registry.names()[:6] == ("fcn32s", "fcn16s", "fcn8s", "deconvnet", "unet", "hourglass")
    assert registry.get("fcn16s").options == {"variant": "16s"}
    assert registry.get("unet").default_backbone == "mobilenetv2"
    assert registry.get("hourglass").default_backbone is None
    with pytest.raises(Exception, match="Did you mean 'fcn8s'"):
        registry.get("fcn8")
    with pytest.raises(Exception, match="needs a backbone"):
        registry.build("unet", 3, backbone=None)


@pytest.mark.fast
def test_registry_build_passes_the_fixed_options():
    model = registry.build("fcn16s", 3, backbone="mobilenetv3small", weights=None,
                           input_shape=(SIZE, SIZE, 3))
    assert model.name == "fcn16s_mobilenetv3small"
    assert model.output_shape == (None, SIZE, SIZE, 3)


@pytest.fixture(scope="module", params=registry.names("semantic"))
def trained(request, tmp_path_factory):
    """``train`` one step of each architecture (default backbone, random weights, 64x64 shapes)."""
    from tracing import eagerly

    name = request.param
    out = tmp_path_factory.mktemp(name)
    with eagerly():  # the point is the saved model, not the traced step (tests/tracing.py)
        code = main(["train", "--model", name, "--weights", "none", "--n", "4",
                     "--val-fraction", "0.5", "--image-size", str(SIZE), "--batch-size", "2",
                     "--epochs", "1", "--stacks", "2", "--out", str(out)])
    assert code == 0
    return name, out


def test_predict_and_evaluate_work_on_every_saved_model(trained, tmp_path, capsys, eager):
    # eager: the point is the commands on each saved model, not the traced graph
    name, out = trained
    model = keras.saving.load_model(out / "model.keras")
    image = np.random.default_rng(0).integers(0, 256, (40, 90, 3), dtype=np.uint8)
    write_png(tmp_path / "photo.png", image)
    capsys.readouterr()
    assert main(["predict", "--model", str(out / "model.keras"), str(tmp_path / "photo.png"),
                 "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    mask = read_mask(tmp_path / "photo_mask.png")
    assert mask.shape == (40, 90)
    # the library's photo prediction (aspect ratio kept, logits resized bilinearly to the photo,
    # argmax there; tests/test_photos.py checks that against numpy): the CLI writes exactly it
    from segkeras.models.semantic_predict import predict_semantic

    np.testing.assert_array_equal(mask, predict_semantic(model, [image])[0])
    scores = tmp_path / "scores.json"
    assert main(["evaluate", "--model", str(out / "model.keras"), "--n", "2",
                 "--json", str(scores)]) == 0
    result = json.loads(scores.read_text())
    assert 0 <= result["mean_iou"] <= 1
    assert ("per_output" in result) == (name == "hourglass")


def test_a_classifier_is_not_a_segmentation_model(tmp_path, capsys):
    classifier = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(),
                                   keras.layers.Dense(10)])
    path = tmp_path / "classifier.keras"
    classifier.save(path)
    write_png(tmp_path / "photo.png", np.zeros((8, 8, 3), np.uint8))
    for argv in (["predict", "--model", str(path), str(tmp_path / "photo.png")],
                 ["evaluate", "--model", str(path)]):
        assert main(argv) == 2
        line = error_line(capsys)
        assert "is not a semantic segmentation model" in line and "(None, 10)" in line, line


def test_weights_that_are_not_a_weights_file_get_one_line(tmp_path, capsys):
    garbage = tmp_path / "weights.h5"
    garbage.write_bytes(b"this is not HDF5")
    code = main(["train", "--model", "unet", "--weights", str(garbage), "--n", "4",
                 "--image-size", str(SIZE), "--out", str(tmp_path / "out")])
    assert code == 2
    line = error_line(capsys)
    assert str(garbage) in line and "not a Keras weights file" in line, line


def test_weights_of_another_backbone_get_one_line(tmp_path, capsys):
    from segkeras import backbones

    path = str(tmp_path / "vgg16.weights.h5")
    backbones.build_encoder("mobilenetv3small", (SIZE, SIZE, 3), weights=None).save_weights(path)
    code = main(["train", "--model", "unet", "--backbone", "mobilenetv2", "--weights", path,
                 "--n", "4", "--image-size", str(SIZE), "--out", str(tmp_path / "out")])
    assert code == 2
    line = error_line(capsys)
    assert "do not fit 'mobilenetv2'" in line and path in line, line


def test_import_segkeras_is_enough_to_reload_saved_models(tmp_path):
    """In a fresh interpreter: no custom_objects, no import of segkeras.layers/models."""
    from segkeras.models import instance_segmenter, unet

    saved = {
        "unet": unet(3, "mobilenetv3small", weights=None, input_shape=(SIZE, SIZE, 3)),
        "instances": instance_segmenter(3, "mobilenetv3small", weights=None,
                                        input_shape=(SIZE, SIZE, 3)),
    }
    for name, model in saved.items():
        model.save(tmp_path / f"{name}.keras")
    script = textwrap.dedent(f"""
        import keras, segkeras
        for name in {sorted(saved)!r}:
            model = keras.saving.load_model({str(tmp_path)!r} + f"/{{name}}.keras")
            print(name, model.count_params())
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    counts = dict(line.split() for line in run.stdout.splitlines())
    assert counts == {name: str(model.count_params()) for name, model in saved.items()}


@pytest.mark.fast
def test_only_tensorflow_info_lines_are_dropped_from_import_time_stderr():
    from segkeras._tf_logs import _without_info

    text = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796 port.cc:153] oneDNN custom operations are on.\n"
        "I0000 00:00:1797 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.\n"
        "To enable the following instructions: AVX2 FMA, rebuild TensorFlow.\n"
        "W0000 00:00:1798 gpu_device.cc:2] Cannot dlopen some GPU libraries.\n"
        "Skipping registering GPU devices...\n"
        "a Python warning\n"
    )
    assert _without_info(text) == (
        "W0000 00:00:1798 gpu_device.cc:2] Cannot dlopen some GPU libraries.\n"
        "Skipping registering GPU devices...\n"
        "a Python warning\n"
    )
