"""The judges' side of the grading core in the kernel (LocalAnswer): partial credit from a points
table with parts, answers that exit, loop or return what cannot cross, private references
refused, probes registered, results converted as the remote transport converts them."""

import functools
import sys
import types

import keras
import numpy as np
import pytest

from segkeras.checks import core
from segkeras.checks.core import CheckFailed, Lab, require
from segkeras.grading import probes
from segkeras.grading.answer import LocalAnswer

pytestmark = pytest.mark.fast


@pytest.fixture(autouse=True)
def fresh():
    core.reset()
    yield
    core.reset()


def make_lab():
    lab = Lab("97_parts", {"pair": {"first": 1, "second": 2}, "square": 2})

    @lab.check("pair")
    def pair(answer):
        first_ok = answer(3) == 3
        second_ok = answer.using(1)(3) == 9
        require(first_ok or second_ok, "neither part works")
        if not (first_ok and second_ok):
            earned = lab.parts["pair"]["first"] if first_ok else lab.parts["pair"]["second"]
            raise CheckFailed("one part is wrong", points=earned)

    @lab.check("square", timeout=1)
    def square(answer):
        value = answer(np.arange(3.0))
        require(isinstance(value, np.ndarray), "not converted")
        np.testing.assert_allclose(value, [0.0, 1.0, 4.0])

    return lab, pair, square


def test_parts_sum_to_the_exercise_and_a_failed_part_keeps_the_others(capsys):
    lab, pair, _ = make_lab()
    assert lab.exercises == {"pair": 3, "square": 2} and lab.total_points == 5
    assert pair(lambda x: x, lambda x: x * x).points == 3
    half = pair(lambda x: x + 1, lambda x: x * x)
    assert (half.passed, half.points, half.message) == (False, 2, "one part is wrong")
    assert pair(lambda x: x, lambda x: 0).points == 1
    assert "✗ pair: 1/3 points\n  hint: one part is wrong" in capsys.readouterr().out
    with pytest.raises(ValueError, match="positive"):
        Lab("bad", {"pair": {"first": 0}})


def test_answers_that_exit_loop_or_interrupt_are_a_cross_not_a_dead_kernel(monkeypatch):
    _, _, square = make_lab()
    monkeypatch.setattr(core, "LOCAL_TIMEOUT", 1)

    def exits(x):
        sys.exit(3)

    def interrupts(x):
        raise KeyboardInterrupt

    def loops(x):
        while True:
            try:
                pass
            except Exception:
                pass

    assert square(exits).message == "your code ended the process (SystemExit: 3)"
    assert square(interrupts).message == "your code ended the process (KeyboardInterrupt)"
    assert square(loops).message == "ran out of time (1 s): does your code loop forever?"
    assert square(lambda x: keras.ops.square(x))  # a backend tensor comes back as numpy


def test_private_references_are_refused_as_answers_and_work_for_the_judge(monkeypatch):
    module = types.ModuleType("segkeras.checks.fake_private")
    exec("def reference(x):\n    return x * x\n", module.__dict__)
    monkeypatch.setattr(core, "private_targets", lambda: (module.reference,))
    lab = Lab("96_private", {"square": 1})

    @lab.check("square")
    def square(answer):
        require(answer(4) == module.reference(4), "square it")

    result = square(module.reference)
    assert result.message == ("write it yourself: your answer calls "
                              "segkeras.checks.fake_private.reference, which implements this "
                              "exercise")
    assert square(lambda x: x * x) and module.reference(3) == 9


def test_every_labs_private_functions_are_collected():
    from segkeras.checks import detection

    private = core.private_targets()
    assert detection.reference_iou in private and detection.library_box_iou in private


def test_only_registered_probes_run_and_results_cross_as_data():
    answer = LocalAnswer("square", (lambda x: keras.ops.square(x),))
    shapes = answer.probe(probes.call_symbolic, [((2, 3), "float32")])
    assert shapes == (2, 3)
    values = answer.probe(probes.call_in_graph, np.arange(3.0, dtype="float32"))
    assert isinstance(values, np.ndarray) and values.tolist() == [0.0, 1.0, 4.0]
    model = answer.probe(probes.build_model, ((3,), "float32", "x"))
    assert isinstance(model, keras.Model) and model.input_shape == (None, 3)
    with pytest.raises(TypeError, match="not a probe"):
        answer.probe(lambda function: function(2))
    with pytest.raises(CheckFailed, match="cannot read"):
        LocalAnswer("f", (lambda: object(),))()
    assert LocalAnswer("f", (lambda: (np.float32(1), [keras.ops.ones(2)]),))()[1][0].tolist() \
        == [1.0, 1.0]


def hourglass(depth):
    return 0 if depth == 0 else 1 + hourglass(depth - 1)


def looped(depth):
    total = 0
    for _ in range(depth):
        total += 1
    return total


def test_nesting_counts_recursion_on_the_call_graph_partial_or_not():
    answer = LocalAnswer("nest", (hourglass,))
    assert answer.probe(probes.max_self_nesting, 4) == (4, 5)
    assert LocalAnswer("nest", (looped,)).probe(probes.max_self_nesting, 4) == (4, 1)
    partial = functools.partial(looped)
    assert LocalAnswer("nest", (partial,)).probe(probes.max_self_nesting, 4) == (4, 1)

    def unprofiles(depth):
        sys.setprofile(None)
        return depth

    with pytest.raises(CheckFailed, match="profiler"):
        LocalAnswer("nest", (unprofiles,)).probe(probes.max_self_nesting, 4)
