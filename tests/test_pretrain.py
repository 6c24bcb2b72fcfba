"""segkeras.pretrain: the shapesnet encoder's feature taps, the counting task's labels, the shipped
checkpoint (frozen, fine-tunable) and the pretrain-once fallback when it is missing."""

import keras
import numpy as np
import pytest

from segkeras import backbones, pretrain
from segkeras.data import shapes
from segkeras.data.core import Instances, SegmentationData
from segkeras.errors import SegkerasError
from segkeras.models.unet import unet


def _tiny_encoder():
    return pretrain.shapesnet_encoder((64, 64, 3), widths=(4, 4, 8, 8, 8))


@pytest.mark.fast
def test_taps_are_stage_outputs_at_strides_2_to_32():
    encoder = _tiny_encoder()
    assert encoder.name == "shapesnet_encoder"
    features = encoder(np.zeros((1, 64, 64, 3), "float32"))
    for level, stride in backbones.STRIDES.items():
        assert tuple(features[level].shape[1:3]) == (64 // stride, 64 // stride), level
    for block, level in enumerate(backbones.LEVELS[:4], start=2):
        # P(k) is what the k-th pooling consumes: the last ReLU of block k + 1
        assert encoder.output[level] is encoder.get_layer(f"block{block}_pool").input, level
    assert encoder.output["P5"] is encoder.get_layer("block5_pool").output


@pytest.mark.fast
def test_the_encoder_preprocesses_raw_rgb_and_builds_a_unet():
    encoder = _tiny_encoder()
    scaled = encoder.get_layer("preprocess")(np.array([[0.0, 127.5, 255.0]], "float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scaled), [[-1.0, 0.0, 1.0]])
    model = unet(4, encoder, decoder_filters=(8, 8, 8, 8, 8))
    assert model.name == "unet_shapesnet"
    assert backbones.find_encoder(model) is encoder
    assert tuple(model.output.shape) == (None, 64, 64, 4)


@pytest.mark.fast
def test_a_residual_block_adds_its_input_to_its_convolutions():
    """With the second BatchNorm of block 2 zeroed (gamma = beta = 0) only the shortcut is left:
    block 2 (same width as block 1: identity shortcut) returns relu(its input) = its input, the
    non-negative pooled output of block 1. The plain encoder would return relu(0) = 0 there."""
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    for residual in (True, False):
        encoder = pretrain.shapesnet_encoder((64, 64, 3), widths=(4, 4, 8, 8, 8),
                                             residual=residual)
        norm = encoder.get_layer("block2_bn2")
        norm.gamma.assign(np.zeros(4, "float32"))
        norm.beta.assign(np.zeros(4, "float32"))
        probe = keras.Model(encoder.input, [encoder.output["P1"],
                                            encoder.get_layer("block1_pool").output])
        block2, block1_pooled = (keras.ops.convert_to_numpy(t) for t in probe(images))
        expected = block1_pooled if residual else np.zeros_like(block2)
        np.testing.assert_allclose(block2, expected, atol=1e-5)
        assert block1_pooled.max() > 0
    projected = pretrain.shapesnet_encoder((64, 64, 3), widths=(4, 4, 8, 8, 8), residual=True)
    assert {layer.name for layer in projected.layers if layer.name.endswith("_project")} == {
        "block1_project", "block3_project"}, "a 1x1 projection where the width changes"


def test_bad_widths_and_architectures_are_refused():
    with pytest.raises(SegkerasError, match="5 positive ints"):
        pretrain.shapesnet_encoder(widths=(8, 16))
    with pytest.raises(SegkerasError, match="shapesnet_residual"):
        pretrain.build("resnet")


def test_count_labels_count_each_class_and_cap_at_max_count():
    def objects(class_ids):
        n = len(class_ids)
        return Instances(np.zeros((n, 4, 4), bool), np.zeros((n, 4), "float32"),
                         np.array(class_ids, "int32"))

    many = [2] * (pretrain.MAX_COUNT + 3)
    data = SegmentationData(np.zeros((3, 4, 4, 3), "uint8"), np.zeros((3, 4, 4), "uint8"),
                            list(shapes.CLASS_NAMES),
                            [objects([1, 1, 3]), objects([]), objects(many)])
    np.testing.assert_array_equal(pretrain.count_labels(data),
                                  [[2, 0, 1], [0, 0, 0], [0, pretrain.MAX_COUNT, 0]])
    with pytest.raises(SegkerasError, match="instances"):
        pretrain.count_labels(SegmentationData(data.images, data.masks, data.class_names))


def test_count_labels_match_the_generated_masks():
    """Each generated object keeps >= 70 % of its pixels, so the instance masks (counted with
    numpy, per class) give the same counts."""
    data = shapes.generate(20, image_size=64, seed=3)
    expected = [[sum(1 for mask, c in zip(objects.masks, objects.class_ids, strict=True)
                     if c == k and mask.any()) for k in (1, 2, 3)] for objects in data.instances]
    np.testing.assert_array_equal(pretrain.count_labels(data),
                                  np.minimum(expected, pretrain.MAX_COUNT))


@pytest.mark.fast
def test_counting_model_gives_one_softmax_per_shape_class():
    model = pretrain.counting_model(_tiny_encoder())
    logits = model(np.zeros((2, 64, 64, 3), "float32"))
    assert tuple(logits.shape) == (2, 3, pretrain.MAX_COUNT + 1)


def test_the_shipped_checkpoint_loads_frozen_and_fine_tunable():
    assert pretrain.shipped_checkpoint().is_file(), "run data/make_pretrained_encoder.py shapesnet"
    frozen = pretrain.pretrained_encoder((64, 64, 3))
    assert not frozen.trainable_weights
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    train_mode = frozen(images, training=True)["P5"]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(train_mode),
                               keras.ops.convert_to_numpy(frozen(images)["P5"]), atol=1e-5)
    random = pretrain.random_encoder((64, 64, 3))
    assert any(not np.allclose(a, b) for a, b in zip(frozen.get_weights(), random.get_weights(),
                                                       strict=True))

    tunable = pretrain.pretrained_encoder((64, 64, 3), trainable=True)
    norms = [layer for layer in tunable.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    convs = [layer for layer in tunable.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(layer.trainable for layer in convs) and not any(layer.trainable for layer in norms)
    for a, b in zip(frozen.get_weights(), tunable.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("architecture", list(pretrain.ENCODERS))
def test_each_shipped_checkpoint_learned_to_count_and_loads(architecture):
    report = pretrain.checkpoint_report(architecture)
    assert report["recipe"] == pretrain.RECIPE
    chance = 1 / (pretrain.MAX_COUNT + 1)
    assert report["count_accuracy"] > 2 * chance
    encoder = pretrain.pretrained_encoder((64, 64, 3), architecture=architecture)
    assert encoder.name == f"{architecture}_encoder"
    assert encoder.count_params() == report["parameters"]
    random = pretrain.random_encoder((64, 64, 3), architecture=architecture)
    assert any(not np.allclose(a, b) for a, b in zip(encoder.get_weights(), random.get_weights(),
                                                       strict=True))


def test_random_encoder_trains_its_batchnorm():
    encoder = pretrain.random_encoder((64, 64, 3))
    norms = [layer for layer in encoder.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.trainable for layer in norms)


TINY = {"n_images": 32, "image_size": 32, "epochs": 1, "batch_size": 16}
"""A quick pretraining (seconds), like a quick-mode lab might ask for."""


def test_recipe_keys_tell_every_recipe_and_architecture_apart():
    key = pretrain.recipe_key()
    assert key == pretrain.recipe_key("shapesnet", dict(pretrain.RECIPE)) and len(key) == 12
    others = {pretrain.recipe_key(architecture) for architecture in pretrain.ENCODERS}
    others |= {pretrain.recipe_key(recipe={name: value * 2})
               for name, value in pretrain.RECIPE.items()}
    assert key in others and len(others) == len(pretrain.ENCODERS) + len(pretrain.RECIPE)
    with pytest.raises(SegkerasError, match="n_images"):
        pretrain.recipe_key(recipe={"images": 10})
    with pytest.raises(SegkerasError, match="shapesnet_small"):
        pretrain.recipe_key("resnet")


def test_a_quick_recipe_is_cached_under_its_own_name_and_never_stands_in_for_the_full_one(
        tmp_path, monkeypatch):
    calls, real_pretrain = [], pretrain.pretrain

    def counted(architecture, **kwargs):
        calls.append((architecture, kwargs))
        return real_pretrain(architecture, **kwargs)

    monkeypatch.setattr(pretrain, "pretrain", counted)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert pretrain.checkpoint_report(recipe=TINY) is None
    first = pretrain.pretrained_encoder((32, 32, 3), recipe=TINY)
    second = pretrain.pretrained_encoder((32, 32, 3), recipe=TINY)
    assert calls == [("shapesnet", {**pretrain.RECIPE, **TINY, "verbose": 0})]
    key = pretrain.recipe_key("shapesnet", TINY)
    assert sorted(path.name for path in (tmp_path / "segkeras").iterdir()) == [
        f"shapesnet_counting-{key}.json", f"shapesnet_counting-{key}.weights.h5"]
    report = pretrain.checkpoint_report(recipe=TINY)
    assert report["recipe"] == {**pretrain.RECIPE, **TINY} and 0 <= report["count_accuracy"] <= 1
    assert report["parameters"] == first.count_params()
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    full = pretrain.pretrained_encoder((32, 32, 3))  # the shipped checkpoint, not the quick one
    assert len(calls) == 1
    assert pretrain.checkpoint_report()["recipe"] == pretrain.RECIPE
    assert any(not np.allclose(a, b) for a, b in zip(first.get_weights(), full.get_weights(),
                                                     strict=True))


def test_without_the_shipped_checkpoint_it_is_pretrained_once_with_its_report(
        tmp_path, monkeypatch):
    """What lab 3 meets where the package lacks its checkpoint: the encoder is pretrained once,
    and its report (lab 3 prints its counting accuracy) is there afterwards."""
    calls = []

    def untrained(architecture, **kwargs):  # what is tested is the cache, not the training
        calls.append(architecture)
        return pretrain.build(architecture, (32, 32, 3)), {"count_accuracy": 0.25}

    monkeypatch.setattr(pretrain, "pretrain", untrained)
    monkeypatch.setattr(pretrain, "shipped_checkpoint",
                        lambda architecture="shapesnet": tmp_path / "missing" / "x.weights.h5")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    architecture = "shapesnet_small"
    assert pretrain.checkpoint_report(architecture) is None
    first = pretrain.pretrained_encoder((32, 32, 3), architecture=architecture)
    second = pretrain.pretrained_encoder((32, 32, 3), architecture=architecture)
    assert calls == [architecture]
    assert pretrain.checkpoint_report(architecture) == {
        "recipe": pretrain.RECIPE, "count_accuracy": 0.25, "parameters": first.count_params()}
    key = pretrain.recipe_key(architecture)
    assert (tmp_path / "home" / "segkeras" / f"{architecture}_counting-{key}.weights.h5").is_file()
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
