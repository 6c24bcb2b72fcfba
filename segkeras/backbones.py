"""ImageNet-pretrained encoders from ``keras.applications`` with one feature API.

``build_encoder(name, ...)`` returns a ``keras.Model`` mapping raw RGB in [0, 255] to a dict of
feature maps ``{"P1": stride 2, "P2": 4, "P3": 8, "P4": 16, "P5": 32}``: at each stride the deepest
feature map of the backbone, picked by ``keras.applications`` layer name (never by index). The
backbone's own preprocessing is inside the model, so every head feeds it the same images.

Transfer learning freezes the encoder and trains the head; fine-tuning then unfreezes (part of) the
encoder at a lower learning rate. See :func:`freeze` and :func:`unfreeze` for Keras 3 semantics.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import keras

from segkeras.data.core import nearest_multiples
from segkeras.errors import SegkerasError, WeightsUnavailableError
from segkeras.layers import Preprocess

LEVELS = ("P1", "P2", "P3", "P4", "P5")
STRIDES = {"P1": 2, "P2": 4, "P3": 8, "P4": 16, "P5": 32}
ENCODER_SUFFIX = "_encoder"
# keras.applications.MobileNetV2 ships ImageNet weights for these square input sizes only.
_MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)


@dataclass(frozen=True)
class Backbone:
    """How to build one ``keras.applications`` backbone and where its P1..P4 features are.

    A tap is a layer name (its output), ``"input:NAME"`` (the input of layer NAME: used where the
    deepest feature is an unnamed activation, as in MobileNetV3, whose strided blocks start with a
    named padding layer), or ``"avgpool:NAME"`` (a 2x2 average pool of NAME, for ConvNeXt, whose
    4x4 patchify stem has no stride-2 layer at all). P5 is always the backbone's final output.
    """

    constructor: str
    preprocessing: str
    taps: tuple[str, str, str, str]
    weights_file: Callable[[tuple], str]

    def build(self, **kwargs) -> keras.Model:
        with warnings.catch_warnings():
            # MobileNet's "weights for input shape (224, 224) will be loaded as the default":
            # right for a headless encoder (its convolution weights fit any size), so not shown.
            warnings.filterwarnings("ignore", message=r"`input_shape` is undefined or non-square")
            return getattr(keras.applications, self.constructor)(include_top=False, **kwargs)


def _fixed(file_name: str) -> Callable[[tuple], str]:
    return lambda input_shape: file_name


def _mobilenet_v2_file(input_shape: tuple) -> str:
    rows, cols = input_shape[0], input_shape[1]
    size = rows if rows == cols and rows in _MOBILENET_V2_SIZES else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5"


def _tf_kernels(prefix: str) -> Callable[[tuple], str]:
    return _fixed(f"{prefix}_weights_tf_dim_ordering_tf_kernels_notop.h5")


_REGISTRY: dict[str, Backbone] = {
    "vgg16": Backbone(
        "VGG16", "caffe", ("block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"),
        _tf_kernels("vgg16")),
    "vgg19": Backbone(
        "VGG19", "caffe", ("block2_conv2", "block3_conv4", "block4_conv4", "block5_conv4"),
        _tf_kernels("vgg19")),
    "resnet50": Backbone(
        "ResNet50", "caffe",
        ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"),
        _tf_kernels("resnet50")),
    "resnet101": Backbone(
        "ResNet101", "caffe",
        ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block23_out"),
        _tf_kernels("resnet101")),
    # ResNetV2 downsamples inside the last block of each stage; its pre-activation is the deepest
    # full-width feature map before the stride.
    "resnet50v2": Backbone(
        "ResNet50V2", "tf",
        ("conv1_conv", "conv2_block3_preact_relu", "conv3_block4_preact_relu",
         "conv4_block6_preact_relu"),
        _tf_kernels("resnet50v2")),
    "mobilenetv2": Backbone(
        "MobileNetV2", "tf",
        ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
         "block_13_expand_relu"),
        _mobilenet_v2_file),
    "mobilenetv3small": Backbone(
        "MobileNetV3Small", "none",
        ("input:expanded_conv_depthwise_pad", "input:expanded_conv_1_depthwise_pad",
         "input:expanded_conv_3_depthwise_pad", "input:expanded_conv_8_depthwise_pad"),
        _fixed("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5")),
    "mobilenetv3large": Backbone(
        "MobileNetV3Large", "none",
        ("input:expanded_conv_1_depthwise_pad", "input:expanded_conv_3_depthwise_pad",
         "input:expanded_conv_6_depthwise_pad", "input:expanded_conv_12_depthwise_pad"),
        _fixed("weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5")),
    "efficientnetb0": Backbone(
        "EfficientNetB0", "none",
        ("block2a_expand_activation", "block3a_expand_activation", "block4a_expand_activation",
         "block6a_expand_activation"),
        _fixed("efficientnetb0_notop.h5")),
    "efficientnetb3": Backbone(
        "EfficientNetB3", "none",
        ("block2a_expand_activation", "block3a_expand_activation", "block4a_expand_activation",
         "block6a_expand_activation"),
        _fixed("efficientnetb3_notop.h5")),
    "efficientnetv2b0": Backbone(
        "EfficientNetV2B0", "none",
        ("block1a_project_activation", "block2b_add", "block4a_expand_activation",
         "block6a_expand_activation"),
        _fixed("efficientnetv2-b0_notop.h5")),
    "densenet121": Backbone(
        "DenseNet121", "torch", ("conv1_relu", "pool2_conv", "pool3_conv", "pool4_conv"),
        _tf_kernels("densenet121")),
    "convnexttiny": Backbone(
        "ConvNeXtTiny", "none",
        ("avgpool:convnext_tiny_prestem_normalization", "convnext_tiny_stage_0_block_2_identity",
         "convnext_tiny_stage_1_block_2_identity", "convnext_tiny_stage_2_block_8_identity"),
        _fixed("convnext_tiny_notop.h5")),
}


def available() -> list[str]:
    """Names accepted by :func:`build_encoder`, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> Backbone:
    """The registry entry for ``name``; unknown names get a did-you-mean error."""
    key = name.lower().replace("_", "").replace("-", "")
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, _REGISTRY, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise SegkerasError(f"Unknown backbone {name!r}.{hint} Available: {', '.join(available())}.")


def weights_cache_dir() -> str:
    """The folder where ``keras.utils.get_file`` caches ImageNet weights
    (``$KERAS_HOME/models``)."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return os.path.join(home, "models")


def weights_file(name: str, input_shape: tuple = (None, None, 3)) -> str:
    """Path where the ImageNet weights of ``name`` are (or will be) cached."""
    return os.path.join(weights_cache_dir(), get(name).weights_file(tuple(input_shape)))


def weights_cached(name: str, input_shape: tuple = (None, None, 3)) -> bool:
    """Whether the ImageNet weights of ``name`` are already downloaded."""
    return os.path.exists(weights_file(name, input_shape))


def check_input_shape(input_shape: tuple, stride: int = 32) -> tuple:
    """Validate ``(H, W, 3)``: H and W are None or positive multiples of ``stride``."""
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise SegkerasError(
            f"input_shape must be (H, W, 3) for RGB images, got {tuple(input_shape)}.")
    for axis, size in zip("HW", input_shape[:2], strict=True):
        if size is None:
            continue
        if size <= 0 or size % stride:
            nearest = nearest_multiples(size, stride)
            raise SegkerasError(
                f"{axis}={size} is not a {'' if size > 0 else 'positive '}multiple of the "
                f"encoder stride {stride}; "
                f"use {' or '.join(map(str, nearest))} (or None for any size)."
            )
    return tuple(input_shape)


def _tap(base: keras.Model, spec: str):
    kind, _, layer_name = spec.rpartition(":")
    if kind == "input":
        return base.get_layer(layer_name).input
    if kind == "avgpool":
        pool = keras.layers.AveragePooling2D(2, name="P1_avgpool")
        return pool(base.get_layer(layer_name).output)
    return base.get_layer(layer_name).output


def _build_backbone(entry: Backbone, name: str, image, input_shape: tuple, weights) -> keras.Model:
    """The keras.applications model on top of ``image``, with offline errors made readable."""
    if weights not in ("imagenet", None) and not os.path.isfile(str(weights)):
        raise SegkerasError(
            f"weights={weights!r} is neither 'imagenet', None nor an existing weights file; "
            "pass one of those."
        )
    needed = weights_file(name, input_shape)
    try:
        return entry.build(input_tensor=image, weights=weights)
    except Exception as error:  # keras' get_file wraps network failures in a bare Exception.
        if weights != "imagenet" or os.path.exists(needed):
            raise
        raise WeightsUnavailableError(
            f"Cannot download ImageNet weights for {name!r} (no network?): "
            f"{os.path.basename(needed)} "
            f"is not in {os.path.dirname(needed)}. Put that file there, or pass weights=None "
            f"(random initialisation) or weights='/path/to/{os.path.basename(needed)}'."
        ) from error


def build_encoder(
    name: str,
    input_shape: tuple = (None, None, 3),
    weights: str | None = "imagenet",
    trainable: bool = False,
) -> keras.Model:
    """A pretrained encoder returning ``{"P1": ..., "P5": ...}`` at strides 2, 4, 8, 16, 32.

    Args:
        name: a name from :func:`available`, e.g. ``"mobilenetv2"``.
        input_shape: ``(H, W, 3)``; H and W must be multiples of 32 or None.
        weights: ``"imagenet"`` (downloaded once by Keras and cached), ``None`` (random
            initialisation) or the path to a weights file for this backbone (e.g. the Keras
            ImageNet ``.h5`` file fetched by hand, or one written by ``encoder.save_weights``).
        trainable: whether the encoder starts trainable (fine-tuning) or frozen (transfer learning).
            A trainable pretrained encoder keeps its BatchNorm layers frozen (see :func:`unfreeze`);
            a trainable randomly initialised one (``weights=None``) trains them too, with momentum
            0.99 (see :func:`train_from_scratch`).

    Returns:
        A ``keras.Model`` named ``"<name>_encoder"`` taking raw RGB in [0, 255].
    """
    entry = get(name)
    key = name.lower().replace("_", "").replace("-", "")
    input_shape = check_input_shape(tuple(input_shape))
    image = keras.Input(shape=input_shape, name="image")
    preprocessed = Preprocess(entry.preprocessing, name="preprocess")(image)
    base = _build_backbone(entry, key, preprocessed, input_shape, weights)
    features = {level: _tap(base, spec) for level, spec in zip(LEVELS, entry.taps, strict=False)}
    features["P5"] = base.output
    encoder = keras.Model(image, features, name=key + ENCODER_SUFFIX)
    if trainable and weights is None:
        train_from_scratch(encoder)
    elif trainable:
        unfreeze(encoder)
    else:
        freeze(encoder)
    return encoder


def feature_layer_names(encoder: keras.Model) -> dict[str, str]:
    """The layer that produces each P-level of an encoder (for tables and teaching)."""
    names = {}
    for level, tensor in encoder.output.items():
        history = getattr(tensor, "_keras_history", None)
        names[level] = history[0].name if history else "?"
    return names


def find_encoder(model: keras.Model) -> keras.Model:
    """The encoder nested in a segmentation model (the layer named ``*_encoder``)."""
    if model.name.endswith(ENCODER_SUFFIX):
        return model
    for layer in model.layers:
        if layer.name.endswith(ENCODER_SUFFIX):
            return layer
    raise SegkerasError(
        f"Model {model.name!r} has no '*{ENCODER_SUFFIX}' layer; build it with segkeras.models."
    )


def freeze(model: keras.Model) -> keras.Model:
    """Make every weight of ``model`` non-trainable (transfer learning).

    Keras 3: a layer with ``trainable=False`` is excluded from gradient updates, and a
    non-trainable ``BatchNormalization`` also runs in inference mode (it uses and keeps its moving
    mean and variance, even inside ``fit``). Recompile the model after changing ``trainable``.
    """
    model.trainable = False
    return model


def unfreeze(
    encoder: keras.Model, from_layer: str | None = None, keep_batchnorm_frozen: bool = True
) -> keras.Model:
    """Make the encoder trainable again for fine-tuning.

    Args:
        encoder: the encoder (or any model).
        from_layer: if given, only this layer and those after it become trainable (fine-tune
            the top of the network, keep generic early features fixed).
        keep_batchnorm_frozen: keep ``BatchNormalization`` layers non-trainable. In Keras 3 that
            also keeps them in inference mode, so small fine-tuning batches do not wreck the
            ImageNet statistics: the standard fine-tuning advice.

    Recompile the model (with a lower learning rate) after calling this.
    """
    encoder.trainable = True
    layers = encoder.layers
    if from_layer is not None:
        names = [layer.name for layer in layers]
        if from_layer not in names:
            close = difflib.get_close_matches(from_layer, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SegkerasError(f"No layer {from_layer!r} in {encoder.name!r}.{hint}")
        for layer in layers[: names.index(from_layer)]:
            layer.trainable = False
    if keep_batchnorm_frozen:
        for layer in layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    return encoder


def train_from_scratch(encoder: keras.Model, momentum: float = 0.99) -> keras.Model:
    """Make a randomly initialised encoder trainable, BatchNorm included.

    There are no ImageNet statistics to protect, so BatchNorm trains (a frozen one would sit at
    its initial mean 0 and variance 1 and normalise nothing). Its momentum is capped at
    ``momentum``: the 0.999 of some ``keras.applications`` models leaves the moving statistics,
    used at inference, near their initial values for thousands of steps.
    """
    unfreeze(encoder, keep_batchnorm_frozen=False)
    for layer in encoder.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = min(layer.momentum, momentum)
    return encoder


def table(input_size: int = 64) -> str:
    """A text table: name, parameters, the layer behind each P-level, ImageNet weights cached."""
    header = ("backbone", "params", *LEVELS, "imagenet cached")
    rows = [header]
    for name in available():
        entry = _REGISTRY[name]
        encoder = build_encoder(name, (input_size, input_size, 3), weights=None)
        taps = [*entry.taps, "(final output)"]
        cached = "yes" if weights_cached(name, (input_size, input_size, 3)) else "no"
        rows.append((name, f"{encoder.count_params() / 1e6:.1f}M", *taps, cached))
        keras.backend.clear_session()
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"ImageNet weights cache: {weights_cache_dir()}")
    return "\n".join(lines)
