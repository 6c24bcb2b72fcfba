"""Stacked hourglass: outputs per stack, recursion depth, intermediate supervision, saving,
the encoder stem, the bilinear output upsampling."""

import keras
import numpy as np
import pytest
from tracing import EAGER_IS_CHEAPER

from segkeras import backbones, train
from segkeras.errors import SegkerasError
from segkeras.metrics import segmentation_metrics
from segkeras.models.hourglass import (
    BilinearResize,
    final_stack_model,
    hourglass,
    hourglass_module,
    output_names,
)

SMALL = {"depth": 2, "filters": 8}


def _images(n=2, size=32):
    return np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _masks(n=2, size=32, num_classes=3):
    return np.random.default_rng(1).integers(0, num_classes, (n, size, size)).astype("int32")


def _stack_layers(model, stack, kind=keras.layers.Layer):
    return [layer for layer in model.layers
            if layer.name.startswith(f"hg{stack}_") and isinstance(layer, kind)]


@pytest.mark.fast
@pytest.mark.parametrize("num_stacks", [1, 3])
def test_one_logits_map_per_stack_at_input_resolution(num_stacks):
    model = hourglass(4, num_stacks=num_stacks, **SMALL)
    outputs = model(_images(2, 48))
    assert sorted(model.output_names) == sorted(output_names(num_stacks))
    assert list(outputs) == output_names(num_stacks)
    for output in outputs.values():
        assert tuple(output.shape) == (2, 48, 48, 4)
        assert keras.backend.standardize_dtype(output.dtype) == "float32"
    assert all(model.get_layer(name).dtype_policy.name == "float32" for name in model.output_names)


@pytest.mark.fast
@pytest.mark.parametrize("depth", [1, 3])
def test_each_stack_pools_depth_times_down_to_the_bottom(depth):
    size = 4 * 2**depth * 2
    model = hourglass(2, num_stacks=2, depth=depth, filters=8, input_shape=(size, size, 3))
    for stack in (1, 2):
        pools = _stack_layers(model, stack, keras.layers.MaxPooling2D)
        assert len(pools) == depth
        upsamplings = _stack_layers(model, stack, keras.layers.UpSampling2D)
        assert len(upsamplings) == depth
        # The innermost pooling reaches 1/4 of the input, halved depth times.
        assert model.get_layer(f"hg{stack}_d1_pool").output.shape[1:3] == (2, 2)


def _changed_layers(loss_weights):
    """Names of the layers whose trainable weights one SGD step changes."""
    model = hourglass(3, num_stacks=2, **SMALL)
    model.compile(keras.optimizers.SGD(0.5), loss=train.per_output(model, train.default_loss()),
                  loss_weights=train.per_output(model, loss_weights), run_eagerly=EAGER_IS_CHEAPER)
    before = {w.path: keras.ops.convert_to_numpy(w) for w in model.trainable_weights}
    model.train_on_batch(_images(), train.targets_for_outputs(model, _masks()))
    return {
        w.path.split("/")[0] for w in model.trainable_weights
        if not np.array_equal(before[w.path], keras.ops.convert_to_numpy(w))
    }


@pytest.mark.fast
def test_a_loss_on_stack_1_only_trains_nothing_after_stack_1():
    changed = _changed_layers([1.0, 0.0])
    assert {"hg1_logits", "hg1_d2_skip_conv1", "stem_conv"} <= changed
    assert not {name for name in changed if name.startswith("hg2_")}
    assert not {"hg1_remap_features", "hg1_remap_logits"} & changed


@pytest.mark.fast
def test_a_loss_on_stack_2_reaches_stack_1_through_the_remapped_logits():
    changed = _changed_layers([0.0, 1.0])
    assert {"hg2_logits", "hg1_remap_logits", "hg1_remap_features", "hg1_logits"} <= changed


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.fast
def test_keras_round_trip_and_final_stack_model(tmp_path):
    model = hourglass(3, num_stacks=2, **SMALL)
    images = _images()
    expected = {k: keras.ops.convert_to_numpy(o) for k, o in model(images).items()}
    path = str(tmp_path / "hourglass.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    outputs = reloaded(images)
    assert list(outputs) == ["stack_1", "stack_2"]
    for name, want in expected.items():
        np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs[name]), want, atol=1e-5)
    final = final_stack_model(reloaded)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(final(images)), expected["stack_2"], atol=1e-5
    )
    # Everything trained is kept; only stack 1's fixed bilinear upsampling is left out.
    assert _trainable_count(final) == _trainable_count(model)


@pytest.mark.fast
def test_final_stack_model_rejects_other_models():
    image = keras.Input((8, 8, 3))
    plain = keras.Model(image, keras.layers.Conv2D(2, 1, name="logits")(image))
    with pytest.raises(SegkerasError, match="not a stacked hourglass"):
        final_stack_model(plain)


@pytest.mark.fast
def test_backbone_stem_is_the_nested_encoder_cut_at_p2():
    model = hourglass(3, num_stacks=2, depth=1, filters=8, backbone="mobilenetv2", weights=None,
                      input_shape=(64, 64, 3))
    encoder = model.get_layer("mobilenetv2_encoder")
    assert model.name == "hourglass2_mobilenetv2"
    assert list(encoder.output) == ["P2"]
    assert encoder.trainable_weights == []
    assert [tuple(o.shape) for o in model(_images(1, 64)).values()] == [(1, 64, 64, 3)] * 2
    trainable = hourglass(3, num_stacks=1, depth=1, filters=8, backbone="mobilenetv2",
                          weights=None, encoder_trainable=True, input_shape=(64, 64, 3))
    assert trainable.get_layer("mobilenetv2_encoder").trainable_weights


def _batchnorm_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def test_an_encoder_trained_from_scratch_trains_its_batchnorm():
    model = hourglass(3, num_stacks=1, depth=1, filters=8, backbone="mobilenetv2", weights=None,
                      encoder_trainable=True, input_shape=(64, 64, 3))
    norms = _batchnorm_layers(model.get_layer("mobilenetv2_encoder"))
    assert norms and all(norm.trainable for norm in norms)
    first = model.get_layer("mobilenetv2_encoder").get_layer("bn_Conv1")
    before = [keras.ops.convert_to_numpy(w).copy() for w in (first.gamma, first.moving_mean)]
    model.compile(keras.optimizers.SGD(0.1), loss=train.default_loss())
    model.train_on_batch(_images(2, 64), train.targets_for_outputs(model, _masks(2, 64)))
    after = [keras.ops.convert_to_numpy(w) for w in (first.gamma, first.moving_mean)]
    assert not np.allclose(before[0], after[0])  # gamma learned
    assert not np.allclose(before[1], after[1])  # batch statistics tracked


@pytest.mark.fast
def test_an_encoder_model_is_used_as_it_is():
    encoder = backbones.build_encoder("mobilenetv2", (64, 64, 3), weights=None)
    model = hourglass(3, backbone=encoder, num_stacks=1, depth=1, filters=8)
    nested = model.get_layer("mobilenetv2_encoder")
    assert model.name == "hourglass1_mobilenetv2"
    assert tuple(model.input.shape[1:]) == (64, 64, 3)
    assert {id(w) for w in nested.weights} <= {id(w) for w in encoder.weights}
    assert nested.trainable_weights == []  # built frozen, kept frozen
    with pytest.raises(SegkerasError, match="contradicts the encoder's input shape"):
        hourglass(3, backbone=encoder, depth=1, filters=8, input_shape=(128, 128, 3))


@pytest.mark.fast
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_shape": (100, 100, 3)}, r"of 64 \(4 \* 2\*\*depth for depth=4\).*64 or 128"),
        ({"depth": 2, "input_shape": (48, 48, 3), "backbone": "vgg16"}, r"of 32 .*backbone"),
        ({"filters": 30}, "filters must be a multiple of 4.*28 or 32"),
        ({"num_stacks": 0}, "num_stacks must be an integer >= 1"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"num_classes": True}, "num_classes must be an integer >= 2"),
        ({"depth": 2.0}, "depth must be an integer >= 1"),
        ({"input_shape": (64, 64)}, r"\(H, W, 3\)"),
    ],
)
def test_invalid_arguments_are_rejected_with_a_hint(kwargs, message):
    with pytest.raises(SegkerasError, match=message):
        hourglass(**{"num_classes": 3, **kwargs})


@pytest.mark.fast
def test_sizes_that_are_multiples_of_the_hourglass_stride_are_accepted():
    model = hourglass(3, num_stacks=1, depth=2, filters=8, input_shape=(48, 80, 3))
    assert tuple(model.get_layer("stack_1").output.shape) == (None, 48, 80, 3)


@pytest.mark.fast
def test_outputs_are_bilinear_upsampled_logits_of_each_stack_borders_included():
    model = hourglass(3, num_stacks=2, **SMALL)
    images = _images(1, 32)
    for stack in (1, 2):
        head = keras.Model(model.input, model.get_layer(f"hg{stack}_logits").output)
        low = keras.ops.image.resize(head(images), (32, 32), interpolation="bilinear")
        high = model(images)[f"stack_{stack}"]
        np.testing.assert_allclose(keras.ops.convert_to_numpy(high),
                                   keras.ops.convert_to_numpy(low), atol=1e-5)
    assert model.get_layer("stack_2").trainable_weights == []


def _numpy_bilinear(x, factor):
    """Half-pixel bilinear upsampling, border clamped (tf.image.resize; torch: align_corners=False)
    in NumPy."""
    for axis in (1, 2):
        size = x.shape[axis]
        source = (np.arange(size * factor) + 0.5) / factor - 0.5
        low = np.clip(np.floor(source).astype(int), 0, size - 1)
        high = np.clip(low + 1, 0, size - 1)
        weight = np.clip(source - np.floor(source), 0, 1)
        weight = np.where(source < 0, 0.0, weight)  # before the first centre: the first value
        shape = [1] * x.ndim
        shape[axis] = -1
        x = (np.take(x, low, axis) * (1 - weight.reshape(shape))
             + np.take(x, high, axis) * weight.reshape(shape))
    return x


@pytest.mark.fast
@pytest.mark.parametrize("factor", [2, 4])
def test_bilinear_resize_matches_numpy_and_keeps_a_constant_map_constant(factor):
    logits = np.random.default_rng(2).normal(size=(2, 3, 5, 4)).astype("float32")
    resized = keras.ops.convert_to_numpy(BilinearResize(factor)(logits))
    np.testing.assert_allclose(resized, _numpy_bilinear(logits, factor), atol=1e-5)
    constant = np.full((1, 4, 4, 3), 2.5, "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(BilinearResize(factor)(constant)),
                               np.full((1, 4 * factor, 4 * factor, 3), 2.5), atol=1e-6)


@pytest.mark.fast
def test_a_constant_logit_map_reaches_every_output_pixel_unchanged():
    """Zero weights everywhere except the logits' bias: every output pixel, the border included,
    equals that bias (a zero-padded transposed convolution would fade the border)."""
    model = hourglass(3, num_stacks=1, depth=1, filters=8, input_shape=(16, 16, 3))
    model.set_weights([np.zeros_like(weight) for weight in model.get_weights()])
    model.get_layer("hg1_logits").bias.assign(np.array([1.0, -2.0, 3.0], "float32"))
    output = keras.ops.convert_to_numpy(model(_images(1, 16), training=False)["stack_1"])
    np.testing.assert_allclose(output, np.broadcast_to([1.0, -2.0, 3.0], output.shape),
                               atol=1e-6)


@pytest.mark.fast
def test_the_model_is_built_from_the_given_module():
    depths = []

    def single_level(x, depth, filters, name):
        depths.append(depth)
        low = keras.layers.MaxPooling2D(2, name=f"{name}_mine_pool")(x)
        low = keras.layers.UpSampling2D(2, name=f"{name}_mine_up")(low)
        return keras.layers.Add(name=f"{name}_mine_add")([x, low])

    model = hourglass(3, num_stacks=2, depth=2, filters=8, input_shape=(32, 32, 3),
                      module=single_level)
    assert depths == [2, 2]
    names = {layer.name for layer in model.layers}
    assert {"hg1_mine_pool", "hg2_mine_add"} <= names
    assert not any("_d1_" in name for name in names)
    default = hourglass(3, num_stacks=2, depth=2, filters=8, input_shape=(32, 32, 3))
    assert default.count_params() - model.count_params() == 2 * sum(
        keras.Model(i, hourglass_module(i, 2, 8, "x")).count_params()
        for i in [keras.Input((8, 8, 8))])


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow graph tracing")
def test_traces_as_a_tensorflow_graph_with_unknown_height_and_width():
    import tensorflow as tf

    model = hourglass(3, num_stacks=2, **SMALL)
    traced = tf.function(model).get_concrete_function(tf.TensorSpec((None, None, None, 3)))
    assert traced.structured_outputs["stack_2"].shape.as_list() == [None, None, None, 3]


def test_train_helpers_train_every_stack_from_one_mask_dataset():
    import tensorflow as tf

    masks = _masks(4)
    masks[:, :4] = 255  # ignored pixels must not break the losses or the metrics
    dataset = tf.data.Dataset.from_tensor_slices((_images(4), masks)).batch(2)
    model = hourglass(3, num_stacks=2, **SMALL)
    model.compile("adam", loss=train.per_output(model, train.default_loss()),
                  metrics=train.per_output(model, [segmentation_metrics(3) for _ in range(2)]),
                  run_eagerly=EAGER_IS_CHEAPER)
    history = model.fit(train.targets_for_outputs(model, dataset), epochs=1, verbose=0).history
    for name in ("stack_1", "stack_2"):
        assert np.isfinite(history[f"{name}_loss"][0])
        assert 0.0 <= history[f"{name}_mean_iou"][0] <= 1.0


def test_targets_and_loss_weights_per_output():
    model = hourglass(3, num_stacks=3, **SMALL)
    mask = _masks(1)
    targets = train.targets_for_outputs(model, mask)
    assert list(targets) == ["stack_1", "stack_2", "stack_3"]
    assert all(target is mask for target in targets.values())
    assert train.per_output(model, [0.5, 1, 2]) == {"stack_1": 0.5, "stack_2": 1, "stack_3": 2}


def test_frozen_backbone_stem_runs_in_inference_mode():
    """A frozen EfficientNet stem applies no Dropout, even when fit calls the model in training
    mode: two training-mode calls on the same batch give the same logits. (Its stochastic depth
    drops a whole image with probability 0.025 in block 2b: 128 images make a miss unlikely.)"""
    model = hourglass(3, backbone="efficientnetb0", num_stacks=1, depth=1, filters=16,
                      weights=None, encoder_trainable=False, input_shape=(32, 32, 3))
    images = np.random.default_rng(0).uniform(0, 255, (128, 32, 32, 3)).astype("float32")
    first = keras.ops.convert_to_numpy(model(images, training=True)["stack_1"])
    second = keras.ops.convert_to_numpy(model(images, training=True)["stack_1"])
    np.testing.assert_allclose(first, second, atol=1e-6)
