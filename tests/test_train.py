"""segkeras.train: precision policy, strategies, the two-stage recipe and its history."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from segkeras import train
from segkeras.errors import SegkerasError

SIZE, CLASSES = 16, 3


def tiny_model(outputs: int = 1, encoder: bool = True) -> keras.Model:
    """A stand-in segmentation model: a nested ``tiny_encoder`` (conv + BatchNorm) and a 1x1 head
    per output (named ``stack_i`` when there are several)."""
    image = keras.Input((SIZE, SIZE, 3))
    if encoder:
        inner = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.Rescaling(1 / 255)(inner)
        x = keras.layers.Conv2D(4, 3, padding="same", name="enc_conv")(x)
        x = keras.layers.BatchNormalization(name="enc_bn")(x)
        features = keras.Model(inner, {"P1": x}, name="tiny_encoder")(image)["P1"]
    else:
        features = keras.layers.Conv2D(4, 3, padding="same", name="stem")(image)
    heads = [keras.layers.Conv2D(CLASSES, 1, dtype="float32", name=f"stack_{i + 1}")(features)
             for i in range(outputs)]
    return keras.Model(image, heads if outputs > 1 else heads[0], name="tiny")


def dataset(count: int = 8, batch: int = 4):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (count, SIZE, SIZE, 3)).astype("float32")
    masks = (images[..., 0] > 128).astype("int32") + (images[..., 1] > 200).astype("int32")
    masks[:, :2] = 255
    return tf.data.Dataset.from_tensor_slices((images, masks)).batch(batch)


def weights_of(model, layer_name):
    owner = model.get_layer("tiny_encoder") if layer_name.startswith("enc_") else model
    return [np.array(w) for w in owner.get_layer(layer_name).get_weights()]


def changed(before, after):
    return any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


METRICS = [keras.metrics.SparseCategoricalAccuracy(name="acc")]


@pytest.fixture
def float32_policy():
    yield
    keras.config.set_dtype_policy("float32")


def test_auto_precision_is_float32_without_gpu(float32_policy):
    assert not train.gpu_available()
    assert train.configure_precision() == "float32"


def test_mixed_precision_applies_to_layers_built_afterwards(float32_policy):
    assert train.configure_precision("mixed_float16") == "mixed_float16"
    layer = keras.layers.Dense(2)
    assert layer.compute_dtype == "float16" and layer.variable_dtype == "float32"
    with pytest.raises(SegkerasError, match="Unknown precision policy"):
        train.configure_precision("float12")


def test_strategy_names_are_checked(monkeypatch):
    assert train.make_strategy(None) is None and train.make_strategy("none") is None
    with pytest.raises(SegkerasError, match="Unknown distribution strategy"):
        train.make_strategy("parameter_server")
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(SegkerasError, match="needs the TensorFlow backend"):
        train.make_strategy("mirrored")


@pytest.mark.fast
def test_head_stage_keeps_the_encoder_frozen():
    model = tiny_model()
    encoder_before = weights_of(model, "enc_conv")
    head_before = weights_of(model, "stack_1")
    history = train.fit_two_stage(model, dataset(), head_epochs=2, finetune_epochs=0,
                                  metrics=METRICS, verbose=0)
    assert not changed(encoder_before, weights_of(model, "enc_conv"))
    assert changed(head_before, weights_of(model, "stack_1"))
    assert history.epoch == [0, 1] and history.stage_boundary == 2
    assert history.stages == ["head", "head"]


def test_finetuning_unfreezes_the_encoder_but_not_batchnorm_at_a_lower_rate():
    model = tiny_model()
    encoder_before, bn_before = weights_of(model, "enc_conv"), weights_of(model, "enc_bn")
    history = train.fit_two_stage(model, dataset(), dataset(), head_epochs=1, finetune_epochs=2,
                                  learning_rate=1e-2, metrics=METRICS, verbose=0)
    assert changed(encoder_before, weights_of(model, "enc_conv"))
    assert not changed(bn_before, weights_of(model, "enc_bn"))  # moving statistics too
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    assert history.epoch == [0, 1, 2] and history.stage_boundary == 1
    assert history.stages == ["head", "finetune", "finetune"]
    for key in ("loss", "acc", "val_loss", "val_acc"):
        assert len(history.history[key]) == 3
    assert history.to_dict()["stage_boundary"] == 1


def test_end_to_end_from_the_start_uses_the_full_learning_rate():
    model = tiny_model()
    before = weights_of(model, "enc_conv")
    history = train.fit_two_stage(model, dataset(), head_epochs=0, finetune_epochs=1,
                                  learning_rate=1e-2, metrics=METRICS, verbose=0)
    assert changed(before, weights_of(model, "enc_conv"))
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-2)
    assert history.stage_boundary == 0 and history.stages == ["finetune"]


def test_cosine_schedule_decays_over_the_stage():
    model = tiny_model()
    train.fit_two_stage(model, dataset(), head_epochs=0, finetune_epochs=2, learning_rate=1e-2,
                        schedule="cosine", metrics=METRICS, verbose=0)
    schedule = model.optimizer._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert schedule.decay_steps == 4  # 2 epochs x 2 batches
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-6)


def test_bad_epoch_counts_and_missing_encoder_are_rejected():
    with pytest.raises(SegkerasError, match="not both 0"):
        train.fit_two_stage(tiny_model(), dataset(), head_epochs=0, finetune_epochs=0)
    with pytest.raises(SegkerasError, match="no pretrained encoder to freeze"):
        train.fit_two_stage(tiny_model(encoder=False), dataset(), head_epochs=1)


@pytest.mark.fast
def test_multi_output_gets_a_loss_per_output_and_metrics_on_the_last():
    model = tiny_model(outputs=2, encoder=False)
    history = train.fit_two_stage(model, dataset(), dataset(), head_epochs=0, finetune_epochs=1,
                                  metrics=METRICS, verbose=0)
    keys = set(history.history)
    assert {"stack_1_loss", "stack_2_loss", "stack_2_acc", "val_stack_2_acc"} <= keys
    assert "stack_1_acc" not in keys
    total = history.history["stack_1_loss"][0] + history.history["stack_2_loss"][0]
    assert history.history["loss"][0] == pytest.approx(total, rel=1e-4)


def test_loss_weights_reach_compile():
    model = tiny_model(outputs=2, encoder=False)
    history = train.fit_two_stage(model, dataset(), head_epochs=0, finetune_epochs=1,
                                  loss_weights={"stack_1": 0.5, "stack_2": 2.0}, verbose=0)
    first, second = history.history["stack_1_loss"][0], history.history["stack_2_loss"][0]
    assert history.history["loss"][0] == pytest.approx(0.5 * first + 2.0 * second, rel=1e-4)


def test_default_loss_ignores_255_and_default_metrics_come_from_segkeras_metrics():
    loss = train.default_loss()
    logits = np.array([[[5.0, 0.0, 0.0], [0.0, 0.0, 9.0]]], "float32")
    ignored = float(loss(np.array([[0, 255]]), logits))
    only_first = float(loss(np.array([[0]]), logits[:, :1]))
    assert ignored == pytest.approx(only_first, rel=1e-5)
    names = [metric.name for metric in train.default_metrics(CLASSES)]
    assert names == ["pixel_accuracy", "mean_iou"]


MIRRORED_SCRIPT = textwrap.dedent("""
    import os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from segkeras import train
    from tests.test_train import dataset, tiny_model, weights_of, changed
    strategy = train.make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = tiny_model()
    before = weights_of(model, "stack_1")
    history = train.fit_two_stage(model, dataset(), head_epochs=1, finetune_epochs=1,
                                  strategy=strategy, verbose=0)
    print("replicas", strategy.num_replicas_in_sync)
    print("variable", type(model.layers[-1].kernel.value).__name__)
    print("changed", changed(before, weights_of(model, "stack_1")))
    print("loss_finite", bool(np.isfinite(history.history["loss"]).all()))
""")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute")
def test_mirrored_strategy_trains_on_two_logical_cpus():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], cwd=root, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert run.returncode == 0, run.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if " " in line)
    assert lines["replicas"] == "2"
    assert lines["variable"] == "MirroredVariable"
    assert lines["changed"] == "True" and lines["loss_finite"] == "True"


def test_end_to_end_keeps_the_batchnorm_decision_of_the_builder(eager):
    from segkeras import backbones
    from segkeras.models.unet import unet

    def batchnorm(model):
        return [layer for layer in backbones.find_encoder(model).layers
                if isinstance(layer, keras.layers.BatchNormalization)]

    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((images, np.ones((4, 32, 32), "int32"))).batch(2)
    scratch = unet(2, "mobilenetv2", weights=None, encoder_trainable=True,
                   decoder_filters=(8, 8, 8, 8, 8), input_shape=(32, 32, 3))
    assert all(layer.trainable and layer.momentum == 0.99 for layer in batchnorm(scratch))
    before = np.array(batchnorm(scratch)[0].moving_mean)
    train.fit_two_stage(scratch, data, head_epochs=0, finetune_epochs=1, verbose=0)
    assert all(layer.trainable for layer in batchnorm(scratch))
    assert not np.allclose(before, np.array(batchnorm(scratch)[0].moving_mean)), "statistics move"

    frozen = unet(2, "mobilenetv2", weights=None, decoder_filters=(8, 8, 8, 8, 8),
                  input_shape=(32, 32, 3))
    train.fit_two_stage(frozen, data, head_epochs=0, finetune_epochs=1, verbose=0)
    assert not any(layer.trainable for layer in batchnorm(frozen)), "as for a pretrained encoder"


def test_cosine_decay_matches_keras_and_start_over_retrains_the_compiled_model():
    """train.CosineDecay gives keras' values; after start_over the compiled model trains exactly
    like a fresh one compiled for the new length (weights, zeroed optimizer, the new cosine)."""
    reference = keras.optimizers.schedules.CosineDecay(5e-3, 7, alpha=0.1)
    schedule = train.CosineDecay(5e-3, 7, alpha=0.1)
    for step in (0, 3, 7, 9):
        assert float(schedule(step)) == pytest.approx(float(reference(step)), rel=1e-6)
    assert train.CosineDecay.from_config(schedule.get_config()).get_config() == \
        schedule.get_config()

    keras.utils.set_random_seed(0)
    model = tiny_model(encoder=False)
    start = model.get_weights()
    fresh = keras.models.clone_model(model)
    fresh.set_weights(start)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    model.compile(keras.optimizers.Adam(train.CosineDecay(1e-2, 50)), loss=loss)
    model.fit(dataset(), epochs=2, verbose=0)  # trained, with a 50-step schedule
    train.start_over(model, start, decay_steps=3)
    assert int(model.optimizer.iterations) == 0
    model.fit(dataset(), epochs=2, verbose=0)  # 4 steps: the cosine is over after 3

    fresh.compile(keras.optimizers.Adam(train.CosineDecay(1e-2, 3)), loss=loss)
    fresh.fit(dataset(), epochs=2, verbose=0)
    for ours, theirs in zip(model.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)

    other = tiny_model(encoder=False)
    other.compile(keras.optimizers.Adam(1e-3), loss=loss)
    with pytest.raises(SegkerasError, match="CosineDecay"):
        train.start_over(other, other.get_weights(), 3)
