"""The check machinery shared by every lab: exercises and points, judges, forbidden functions.

A checks module declares its lab's exercises and points up front (an exercise's points may be a
dict of parts, for partial credit), then turns each **judge** into a check. A judge takes an
:class:`~segkeras.grading.answer.Answer` (never the student's function itself) and raises
:class:`CheckFailed` with a hint::

    LAB = Lab("01_fcn", {"convolutionize": 2, "fuse_skip": 3, "fcn_head": 4})
    PRIVATE = (library_fuse_skip, reference_scores)   # references: refused as answers

    @LAB.check("fuse_skip", forbid=[segkeras.models.fcn.fuse], fallback=library_fuse_skip)
    @in_float32
    def fuse_skip(answer: Answer) -> None: ...

    start, use, guard, total = LAB.start, LAB.use, LAB.guard, LAB.total

In the notebook ``checks.fcn.fuse_skip(fuse_skip)`` runs the judge on a
:class:`~segkeras.grading.answer.LocalAnswer` and prints ✓/✗ with the points and a hint: feedback
only. The grade is computed by :mod:`segkeras.grading` (the same judge on a ``RemoteAnswer``, the
student's code in a worker process); nothing in the kernel decides it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import os
import pkgutil
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import keras
import numpy as np

NOT_ANSWERED = "not answered yet: replace `raise NotImplementedError()` with your code."
LOCAL_TIMEOUT = 120  # seconds a check may take in the student's kernel
TIMEOUT_VARIABLE = "SEGKERAS_CHECK_TIMEOUT"  # overrides it (feedback only: grading ignores it)
GRADING_TIMEOUT = 30  # seconds an exercise may take in the grader (a lab may raise one)


class CheckFailed(AssertionError):
    """Raised by a judge with the hint the student sees; ``points`` are the points of the parts
    that passed (partial credit), 0 by default."""

    def __init__(self, hint: str, points: int = 0) -> None:
        super().__init__(hint)
        self.points = int(points)


class OutOfTime(BaseException):
    """The time limit of a check ran out (a BaseException: ``except Exception`` in an answer does
    not swallow it)."""


def out_of_time_message(seconds: float) -> str:
    return f"ran out of time ({seconds:g} s): does your code loop forever?"


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


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`OutOfTime` in the main thread after ``seconds`` (SIGALRM; a no-op where that
    is unavailable: Windows, other threads)."""
    usable = (seconds and hasattr(signal, "SIGALRM")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise OutOfTime(seconds)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(judge: Callable, name: str, points: int, answer) -> CheckResult:
    """Run ``judge(answer)`` and turn whatever happens into a :class:`CheckResult` (the same in
    the kernel and in the grader)."""
    try:
        judge(answer)
    except CheckFailed as failure:
        return CheckResult(name, False, max(0, min(failure.points, points)), points,
                           str(failure))
    except NotImplementedError:
        return CheckResult(name, False, 0, points, NOT_ANSWERED)
    except OutOfTime as error:
        return CheckResult(name, False, 0, points, out_of_time_message(error.args[0]))
    except Exception as error:  # the student's code crashed: report, don't stop
        return CheckResult(name, False, 0, points,
                           f"your code raised {type(error).__name__}: {error}")
    return CheckResult(name, True, points, points, "")


Points = int | dict[str, int]  # an exercise's points, or its parts' points


class Lab:
    """A lab's exercises and their points (or parts), declared up front so the score is out of the
    full total; creates the lab's checks (:meth:`check`) and the helpers its notebook uses."""

    def __init__(self, name: str, exercises: dict[str, Points]) -> None:
        self.name = name
        self.parts = {exercise: ({k: int(v) for k, v in points.items()}
                                 if isinstance(points, dict) else {exercise: int(points)})
                      for exercise, points in exercises.items()}
        if not exercises or any(points <= 0 for parts in self.parts.values()
                                for points in parts.values()):
            raise ValueError(f"lab {name}: declare every exercise (and part) with a positive "
                             "number of points")
        self.exercises = {exercise: sum(parts.values()) for exercise, parts in self.parts.items()}
        self.judges: dict[str, Callable] = {}
        self.forbidden: dict[str, tuple] = {}
        self.fallbacks: dict[str, Callable] = {}
        self.timeouts: dict[str, float] = {}

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

    def check(self, name: str, forbid: tuple | list = (), fallback: Callable | None = None,
              timeout: float = GRADING_TIMEOUT) -> Callable:
        """Decorator: ``judge(answer)`` (raising :class:`CheckFailed` with a hint) becomes the
        check of exercise ``name``, called in the notebook with the student's function(s).
        ``forbid``: functions, methods or classes that implement the exercise ("write it
        yourself"); ``fallback``: what :meth:`use` returns until the check passes; ``timeout``:
        the grader's limit for this exercise, in seconds."""
        if name not in self.exercises:
            raise ValueError(f"lab {self.name} declares no exercise {name!r}: "
                             f"one of {', '.join(self.exercises)}")
        points = self.exercises[name]

        def decorate(judge: Callable) -> Callable:
            @functools.wraps(judge)
            def run(*functions: Callable) -> CheckResult:
                result = self._record(name, self.run_locally(name, functions))
                print(result)
                return result

            run.points, run.exercise, run.lab = points, name, self
            self.judges[name], self.forbidden[name] = judge, tuple(forbid)
            self.timeouts[name] = timeout
            if fallback is not None:
                self.fallbacks[name] = fallback
            return run

        return decorate

    def run_locally(self, name: str, functions: tuple[Callable, ...]) -> CheckResult:
        """The judge of ``name`` on the student's ``functions``, in this process (feedback)."""
        from segkeras.grading.answer import LocalAnswer

        answer = LocalAnswer(name, functions, forbid=self.forbidden[name])
        seconds = float(os.environ.get(TIMEOUT_VARIABLE) or max(LOCAL_TIMEOUT, self.timeouts[name]))
        with time_limit(seconds):
            return outcome(self.judges[name], name, self.exercises[name], answer)

    def _record(self, name: str, result: CheckResult) -> CheckResult:
        _RESULTS[(self.name, name)] = result
        return result

    def result(self, name: str) -> CheckResult | None:
        """The latest result of exercise ``name`` in this session (None if never checked)."""
        return _RESULTS.get((self.name, name))

    def use(self, name: str, answer: Callable) -> Callable:
        """``answer`` if exercise ``name`` passed its check, else segkeras' version (one line
        says so). A check never run is run first, silently."""
        if name not in self.fallbacks:
            raise ValueError(f"lab {self.name}: exercise {name!r} has no fallback to use")
        result = self.result(name)
        if result is None:
            with contextlib.redirect_stdout(io.StringIO()):
                result = self._record(name, self.run_locally(name, (answer,)))
        if result.passed:
            return answer
        reason = "it failed" if result.answered else "not answered"
        print(f"✗ {name} has not passed its check yet ({reason}): the rest of the lab uses "
              "segkeras' version so it still runs")
        return self.fallbacks[name]

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
        """Print and return ``(points, full total)`` of the checks run in this notebook:
        unanswered or unchecked exercises count 0. Feedback only: the grader re-runs every
        answer on its own."""
        found = [self.result(name) for name in self.exercises]
        points = sum(result.points for result in found if result is not None)
        passed = sum(bool(result) for result in found if result is not None)
        print(f"Score in this notebook: {points}/{self.total_points} points "
              f"({passed}/{len(self.exercises)} exercises passed; the grader re-runs every "
              "answer on its own)")
        return points, self.total_points


def labs() -> dict[str, Lab]:
    """Every lab of :mod:`segkeras.checks`, by name (``"06_boxes_to_masks"``)."""
    return {module.LAB.name: module.LAB for module in _lab_modules()}


def lab_module(lab: str):
    """The checks module of lab ``lab`` (its name, e.g. ``06_boxes_to_masks``, its number,
    ``06`` or ``6``, or its checks module's name, ``detection``)."""
    for module in _lab_modules():
        number = module.LAB.name.partition("_")[0]
        if lab in (module.LAB.name, module.__name__.rpartition(".")[2], number) \
                or (lab.isdigit() and int(lab) == int(number)):
            return module
    raise KeyError(lab)


@functools.cache
def _lab_modules() -> tuple:
    import segkeras.checks as package

    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"segkeras.checks.{info.name}")
        if isinstance(getattr(module, "LAB", None), Lab):
            found.append(module)
    return tuple(found)


def private_targets() -> tuple:
    """The ``PRIVATE`` functions of every lab module (references, library answers): refused as
    answers and while any answer runs."""
    return tuple(target for module in _lab_modules() for target in getattr(module, "PRIVATE", ()))


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


def _new_swaps(targets) -> list[_Swap]:
    """Swaps for ``targets`` not forbidden already (one per function, class or method)."""
    owners = {swap.owner for swap in _ACTIVE}
    swaps = []
    for target in targets:
        if _Swap.owner_of(target) not in owners:
            owners.add(_Swap.owner_of(target))
            swaps.append(_Swap(target))
    return swaps


def swap_out(targets) -> list[_Swap]:
    """Forbid ``targets`` for good (the grader's worker, before any student code runs)."""
    swaps = _new_swaps(targets)
    for swap in swaps:
        swap.on()
    return swaps


@contextlib.contextmanager
def forbidding(targets) -> Iterator[None]:
    """While the block runs, calling any of ``targets`` (functions, methods such as
    ``segkeras.layers.RoIAlign.call``, or classes) fails with "write it yourself", however the
    student imported them; targets already forbidden by an enclosing block stay so."""
    swaps = _new_swaps(targets)
    start = len(_FORBIDDEN_CALLS)
    try:
        for swap in swaps:
            swap.on()
            _ACTIVE.append(swap)
        try:
            yield
        except Exception:
            if len(_FORBIDDEN_CALLS) > start:  # however the error surfaced
                raise CheckFailed(_write_it_yourself(_FORBIDDEN_CALLS[start])) from None
            raise
        if len(_FORBIDDEN_CALLS) > start:  # the answer swallowed the error
            raise CheckFailed(_write_it_yourself(_FORBIDDEN_CALLS[start]))
    finally:
        for swap in reversed(swaps):
            if swap in _ACTIVE:
                swap.off()
                _ACTIVE.remove(swap)
        del _FORBIDDEN_CALLS[start:]


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
    the checks run so far if no lab was started (feedback: the grader re-runs every answer)."""
    if _CURRENT is not None:
        return _CURRENT.total()
    points = sum(result.points for result in _RESULTS.values())
    maximum = sum(result.max_points for result in _RESULTS.values())
    passed = sum(result.passed for result in _RESULTS.values())
    print(f"Score in this notebook: {points}/{maximum} points ({passed}/{len(_RESULTS)} "
          "exercises passed; the grader re-runs every answer on its own)")
    return points, maximum
