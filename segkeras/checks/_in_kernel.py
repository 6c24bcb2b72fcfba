"""The student's function behind the interface the judges of labs 04 and 05 talk to
(``answer(...)``, ``answer.probe(probe_fn, ...)``, ``answer.rng``), run in this process: while the
student's code runs (never while the judge computes its references) the exercise's forbidden
functions, the lab's private references and :func:`segkeras.checks.core.reference` are swapped
out, so calling any of them fails with "write it yourself"."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from segkeras.checks import core

SEED = 0  # in the kernel the inputs are the same at every run (deterministic feedback)


def _call(function: Callable, *args, **kwargs):
    return function(*args, **kwargs)


class InKernelAnswer:
    """``function`` as an answer, with ``refused`` swapped out around it."""

    grading = False

    def __init__(self, function: Callable, refused: tuple = ()) -> None:
        self.function = function
        self.rng = np.random.default_rng(SEED)
        self._refused = (*refused, core.reference)

    def __call__(self, *args, **kwargs):
        return self.probe(_call, *args, **kwargs)

    def probe(self, probe_fn: Callable, *args, **kwargs):
        """``probe_fn(function, *args, **kwargs)`` with the refused functions swapped out."""
        return core.forbid(*self._refused)(probe_fn)(self.function, *args, **kwargs)
