"""Probes: code that runs where the student's function lives (the kernel, or the grader's
worker) and returns data to the judge. Register one with :func:`probe`; call it from a judge as
``answer.probe(probe_fn, *args)``, which runs ``probe_fn(function, *args)``."""

from __future__ import annotations

import sys
from collections.abc import Callable

import keras
import numpy as np

from segkeras.checks.core import CheckFailed, answer_model

PROBES: dict[str, Callable] = {}


def probe(function: Callable) -> Callable:
    """Register ``function`` (module level, in ``segkeras.checks.*`` or this module) as a probe
    the worker may run."""
    module = function.__module__
    if not (module == __name__ or module.startswith("segkeras.checks.")) \
            or "<locals>" in function.__qualname__:
        raise TypeError(f"{function!r}: probes are module-level functions of segkeras.checks.* "
                        "or segkeras.grading.probes")
    key = f"{module}:{function.__qualname__}"
    PROBES[key] = function
    function.probe_key = key
    return function


def keras_input(spec) -> keras.KerasTensor:
    """``keras.Input`` from a ``(shape, dtype, name)`` spec (dtype and name optional); ``shape``
    without the batch axis."""
    shape, dtype, name = (tuple(spec) + ("float32", None))[:3]
    return keras.Input(tuple(shape), dtype=dtype, name=name)


def _is_spec(value) -> bool:
    """A ``(shape, dtype, name)`` spec (dtype and name optional): it starts with a shape, a
    tuple of ints or None; a list of specs starts with a spec instead."""
    return isinstance(value, (tuple, list)) and len(value) in (1, 2, 3) \
        and isinstance(value[0], (tuple, list)) \
        and all(side is None or isinstance(side, int) for side in value[0])


def _inputs(specs):
    if _is_spec(specs):
        return keras_input(specs)
    if isinstance(specs, dict):
        return {key: _inputs(spec) for key, spec in specs.items()}
    return type(specs)(_inputs(spec) for spec in specs)


@probe
def build_model(function: Callable, inputs, *args, **kwargs) -> keras.Model:
    """``answer_model(inputs, function(*inputs, *args, **kwargs))`` with ``inputs`` built from a
    spec or a structure of specs (a dict of specs is passed as one dict argument)."""
    tensors = _inputs(inputs)
    positional = [tensors] if _is_spec(inputs) or isinstance(inputs, dict) else list(tensors)
    return answer_model(tensors, function(*positional, *args, **kwargs))


def _shapes(value):
    if isinstance(value, (tuple, list)):
        return tuple(_shapes(item) for item in value)
    if isinstance(value, dict):
        return {key: _shapes(item) for key, item in value.items()}
    shape = getattr(value, "shape", None)
    return None if shape is None else tuple(shape)


@probe
def call_symbolic(function: Callable, specs, *args, **kwargs):
    """The output shapes (a structure like the outputs; None where an output has no shape) of
    ``function`` on ``keras.KerasTensor`` inputs, ``specs`` a list of ``(shape, dtype)`` (full
    shapes, batch axis included)."""
    tensors = [keras.KerasTensor(tuple(shape), dtype=dtype) for shape, dtype in specs]
    return _shapes(function(*tensors, *args, **kwargs))


@probe
def call_in_graph(function: Callable, *arrays):
    """``function(*arrays)`` traced as a graph (``tf.function``, as ``fit`` runs it on the
    TensorFlow backend; ``jax.jit`` on JAX), values back."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        run = tf.function(lambda *tensors: function(*tensors), autograph=False)
    elif backend == "jax":
        import jax

        run = jax.jit(lambda *tensors: function(*tensors))
    else:
        run = function
    return run(*(keras.ops.convert_to_tensor(array) for array in arrays))


def answer_files(*functions: Callable) -> set[str]:
    """The source files of ``functions`` (``functools.partial`` unwrapped)."""
    files = set()
    for function in functions:
        while not hasattr(function, "__code__") and hasattr(function, "func"):
            function = function.func
        code = getattr(function, "__code__", None)
        if code is not None:
            files.add(code.co_filename)
    return files


def nesting(files: set[str], run: Callable[[], object]) -> tuple:
    """``(run(), nesting)``: the deepest nesting of any one function defined in ``files`` while
    ``run`` runs (a recursion of depth d nests d, a loop 1), on the call graph
    (``sys.setprofile``). Fails if the code under test replaced the profiler."""
    depth: dict = {}
    deepest: dict = {}

    def profile(frame, event, arg):
        code = frame.f_code
        if code.co_filename not in files:
            return
        if event == "call":
            depth[code] = depth.get(code, 0) + 1
            deepest[code] = max(deepest.get(code, 0), depth[code])
        elif event == "return":
            depth[code] = depth.get(code, 1) - 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        result = run()
        removed = sys.getprofile() is not profile
    finally:
        sys.setprofile(previous)
    if removed:
        raise CheckFailed("your code changed the profiler (sys.setprofile): the check counts "
                          "your function's calls with it.")
    return result, max(deepest.values(), default=0)


@probe
def max_self_nesting(function: Callable, *args, **kwargs) -> tuple:
    """``(result, nesting)``: ``function(*args, **kwargs)`` and the deepest nesting of any one
    function defined in the answer's source (:func:`nesting`)."""
    return nesting(answer_files(function), lambda: function(*args, **kwargs))


def as_numpy(value):
    """A structure of tensors as numpy arrays (for probes returning values)."""
    return keras.tree.map_structure(
        lambda item: np.asarray(keras.ops.convert_to_numpy(item)) if keras.ops.is_tensor(item)
        else item, value)
