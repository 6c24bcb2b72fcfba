"""Stacked hourglass: outputs per stack, recursion depth, intermediate supervision, saving."""

import keras
import numpy as np
import pytest

from segkeras.errors import SegkerasError
from segkeras.models.hourglass import (
    final_stack_model,
    hourglass,
    hourglass_loss_weights,
    hourglass_losses,
    hourglass_metrics,
    output_names,
    repeat_targets,
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
    model.compile(keras.optimizers.SGD(0.5), loss=hourglass_losses(2),
                  loss_weights=hourglass_loss_weights(2, loss_weights), run_eagerly=True)
    before = {w.path: keras.ops.convert_to_numpy(w) for w in model.trainable_weights}
    model.train_on_batch(_images(), repeat_targets(_masks(), 2))
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


@pytest.mark.fast
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_shape": (100, 100, 3)}, r"of 64 \(4 \* 2\*\*depth for depth=4\).*64 or 128"),
        ({"depth": 2, "input_shape": (48, 48, 3), "backbone": "vgg16"}, r"of 32 .*backbone"),
        ({"filters": 30}, "filters must be a multiple of 4.*28 or 32"),
        ({"num_stacks": 0}, "num_stacks must be an integer >= 1"),
        ({"input_shape": (64, 64)}, r"\(H, W, 3\)"),
    ],
)
def test_invalid_arguments_are_rejected_with_a_hint(kwargs, message):
    with pytest.raises(SegkerasError, match=message):
        hourglass(3, **kwargs)


@pytest.mark.fast
def test_sizes_that_are_multiples_of_the_hourglass_stride_are_accepted():
    model = hourglass(3, num_stacks=1, depth=2, filters=8, input_shape=(48, 80, 3))
    assert tuple(model.get_layer("stack_1").output.shape) == (None, 48, 80, 3)


@pytest.mark.fast
def test_outputs_are_bilinear_upsampled_logits_of_each_stack():
    model = hourglass(3, num_stacks=2, **SMALL)
    images = _images(1, 32)
    for stack in (1, 2):
        name = f"stack_{stack}"
        head = keras.Model(model.input, model.get_layer(f"hg{stack}_logits").output)
        low = keras.ops.image.resize(head(images), (32, 32), interpolation="bilinear")
        high = model(images)[name]
        interior = (slice(None), slice(4, -4), slice(4, -4))  # the border pixels are zero-padded
        np.testing.assert_allclose(keras.ops.convert_to_numpy(high)[interior],
                                   keras.ops.convert_to_numpy(low)[interior], atol=1e-5)
    assert model.get_layer("stack_2").trainable_weights == []


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow graph tracing")
def test_traces_as_a_tensorflow_graph_with_unknown_height_and_width():
    import tensorflow as tf

    model = hourglass(3, num_stacks=2, **SMALL)
    traced = tf.function(model).get_concrete_function(tf.TensorSpec((None, None, None, 3)))
    assert traced.structured_outputs["stack_2"].shape.as_list() == [None, None, None, 3]


def test_compile_helpers_train_every_stack_from_one_mask_dataset():
    import tensorflow as tf

    masks = _masks(4)
    masks[:, :4] = 255  # ignored pixels must not break the losses or the metrics
    dataset = tf.data.Dataset.from_tensor_slices((_images(4), masks)).batch(2)
    model = hourglass(3, num_stacks=2, **SMALL)
    model.compile("adam", loss=hourglass_losses(2), loss_weights=hourglass_loss_weights(2),
                  metrics=hourglass_metrics(3, 2), run_eagerly=True)
    history = model.fit(repeat_targets(dataset, 2), epochs=1, verbose=0).history
    for name in ("stack_1", "stack_2"):
        assert np.isfinite(history[f"{name}_loss"][0])
        assert 0.0 <= history[f"{name}_mean_iou"][0] <= 1.0


def test_repeat_targets_and_loss_weights():
    mask = _masks(1)
    targets = repeat_targets(mask, 3)
    assert list(targets) == ["stack_1", "stack_2", "stack_3"]
    assert all(target is mask for target in targets.values())
    assert hourglass_loss_weights(2, [0.5, 1]) == {"stack_1": 0.5, "stack_2": 1.0}
    with pytest.raises(SegkerasError, match="Need 3 non-negative loss weights"):
        hourglass_loss_weights(3, [1.0, 1.0])
