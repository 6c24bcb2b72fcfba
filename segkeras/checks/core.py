"""The grading machinery shared by every lab's checks.

A checks module declares its lab's exercises and points up front, then turns each check function
(one that raises :class:`CheckFailed` with a hint) into a check::

    LAB = Lab("01_fcn", {"convolutionize": 2, "fuse_skip": 3, "fcn_head": 4})

    @LAB.check("fuse_skip", fallback=_library_fuse_skip)
    @forbid(segkeras.models.fcn.fuse)          # "write it yourself" if the answer calls it
    @in_float32
    def fuse_skip(function) -> None: ...

    start, use, guard, total = LAB.start, LAB.use, LAB.guard, LAB.total

A check prints ✓/✗ with the points and a hint, records the result and returns a
:class:`CheckResult`. In grading mode (``SEGKERAS_GRADING=1``, set for nbgrader's autograding) a
failed check raises after printing, so nbgrader takes the cell's points away. :func:`total` scores
out of the current lab's full total.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import keras
import numpy as np

GRADING_VARIABLE = "SEGKERAS_GRADING"
NOT_ANSWERED = "not answered yet: replace `raise NotImplementedError()` with your code."


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

    @property
    def answered(self) -> bool:
        """False when the student's code still raises ``NotImplementedError``."""
        return self.message != NOT_ANSWERED

    def _ipython_display_(self) -> None:
        """Show nothing more in Jupyter: the check printed its line when it ran. (A trailing
        ``;`` is not enough: nbval executes cells without history, which disables it.)"""


_RESULTS: dict[tuple[str | None, str], CheckResult] = {}
_CURRENT: Lab | None = None


def grading() -> bool:
    """True in grading mode (``SEGKERAS_GRADING=1``): failed checks raise."""
    return os.environ.get(GRADING_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def _outcome(check: Callable, name: str, points: int, args: tuple, kwargs: dict) -> CheckResult:
    """Run ``check`` and turn whatever happens into a :class:`CheckResult`."""
    try:
        check(*args, **kwargs)
    except CheckFailed as failure:
        return CheckResult(name, False, 0, points, str(failure))
    except NotImplementedError:
        return CheckResult(name, False, 0, points, NOT_ANSWERED)
    except Exception as error:  # the student's code crashed: report, don't stop
        return CheckResult(name, False, 0, points,
                           f"your code raised {type(error).__name__}: {error}")
    return CheckResult(name, True, points, points, "")


def _report(result: CheckResult) -> CheckResult:
    print(result)
    if not result.passed and grading():
        raise CheckFailed(f"{result.exercise}: {result.message}")
    return result


class Lab:
    """A lab's exercises and their points, declared up front so the score is out of the full
    total; creates the lab's checks (:meth:`check`) and the helpers its notebook uses."""

    def __init__(self, name: str, exercises: dict[str, int]) -> None:
        if not exercises or any(int(points) <= 0 for points in exercises.values()):
            raise ValueError(f"lab {name}: declare every exercise with a positive number of points")
        self.name = name
        self.exercises = {exercise: int(points) for exercise, points in exercises.items()}
        self._checks: dict[str, Callable] = {}
        self._fallbacks: dict[str, Callable] = {}

    @property
    def total_points(self) -> int:
        return sum(self.exercises.values())

    def __repr__(self) -> str:
        return f"Lab({self.name!r}, {self.exercises!r})"

    def start(self) -> None:
        """Make this the current lab and forget earlier results (the notebook's first cell)."""
        global _CURRENT
        _CURRENT = self
        _RESULTS.clear()
        print(f"Lab {self.name}: {len(self.exercises)} exercises, {self.total_points} points")

    def check(self, name: str, fallback: Callable | None = None) -> Callable:
        """Decorator: ``check`` (raising :class:`CheckFailed` with a hint) becomes the check of
        exercise ``name``; ``fallback`` is what :meth:`use` returns until the check passes."""
        if name not in self.exercises:
            raise ValueError(f"lab {self.name} declares no exercise {name!r}: "
                             f"one of {', '.join(self.exercises)}")
        points = self.exercises[name]

        def decorate(check: Callable) -> Callable:
            @functools.wraps(check)
            def run(*args, **kwargs) -> CheckResult:
                return _report(self._record(name, _outcome(check, name, points, args, kwargs)))

            run.points, run.exercise, run.lab = points, name, self
            self._checks[name] = check
            if fallback is not None:
                self._fallbacks[name] = fallback
            return run

        return decorate

    def _record(self, name: str, result: CheckResult) -> CheckResult:
        _RESULTS[(self.name, name)] = result
        return result

    def result(self, name: str) -> CheckResult | None:
        """The latest result of exercise ``name`` in this session (None if never checked)."""
        return _RESULTS.get((self.name, name))

    def use(self, name: str, answer: Callable) -> Callable:
        """``answer`` if exercise ``name`` passed its check, else segkeras' version (one line
        says so). A check never run is run first, silently."""
        if name not in self._fallbacks:
            raise ValueError(f"lab {self.name}: exercise {name!r} has no fallback to use")
        result = self.result(name)
        if result is None:
            with contextlib.redirect_stdout(io.StringIO()):
                result = self._record(name, _outcome(self._checks[name], name,
                                                     self.exercises[name], (answer,), {}))
        if result.passed:
            return answer
        reason = "it failed" if result.answered else "not answered"
        print(f"✗ {name} has not passed its check yet ({reason}): the rest of the lab uses "
              "segkeras' version so it still runs")
        return self._fallbacks[name]

    @contextlib.contextmanager
    def guard(self, name: str) -> Iterator[None]:
        """Run a demo cell that calls the student's ``name``: an unanswered exercise prints the
        hint in one line instead of a traceback, so Run all reaches the end."""
        try:
            yield
        except NotImplementedError:
            print(f"✗ {name}: {NOT_ANSWERED}")
        except Exception as error:  # the student's code crashed: one line, go on
            print(f"✗ your {name} raised {type(error).__name__}: {error}")

    def total(self) -> tuple[int, int]:
        """Print and return ``(points, full total)``: unanswered or unchecked exercises count 0."""
        found = [self.result(name) for name in self.exercises]
        points = sum(result.points for result in found if result is not None)
        passed = sum(bool(result) for result in found if result is not None)
        print(f"Score: {points}/{self.total_points} points "
              f"({passed}/{len(self.exercises)} exercises passed)")
        return points, self.total_points


# --- forbidding library answers ----------------------------------------------------------------

_FORBIDDEN_CALLS: list[str] = []


def _forbidden_call(qualified_name: str) -> None:
    """What a swapped-out function does: remember the call and fail the check."""
    _FORBIDDEN_CALLS.append(qualified_name)
    raise CheckFailed(_write_it_yourself(qualified_name))


def _write_it_yourself(qualified_name: str) -> str:
    return (f"write it yourself: your answer calls {qualified_name}, which implements this "
            "exercise")


def _qualified_name(target) -> str:
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"


@functools.cache
def _stub_code(freevars: tuple[str, ...], qualified_name: str):
    """Code for a function with the free variables ``freevars`` (so that it fits the target's
    closure) that calls :func:`_forbidden_call`."""
    cells = "".join(f"    {variable} = None\n" for variable in freevars)
    touch = f"        if False: ({', '.join(freevars)},)\n" if freevars else ""
    source = ("def _outer():\n" + cells + "    def stub(*args, **kwargs):\n" + touch
              + "        from segkeras.checks import core\n"
              + f"        core._forbidden_call({qualified_name!r})\n"
              + "    return stub\n")
    namespace: dict = {}
    exec(compile(source, f"<forbidden {qualified_name}>", "exec"), namespace)  # noqa: S102
    code = namespace["_outer"]().__code__
    if code.co_freevars != freevars:
        raise TypeError(f"cannot forbid {qualified_name}: unusual closure {freevars}")
    return code


class _Swap:
    """One forbidden target: a function (its ``__code__`` is swapped, so every reference to it
    sees the stub) or a class (its ``__init__`` is)."""

    def __init__(self, target) -> None:
        if isinstance(target, type):
            name = _qualified_name(target)

            def refuse(instance, *args, **kwargs):
                _forbidden_call(name)

            self._owner, self._attribute = target, "__init__"
            self._original, self._stub = vars(target).get("__init__"), refuse
            return
        function = getattr(target, "__func__", target)  # a bound method: its function
        if not hasattr(function, "__code__"):
            raise TypeError(f"forbid() takes Python functions, methods or classes; got {target!r}")
        self._owner, self._attribute = function, "__code__"
        self._original = function.__code__
        self._stub = _stub_code(function.__code__.co_freevars, _qualified_name(function))

    @staticmethod
    def owner_of(target):
        return target if isinstance(target, type) else getattr(target, "__func__", target)

    @property
    def owner(self):
        return self._owner

    def on(self) -> None:
        setattr(self._owner, self._attribute, self._stub)

    def off(self) -> None:
        if self._original is None:  # a class that inherited its __init__
            delattr(self._owner, self._attribute)
        else:
            setattr(self._owner, self._attribute, self._original)


_ACTIVE: list[_Swap] = []  # the swaps in place while a forbidding check runs


def forbid(*targets) -> Callable:
    """Decorator for a check: while it runs, calling any of ``targets`` (functions, methods such
    as ``segkeras.layers.RoIAlign.call``, or classes) fails the check with "write it yourself",
    however the student imported them. Compute reference values inside :func:`reference`."""

    def decorate(check: Callable) -> Callable:
        @functools.wraps(check)
        def run(*args, **kwargs):
            active = [swap.owner for swap in _ACTIVE]
            start, swaps = len(_FORBIDDEN_CALLS), [  # a nested check: forbidden already
                _Swap(target) for target in targets if _Swap.owner_of(target) not in active]
            try:
                for swap in swaps:
                    swap.on()
                    _ACTIVE.append(swap)
                try:
                    outcome = check(*args, **kwargs)
                except Exception:
                    if len(_FORBIDDEN_CALLS) > start:  # however the error surfaced
                        raise CheckFailed(_write_it_yourself(_FORBIDDEN_CALLS[start])) from None
                    raise
                if len(_FORBIDDEN_CALLS) > start:  # the answer swallowed the error
                    raise CheckFailed(_write_it_yourself(_FORBIDDEN_CALLS[start]))
                return outcome
            finally:
                for swap in reversed(swaps):
                    if swap in _ACTIVE:
                        swap.off()
                        _ACTIVE.remove(swap)
                del _FORBIDDEN_CALLS[start:]

        return run

    return decorate


@contextlib.contextmanager
def reference() -> Iterator[None]:
    """Inside a forbidding check, the forbidden functions work again: for the check's own
    reference values computed with the library."""
    swaps = list(_ACTIVE)
    for swap in reversed(swaps):
        swap.off()
    try:
        yield
    finally:
        for swap in swaps:
            swap.on()


# --- the helpers every check uses ---------------------------------------------------------------

def answer_model(inputs, output) -> keras.Model:
    """``keras.Model(inputs, output)`` around a student's answer, also when the answer ignores
    one of ``inputs``: Keras 3.10 (Colab) refuses inputs not connected to the output, which would
    hide the hint that says so. Each input then joins the output times zero: same values, and the
    check can test which inputs the answer reads."""
    try:
        return keras.Model(inputs, output)
    except ValueError as error:
        if "not connected" not in str(error):
            raise
    for tensor in keras.tree.flatten(inputs):
        output = keras.ops.add(output, keras.ops.multiply(keras.ops.mean(tensor), 0.0))
    return keras.Model(inputs, output)


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
    """Forget all results and the current lab (a fresh start for the score)."""
    global _CURRENT
    _CURRENT = None
    _RESULTS.clear()


def total() -> tuple[int, int]:
    """Print and return ``(points, max_points)``: out of the current lab's full total, or over
    the checks run so far if no lab was started."""
    if _CURRENT is not None:
        return _CURRENT.total()
    points = sum(result.points for result in _RESULTS.values())
    maximum = sum(result.max_points for result in _RESULTS.values())
    passed = sum(result.passed for result in _RESULTS.values())
    print(f"Score: {points}/{maximum} points ({passed}/{len(_RESULTS)} exercises passed)")
    return points, maximum
