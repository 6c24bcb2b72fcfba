"""ImageNet-pretrained encoders from ``keras.applications`` with one feature API.

``build_encoder(name, ...)`` returns a ``keras.Model`` mapping raw RGB in [0, 255] to a dict of
feature maps ``{"P1": stride 2, "P2": 4, "P3": 8, "P4": 16, "P5": 32}``. The backbone's own
preprocessing is inside the model, so every head feeds it the same images.

Each P-level is a **stage output**: the tensor at that stride that the next stage consumes (P5:
the backbone's final output), never an inner branch of a block. The registry names that tensor
explicitly with a :class:`Tap` (a ``keras.applications`` layer's output, or its input where the
tensor comes from an unnamed layer). Where a stage ends depends on how the family downsamples:

* a stage that closes with a pooling layer (VGG's ``blockN_pool``, DenseNet's stem max-pool and
  transition average pools): the pool's output, e.g. VGG's P3/P4 = pool3/pool4 as in FCN;
* a stage opened by a learned strided layer (ResNet, ResNetV2, MobileNet, EfficientNet,
  ConvNeXt): the tensor that layer's block reads, i.e. the output of the last block before it.
  ResNetV2 strides in the last block of a stage, so its P-level is the block before that one.
  MobileNet/EfficientNet blocks that downsample have no shortcut: the expanded activation their
  strided depthwise convolution reads is the tensor the whole block depends on;
* no stage ends at that stride (ResNet's and DenseNet's stride-2 convolution is followed by a
  max-pool at once): the deepest tensor at the stride, the one the pool reads; none at all
  (ConvNeXt's 4x4 patchify stem): a 2x2 average pool of the stride-1 input.

``tests/test_backbones.py`` derives these stage outputs from each ``keras.applications`` graph
(the tensors every path goes through, where the resolution changes) and checks every tap.

Transfer learning freezes the encoder and trains the head; fine-tuning then unfreezes (part of) the
encoder at a lower learning rate. See :func:`freeze` and :func:`unfreeze` for Keras 3 semantics.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

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
class Tap:
    """Where one P-level is in a ``keras.applications`` model: the output of ``layer``, or its
    input (``which="input"``: for a tensor made by an unnamed layer or operation), average-pooled
    ``avg_pool`` x ``avg_pool`` if given (a stride the backbone skips)."""

    layer: str
    which: Literal["output", "input"] = "output"
    avg_pool: int | None = None

    def __post_init__(self):
        if self.which not in ("output", "input"):
            raise ValueError(f"Tap.which must be 'output' or 'input', got {self.which!r}.")

    def tensor(self, base: keras.Model, level: str) -> keras.KerasTensor:
        """The tapped tensor of ``base`` (a new pooling layer named ``"<level>_avgpool"``)."""
        layer = base.get_layer(self.layer)
        tensor = layer.input if self.which == "input" else layer.output
        if self.avg_pool:
            tensor = keras.layers.AveragePooling2D(self.avg_pool, name=f"{level}_avgpool")(tensor)
        return tensor

    def __str__(self) -> str:
        text = self.layer if self.which == "output" else f"input of {self.layer}"
        return f"avgpool{self.avg_pool}({text})" if self.avg_pool else text


@dataclass(frozen=True)
class Backbone:
    """How to build one ``keras.applications`` backbone and where its P1..P4 stage outputs are
    (see the module docstring for the rule). P5 is always the backbone's final output."""

    constructor: str
    preprocessing: str
    taps: tuple[Tap, Tap, Tap, Tap]
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


def _output(layer: str) -> Tap:
    return Tap(layer)


def _input_of(layer: str) -> Tap:
    return Tap(layer, which="input")


_VGG_POOLS = tuple(_output(f"block{k}_pool") for k in range(1, 5))
_EFFICIENTNET_TAPS = tuple(
    _output(f"block{block}_expand_activation") for block in ("2a", "3a", "4a", "6a"))

_REGISTRY: dict[str, Backbone] = {
    # Stages close with a max-pool: P1..P4 = pool1..pool4 (the pool3/pool4 of FCN).
    "vgg16": Backbone("VGG16", "caffe", _VGG_POOLS, _tf_kernels("vgg16")),
    "vgg19": Backbone("VGG19", "caffe", _VGG_POOLS, _tf_kernels("vgg19")),
    # A strided first block opens each stage: the last block's output of the stage before.
    "resnet50": Backbone(
        "ResNet50", "caffe",
        tuple(map(_output, ("conv1_relu", "conv2_block3_out", "conv3_block4_out",
                            "conv4_block6_out"))),
        _tf_kernels("resnet50")),
    "resnet101": Backbone(
        "ResNet101", "caffe",
        tuple(map(_output, ("conv1_relu", "conv2_block3_out", "conv3_block4_out",
                            "conv4_block23_out"))),
        _tf_kernels("resnet101")),
    # ResNetV2 strides in the last block of a stage: the output of the block before it (the
    # block's pre-activation is an inner branch: its shortcut bypasses it).
    "resnet50v2": Backbone(
        "ResNet50V2", "tf",
        tuple(map(_output, ("conv1_conv", "conv2_block2_out", "conv3_block3_out",
                            "conv4_block5_out"))),
        _tf_kernels("resnet50v2")),
    # Inverted residuals that downsample have no shortcut: the expanded activation that their
    # strided depthwise convolution reads is the last tensor at the stride.
    "mobilenetv2": Backbone(
        "MobileNetV2", "tf",
        tuple(_output(f"block_{k}_expand_relu") for k in (1, 3, 6, 13)),
        _mobilenet_v2_file),
    # The same, but the expanded activation is an unnamed layer: the input of the named padding.
    "mobilenetv3small": Backbone(
        "MobileNetV3Small", "none",
        tuple(_input_of(f"expanded_conv{k}_depthwise_pad") for k in ("", "_1", "_3", "_8")),
        _fixed("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5")),
    "mobilenetv3large": Backbone(
        "MobileNetV3Large", "none",
        tuple(_input_of(f"expanded_conv_{k}_depthwise_pad") for k in (1, 3, 6, 12)),
        _fixed("weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5")),
    "efficientnetb0": Backbone(
        "EfficientNetB0", "none", _EFFICIENTNET_TAPS, _fixed("efficientnetb0_notop.h5")),
    "efficientnetb3": Backbone(
        "EfficientNetB3", "none", _EFFICIENTNET_TAPS, _fixed("efficientnetb3_notop.h5")),
    # Fused blocks stride in their first (expanding) convolution, which reads the stage output.
    "efficientnetv2b0": Backbone(
        "EfficientNetV2B0", "none",
        tuple(map(_output, ("block1a_project_activation", "block2b_add",
                            "block4a_expand_activation", "block6a_expand_activation"))),
        _fixed("efficientnetv2-b0_notop.h5")),
    # Stages close with a pooling (the stem's max-pool, then each transition's average pool).
    "densenet121": Backbone(
        "DenseNet121", "torch",
        tuple(map(_output, ("conv1_relu", "pool1", "pool2_pool", "pool3_pool"))),
        _tf_kernels("densenet121")),
    # Each stage ends in an unnamed residual sum: the input of the next downsampling block. The
    # 4x4 patchify stem leaves no stride-2 tensor: P1 is the 2x2 average of the input.
    "convnexttiny": Backbone(
        "ConvNeXtTiny", "none",
        (Tap("convnext_tiny_prestem_normalization", avg_pool=2),
         *(_input_of(f"convnext_tiny_downsampling_block_{k}") for k in range(3))),
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


def _weights_file_error(path: str, name: str, error: Exception) -> SegkerasError:
    """One line for a weights file Keras cannot load into backbone ``name``."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if isinstance(error, OSError):  # h5py: not an HDF5 file
        return SegkerasError(
            f"the weights file {path} is not a Keras weights file ({reason}); pass an .h5 or "
            f".weights.h5 file for {name!r} (e.g. from encoder.save_weights), 'imagenet' or None."
        )
    return SegkerasError(
        f"the weights in {path} do not fit {name!r} ({reason.rstrip('.: ')}): they belong to "
        f"another backbone or model; pass weights saved from a {name!r} encoder, 'imagenet' "
        "or None."
    )


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
        if weights not in ("imagenet", None):
            raise _weights_file_error(str(weights), name, error) from error
        if weights != "imagenet" or os.path.exists(needed):
            raise
        raise WeightsUnavailableError(
            f"Cannot download ImageNet weights for {name!r} (no network?): "
            f"{os.path.basename(needed)} "
            f"is not in {os.path.dirname(needed)}. Put that file there, or pass weights=None "
            f"(random initialisation) or weights='/path/to/{os.path.basename(needed)}'."
        ) from error


@keras.saving.register_keras_serializable(package="segkeras")
class Encoder(keras.Model):
    """The functional model :func:`build_encoder` returns. It runs in inference mode (no dropout,
    BatchNorm statistics kept) whatever the caller asks, unless it trains from scratch.

    The Keras transfer-learning guide calls a frozen base model with ``training=False``, but in
    Keras 3 the ``training`` of an outer ``fit`` overrides an argument recorded in a functional
    graph, so frozen EfficientNets kept applying Dropout. Here the encoder itself decides, at
    every call, from its own state: frozen, or pretrained with frozen BatchNorm (:func:`freeze`,
    :func:`unfreeze`): inference mode; every BatchNorm trainable (:func:`train_from_scratch`):
    the caller's mode, so BatchNorm learns the statistics it lacks. Recompile after a change.
    """

    @property
    def pyramid_outputs(self) -> dict[str, keras.KerasTensor]:
        """The feature maps by level, ``{"P1": stride 2, ..., "P5": stride 32}``, as the symbolic
        tensors of this model: keras-hub's convention (its P-levels are ours), so a keras-hub
        head builds on a segkeras encoder, e.g. ``keras_hub.models.DeepLabV3Backbone(encoder,
        spatial_pyramid_pooling_key="P5", ...)``."""
        return dict(self.output)

    def call(self, inputs, training=None, mask=None, **kwargs):
        if not trains_from_scratch(self):
            training = False
        return super().call(inputs, training=training, mask=mask, **kwargs)


def trains_from_scratch(encoder: keras.Model) -> bool:
    """Whether ``encoder`` trains BatchNorm layers (set by :func:`train_from_scratch`): then it
    must run in the caller's mode; otherwise (frozen, or pretrained with frozen BatchNorm) a model
    calls it in inference mode. Some frozen layers do not change this (e.g. those past the level a
    model reads, which the mask head freezes): a frozen BatchNorm runs in inference mode anyway."""
    return encoder.trainable and any(
        layer.trainable for layer in encoder.layers
        if isinstance(layer, keras.layers.BatchNormalization))


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
        An :class:`Encoder` named ``"<name>_encoder"`` taking raw RGB in [0, 255]; it runs in
        inference mode unless it trains from scratch.
    """
    entry = get(name)
    key = name.lower().replace("_", "").replace("-", "")
    input_shape = check_input_shape(tuple(input_shape))
    image = keras.Input(shape=input_shape, name="image")
    preprocessed = Preprocess(entry.preprocessing, name="preprocess")(image)
    base = _build_backbone(entry, key, preprocessed, input_shape, weights)
    features = {level: tap.tensor(base, level)
                for level, tap in zip(LEVELS, entry.taps, strict=False)}
    features["P5"] = base.output
    encoder = Encoder(image, features, name=key + ENCODER_SUFFIX)
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
        taps = [*map(str, entry.taps), "(final output)"]
        cached = "yes" if weights_cached(name, (input_size, input_size, 3)) else "no"
        rows.append((name, f"{encoder.count_params() / 1e6:.1f}M", *taps, cached))
        keras.backend.clear_session()
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("Each P-level is a stage output, the tensor the next stage consumes: a stage "
                 "closing with a pooling gives the pool's output; a stage opened by a strided "
                 "block, that block's input. P5 is the final output.")
    lines.append(f"ImageNet weights cache: {weights_cache_dir()}")
    return "\n".join(lines)
