"""Section 6: FLOP counts, the GFLOP/s section 1's rates achieve, and GPU estimates.

FLOP counts of a Keras model built at a fixed input size (convolutions and dense layers).
A trained layer costs about three forward passes per training step (forward, gradient w.r.t. its
input, gradient w.r.t. its weights); a frozen layer (no trainable weights, e.g. the encoder in the
transfer-learning stage) costs one: it sits before every trained layer in an encoder-decoder, so
no gradient passes through it. (A frozen layer *behind* a trained one would cost two; no segkeras
model has one.)

:func:`tensorflow_forward_flops` is the independent check: TensorFlow's own FLOP statistics of the
convolution and matmul ops in the traced forward graph at batch 1 (the mask head included, whose
layers run once per box: both counts multiply by the boxes per image).
"""

from __future__ import annotations

import math

import keras
from common import load_results, run_worker, table

TITLE = "6. FLOPs, achieved GFLOP/s and GPU estimates"
CODE = ("segkeras/models/fcn.py", "segkeras/models/deconv.py", "segkeras/models/unet.py",
        "segkeras/models/hourglass.py", "segkeras/models/mask_head.py", "segkeras/backbones.py")
# Assumed sustained training throughput of a Colab T4 (peak 8.1 TFLOP/s fp32, 65 fp16 tensor core);
# conv nets of this size typically sustain 40-50% in fp32 and about 3x that with mixed precision.
T4_FP32_FLOPS = 3.5e12
T4_MIXED_FLOPS = 10e12


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


def worker(plan: list[list]) -> dict:
    """Forward and training GFLOPs/img (encoder frozen) of every ``(arch, backbone, size)``."""
    from s1_throughput import build

    counts = {}
    for arch, backbone, size in plan:
        model = build(arch, backbone, size)
        counts[f"{arch}|{backbone}|{size}"] = {
            "forward": forward_flops_per_image(model) / 1e9,
            "forward_tensorflow": tensorflow_forward_flops(model) / 1e9,
            "train": training_flops_per_image(model) / 1e9}
        keras.backend.clear_session()
    return counts


def measure(full: bool) -> dict:
    rows = load_results("throughput")["data"]
    plan = sorted({(r["arch"], r["backbone"], r["size"]) for r in rows})
    return {"counts": run_worker("s6_flops", plan=[list(key) for key in plan])}


def render(d: dict) -> str:
    throughput = load_results("throughput")
    rows, fractions = [], []
    measured = throughput["provenance"]
    peak = measured.get("calibration_gflops")  # None: the img/s predate calibrations
    agree = all(abs(c["forward_tensorflow"] - c["forward"]) <= 1e-6 * c["forward"]
                for c in d["counts"].values() if "forward_tensorflow" in c)
    for r in throughput["data"]:
        count = d["counts"][f"{r['arch']}|{r['backbone']}|{r['size']}"]
        achieved = count["train"] * r["train"]
        fractions.append(achieved / peak if peak else None)
        rows.append([r["arch"], r["backbone"], f"{r['size']}²", f"{count['forward']:.2f}",
                      f"{count['train']:.2f}", f"{r['train']:.1f}", f"{achieved:.0f}",
                      f"{100 * achieved / peak:.0f}%" if peak else "—",
                      f"{T4_FP32_FLOPS / 1e9 / count['train']:.0f}",
                      f"{T4_MIXED_FLOPS / 1e9 / count['train']:.0f}"])
    if peak is None:
        verdict = ("no calibration was measured with these img/s, so the share of the matmul "
                   "peak waits for section 1's next run. ")
    else:
        verdict = (f"held against the {measured['calibration']} of the same run: "
                   + ("every model stays below it" if max(fractions) < 1 else
                      "**some exceed it: a count or a rate is wrong**")
                   + f" (highest: {100 * max(fractions):.0f}%). ")
    check = ("" if not any("forward_tensorflow" in c for c in d["counts"].values()) else
             " The forward counts " + ("equal" if agree else "**differ from**") +
             " TensorFlow's own op statistics of the traced forward graph "
             "(`tensorflow_forward_flops`) for every model.")
    return ("Training GFLOPs per image, encoder frozen (`bench/s6_flops.py`: convolutions and "
            "dense layers; a frozen layer costs its forward pass, a trained one 3x; the mask "
            "head's layers once per box, 8 boxes per image)." + check + " Achieved GFLOP/s = "
            "training GFLOPs x train img/s of section 1 (measured "
            f"{measured['measured']}); " + verdict +
            "No GPU was lent to the session that wrote this file: "
            f"the GPU columns assume a T4 sustaining {T4_FP32_FLOPS / 1e12:.1f} TFLOP/s in float32 "
            f"and {T4_MIXED_FLOPS / 1e12:.0f} TFLOP/s with mixed precision (assumptions, ±50%).\n\n"
            + table(["model", "backbone", "size", "forward GFLOPs/img", "train GFLOPs/img",
                     "train img/s", "achieved GFLOP/s", "of matmul peak", "est. T4 fp32 img/s",
                     "est. T4 mixed img/s"], rows))


def headline(d: dict) -> tuple[str, str]:
    throughput = load_results("throughput")
    peak = throughput["provenance"].get("calibration_gflops")
    achieved = [d["counts"][f"{r['arch']}|{r['backbone']}|{r['size']}"]["train"] * r["train"]
                for r in throughput["data"]]
    return (f"highest achieved training rate {max(achieved):.0f} GFLOP/s",
            f"the matmul calibration, {peak:.0f} GFLOP/s ({100 * max(achieved) / peak:.0f}%)"
            if peak else "no calibration recorded")
