"""The segmentation builders by name: what ``--model`` accepts, and what the benchmarks and the
tests iterate.

Each :class:`Architecture` is a builder, the keyword arguments its name fixes (``"fcn8s"`` is
:func:`~segkeras.models.fcn.fcn` with ``variant="8s"``) and its default backbone. Every builder
takes ``num_classes, backbone, weights, encoder_trainable, input_shape``; a new architecture is one
:func:`register` call.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import keras

from segkeras.errors import SegkerasError
from segkeras.models.deconv import deconvnet
from segkeras.models.fcn import fcn
from segkeras.models.hourglass import hourglass
from segkeras.models.unet import unet


@dataclass(frozen=True)
class Architecture:
    """A builder under a name.

    Attributes:
        name: the registry key, e.g. ``"fcn8s"``.
        builder: ``builder(num_classes, backbone=..., weights=..., encoder_trainable=...,
            input_shape=..., **options)`` returning a ``keras.Model`` with logits out.
        default_backbone: the backbone used when none is given; ``None``: the builder has a stem
            of its own and then takes ``backbone=None`` (the stacked hourglass).
        options: keyword arguments fixed by the name (``{"variant": "8s"}``).
        tunable: further keyword arguments of the builder the command line exposes
            (``("num_stacks",)``).
        summary: one line for help texts.
    """

    name: str
    builder: Callable[..., keras.Model]
    default_backbone: str | None
    options: Mapping[str, Any] = field(default_factory=dict)
    tunable: tuple[str, ...] = ()
    summary: str = ""

    def build(self, num_classes: int, **kwargs) -> keras.Model:
        """``builder(num_classes, **options, **kwargs)``, the backbone defaulting to
        :attr:`default_backbone`."""
        kwargs.setdefault("backbone", self.default_backbone)
        if kwargs["backbone"] is None and self.default_backbone is not None:
            raise SegkerasError(
                f"{self.name} needs a backbone (default {self.default_backbone!r}); see "
                "`python -m segkeras backbones` for the names."
            )
        return self.builder(num_classes, **self.options, **kwargs)


_REGISTRY: dict[str, Architecture] = {}


def register(
    name: str,
    builder: Callable[..., keras.Model],
    default_backbone: str | None,
    *,
    options: Mapping[str, Any] | None = None,
    tunable: tuple[str, ...] = (),
    summary: str = "",
) -> Architecture:
    """Add an architecture under ``name`` (a new name only) and return it."""
    if name in _REGISTRY:
        raise SegkerasError(f"An architecture named {name!r} is already registered.")
    architecture = Architecture(name, builder, default_backbone,
                                MappingProxyType(dict(options or {})), tuple(tunable), summary)
    _REGISTRY[name] = architecture
    return architecture


def names() -> tuple[str, ...]:
    """The registered names, in registration order (simplest first)."""
    return tuple(_REGISTRY)


def get(name: str) -> Architecture:
    """The architecture called ``name``; an unknown name gets a did-you-mean error."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise SegkerasError(f"Unknown model {name!r}.{hint} Available: {', '.join(_REGISTRY)}.")


def build(name: str, num_classes: int, **kwargs) -> keras.Model:
    """Build the architecture called ``name``: ``build("fcn8s", 21, weights=None)``."""
    return get(name).build(num_classes, **kwargs)


for _variant in ("32s", "16s", "8s"):
    register(f"fcn{_variant}", fcn, "vgg16", options={"variant": _variant},
             summary=f"FCN-{_variant} (Long et al. 2015)")
register("deconvnet", deconvnet, "vgg16", summary="DeconvNet (Noh et al. 2015)")
register("unet", unet, "mobilenetv2", summary="U-Net (Ronneberger et al. 2015)")
register("hourglass", hourglass, None, tunable=("num_stacks",),
         summary="stacked hourglass (Newell et al. 2016)")
