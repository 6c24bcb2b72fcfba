"""The backbone table: strides, preprocessing, weights handling, freezing and bad input."""

import os
import socket

import keras
import numpy as np
import pytest

from segkeras import backbones
from segkeras.errors import SegkerasError, WeightsUnavailableError
from segkeras.layers import Preprocess

REQUIRED = {
    "vgg16", "vgg19", "resnet50", "resnet101", "resnet50v2", "mobilenetv2", "mobilenetv3small",
    "mobilenetv3large", "efficientnetb0", "efficientnetb3", "efficientnetv2b0", "densenet121",
    "convnexttiny",
}


def test_registry_has_the_required_backbones():
    assert REQUIRED <= set(backbones.available())


# Building every backbone is quick on TensorFlow but slow on JAX/PyTorch (eager weight
# initialisation), so the cross-backend run checks a representative few.
CROSS_BACKEND = {"mobilenetv2", "mobilenetv3small", "resnet50v2", "vgg16"}
EVERY_BACKBONE = [
    pytest.param(n, marks=pytest.mark.fast) if n in CROSS_BACKEND else n
    for n in backbones.available()
]


SIZE = 64


@pytest.fixture(scope="module", params=EVERY_BACKBONE)
def built(request):
    """(name, encoder at SIZE x SIZE, random weights): each backbone built once for the tests
    that read it (building is most of their time)."""
    yield request.param, backbones.build_encoder(request.param, (SIZE, SIZE, 3), weights=None)
    keras.backend.clear_session()


def test_every_level_has_its_stride(built):
    name, encoder = built
    assert encoder.name == f"{name}_encoder"
    assert sorted(encoder.output) == list(backbones.LEVELS)
    for level, stride in backbones.STRIDES.items():
        shape = tuple(encoder.output[level].shape)
        assert shape[1:3] == (SIZE // stride, SIZE // stride), (name, level, shape)


def _stage_outputs(model: keras.Model, size: int) -> tuple[dict, dict]:
    """The stage outputs of ``model`` (input ``size`` x ``size``), from its graph alone.

    A stage boundary is a tensor every path from the input to the final output goes through (a
    "cut"; a residual block's inner tensors are bypassed by its shortcut and are not). Along the
    cuts the resolution changes by either a learned strided block, which opens the next stage
    (the stage output is the last cut before it), or a parameter-free pooling, which closes the
    stage (its output is the stage output). Returns ``{stride: expected tensor or None}`` (None:
    no tensor at that stride) and ``{stride: last cut at that stride}``.
    """
    producer, parents = {}, {}
    for op in model.operations:
        inputs = [] if isinstance(op, keras.layers.InputLayer) else keras.tree.flatten(op.input)
        for tensor in keras.tree.flatten(op.output):
            producer[id(tensor)] = (op, tensor)
            parents[id(tensor)] = [id(parent) for parent in inputs]
    order, seen, stack = [], set(), [(id(model.output["P5"]), False)]
    while stack:  # depth-first post-order over the final output's ancestors: topological order
        node, done = stack.pop()
        if done:
            order.append(node)
        elif node not in seen:
            seen.add(node)
            stack += [(node, True)] + [(parent, False) for parent in parents[node]]
    position = {node: i for i, node in enumerate(order)}
    jumps = np.zeros(len(order) + 1, int)  # edge u -> v bypasses every tensor strictly between
    for node in order:
        for parent in parents[node]:
            jumps[position[parent] + 1] += 1
            jumps[position[node]] -= 1
    cuts = [node for node, open_edges in zip(order, np.cumsum(jumps), strict=False)
            if open_edges == 0]

    def stride(node):
        height, width = producer[node][1].shape[1:3]
        return size // height if height == width and size % height == 0 else None  # not padded

    strided = [(node, stride(node)) for node in cuts if stride(node)]
    learned = {}  # stride -> whether the change of resolution into it has weights
    for (before, old), (after, new) in zip(strided, strided[1:], strict=False):
        if new != old:
            between = order[position[before] + 1: position[after] + 1]
            learned[new] = any(getattr(producer[node][0], "weights", None) for node in between)
    expected, last = {}, {}
    for s in sorted({s for _, s in strided}):
        at = [node for node, s_node in strided if s_node == s]
        last[s] = producer[at[-1]][1]
        closed_by_pool = [at[0]] if s in learned and not learned[s] else []
        next_stride = min((t for t in learned if t > s), default=None)
        opened_by_block = [at[-1]] if next_stride and learned[next_stride] else []
        expected[s] = producer[(closed_by_pool + opened_by_block or at)[-1]][1]
    return {s: expected.get(s) for s in (2, 4, 8, 16)}, last


def _producer_name(model, tensor):
    return next(op.name for op in model.operations
                if any(out is tensor for out in keras.tree.flatten(op.output)))


def test_every_level_is_the_output_of_its_stage(built):
    name, encoder = built
    expected, last = _stage_outputs(encoder, SIZE)
    for level in backbones.LEVELS[:-1]:
        stride, tap = backbones.STRIDES[level], encoder.output[level]
        if expected[stride] is None:  # the backbone skips this stride: pool the finer stage
            pool = next(op for op in encoder.operations if op.output is tap)
            assert isinstance(pool, keras.layers.AveragePooling2D), (name, level, pool.name)
            assert pool.input is last[stride // 2], (name, level)
            continue
        assert tap is expected[stride], (
            f"{name} {level}: taps {_producer_name(encoder, tap)}, but the stage output at "
            f"stride {stride} is {_producer_name(encoder, expected[stride])}")


@pytest.mark.fast
def test_stage_outputs_of_vgg16_and_resnet50_are_the_textbook_ones():
    """The graph rule above, checked against the papers' own stage ends."""
    for name, textbook in [
        ("vgg16", ["block1_pool", "block2_pool", "block3_pool", "block4_pool"]),
        ("resnet50", ["conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"]),
    ]:
        encoder = backbones.build_encoder(name, (64, 64, 3), weights=None)
        expected, _ = _stage_outputs(encoder, 64)
        assert [_producer_name(encoder, expected[s]) for s in (2, 4, 8, 16)] == textbook
        keras.backend.clear_session()


def test_every_backbone_runs_on_raw_images(built):
    _, encoder = built
    features = encoder(np.random.uniform(0, 255, (1, SIZE, SIZE, 3)).astype("float32"))
    for level, stride in backbones.STRIDES.items():
        assert tuple(features[level].shape)[:3] == (1, SIZE // stride, SIZE // stride)
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(features[level])))


@pytest.mark.fast
def test_dynamic_input_size_gives_strided_maps():
    encoder = backbones.build_encoder("mobilenetv2", weights=None)
    features = encoder(np.zeros((2, 96, 160, 3), "float32"))
    assert tuple(features["P3"].shape) == (2, 12, 20, 192)
    assert tuple(features["P5"].shape[:3]) == (2, 3, 5)


@pytest.mark.fast
@pytest.mark.parametrize(
    "mode, expected",
    [
        ("caffe", lambda x: x[..., ::-1] - np.array([103.939, 116.779, 123.68])),
        ("tf", lambda x: x / 127.5 - 1.0),
        ("torch", lambda x: (x / 255.0 - np.array([0.485, 0.456, 0.406]))
         / np.array([0.229, 0.224, 0.225])),
        ("none", lambda x: x),
    ],
)
def test_preprocess_matches_keras_applications_conventions(mode, expected):
    images = np.random.uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    got = keras.ops.convert_to_numpy(Preprocess(mode)(images))
    np.testing.assert_allclose(got, expected(images), rtol=1e-5, atol=1e-4)


def test_preprocess_agrees_with_keras_preprocess_input():
    images = np.random.uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    reference = keras.applications.vgg16.preprocess_input(images.copy())
    got = keras.ops.convert_to_numpy(Preprocess("caffe")(images))
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-4)


def test_weights_from_a_path_round_trip(tmp_path):
    first = backbones.build_encoder("mobilenetv3small", (64, 64, 3), weights=None)
    path = str(tmp_path / "encoder.weights.h5")
    first.save_weights(path)
    second = backbones.build_encoder("mobilenetv3small", (64, 64, 3), weights=path)
    assert len(first.weights) == len(second.weights)
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    third = backbones.build_encoder("mobilenetv3small", (64, 64, 3), weights=None)
    differs = [
        not np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(c))
        for a, c in zip(first.weights, third.weights, strict=True)
    ]
    assert any(differs), "a fresh random encoder should not equal the saved one"


def test_offline_imagenet_gives_a_clear_error(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable (simulated)")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    needed = backbones.weights_file("mobilenetv2", (128, 128, 3))
    assert not os.path.exists(needed)
    with pytest.raises(WeightsUnavailableError) as info:
        backbones.build_encoder("mobilenetv2", (128, 128, 3), weights="imagenet")
    message = str(info.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_128_no_top.h5" in message
    assert os.path.dirname(needed) in message
    assert "weights=None" in message and "\n" not in message


def test_missing_weights_path_is_rejected(tmp_path):
    with pytest.raises(SegkerasError, match="neither 'imagenet', None nor an existing"):
        backbones.build_encoder("vgg16", (64, 64, 3), weights=str(tmp_path / "nope.h5"))


def _trainable_count(model):
    return len(model.trainable_weights)


def test_freeze_and_unfreeze_change_trainable_weights():
    encoder = backbones.build_encoder("mobilenetv2", (64, 64, 3), weights=None)
    assert _trainable_count(encoder) == 0, "encoders start frozen (transfer learning)"
    batchnorm = [
        layer for layer in encoder.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    batchnorm_weights = sum(len(layer.trainable_weights) for layer in batchnorm)

    backbones.unfreeze(encoder, keep_batchnorm_frozen=False)
    everything = _trainable_count(encoder)
    assert everything == len(encoder.weights) - 2 * len(batchnorm)  # moving mean/var never train

    backbones.unfreeze(encoder)  # BatchNorm stays frozen by default
    assert all(not layer.trainable for layer in batchnorm)
    assert _trainable_count(encoder) == everything - 2 * len(batchnorm)
    assert batchnorm_weights == 0

    backbones.unfreeze(encoder, from_layer="block_13_expand")
    names = [layer.name for layer in encoder.layers]
    start = names.index("block_13_expand")
    assert not any(layer.trainable for layer in encoder.layers[:start] if layer.weights)
    assert encoder.get_layer("block_13_expand").trainable
    partial = _trainable_count(encoder)
    assert 0 < partial < everything

    backbones.freeze(encoder)
    assert _trainable_count(encoder) == 0


@pytest.mark.fast
def test_trainable_encoders_freeze_batchnorm_only_when_pretrained(tmp_path):
    def batchnorm(encoder):
        return [layer for layer in encoder.layers
                if isinstance(layer, keras.layers.BatchNormalization)]

    scratch = backbones.build_encoder("mobilenetv2", (64, 64, 3), weights=None, trainable=True)
    assert all(layer.trainable and layer.momentum == 0.99 for layer in batchnorm(scratch))
    path = str(tmp_path / "encoder.weights.h5")
    scratch.save_weights(path)
    pretrained = backbones.build_encoder("mobilenetv2", (64, 64, 3), weights=path, trainable=True)
    assert pretrained.trainable_weights, "the convolutions fine-tune"
    assert not any(layer.trainable for layer in batchnorm(pretrained)), "statistics are kept"


def test_unfreeze_unknown_layer_suggests_a_name():
    encoder = backbones.build_encoder("mobilenetv2", (64, 64, 3), weights=None)
    with pytest.raises(SegkerasError, match="block_13_expand"):
        backbones.unfreeze(encoder, from_layer="block_13_expnd")


def test_unknown_backbone_lists_names_with_did_you_mean():
    with pytest.raises(SegkerasError) as info:
        backbones.build_encoder("resnet5O", weights=None)
    message = str(info.value)
    assert "Did you mean 'resnet50'" in message
    assert all(name in message for name in REQUIRED)


@pytest.mark.parametrize(
    "shape, nearest",
    [((100, 128, 3), "96 or 128"), ((64, 20, 3), "32"), ((224, 230, 3), "224 or 256")],
)
def test_sizes_not_multiple_of_32_name_the_nearest_valid_sizes(shape, nearest):
    with pytest.raises(SegkerasError, match=f"use {nearest}"):
        backbones.build_encoder("vgg16", shape, weights=None)


def test_non_rgb_input_is_rejected():
    with pytest.raises(SegkerasError, match=r"\(H, W, 3\)"):
        backbones.build_encoder("vgg16", (64, 64, 1), weights=None)


def test_find_encoder_inside_a_model():
    encoder = backbones.build_encoder("mobilenetv3small", (64, 64, 3), weights=None)
    image = keras.Input((64, 64, 3))
    logits = keras.layers.Conv2D(2, 1)(encoder(image)["P5"])
    model = keras.Model(image, logits)
    assert backbones.find_encoder(model) is encoder
    with pytest.raises(SegkerasError, match="no '\\*_encoder' layer"):
        backbones.find_encoder(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]))
