"""What a judge talks to instead of the student's function: an :class:`Answer`.

How to write a judge (one per exercise, in the lab's ``segkeras/checks/<lab>.py``)::

    LAB = Lab("06_boxes_to_masks", {"box_iou": 2, "match_anchors": 3,
                                    "roi_align_box": {"bilinear_sample": 1, "roi_align_box": 2}})
    PRIVATE = (reference_iou, library_box_iou)  # every reference / library answer of the module

    @LAB.check("box_iou", forbid=[segkeras.boxes.box_iou, keras.utils.bounding_boxes.compute_iou],
               fallback=library_box_iou)
    def box_iou(answer: Answer) -> None:
        a, b = random_boxes(answer.rng, 9), random_boxes(answer.rng, 5)  # hidden seed in grading
        result = answer(a, b)                      # the student's box_iou on arrays -> np.ndarray
        require_close(result, reference_iou(a, b), "IoU = intersection / union")
        shapes = answer.probe(call_symbolic, [((7, 4), "float32"), ((5, 4), "float32")])
        values = answer.probe(call_in_graph, a, b)  # under tf.function, as fit runs it

Rules:

- Never touch the student's function: call ``answer(...)`` with data (arrays, numbers, strings,
  None, tuples/lists/dicts of those, ``keras.Model``, ``keras.layers.Layer``); results come back
  converted the same way (tensors -> ``np.ndarray``, tuples stay tuples, models and layers are
  copies). Arguments are copies too: in-place changes the answer makes are not seen; an exercise
  that mutates (freezing a model) needs a probe that returns the mutated object.
- Everything that needs the function *in-process* (symbolic inputs, spies, recursion counting,
  running it inside library code, ``fit`` or ``tf.function``) is a **probe**: a module-level
  function of ``segkeras.checks.*`` or :mod:`segkeras.grading.probes` decorated with
  :func:`~segkeras.grading.probes.probe`, called as ``answer.probe(probe_fn, *args)``; it runs as
  ``probe_fn(function, *args)`` where the answer lives and returns DATA (arrays, numbers,
  booleans, strings, models), never the function. Probes must not call ``PRIVATE`` functions
  (they are forbidden while the answer's code runs).
- Exercises checked with several functions (``checks.mask_head.roi_align_box(roi_align_box,
  bilinear_sample)``): ``answer.using(1)`` is the Answer of the second one.
- Draw random inputs from ``answer.rng`` (a fixed seed in the notebook, a hidden one when
  grading) and compute references in the judge with plain code (numpy or the library: swaps are
  only on while the answer runs, so no ``reference()`` block is needed).
- Fail with ``CheckFailed(hint)`` (``require``/``require_close``); for partial credit
  ``CheckFailed(hint, points=earned)``. Exceptions the answer raises reach the judge as the same
  builtin class (``ValueError``...) or a ``RuntimeError`` subclass of the same name.
- A call to a forbidden or private function raises ``CheckFailed("write it yourself: ...")``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any, Protocol

import keras
import numpy as np

from segkeras.checks import core
from segkeras.checks.core import CheckFailed, OutOfTime, forbidding


class Answer(Protocol):
    """The student's answer to one exercise, as a judge sees it (see the module docstring)."""

    exercise: str
    grading: bool
    rng: np.random.Generator

    def __call__(self, *args, **kwargs) -> Any: ...

    def probe(self, probe_fn: Callable, *args, **kwargs) -> Any: ...

    def using(self, index: int) -> Answer: ...


def kernel_seed(exercise: str) -> int:
    """The fixed seed of an exercise's inputs in the notebook (deterministic feedback)."""
    return zlib.crc32(exercise.encode())


def _is_keras_object(value) -> bool:
    """A Keras object that crosses as its configuration (losses, optimizers, metrics...)."""
    module = type(value).__module__ or ""
    return module.split(".")[0] == "keras" and hasattr(value, "get_config")


def unreadable(value, exercise: str) -> CheckFailed:
    return CheckFailed(f"your {exercise} returned a {type(value).__name__}, which the grader "
                       "cannot read: return arrays, numbers, strings, tuples/lists/dicts of them, "
                       "Keras models or layers.")


def as_data(value, exercise: str):
    """``value`` as the grader receives it from a worker: tensors -> numpy arrays, containers
    kept, Keras models/layers/objects as they are (the remote transport copies them)."""
    if value is None or isinstance(value, (bool, int, float, str, np.ndarray)):
        return value
    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, (tuple, list)):
        return type(value)(as_data(item, exercise) for item in value)
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise CheckFailed(f"your {exercise} returned a dict whose keys are not all strings.")
        return {key: as_data(item, exercise) for key, item in value.items()}
    if isinstance(value, keras.KerasTensor):
        raise CheckFailed(f"your {exercise} returned a symbolic tensor (KerasTensor) for "
                          "concrete inputs.")
    if isinstance(value, (keras.Model, keras.layers.Layer)) or _is_keras_object(value):
        return value
    if keras.ops.is_tensor(value) or hasattr(value, "__array__"):
        return np.asarray(keras.ops.convert_to_numpy(value))
    raise unreadable(value, exercise)


def _copy_arguments(value):
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (tuple, list)):
        return type(value)(_copy_arguments(item) for item in value)
    if isinstance(value, dict):
        return {key: _copy_arguments(item) for key, item in value.items()}
    return value


def check_probe(probe_fn: Callable) -> str:
    """The registry key of ``probe_fn``; a function not registered with ``@probe`` is refused."""
    from segkeras.grading.probes import PROBES

    key = getattr(probe_fn, "probe_key", None)
    if key is None or PROBES.get(key) is not probe_fn:
        raise TypeError(f"{probe_fn!r} is not a probe: decorate a module-level function of "
                        "segkeras.checks.* or segkeras.grading.probes with @probe")
    return key


class LocalAnswer:
    """The student's function(s) in this kernel (the notebook's feedback checks): forbidden and
    private functions swapped out only around each call or probe; results converted as the
    remote transport converts them; inputs drawn with a fixed seed."""

    grading = False

    def __init__(self, exercise: str, functions: tuple[Callable, ...], forbid: tuple = (),
                 index: int = 0, seed: int | None = None) -> None:
        if not functions:
            raise TypeError(f"checks of {exercise} take the function(s) you wrote")
        self.exercise, self.functions, self.index = exercise, tuple(functions), index
        self.forbid = tuple(forbid)
        self.rng = np.random.default_rng(kernel_seed(exercise) if seed is None else seed)

    @property
    def function(self) -> Callable:
        return self.functions[self.index]

    def using(self, index: int) -> LocalAnswer:
        other = LocalAnswer(self.exercise, self.functions, self.forbid, index)
        other.rng = self.rng
        return other

    def _run(self, run: Callable, *args, **kwargs):
        try:
            with forbidding(self.forbid + core.private_targets()):
                result = run(*_copy_arguments(args), **_copy_arguments(kwargs))
        except (SystemExit, KeyboardInterrupt) as error:
            raise CheckFailed(f"your code ended the process ({type(error).__name__}"
                              f"{': ' + str(error) if str(error) else ''})") from None
        except OutOfTime:
            raise
        return as_data(result, self.exercise)

    def __call__(self, *args, **kwargs):
        return self._run(self.function, *args, **kwargs)

    def probe(self, probe_fn: Callable, *args, **kwargs):
        check_probe(probe_fn)
        return self._run(lambda *a, **k: probe_fn(self.function, *a, **k), *args, **kwargs)
