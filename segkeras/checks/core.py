"""The check runner shared by every lab: record results, print ✓/✗ with points and hints."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np


class CheckFailed(AssertionError):
    """Raised inside a check with the hint the student sees."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one exercise check."""

    exercise: str
    passed: bool
    points: int
    max_points: int
    message: str

    def __str__(self) -> str:
        mark = "✓" if self.passed else "✗"
        line = f"{mark} {self.exercise}: {self.points}/{self.max_points} points"
        return line if self.passed else f"{line}\n  hint: {self.message}"

    def __bool__(self) -> bool:
        return self.passed

    def _ipython_display_(self) -> None:
        """Show nothing more in Jupyter: the check printed its line when it ran. (A trailing
        ``;`` is not enough: nbval executes cells without history, which disables it.)"""


_RESULTS: dict[str, CheckResult] = {}


def exercise(name: str, points: int) -> Callable:
    """Turn a function that raises :class:`CheckFailed` on a wrong answer into a check.

    The wrapped check prints its result, records it for :func:`total` and returns the
    :class:`CheckResult`. Any other exception raised by the student's code fails the check
    with the exception as the hint, so a notebook never stops at a check cell.
    """

    def decorate(check: Callable) -> Callable:
        @functools.wraps(check)
        def run(*args, **kwargs) -> CheckResult:
            try:
                check(*args, **kwargs)
            except CheckFailed as failure:
                result = CheckResult(name, False, 0, points, str(failure))
            except NotImplementedError:
                result = CheckResult(name, False, 0, points, "not answered yet: replace "
                                     "`raise NotImplementedError()` with your code.")
            except Exception as error:  # the student's code crashed: report, don't stop
                result = CheckResult(name, False, 0, points,
                                     f"your code raised {type(error).__name__}: {error}")
            else:
                result = CheckResult(name, True, points, points, "")
            _RESULTS[name] = result
            print(result)
            return result

        run.points = points
        return run

    return decorate


def in_float32(check: Callable) -> Callable:
    """Run ``check`` with the float32 dtype policy: the models it builds (the student's layers
    included) compute in float32 even after ``segkeras.train.configure_precision`` chose mixed
    precision on a GPU, where float16 rounding would fail right answers."""

    @functools.wraps(check)
    def run(*args, **kwargs):
        policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy("float32")
        try:
            return check(*args, **kwargs)
        finally:
            keras.config.set_dtype_policy(policy)

    return run


def require(condition: bool, hint: str) -> None:
    """Fail the current check with ``hint`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(hint)


def require_close(actual, expected, hint: str, atol: float = 1e-4) -> None:
    """Fail with ``hint`` (plus the largest difference) unless the arrays agree within ``atol``."""
    actual, expected = np.asarray(actual, dtype="float64"), np.asarray(expected, dtype="float64")
    require(actual.shape == expected.shape,
            f"{hint} (got shape {actual.shape}, expected {expected.shape})")
    difference = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    require(difference <= atol, f"{hint} (largest difference {difference:.3g})")


def results() -> list[CheckResult]:
    """Every check run so far in this session, in order."""
    return list(_RESULTS.values())


def reset() -> None:
    """Forget all results (a fresh start for the score)."""
    _RESULTS.clear()


def total() -> tuple[int, int]:
    """Print and return ``(points, max_points)`` over the checks run so far."""
    points = sum(result.points for result in _RESULTS.values())
    maximum = sum(result.max_points for result in _RESULTS.values())
    passed = sum(result.passed for result in _RESULTS.values())
    print(f"Score: {points}/{maximum} points ({passed}/{len(_RESULTS)} exercises passed)")
    return points, maximum
