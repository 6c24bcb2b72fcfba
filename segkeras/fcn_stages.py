"""FCN's staged training: FCN-32s, then FCN-16s initialised from it, then FCN-8s from FCN-16s.

Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015,
section 4.2: each finer net starts with the coarser net's parameters; its new skip score layer
starts at zero (and its new x2 upsampling as bilinear interpolation), so at the first step it
predicts what the coarser net predicted, up to the interpolation of its extra x2 step.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from segkeras.errors import SegkerasError

STAGES = ("32s", "16s", "8s")


def _weighted_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    return {layer.name: layer for layer in model.layers if layer.weights}


def initialize_from(model: keras.Model, coarser: keras.Model) -> keras.Model:
    """Copy every layer of the trained ``coarser`` FCN into ``model`` (the next finer variant),
    matched by layer name (the encoder, ``score_fr``, earlier skips); the layers new in ``model``
    keep their initialisation. Returns ``model``."""
    finer = _weighted_layers(model)
    missing = [name for name in _weighted_layers(coarser) if name not in finer]
    if missing:
        raise SegkerasError(
            f"{model.name} has no layer named {', '.join(missing)} (layers of {coarser.name}): "
            "staged training carries weights over by layer name, so name the layers of the head "
            "the same in every variant (score_fr, score_P4, upscore_to_P4, ...)."
        )
    for name, layer in _weighted_layers(coarser).items():
        shapes = [tuple(w.shape) for w in layer.weights]
        if shapes != [tuple(w.shape) for w in finer[name].weights]:
            raise SegkerasError(
                f"layer {name!r} has weights of shapes {shapes} in {coarser.name} but not in "
                f"{model.name}: build both variants with the same encoder and number of classes."
            )
        finer[name].set_weights(layer.get_weights())
    return model


def train_in_stages(
    build: Callable[[str], keras.Model],
    fit: Callable[[keras.Model], keras.callbacks.History],
    stages: tuple[str, ...] = STAGES,
) -> dict[str, tuple[keras.Model, keras.callbacks.History]]:
    """The paper's recipe: for each variant in ``stages`` (coarsest first), ``build(variant)`` a
    fresh model, initialise it from the previous stage's trained model, ``fit`` it (compile and
    train, returning the History). Returns ``{variant: (model, history)}``. When ``build`` makes
    fresh layers (a fresh encoder too), each stage's model keeps its own weights, so the stages
    can be compared afterwards."""
    known = all(stage in STAGES for stage in stages) and len(set(stages)) == len(stages)
    if not known or list(stages) != sorted(stages, key=STAGES.index):
        raise SegkerasError(f"stages must be distinct variants of {STAGES} in that order, "
                            f"coarsest first; got {stages!r}.")
    trained: dict[str, tuple[keras.Model, keras.callbacks.History]] = {}
    previous = None
    for stage in stages:
        model = build(stage)
        if previous is not None:
            initialize_from(model, previous)
        trained[stage] = (model, fit(model))
        previous = model
    return trained
