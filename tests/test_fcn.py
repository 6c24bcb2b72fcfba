"""FCN (Long et al., CVPR 2015): the skips read pool3/pool4, and the staged training helper starts
each finer net where the coarser one ended (checked against a numpy reference)."""

import keras
import numpy as np
import pytest

from segkeras import backbones
from segkeras.errors import SegkerasError
from segkeras.fcn_stages import initialize_from, train_in_stages
from segkeras.models.fcn import fcn

SIZE = 128
NUM_CLASSES = 3


def _model(variant: str, num_classes: int = NUM_CLASSES) -> keras.Model:
    encoder = backbones.build_encoder("mobilenetv3small", (SIZE, SIZE, 3), weights=None)
    return fcn(num_classes, encoder, variant=variant, fc_filters=None)


def _train_randomly(model: keras.Model, seed: int = 0) -> None:
    """Stand-in for training: the score and upsampling layers get random non-zero weights."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name.startswith(("score_", "upscore_to_")):
            layer.set_weights([rng.normal(size=w.shape) for w in layer.get_weights()])


def _bilinear_matrix(size: int, factor: int) -> np.ndarray:
    """(size * factor, size): half-pixel bilinear resizing along one axis, borders clamped."""
    coords = np.clip((np.arange(size * factor) + 0.5) / factor - 0.5, 0, size - 1)
    low = np.floor(coords).astype(int)
    high = np.minimum(low + 1, size - 1)
    matrix = np.zeros((size * factor, size))
    np.add.at(matrix, (np.arange(len(coords)), low), 1 - (coords - low))
    np.add.at(matrix, (np.arange(len(coords)), high), coords - low)
    return matrix


def _transposed_x2_matrix(size: int) -> np.ndarray:
    """(2 * size, size): FCN's x2 transposed convolution at initialisation (kernel 4, stride 2,
    'same': the full 2 * size + 2 output cropped by one on each side), bilinear taps."""
    full = np.zeros((2 * size + 2, size))
    for i in range(size):
        full[2 * i:2 * i + 4, i] = (0.25, 0.75, 0.75, 0.25)
    return full[1:-1]


def _apply(matrix: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """The same 1-D operator on both spatial axes of (batch, h, w, channels) maps."""
    return np.einsum("yi,xj,bijc->byxc", matrix, matrix, maps)


def _output_of(model: keras.Model, layer_name: str, images) -> np.ndarray:
    probe = keras.Model(model.input, model.get_layer(layer_name).output)
    return np.asarray(probe.predict(images, verbose=0), dtype="float64")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")


@pytest.mark.fast
def test_fcn16s_initialised_from_fcn32s_starts_where_it_ended(images):
    fcn32 = _model("32s")
    _train_randomly(fcn32)
    fcn16 = initialize_from(_model("16s"), fcn32)
    coarse = _output_of(fcn32, "score_fr", images)
    np.testing.assert_allclose(_output_of(fcn16, "score_fr", images), coarse, atol=1e-5)
    # The new skip adds nothing: the logits are the 32s scores, upsampled x2 by the bilinear
    # transposed convolution, then x16 by the fixed bilinear interpolation.
    side = SIZE // 32
    expected = _apply(_bilinear_matrix(2 * side, 16) @ _transposed_x2_matrix(side), coarse)
    logits16 = fcn16.predict(images, verbose=0)
    np.testing.assert_allclose(logits16, expected, atol=1e-4)
    # ... which is FCN-32s' prediction (the zero-padded x2 step only scales the border scores).
    logits32 = fcn32.predict(images, verbose=0)
    assert np.mean(logits16.argmax(-1) == logits32.argmax(-1)) > 0.98
    inside = slice(SIZE // 4, -SIZE // 4)
    np.testing.assert_allclose(logits16[:, inside, inside], logits32[:, inside, inside], atol=0.05)


@pytest.mark.fast
def test_fcn8s_initialised_from_fcn16s_keeps_its_skip_and_adds_a_zero_one(images):
    fcn16 = _model("16s")
    _train_randomly(fcn16, seed=2)
    fcn8 = initialize_from(_model("8s"), fcn16)
    for name in ("score_fr", "score_P4", "upscore_to_P4"):
        for copied, trained in zip(fcn8.get_layer(name).get_weights(),
                                   fcn16.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(copied, trained)
    assert not np.any(fcn8.get_layer("score_P3").get_weights()[0])
    fused = _output_of(fcn16, "fuse_P4", images)
    expected = _apply(_bilinear_matrix(SIZE // 8, 8) @ _transposed_x2_matrix(SIZE // 16), fused)
    np.testing.assert_allclose(fcn8.predict(images, verbose=0), expected, atol=1e-4)


@pytest.mark.fast
def test_initialize_from_refuses_models_that_do_not_match():
    with pytest.raises(SegkerasError, match="score_P4"):
        initialize_from(_model("16s"), _model("8s"))  # coarse from fine: its P3 skip is missing
    with pytest.raises(SegkerasError, match="number of classes"):
        initialize_from(_model("16s", num_classes=4), _model("32s"))


def test_train_in_stages_initialises_each_stage_from_the_previous_one():
    seen = []

    def fit(model):
        seen.append((model.name, model.get_layer("score_fr").get_weights()[0].copy()))
        _train_randomly(model, seed=len(seen))  # "training" changes every score layer
        return keras.callbacks.History()

    trained = train_in_stages(_model, fit)
    assert list(trained) == ["32s", "16s", "8s"]
    assert [name for name, _ in seen] == ["fcn32s_mobilenetv3small", "fcn16s_mobilenetv3small",
                                          "fcn8s_mobilenetv3small"]
    assert not np.any(seen[0][1])  # FCN-32s starts at zero, as in the paper
    for (_, start), (previous, _) in zip(seen[1:], trained.values(), strict=False):
        np.testing.assert_array_equal(start, previous.get_layer("score_fr").get_weights()[0])
    # Each stage keeps its own weights: training 16s and 8s did not change the 32s model.
    assert not np.array_equal(trained["32s"][0].get_layer("score_fr").get_weights()[0],
                              trained["8s"][0].get_layer("score_fr").get_weights()[0])
    with pytest.raises(SegkerasError, match="coarsest first"):
        train_in_stages(_model, fit, stages=("16s", "32s"))


def _encoder_layer_feeding(model: keras.Model, layer_name: str) -> str:
    """The encoder layer whose output the FCN layer ``layer_name`` reads (through the nested
    encoder model: which of its outputs, then the layer that made it)."""
    encoder_call = model.get_layer(layer_name).input._keras_history
    encoder = encoder_call.operation
    assert encoder is backbones.find_encoder(model)
    return encoder.outputs[encoder_call.tensor_index]._keras_history.operation.name


@pytest.mark.fast
def test_fcn_scores_pool3_and_pool4_on_vgg16():
    """Long et al. score VGG16's pool4 (FCN-16s) and pool3 (FCN-8s): the stage outputs, not the
    deepest convolutions before the pools."""
    encoder = backbones.build_encoder("vgg16", (64, 64, 3), weights=None)
    model = fcn(NUM_CLASSES, encoder, variant="8s")
    assert _encoder_layer_feeding(model, "score_P4") == "block4_pool"
    assert _encoder_layer_feeding(model, "score_P3") == "block3_pool"
    # The same by value: what score_P4 reads is block4_pool's output (block5_conv3 has its shape).
    image = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    read = keras.Model(model.input, model.get_layer("score_P4").input).predict(image, verbose=0)
    for name, same in (("block4_pool", True), ("block5_conv3", False)):
        probe = keras.Model(encoder.input, encoder.get_layer(name).output)
        tensor = probe.predict(image, verbose=0)
        assert tensor.shape == read.shape
        assert np.allclose(tensor, read) == same
