"""The segmentation builders by name: what ``--model`` accepts, and what the benchmarks and the
tests iterate.

Each :class:`Architecture` is a builder, the keyword arguments its name fixes (``"fcn8s"`` is
:func:`~segkeras.models.fcn.fcn` with ``variant="8s"``), its default backbone and its task
(``"semantic"``: one class map per image; ``"instances"``: a detector, Mask R-CNN). Every builder
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
from segkeras.models.mask_rcnn import mask_rcnn
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
        task: ``"semantic"`` (logits (batch, H, W, classes) out) or ``"instances"`` (a
            detector: boxes, classes, scores and masks of each object).
    """

    name: str
    builder: Callable[..., keras.Model]
    default_backbone: str | None
    options: Mapping[str, Any] = field(default_factory=dict)
    tunable: tuple[str, ...] = ()
    summary: str = ""
    task: str = "semantic"

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


TASKS = ("semantic", "instances")
_REGISTRY: dict[str, Architecture] = {}


def register(
    name: str,
    builder: Callable[..., keras.Model],
    default_backbone: str | None,
    *,
    options: Mapping[str, Any] | None = None,
    tunable: tuple[str, ...] = (),
    summary: str = "",
    task: str = "semantic",
) -> Architecture:
    """Add an architecture under ``name`` (a new name only) and return it."""
    if name in _REGISTRY:
        raise SegkerasError(f"An architecture named {name!r} is already registered.")
    if task not in TASKS:
        raise SegkerasError(f"task must be one of {TASKS}, got {task!r}.")
    architecture = Architecture(name, builder, default_backbone,
                                MappingProxyType(dict(options or {})), tuple(tunable), summary,
                                task)
    _REGISTRY[name] = architecture
    return architecture


def names(task: str | None = None) -> tuple[str, ...]:
    """The registered names (of ``task`` only, if given), in registration order (simplest
    first)."""
    return tuple(name for name, architecture in _REGISTRY.items()
                 if task is None or architecture.task == task)


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
MASK_RCNN_CPU_RECIPE = {
    "anchor_sizes": (16, 32, 64), "fpn_channels": 128, "box_head_units": 256,
    "mask_head_channels": 64, "rpn_pre_nms": 600, "rpn_post_nms_train": 200,
    "rpn_post_nms_test": 100, "rois_per_image": 32,
}
"""``maskrcnn``'s heads, sized for a CPU and images of 64..256 pixels (bench/s8_mask_rcnn_train.py);
:func:`~segkeras.models.mask_rcnn.mask_rcnn`'s own defaults are the paper's, for ResNet-50."""
register("maskrcnn", mask_rcnn, "mobilenetv2", options=MASK_RCNN_CPU_RECIPE, task="instances",
         summary="Mask R-CNN (He et al. 2017)")
register("maskrcnn-fpn", mask_rcnn, "mobilenetv2", options={"pyramid": True}, task="instances",
         summary="Mask R-CNN on the feature pyramid P2-P6 (Lin et al. 2017), for real images")
