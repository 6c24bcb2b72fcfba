"""Lab 03 checks: the solutions pass (lr / 2 included), each wrong answer fails with a hint that
names the idea it misses, answers that call the library are refused."""

import inspect

import keras
import pytest
from keras import layers

from segkeras import backbones
from segkeras.checks import core
from segkeras.checks import unet as check
from segkeras.losses import SparseCEDice
from segkeras.models.unet import decoder_block as library_block
from segkeras.models.unet import unet
from segkeras.pretrain import shapesnet_encoder


def _conv_bn_relu(x, filters, name, kernel=3):
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _convs(x, filters, name, kernels=(3, 3)):
    for i, kernel in enumerate(kernels):
        x = _conv_bn_relu(x, filters, f"{name}_{i}", kernel)
    return x


def decoder_block(x, skip, filters, name):
    x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return _convs(x, filters, name)


def freeze_encoder(model):
    backbones.find_encoder(model).trainable = False
    return model


def _unfreeze_but_batchnorm(model):
    encoder = backbones.find_encoder(model)
    encoder.trainable = True
    for layer in encoder.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    return model


def prepare_finetuning(model, learning_rate):
    _unfreeze_but_batchnorm(model).compile(
        keras.optimizers.Adam(learning_rate / 10),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255))
    return model


def prepare_at_half_rate(model, learning_rate):
    """Correct, at exactly lr / 2 (float32 rounds 5e-4 up a little)."""
    _unfreeze_but_batchnorm(model).compile(keras.optimizers.Adam(learning_rate / 2),
                                           SparseCEDice(3))
    return model


def stub(*args):
    raise NotImplementedError()


def _fails_with(result, *words):
    assert not result and result.points == 0
    for word in words:
        assert word in result.message, result.message


@pytest.fixture(autouse=True)
def _fresh_score():
    check.start()
    yield
    core.reset()


@pytest.mark.fast
def test_the_solutions_get_every_point(capsys):
    assert check.decoder_block(decoder_block)
    assert check.freeze_encoder(freeze_encoder)
    assert check.prepare_finetuning(prepare_finetuning)
    assert check.total() == (7, 7)
    assert capsys.readouterr().out.count("✓") == 3


@pytest.mark.fast
def test_finetuning_at_exactly_half_the_rate_passes():
    assert check.prepare_finetuning(prepare_at_half_rate)
    assert check.prepare_finetuning(prepare_at_half_rate, learning_rate=3e-3)


def test_the_library_fallbacks_are_right_answers():
    """What ``use`` hands out when a check failed passes the check's tests (run without the
    "write it yourself" rule, which the fallbacks break by design)."""
    for name in check.LAB.exercises:
        fallback = check.use(name, stub)
        assert fallback is not stub
        # raises CheckFailed if wrong; float32 as the check runs (unwrap drops in_float32)
        core.in_float32(inspect.unwrap(getattr(check, name)))(fallback)


def test_unanswered_exercises_score_zero_and_use_falls_back(capsys):
    for exercise in (check.decoder_block, check.freeze_encoder, check.prepare_finetuning):
        _fails_with(exercise(stub), "not answered yet")
    assert check.total() == (0, 7)
    assert check.use("decoder_block", stub) is not stub
    assert "not answered" in capsys.readouterr().out.splitlines()[-1]


def test_use_returns_the_students_block_once_it_passed():
    check.decoder_block(decoder_block)
    assert check.use("decoder_block", decoder_block) is decoder_block
    encoder = shapesnet_encoder((32, 32, 3), widths=(4, 4, 8, 8, 8))
    model = unet(4, encoder, decoder_filters=(8, 8, 8, 8, 8), block=decoder_block)
    assert model.get_layer("up16_concat").output.shape[-1] == 8 + 8  # the student's layers


# --- decoder_block: wrong answers ---------------------------------------------------------------

def add_projected_skip(x, skip, filters, name):
    """FCN-style fusion: a 1x1 projection of the skip *added* to the upsampled x, bilinear."""
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up")(x)
    x = layers.Conv2D(filters, 1, name=f"{name}_project_x")(x)
    if skip is not None:
        x = layers.Add(name=f"{name}_add")([x, layers.Conv2D(filters, 1, name=f"{name}_p")(skip)])
    return _convs(x, filters, name)


def add_projected_skip_upconv(x, skip, filters, name):
    x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    if skip is not None:
        x = layers.Add(name=f"{name}_add")([x, layers.Conv2D(filters, 1, name=f"{name}_p")(skip)])
    return _convs(x, filters, name)


def bilinear_upsampling(x, skip, filters, name):
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up")(x)
    x = layers.Conv2D(filters, 1, name=f"{name}_project")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return _convs(x, filters, name)


def nearest_upsampling(x, skip, filters, name):
    x = layers.UpSampling2D(2, name=f"{name}_up")(x)
    x = layers.Conv2D(filters, 1, name=f"{name}_project")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return _convs(x, filters, name)


def upconv_4x4(x, skip, filters, name):
    x = layers.Conv2DTranspose(filters, 4, strides=2, padding="same", name=f"{name}_upconv")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return _convs(x, filters, name)


def upconv_keeps_channels(x, skip, filters, name):
    x = layers.Conv2DTranspose(x.shape[-1], 2, strides=2, name=f"{name}_upconv")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return _convs(x, filters, name)


def ignores_the_skip(x, skip, filters, name):
    x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    return _convs(x, filters, name)


def ignores_x(x, skip, filters, name):
    up = layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    if skip is None:
        return _convs(up, filters, name)
    zeros = layers.Lambda(lambda t: t * 0.0, name=f"{name}_zero")(up)
    return _convs(layers.Concatenate(name=f"{name}_concat")([zeros, skip]), filters, name)


def upsample_by_4(x, skip, filters, name):
    x = layers.Conv2DTranspose(filters, 4, strides=4, name=f"{name}_upconv")(x)
    return _convs(x, filters, name)


def convolve_before_concat(x, skip, filters, name):
    x = _convs(x, filters, name)
    x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
        x = layers.Conv2D(filters, 1, name=f"{name}_mix")(x)
    return layers.ReLU(name=f"{name}_out")(x)


def one_conv(x, skip, filters, name):
    x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    x = _convs(x, filters, name, kernels=(3,))
    return layers.BatchNormalization(name=f"{name}_extra_bn")(x)


def three_convs(x, skip, filters, name):
    x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return _convs(x, filters, name, kernels=(3, 3, 3))


def no_batchnorm(x, skip, filters, name):
    x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_a")(x)
    return layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_b")(x)


def ends_with_batchnorm(x, skip, filters, name):
    x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    for part in "ab":
        x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                          name=f"{name}_{part}_conv")(x)
        x = layers.BatchNormalization(beta_initializer="ones", name=f"{name}_{part}_bn")(x)
        x = layers.Lambda(lambda t: t - 2.0, name=f"{name}_{part}_shift")(x)
    return x


def fails_without_a_skip(x, skip, filters, name):
    x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_upconv")(x)
    x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return _convs(x, filters, name)


def fixed_layer_names(x, skip, filters, name):
    return decoder_block(x, skip, filters, "block")


def delegates_to_the_library(x, skip, filters, name):
    return library_block(x, skip, filters, name)


WRONG_BLOCKS = [
    (add_projected_skip, ("Conv2DTranspose", "not with fixed interpolation")),
    (add_projected_skip_upconv, ("concatenates the skip", "reads 20", "FCN")),
    (bilinear_upsampling, ("Conv2DTranspose", "bilinear")),
    (nearest_upsampling, ("Conv2DTranspose", "nearest")),
    (upconv_4x4, ("6x6 window", "changed 8x8", "kernel 2, stride 2")),
    (upconv_keeps_channels, ("20 + 12 = 32", "reads 36")),
    (ignores_the_skip, ("reads 20",)),
    (ignores_x, ("does not depend on x",)),
    (upsample_by_4, ("upsample x by 2", "(32, 32, 20)")),
    (convolve_before_concat, ("concatenates the skip",)),
    (one_conv, ("5x5 window", "changed 3x3")),
    (three_convs, ("5x5 window", "changed 7x7")),
    (no_batchnorm, ("BatchNormalization", "has 0")),
    (ends_with_batchnorm, ("negative values", "end with ReLU")),
    (fails_without_a_skip, ("skip is None", "without concatenating")),
    (fixed_layer_names, ("clash", "starting with `name`")),
    (delegates_to_the_library, ("write it yourself", "decoder_block")),
]


@pytest.mark.fast
@pytest.mark.parametrize("block, words", WRONG_BLOCKS, ids=[b.__name__ for b, _ in WRONG_BLOCKS])
def test_a_wrong_decoder_block_fails_with_a_hint(block, words):
    _fails_with(check.decoder_block(block), *words)


# --- freeze_encoder: wrong answers --------------------------------------------------------------

def freeze_everything(model):
    model.trainable = False
    return model


def freeze_convolutions_only(model):
    for layer in backbones.find_encoder(model).layers:
        if not isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    return model


def freeze_half_the_encoder(model):
    encoder = backbones.find_encoder(model)
    for layer in encoder.layers[: len(encoder.layers) // 2]:
        layer.trainable = False
    return model


def no_return(model):
    backbones.find_encoder(model).trainable = False


def delegates_to_backbones_freeze(model):
    backbones.freeze(backbones.find_encoder(model))
    return model


WRONG_FREEZES = [
    (freeze_everything, ("decoder must stay trainable",)),
    (freeze_convolutions_only, ("still trainable", "BatchNormalization included")),
    (freeze_half_the_encoder, ("still trainable",)),
    (no_return, ("return model",)),
    (delegates_to_backbones_freeze, ("write it yourself", "backbones.freeze")),
]


@pytest.mark.fast
@pytest.mark.parametrize("freeze, words", WRONG_FREEZES,
                         ids=[f.__name__ for f, _ in WRONG_FREEZES])
def test_a_wrong_freeze_fails_with_a_hint(freeze, words):
    _fails_with(check.freeze_encoder(freeze), *words)


# --- prepare_finetuning: wrong answers ----------------------------------------------------------

def compile_without_loss(model, learning_rate):
    _unfreeze_but_batchnorm(model).compile(keras.optimizers.Adam(learning_rate / 10))
    return model


def regression_loss(model, learning_rate):
    _unfreeze_but_batchnorm(model).compile(keras.optimizers.Adam(learning_rate / 10), "mse")
    return model


def trainable_batchnorm(model, learning_rate):
    backbones.find_encoder(model).trainable = True
    model.compile(keras.optimizers.Adam(learning_rate / 10), SparseCEDice(3))
    return model


def recompile_only(model, learning_rate):
    model.compile(keras.optimizers.Adam(learning_rate / 10), SparseCEDice(3))
    return model


def no_recompile(model, learning_rate):
    return _unfreeze_but_batchnorm(model)


def same_rate(model, learning_rate):
    _unfreeze_but_batchnorm(model).compile(keras.optimizers.Adam(learning_rate), SparseCEDice(3))
    return model


def just_above_half_rate(model, learning_rate):
    _unfreeze_but_batchnorm(model).compile(keras.optimizers.Adam(learning_rate * 0.51),
                                           SparseCEDice(3))
    return model


def freezes_the_decoder(model, learning_rate):
    for layer in model.layers:
        layer.trainable = False
    prepare_finetuning(model, learning_rate)
    return model


def delegates_to_backbones_unfreeze(model, learning_rate):
    backbones.unfreeze(backbones.find_encoder(model))
    model.compile(keras.optimizers.Adam(learning_rate / 10), SparseCEDice(3))
    return model


WRONG_PREPARES = [
    (compile_without_loss, ("Compile with a loss",)),
    (regression_loss, ("true class", "from_logits=True")),
    (trainable_batchnorm, ("BatchNormalization", "frozen")),
    (recompile_only, ("still frozen", "trainable = True")),
    (no_recompile, ("Recompile",)),
    (same_rate, ("learning rate well below", "0.001")),
    (just_above_half_rate, ("learning rate well below",)),
    (freezes_the_decoder, ("decoder must stay trainable",)),
    (delegates_to_backbones_unfreeze, ("write it yourself", "backbones.unfreeze")),
]


@pytest.mark.fast
@pytest.mark.parametrize("prepare, words", WRONG_PREPARES,
                         ids=[p.__name__ for p, _ in WRONG_PREPARES])
def test_a_wrong_finetuning_fails_with_a_hint(prepare, words):
    _fails_with(check.prepare_finetuning(prepare), *words)
