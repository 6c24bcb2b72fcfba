"""Lab 03 checks: the solutions pass, typical wrong answers fail with a hint that says why."""

import keras
import pytest
from keras import layers

from segkeras import backbones
from segkeras.checks import core
from segkeras.checks import unet as check


def _conv_bn_relu(x, filters, name, kernel=3):
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def decoder_block(x, skip, filters, name):
    x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    x = _conv_bn_relu(x, filters, f"{name}_a")
    return _conv_bn_relu(x, filters, f"{name}_b")


def freeze_encoder(model):
    backbones.find_encoder(model).trainable = False
    return model


def prepare_finetuning(model, learning_rate):
    encoder = backbones.find_encoder(model)
    encoder.trainable = True
    for layer in encoder.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    model.compile(keras.optimizers.Adam(learning_rate / 10),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255))
    return model


def stub(*args):
    raise NotImplementedError()


def _fails_with(result, *words):
    assert not result and result.points == 0
    for word in words:
        assert word in result.message, result.message


@pytest.fixture(autouse=True)
def _fresh_score():
    core.reset()
    yield
    core.reset()


@pytest.mark.fast
def test_the_solutions_get_every_point(capsys):
    assert check.decoder_block(decoder_block)
    assert check.freeze_encoder(freeze_encoder)
    assert check.prepare_finetuning(prepare_finetuning)
    assert core.total() == (7, 7)
    assert capsys.readouterr().out.count("✓") == 3


def test_a_stub_is_not_answered_yet(capsys):
    for exercise in (check.decoder_block, check.freeze_encoder, check.prepare_finetuning):
        _fails_with(exercise(stub), "not answered yet")
    assert "✗" in capsys.readouterr().out
    assert core.total() == (0, 7)


@pytest.mark.fast
def test_a_block_that_ignores_the_skip_fails():
    def no_skip(x, skip, filters, name):
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
        x = _conv_bn_relu(x, filters, f"{name}_a")
        return _conv_bn_relu(x, filters, f"{name}_b")

    _fails_with(check.decoder_block(no_skip), "only the skip changes", "concatenate")


def test_a_block_with_the_wrong_stride_fails():
    def upsample_by_4(x, skip, filters, name):
        x = layers.UpSampling2D(4, name=f"{name}_up")(x)
        x = _conv_bn_relu(x, filters, f"{name}_a")
        return _conv_bn_relu(x, filters, f"{name}_b")

    _fails_with(check.decoder_block(upsample_by_4), "upsample x by 2", "(32, 32, 20)")


@pytest.mark.parametrize("kernels", [(3,), (3, 3, 3), (3, 1)])
def test_a_block_without_two_3x3_convolutions_fails(kernels):
    def block(x, skip, filters, name):
        x = layers.UpSampling2D(2, name=f"{name}_up")(x)
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
        for i, kernel in enumerate(kernels):
            x = _conv_bn_relu(x, filters, f"{name}_{i}", kernel)
        return layers.BatchNormalization(name=f"{name}_extra_bn")(x) if len(kernels) == 1 else x

    size = 1 + sum(kernel - 1 for kernel in kernels)
    _fails_with(check.decoder_block(block), "5x5 window", f"changed {size}x{size}")


def test_a_block_ending_in_batchnorm_fails():
    def relu_before_bn(x, skip, filters, name):
        x = layers.UpSampling2D(2, name=f"{name}_up")(x)
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
        for part in "ab":
            x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                              name=f"{name}_{part}_conv")(x)
            x = layers.BatchNormalization(beta_initializer="ones", name=f"{name}_{part}_bn")(x)
            x = layers.Lambda(lambda t: t - 2.0, name=f"{name}_{part}_shift")(x)
        return x

    _fails_with(check.decoder_block(relu_before_bn), "negative values", "end with ReLU")


def test_a_block_without_batchnorm_fails():
    def no_norm(x, skip, filters, name):
        x = layers.UpSampling2D(2, name=f"{name}_up")(x)
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_a")(x)
        return layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_b")(x)

    _fails_with(check.decoder_block(no_norm), "BatchNormalization", "has 0")


@pytest.mark.fast
def test_freezing_the_whole_model_fails():
    def freeze_everything(model):
        model.trainable = False
        return model

    _fails_with(check.freeze_encoder(freeze_everything), "decoder must stay trainable")


def test_freezing_only_the_convolutions_fails():
    def freeze_convolutions(model):
        for layer in backbones.find_encoder(model).layers:
            if not isinstance(layer, layers.BatchNormalization):
                layer.trainable = False
        return model

    _fails_with(check.freeze_encoder(freeze_convolutions), "still trainable", "trainable = False")


def test_forgetting_to_return_the_model_fails():
    def no_return(model):
        backbones.find_encoder(model).trainable = False

    _fails_with(check.freeze_encoder(no_return), "return model")


def test_finetuning_with_trainable_batchnorm_fails():
    def unfreeze_everything(model, learning_rate):
        backbones.find_encoder(model).trainable = True
        model.compile(keras.optimizers.Adam(learning_rate / 10), "mse")
        return model

    _fails_with(check.prepare_finetuning(unfreeze_everything), "BatchNormalization", "frozen")


def test_finetuning_without_unfreezing_fails():
    def recompile_only(model, learning_rate):
        model.compile(keras.optimizers.Adam(learning_rate / 10), "mse")
        return model

    _fails_with(check.prepare_finetuning(recompile_only), "still frozen", "trainable = True")


@pytest.mark.fast
def test_finetuning_without_recompiling_or_at_the_same_rate_fails():
    def no_recompile(model, learning_rate):
        backbones.unfreeze(backbones.find_encoder(model))
        return model

    def same_rate(model, learning_rate):
        backbones.unfreeze(backbones.find_encoder(model))
        model.compile(keras.optimizers.Adam(learning_rate), "mse")
        return model

    _fails_with(check.prepare_finetuning(no_recompile), "Recompile")
    _fails_with(check.prepare_finetuning(same_rate), "learning rate well below", "0.001")
