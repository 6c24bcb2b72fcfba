"""What the semantic-segmentation builders share: argument checks, the encoder, the logits layer."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import keras

from segkeras import backbones
from segkeras.errors import SegkerasError

ANY_SIZE = (None, None, 3)
DECODER_LEVELS = ("P4", "P3", "P2", "P1", None)  # the skip each decoder block meets; None: none


def check_num_classes(num_classes: int) -> int:
    """``num_classes`` counts the background: at least 2 (a binary task is 2 softmax classes)."""
    integral = isinstance(num_classes, numbers.Integral) and not isinstance(num_classes, bool)
    if not integral or num_classes < 2:
        raise SegkerasError(
            f"num_classes must be an integer >= 2 (background plus at least one class; "
            f"a binary task has 2), got {num_classes!r}."
        )
    return int(num_classes)


def check_choice(argument: str, value: str, choices: Sequence[str]) -> str:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise SegkerasError(
            f"{argument}={value!r} is not supported; use one of {', '.join(map(repr, choices))}."
        )
    return value


def check_decoder_filters(decoder_filters: Sequence[int]) -> tuple[int, ...]:
    """One positive width per decoder block: stride 32 -> 16 -> 8 -> 4 -> 2 -> 1."""
    filters = tuple(decoder_filters)
    if len(filters) != len(DECODER_LEVELS) or not all(
        isinstance(f, numbers.Integral) and f > 0 for f in filters
    ):
        raise SegkerasError(
            f"decoder_filters needs {len(DECODER_LEVELS)} positive ints (one per x2 upsampling "
            f"from stride 32 to 1), got {decoder_filters!r}; e.g. (256, 128, 64, 32, 16)."
        )
    return tuple(int(f) for f in filters)


def resolve_encoder(
    backbone: str | keras.Model,
    input_shape: tuple,
    weights: str | None,
    encoder_trainable: bool,
) -> keras.Model:
    """The encoder for ``backbone``: a name is built with :func:`segkeras.backbones.build_encoder`;
    an encoder model (from that function) is used as it is, with its own weights, trainable flags
    and input shape (``input_shape`` may repeat that shape, not contradict it)."""
    if isinstance(backbone, str):
        return backbones.build_encoder(backbone, input_shape, weights, encoder_trainable)
    is_encoder = (
        isinstance(backbone, keras.Model)
        and backbone.name.endswith(backbones.ENCODER_SUFFIX)
        and isinstance(backbone.output, dict)
        and sorted(backbone.output) == list(backbones.LEVELS)
    )
    if not is_encoder:
        raise SegkerasError(
            f"backbone must be a name from segkeras.backbones.available() or an encoder made by "
            f"segkeras.backbones.build_encoder, got {backbone!r}."
        )
    encoder_shape = tuple(backbone.input.shape[1:])
    if tuple(input_shape) not in (ANY_SIZE, encoder_shape):
        raise SegkerasError(
            f"input_shape={tuple(input_shape)} contradicts the encoder's input shape "
            f"{encoder_shape}; leave input_shape out or build the encoder with that shape."
        )
    return backbone


def encode(encoder: keras.Model) -> tuple[keras.KerasTensor, dict]:
    """A raw-RGB image input and the encoder's ``{"P1".."P5"}`` features of it. The encoder stays
    one nested layer named ``"<backbone>_encoder"``, which ``backbones.find_encoder`` finds, and
    runs in inference mode unless it trains from scratch (:class:`segkeras.backbones.Encoder`)."""
    image = keras.Input(shape=encoder.input.shape[1:], name="image")
    return image, encoder(image)


def model_name(architecture: str, encoder: keras.Model) -> str:
    """E.g. ``"unet_mobilenetv2"``."""
    return f"{architecture}_{encoder.name.removesuffix(backbones.ENCODER_SUFFIX)}"


def float32_logits(x: keras.KerasTensor) -> keras.KerasTensor:
    """The model's last layer, ``"logits"``: float32 even under a mixed-precision policy, so the
    softmax and the loss are computed in full precision."""
    return keras.layers.Activation("linear", dtype="float32", name="logits")(x)
