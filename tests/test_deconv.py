"""DeconvNet follows Noh et al.: on VGG it un-pools with the switches of the encoder's own max
pooling layers; on other backbones it upsamples with transposed convolutions; it reloads from a
``.keras`` file; the lab's decoder step can be swapped in."""

import functools

import keras
import numpy as np
import pytest

from segkeras import backbones
from segkeras.errors import SegkerasError
from segkeras.models.deconv import deconvnet, max_pooling_layers
from segkeras.unpooling import MaxUnpooling
from tests.test_unpooling import numpy_unpool

SIZE = 32
NUM_CLASSES = 3


@functools.lru_cache(maxsize=1)
def _vgg16() -> keras.Model:
    return backbones.build_encoder("vgg16", (SIZE, SIZE, 3), weights=None)


def _image(seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (1, SIZE, SIZE, 3)).astype("float32")


def _of_type(model, layer_type):
    return [layer for layer in model.layers if isinstance(layer, layer_type)]


@pytest.mark.fast
def test_vgg16_deconvnet_unpools_with_the_switches_of_the_encoders_pooling_layers():
    encoder = _vgg16()
    model = deconvnet(NUM_CLASSES, encoder)
    assert model.name == "deconvnet_vgg16"
    assert [pool.name for pool in max_pooling_layers(encoder)] == [
        f"block{k}_pool" for k in range(1, 6)]
    unpools = _of_type(model, MaxUnpooling)
    assert [layer.name for layer in unpools] == [f"up{s}_unpool" for s in (16, 8, 4, 2, 1)]
    # No stride-2 transposed convolution: the unpooling does all the upsampling.
    assert all(layer.strides == (1, 1) for layer in _of_type(model, keras.layers.Conv2DTranspose))
    # Each unpooling puts its input values at the maxima of the matching encoder pooling's input
    # (computed from the encoder alone), zeros elsewhere.
    probe = keras.Model(model.input, [[layer.input[0], layer.output] for layer in unpools])
    pre_pools = keras.Model(encoder.input, [encoder.get_layer(f"block{k}_pool").input
                                            for k in (5, 4, 3, 2, 1)])
    image = _image()
    for (values, unpooled), pre_pool in zip(probe(image), pre_pools(image), strict=True):
        expected = numpy_unpool(keras.ops.convert_to_numpy(values),
                                keras.ops.convert_to_numpy(pre_pool), 2)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(unpooled), expected, rtol=1e-6)
    # The first unpooling gets block5_pool's output back to block5_conv3's maxima.
    values, unpooled = (keras.ops.convert_to_numpy(t) for t in probe(image)[0])
    assert np.array_equal(values, keras.ops.convert_to_numpy(encoder(image)["P5"]))
    assert np.count_nonzero(unpooled) == np.count_nonzero(values)
    # The decoder mirrors the encoder's widths (VGG16: 512, 512, 256, 128, 64).
    widths = [layer.filters for layer in _of_type(model, keras.layers.Conv2DTranspose)]
    assert widths == [512, 512, 512, 256, 256, 128, 128, 64, 64, 64]


@pytest.mark.fast
def test_a_backbone_without_max_pooling_gets_transposed_convolutions():
    encoder = backbones.build_encoder("mobilenetv3small", (SIZE, SIZE, 3), weights=None)
    assert max_pooling_layers(encoder) is None
    model = deconvnet(NUM_CLASSES, encoder)
    assert not _of_type(model, MaxUnpooling)
    upsamplers = _of_type(model, keras.layers.Conv2DTranspose)
    assert [(layer.kernel_size, layer.strides) for layer in upsamplers] == [((4, 4), (2, 2))] * 5
    assert backbones.find_encoder(model) is encoder
    with pytest.raises(SegkerasError, match="max-pools at every stage"):
        deconvnet(NUM_CLASSES, encoder, upsampling="unpool")


@pytest.mark.fast
def test_transposed_upsampling_on_vgg_and_a_custom_decoder_step():
    calls = []

    def block(x, skip, filters, name):
        calls.append((name, filters, skip is not None))
        return keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_mine")(x)

    model = deconvnet(NUM_CLASSES, _vgg16(), upsampling="transposed", block=block,
                      decoder_filters=(8, 8, 8, 8, 8), skips=True)
    assert not _of_type(model, MaxUnpooling)
    assert calls == [("up16", 8, True), ("up8", 8, True), ("up4", 8, True), ("up2", 8, True),
                     ("up1", 8, False)]
    assert tuple(model.output.shape) == (None, SIZE, SIZE, NUM_CLASSES)


@pytest.mark.fast
def test_skips_join_the_unpooling_stages():
    model = deconvnet(NUM_CLASSES, _vgg16(), skips=True, decoder_filters=(8, 8, 8, 8, 8))
    assert model.name == "deconvnet_skips_vgg16"
    projections = [layer.name for layer in model.layers if layer.name.endswith("_project")]
    assert projections == ["up16_project", "up8_project", "up4_project", "up2_project"]


@pytest.mark.fast
def test_unpooling_deconvnet_trains_and_reloads_without_custom_objects(tmp_path):
    model = deconvnet(NUM_CLASSES, "vgg16", weights=None, input_shape=(SIZE, SIZE, 3),
                      decoder_filters=(16, 16, 16, 16, 16))
    model.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    masks = np.random.default_rng(0).integers(0, NUM_CLASSES, (2, SIZE, SIZE))
    assert np.isfinite(model.train_on_batch(np.concatenate([_image(0), _image(1)]), masks))
    path = str(tmp_path / "deconvnet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert len(_of_type(loaded, MaxUnpooling)) == 5
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(_image(2))),
                               keras.ops.convert_to_numpy(model(_image(2))), atol=1e-5)


@pytest.mark.fast
def test_bad_upsampling_is_rejected():
    with pytest.raises(SegkerasError, match="upsampling"):
        deconvnet(NUM_CLASSES, _vgg16(), upsampling="bilinear")
