"""The grading machinery: scores out of the lab's full total, grading mode, "write it yourself"
when an answer delegates to a forbidden function, the fallback a lab uses, one-line hints."""

import sys
import types

import pytest

from segkeras.checks import core
from segkeras.checks.core import Lab, require

pytestmark = pytest.mark.fast


@pytest.fixture(autouse=True)
def fresh():
    core.reset()
    yield
    core.reset()


@pytest.fixture
def library(monkeypatch):
    """A module ``fakelib`` with a function, a closure and a class that answer exercises."""
    module = types.ModuleType("fakelib")
    exec("""
def double(x):
    return 2 * x

def make_adder(k):
    def add(x):
        return x + k
    return add

add_three = make_adder(3)

class Doubler:
    def __init__(self, factor=2):
        self.factor = factor
    def apply(self, x):
        return self.factor * x
""", module.__dict__)
    monkeypatch.setitem(sys.modules, "fakelib", module)
    return module


def make_lab(library=None):
    lab = Lab("99_demo", {"double": 3, "triple": 3})

    @lab.check("double", fallback=lambda x: 2 * x)
    def double(function):
        require(function(4) == 8, "double it: 2 * x")

    @lab.check("triple", fallback=lambda x: 3 * x)
    def triple(function):
        require(function(4) == 12, "triple it")

    return lab, double, triple


def not_answered(x):
    raise NotImplementedError()


def test_start_announces_the_lab_and_forgets_earlier_results(capsys):
    lab, double, _ = make_lab()
    double(lambda x: 2 * x)
    lab.start()
    assert capsys.readouterr().out.splitlines()[-1] == "Lab 99_demo: 2 exercises, 6 points"
    assert lab.result("double") is None and core.results() == []


def test_a_check_prints_points_from_the_declaration_and_a_hint(capsys):
    lab, double, _ = make_lab()
    lab.start()
    assert double.points == 3
    good = double(lambda x: 2 * x)
    assert good and good.points == 3 and good.max_points == 3
    bad = double(lambda x: x + 2)
    assert not bad and bad.points == 0 and "double it" in bad.message
    crashed = double(lambda x: x / "a")
    assert "your code raised TypeError" in crashed.message
    stub = double(not_answered)
    assert not stub.answered and "not answered yet" in stub.message
    out = capsys.readouterr().out
    assert "✓ double: 3/3 points" in out and "✗ double: 0/3 points\n  hint: double it" in out


def test_score_is_out_of_the_full_total_skipped_checks_count_zero(capsys):
    lab, double, _ = make_lab()
    lab.start()
    double(lambda x: 2 * x)
    capsys.readouterr()
    assert core.total() == (3, 6)
    assert capsys.readouterr().out.strip() == (
        "Score in this notebook: 3/6 points (1/2 exercises passed; the grader re-runs every "
        "answer on its own)")


def test_total_without_a_lab_counts_the_checks_that_ran(capsys):
    _, double, _ = make_lab()
    core.reset()  # no lab started
    assert double(lambda x: 2 * x).points == 3
    assert core.total() == (3, 3)


def test_a_failed_check_only_prints_whatever_the_environment_says(monkeypatch, capsys):
    lab, double, _ = make_lab()
    lab.start()
    monkeypatch.setenv("SEGKERAS_GRADING", "1")  # the old grading switch: nothing reads it
    assert not double(lambda x: x + 2)
    assert "✗ double: 0/3 points" in capsys.readouterr().out


def test_declaring_a_check_of_an_undeclared_exercise_is_refused():
    lab, _, _ = make_lab()
    with pytest.raises(ValueError, match="no exercise 'quadruple'"):
        lab.check("quadruple")


def test_use_returns_the_answer_once_passed_else_the_fallback_with_one_line(capsys):
    lab, double, triple = make_lab()
    lab.start()

    def answer(x):
        return 2 * x

    double(answer)
    capsys.readouterr()
    assert lab.use("double", answer) is answer
    assert capsys.readouterr().out == ""
    triple(not_answered)
    capsys.readouterr()
    fallback = lab.use("triple", not_answered)
    assert fallback(2) == 6
    assert capsys.readouterr().out == (
        "✗ triple has not passed its check yet (not answered): the rest of the lab uses "
        "segkeras' version so it still runs\n")


def test_use_runs_a_check_never_run_silently(capsys):
    lab, _, _ = make_lab()
    lab.start()
    capsys.readouterr()

    def wrong(x):
        return x + 2

    assert lab.use("double", wrong) is not wrong
    assert capsys.readouterr().out.startswith("✗ double has not passed its check yet (it failed)")
    assert lab.result("double") is not None and not lab.result("double")

    def right(x):
        return 2 * x

    core.reset()
    lab.start()
    assert lab.use("double", right) is right


def test_guard_turns_an_unanswered_exercise_into_one_line(capsys):
    lab, _, _ = make_lab()
    with lab.guard("double"):
        not_answered(1)
    with lab.guard("double"):
        raise ZeroDivisionError("division by zero")
    with lab.guard("double"):
        print("fine")
    assert capsys.readouterr().out.splitlines() == [
        "✗ double: " + core.NOT_ANSWERED,
        "✗ your double raised ZeroDivisionError: division by zero", "fine"]


def forbidding_lab(*targets, check=None):
    lab = Lab("98_forbid", {"double": 2})

    @lab.check("double", forbid=targets)
    def double(answer):
        expected = check() if check else 8
        require(answer(4) == expected, "double it")

    return double


def test_a_delegating_answer_fails_however_it_imported_the_function(library):
    from fakelib import double as imported

    double = forbidding_lab(library.double)
    for answer in (lambda x: imported(x), lambda x: library.double(x), imported):
        result = double(answer)
        assert not result and result.message == (
            "write it yourself: your answer calls fakelib.double, which implements this exercise")
    assert double(lambda x: x + x)
    assert imported(5) == 10 and library.double(5) == 10  # works again afterwards


def test_forbid_swaps_closures_methods_and_classes_and_restores_them(library):
    from fakelib import Doubler, add_three

    double = forbidding_lab(add_three, Doubler.apply)
    assert "fakelib.make_adder.<locals>.add" in double(lambda x: add_three(x) + x - 3).message
    assert "fakelib.Doubler.apply" in double(lambda x: Doubler().apply(x)).message
    constructing = forbidding_lab(Doubler)
    assert "fakelib.Doubler" in constructing(lambda x: Doubler(3).factor * x - x).message
    assert add_three(1) == 4 and Doubler().apply(2) == 4 and Doubler(5).factor == 5


def test_a_swallowed_forbidden_call_still_fails(library):
    def sneaky(x):
        try:
            return library.double(x)
        except Exception:
            return 2 * x

    assert "write it yourself" in forbidding_lab(library.double)(sneaky).message
    assert library.double(1) == 2


def test_forbidden_functions_are_restored_after_any_error(library):
    double = forbidding_lab(library.double)
    assert "ZeroDivisionError" in double(lambda x: 1 / 0).message
    assert library.double(3) == 6


def test_the_judge_computes_its_reference_with_the_library(library):
    def expected():  # outside the answer's calls the forbidden function works
        return library.double(4)

    assert forbidding_lab(library.double, check=expected)(lambda x: x * 2)
    assert not forbidding_lab(library.double, check=expected)(library.double)
