"""FCN, DeconvNet and U-Net: every backbone trains, the paper details hold, bad input is rejected,
and ``.keras`` files reload without custom objects."""

import functools

import keras
import numpy as np
import pytest
from tracing import EAGER_IS_CHEAPER

from segkeras import backbones
from segkeras.errors import SegkerasError
from segkeras.layers import BilinearUpsampling
from segkeras.models import common
from segkeras.models.deconv import deconvnet
from segkeras.models.fcn import fcn
from segkeras.models.unet import DEFAULT_DECODER, PAPER_DECODER, unet

SIZE = 64
NUM_CLASSES = 3
BUILDERS = {
    "fcn8s": lambda encoder: fcn(NUM_CLASSES, encoder, variant="8s"),
    "deconvnet_skips": lambda encoder: deconvnet(NUM_CLASSES, encoder, skips=True),
    "unet": lambda encoder: unet(NUM_CLASSES, encoder),
}
FAST_BACKBONES = ("mobilenetv2", "vgg16")
CASES = [
    pytest.param(builder, name, marks=[pytest.mark.fast] if name in FAST_BACKBONES else [])
    for name in backbones.available()
    for builder in BUILDERS
]


@functools.lru_cache(maxsize=1)
def _encoder(name: str) -> keras.Model:
    """One random-weight encoder per backbone, shared by its three builders (cases run in order)."""
    return backbones.build_encoder(name, (SIZE, SIZE, 3), weights=None)


def _batch(size=SIZE, batch=2):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    masks = rng.integers(0, NUM_CLASSES, (batch, size, size)).astype("int32")
    masks[:, : size // 8] = 255  # a band of ignored pixels
    return images, masks


def _values(variables):
    return [keras.ops.convert_to_numpy(v) for v in variables]


def _train_one_step(model, run_eagerly=EAGER_IS_CHEAPER):
    """One SGD step, in the cheaper mode for a single step unless told otherwise."""
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
        run_eagerly=run_eagerly,
    )
    return float(np.asarray(model.train_on_batch(*_batch())))


@pytest.mark.parametrize("builder, name", CASES)
def test_every_builder_trains_on_every_backbone(builder, name):
    encoder = _encoder(name)
    model = BUILDERS[builder](encoder)
    assert model.name == f"{builder}_{name}"
    assert tuple(model.output.shape) == (None, SIZE, SIZE, NUM_CLASSES)
    assert model.layers[-1].compute_dtype == "float32"
    # (DeconvNet on VGG nests the same layers, also returning the pooling switches.)
    nested = backbones.find_encoder(model)
    assert {id(w) for w in nested.weights} == {id(w) for w in encoder.weights}
    head = [w for layer in model.layers if layer is not encoder for w in layer.trainable_weights]
    head_before, encoder_before = _values(head), _values(encoder.weights)
    # Not eager for ConvNeXt: Keras XLA-compiles its grouped convolutions at every eager call.
    assert np.isfinite(_train_one_step(model, EAGER_IS_CHEAPER and name != "convnexttiny"))
    # The head learns; the encoder (frozen by default, BatchNorm in inference mode) does not move.
    assert any(not np.allclose(a, b) for a, b in zip(head_before, _values(head), strict=True))
    assert not encoder.trainable_weights
    assert all(
        np.array_equal(a, b) for a, b in zip(encoder_before, _values(encoder.weights), strict=True)
    )


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda enc: fcn(NUM_CLASSES, enc, variant="32s"), "fcn32s_mobilenetv3small"),
        (lambda enc: fcn(NUM_CLASSES, enc, variant="16s", fc_filters=None),
         "fcn16s_mobilenetv3small"),
        (lambda enc: deconvnet(NUM_CLASSES, enc), "deconvnet_mobilenetv3small"),
        (lambda enc: unet(NUM_CLASSES, enc, upsampling="bilinear"), "unet_mobilenetv3small"),
    ],
    ids=["fcn32s", "fcn16s_no_fc", "deconvnet", "unet_bilinear"],
)
def test_other_variants_give_full_resolution_logits(build, name):
    model = build(backbones.build_encoder("mobilenetv3small", weights=None))
    assert model.name == name
    logits = keras.ops.convert_to_numpy(model(np.zeros((1, 96, 160, 3), "float32")))
    assert logits.shape == (1, 96, 160, NUM_CLASSES) and logits.dtype == np.float32
    # One of them in graph mode (what fit uses), with the input size left open.
    eager = EAGER_IS_CHEAPER and not name.startswith("unet")
    assert np.isfinite(_train_one_step(model, run_eagerly=eager))


def _ramp_and_expected(size: int, stride: int, channels: int):
    """A linear ramp image and its exact half-pixel bilinear upsampling (independent formula)."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    ramp = np.stack([3.0 * rows + 2.0 * cols + 1.0 + c for c in range(channels)], -1)
    out = (np.arange(size * stride) + 0.5) / stride - 0.5  # output pixel centre in input pixels
    out_rows, out_cols = np.meshgrid(out, out, indexing="ij")
    expected = np.stack([3.0 * out_rows + 2.0 * out_cols + 1.0 + c for c in range(channels)], -1)
    return ramp[None].astype("float32"), expected[None]


@pytest.mark.fast
@pytest.mark.parametrize("stride", [2, 8])
def test_bilinear_initialised_transposed_conv_is_bilinear_resize_inside(stride):
    size, channels = 8, 2
    layer = keras.layers.Conv2DTranspose(
        channels, 2 * stride, strides=stride, padding="same", use_bias=False,
        kernel_initializer=BilinearUpsampling(),
    )
    ramp, expected = _ramp_and_expected(size, stride, channels)
    inside = slice(stride, -stride)
    upsampled = keras.ops.convert_to_numpy(layer(ramp))
    np.testing.assert_allclose(upsampled[:, inside, inside], expected[:, inside, inside], atol=1e-4)
    noise = np.random.uniform(-1, 1, (1, size, size, channels)).astype("float32")
    resized = keras.ops.image.resize(noise, (size * stride,) * 2, interpolation="bilinear")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(noise))[:, inside, inside],
        keras.ops.convert_to_numpy(resized)[:, inside, inside], atol=1e-5,
    )


@pytest.mark.fast
def test_fcn_follows_the_paper():
    encoder = backbones.build_encoder("mobilenetv3small", weights=None)
    layer_names = {
        variant: {layer.name for layer in fcn(NUM_CLASSES, encoder, variant=variant).layers}
        for variant in ("32s", "16s")
    }
    assert "score_P4" not in layer_names["32s"] and "upscore32" in layer_names["32s"]
    assert "score_P4" in layer_names["16s"] and "score_P3" not in layer_names["16s"]
    model = fcn(NUM_CLASSES, encoder, variant="8s")
    for name in ("score_fr", "score_P4", "score_P3"):  # the coarser net is where training starts
        assert not np.any(keras.ops.convert_to_numpy(model.get_layer(name).kernel))
    # The learned x2 upsamplings start as bilinear interpolation of the class scores.
    ramp, expected = _ramp_and_expected(4, 2, NUM_CLASSES)
    up = keras.ops.convert_to_numpy(model.get_layer("upscore_to_P3")(ramp))
    np.testing.assert_allclose(up[:, 2:-2, 2:-2], expected[:, 2:-2, 2:-2], atol=1e-4)
    assert model.get_layer("upscore_to_P3").trainable
    assert model.get_layer("upscore8").count_params() == 0  # fixed final interpolation


@pytest.mark.fast
def test_skips_and_upsampling_choices_change_the_decoder():
    encoder = backbones.build_encoder("mobilenetv3small", weights=None)
    plain = deconvnet(NUM_CLASSES, encoder)
    skips = deconvnet(NUM_CLASSES, encoder, skips=True)
    projections = [layer.name for layer in skips.layers if layer.name.endswith("_project")]
    assert projections == ["up16_project", "up8_project", "up4_project", "up2_project"]
    assert not [layer for layer in plain.layers if layer.name.endswith("_project")]

    def transposed(model):
        return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2DTranspose)]

    assert len(transposed(unet(NUM_CLASSES, encoder))) == 4  # none at full resolution
    assert len(transposed(unet(NUM_CLASSES, encoder, final_convs=1))) == 5
    assert not transposed(unet(NUM_CLASSES, encoder, upsampling="bilinear"))


@pytest.mark.fast
def test_unet_default_decoder_and_the_paper_like_one():
    encoder = _encoder("mobilenetv2")
    skips = {level: encoder.output[level].shape[-1] for level in ("P4", "P3", "P2", "P1")}

    def widths(model, strides=(16, 8, 4, 2, 1)):
        return tuple(model.get_layer(f"up{stride}_upconv").filters for stride in strides)

    def convolutions(model):
        return [sum(layer.name.startswith(f"up{stride}_") and layer.name.endswith("_conv")
                    for layer in model.layers) for stride in (16, 8, 4, 2, 1)]

    def concatenated(model):
        return [tuple(tensor.shape[-1] for tensor in model.get_layer(f"up{stride}_concat").input)
                for stride in (16, 8, 4, 2)]

    default = unet(NUM_CLASSES, encoder)
    assert DEFAULT_DECODER == (64, 48, 32, 16, 16)
    assert widths(default, (16, 8, 4, 2)) == (64, 48, 32, 16)
    # each skip narrowed to the block's width by a linear 1x1 convolution, then concatenated
    assert [default.get_layer(f"up{s}_project").filters for s in (16, 8, 4, 2)] == [64, 48, 32, 16]
    assert concatenated(default) == [(64, 64), (48, 48), (32, 32), (16, 16)]
    # two 3x3 convolutions per block, none at full resolution: the logits are upsampled
    assert convolutions(default) == [2, 2, 2, 2, 0]
    assert default.get_layer("logits_upsample").count_params() == 0
    previous = unet(NUM_CLASSES, encoder, final_convs=1)  # the default before issue 27
    assert widths(previous) == DEFAULT_DECODER and convolutions(previous) == [2, 2, 2, 2, 1]
    paper = unet(NUM_CLASSES, encoder, decoder_filters=PAPER_DECODER,
                 skip_projection=False, final_convs=2)
    assert widths(paper) == (256, 128, 64, 32, 16)
    assert convolutions(paper) == [2, 2, 2, 2, 2]
    assert not [layer for layer in paper.layers if layer.name.endswith("_project")]
    assert concatenated(paper) == [(256, skips["P4"]), (128, skips["P3"]), (64, skips["P2"]),
                                   (32, skips["P1"])]
    assert default.count_params() < paper.count_params()


@pytest.mark.fast
def test_unet_default_upsamples_the_stride_2_logits_bilinearly():
    """With no block at full resolution, the logits are the 1x1 classifier of the stride-2
    features, upsampled x2 bilinearly (pixel centres aligned, edges clamped): checked against
    scikit-image's order-1 resize of numpy's classifier."""
    from skimage.transform import resize

    model = unet(NUM_CLASSES, "mobilenetv3small", weights=None, input_shape=(64, 96, 3))
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 96, 3)).astype("float32")
    features = keras.ops.convert_to_numpy(
        keras.Model(model.input, model.get_layer("up2_b_relu").output)(images))
    assert features.shape == (2, 32, 48, DEFAULT_DECODER[3])
    classifier = model.get_layer("classifier")
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in (classifier.kernel, classifier.bias))
    coarse = features @ kernel[0, 0] + bias
    expected = np.stack([resize(c, (64, 96), order=1, mode="edge", anti_aliasing=False)
                         for c in coarse])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images)), expected,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.fast
def test_encoder_trainable_and_mixed_precision():
    model = unet(NUM_CLASSES, "mobilenetv3small", weights=None)
    assert not backbones.find_encoder(model).trainable_weights
    tuned = unet(NUM_CLASSES, "mobilenetv3small", weights=None, encoder_trainable=True)
    assert backbones.find_encoder(tuned).trainable_weights
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = fcn(NUM_CLASSES, "mobilenetv3small", weights=None)
        mixed_unet = unet(NUM_CLASSES, "mobilenetv3small", weights=None)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert mixed.get_layer("score_fr").compute_dtype == "float16"
    assert mixed_unet.get_layer("classifier").compute_dtype == "float16"
    # the stride-2 logits are interpolated in float32
    assert mixed_unet.get_layer("logits_upsample").compute_dtype == "float32"
    assert mixed.output.dtype == mixed_unet.output.dtype == "float32"


@pytest.mark.fast
@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: fcn(1, weights=None), "num_classes"),
        (lambda: unet(2.5, weights=None), "num_classes"),
        (lambda: fcn(3, variant="4s", weights=None), "variant"),
        (lambda: unet(3, upsampling="nearest", weights=None), "upsampling"),
        (lambda: unet(3, decoder_filters=(64, 32), weights=None), "decoder_filters"),
        (lambda: unet(3, final_convs=3, weights=None), "final_convs"),
        (lambda: deconvnet(3, input_shape=(100, 100, 3), weights=None), "96 or 128"),
        (lambda: unet(3, backbone="mobilenet_v5", weights=None), "Unknown backbone"),
        (lambda: unet(3, backbone=keras.Sequential([keras.Input((8, 8, 3))])), "encoder"),
        (lambda: unet(3, backbone=_encoder("mobilenetv2"), input_shape=(128, 128, 3)),
         "contradicts"),
    ],
)
def test_bad_arguments_are_rejected_with_a_hint(build, message):
    with pytest.raises(SegkerasError, match=message):
        build()


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: fcn(NUM_CLASSES, "mobilenetv2", weights=None), marks=pytest.mark.fast),
        lambda: deconvnet(NUM_CLASSES, "mobilenetv2", skips=True, weights=None),
        lambda: unet(NUM_CLASSES, "mobilenetv2", upsampling="bilinear", weights=None),
    ],
    ids=["fcn8s", "deconvnet_skips", "unet_bilinear"],
)
def test_keras_file_round_trip(build, tmp_path):
    model = build()
    _train_one_step(model)  # moves the zero-initialised scores and the BatchNorm statistics
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.name == model.name
    assert backbones.find_encoder(loaded).name == "mobilenetv2_encoder"
    images = np.random.uniform(0, 255, (1, 64, 96, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(images))
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)), expected, atol=1e-5)


def _batchnorm(model: keras.Model) -> list:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def test_a_frozen_encoder_runs_in_inference_mode_also_after_reloading(tmp_path):
    """EfficientNet's stochastic depth (Dropout) must be off while the head trains on it, even
    though Keras 3 lets fit's training=True override a recorded ``encoder(x, training=False)``."""
    encoder = backbones.build_encoder("efficientnetb0", (SIZE, SIZE, 3), weights=None)
    images = _batch()[0]
    plain = keras.Model(encoder.input, encoder.output["P5"])  # the same layers, no mode rule
    first, second = (keras.ops.convert_to_numpy(plain(images, training=True)) for _ in range(2))
    assert np.abs(first - second).max() > 0.01 * np.abs(first).max(), "Dropout is on in training"
    inference = keras.ops.convert_to_numpy(plain(images, training=False))
    image, features = common.encode(encoder)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(keras.Model(image, features["P5"])(images, training=True)),
        inference)
    model = unet(NUM_CLASSES, encoder)
    path = str(tmp_path / "unet.keras")
    model.save(path)
    for candidate in (model, keras.saving.load_model(path)):
        first, second = (keras.ops.convert_to_numpy(candidate(images, training=True))
                         for _ in range(2))
        np.testing.assert_array_equal(first, second)
    backbones.unfreeze(encoder)  # fine-tuning with BatchNorm frozen: still inference mode
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(encoder(images, training=True)["P5"]), inference)


@pytest.mark.fast
def test_an_encoder_trained_from_scratch_updates_its_batchnorm_statistics():
    model = unet(NUM_CLASSES, "mobilenetv2", weights=None, encoder_trainable=True,
                 input_shape=(SIZE, SIZE, 3))
    encoder = backbones.find_encoder(model)
    layer = _batchnorm(encoder)[0]
    images = _batch()[0]
    before = keras.ops.convert_to_numpy(layer.moving_mean).copy()
    batch_mean = keras.ops.convert_to_numpy(
        keras.Model(encoder.input, layer.input)(images)).mean(axis=(0, 1, 2))
    model(images, training=True)
    expected = layer.momentum * before + (1 - layer.momentum) * batch_mean
    assert np.abs(expected - before).max() > 0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), expected,
                               rtol=1e-4, atol=1e-8)
