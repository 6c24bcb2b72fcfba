"""FLOP counts of a Keras model built at a fixed input size (convolutions and dense layers).

Used to turn measured CPU throughput into achieved GFLOP/s and GPU estimates. A trained layer costs
about three forward passes per training step (forward, gradient w.r.t. its input, gradient w.r.t.
its weights); a frozen layer (no trainable weights, e.g. the encoder in the transfer-learning stage)
costs one: it sits before every trained layer in an encoder-decoder, so no gradient passes through
it. (A frozen layer *behind* a trained one would cost two; no segkeras model has one.)

:func:`tensorflow_forward_flops` is the independent check: TensorFlow's own FLOP statistics of the
convolution and matmul ops in the traced forward graph at batch 1 (the mask head included, whose
layers run once per box: both counts multiply by the boxes per image).
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


def _per_image(model: keras.Model):
    """``(layer, forward FLOPs per image)`` for every counted layer of ``model``."""
    boxes_per_image = int(model.input["boxes"].shape[1]) if isinstance(model.input, dict) else 1
    for layer in _layers(model):
        try:
            flops = layer_flops(layer)
        except (TypeError, ValueError, AttributeError):  # layers without a static shape
            continue
        # The mask head runs once per box: its layers have no fixed batch rows per image.
        per_box = boxes_per_image > 1 and layer.name.startswith("mask_")
        yield layer, flops * (boxes_per_image if per_box else 1)


def forward_flops_per_image(model: keras.Model) -> float:
    """Forward (inference) FLOPs per image of the convolution and dense layers."""
    return float(sum(flops for _, flops in _per_image(model)))


def training_flops_per_image(model: keras.Model) -> float:
    """Training FLOPs per image: forward only for frozen layers (no trainable weights), 3 x forward
    for trained ones."""
    return float(sum(flops * (3 if layer.trainable_weights else 1)
                     for layer, flops in _per_image(model)))


COUNTED_OPS = ("Conv2D", "Conv2DBackpropInput", "DepthwiseConv2dNative", "MatMul",
               "BatchMatMulV2")
"""Forward ops of convolution, transposed convolution (``Conv2DBackpropInput``) and dense layers."""


def tensorflow_forward_flops(model: keras.Model) -> float:
    """Forward FLOPs of one image by TensorFlow's registered op statistics (TensorFlow backend
    only): the sum over :data:`COUNTED_OPS` in the graph of ``model(x, training=False)``."""
    import tensorflow as tf
    from tensorflow.python.framework import ops as tf_ops  # the op statistics registry

    def spec(tensor):
        return tf.TensorSpec((1, *tensor.shape[1:]), tensor.dtype)

    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.nest.map_structure(spec, model.input)).graph
    return float(sum(tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value or 0
                     for op in graph.get_operations() if op.type in COUNTED_OPS))
