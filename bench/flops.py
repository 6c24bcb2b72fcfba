"""Multiply-add counts of a Keras model built at a fixed input size (convolutions and dense layers).

Used to turn measured CPU throughput into GPU estimates: training costs about three forward passes
(forward, gradient w.r.t. activations, gradient w.r.t. weights).
"""

from __future__ import annotations

import math

import keras


def _layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def _spatial(shape) -> int:
    return math.prod(int(d) for d in shape[1:-1])


def _output_shape(layer):
    """The static output shape of ``layer`` (its first output if it returns several)."""
    output = layer.output
    return output[0].shape if isinstance(output, (list, tuple)) else output.shape


def layer_flops(layer) -> int:
    """Forward FLOPs (2 per multiply-add) of one layer for one image; 0 for cheap layers."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        out = _output_shape(layer)
        kh, kw = layer.kernel_size
        return 2 * _spatial(out) * int(out[-1]) * kh * kw
    if isinstance(layer, keras.layers.Conv2DTranspose):
        in_shape = layer.input.shape
        kh, kw = layer.kernel_size
        return 2 * _spatial(in_shape) * int(in_shape[-1]) * kh * kw * layer.filters
    if isinstance(layer, keras.layers.Conv2D):
        out = _output_shape(layer)
        kh, kw = layer.kernel_size
        channels_in = int(layer.input.shape[-1])
        return 2 * _spatial(out) * layer.filters * kh * kw * channels_in // layer.groups
    if isinstance(layer, keras.layers.Dense):
        out = _output_shape(layer)
        positions = math.prod(int(d) for d in out[1:-1]) if len(out) > 2 else 1
        return 2 * positions * layer.units * int(layer.input.shape[-1])
    return 0


def training_flops_per_image(model: keras.Model) -> float:
    """Approximate training FLOPs per image: 3 x the forward convolution/dense FLOPs."""
    boxes_per_image = int(model.input["boxes"].shape[1]) if isinstance(model.input, dict) else 1
    total = 0
    for layer in _layers(model):
        try:
            flops = layer_flops(layer)
        except (TypeError, ValueError, AttributeError):  # layers without a static shape
            continue
        # The mask head runs once per box: its layers have no fixed batch rows per image.
        per_box = boxes_per_image > 1 and layer.name.startswith("mask_")
        total += flops * (boxes_per_image if per_box else 1)
    return 3.0 * total
