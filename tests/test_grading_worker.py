"""The grader's transport: values cross as data (npz without pickle, models and layers with
safe_mode), answer sources reaching for the grader's internals are refused, and a worker that
prints, raises, exits, crashes, loops or eats memory costs its answer the points, never the
grader."""

import json
import os

import keras
import numpy as np
import pytest

from segkeras.checks.core import CheckFailed, OutOfTime
from segkeras.grading import remote
from segkeras.grading.remote import RemoteAnswer, Worker
from segkeras.grading.wire import Encoder, WireError, loads
from segkeras.grading.worker import refusal

EXERCISES = {"box_iou": ["box_iou"], "match_anchors": ["match_anchors"],
             "encode_boxes": ["encode_boxes"]}
SETUP = "import numpy as np\nimport keras\nfrom keras import ops\n"


def cross(value, folder):
    return loads(Encoder(folder, "reply", 1).dumps({"ok": True, "value": value}), folder)["value"]


def test_values_cross_as_data_and_nothing_is_unpickled(tmp_path):
    value = {"a": np.arange(6, dtype="int32").reshape(2, 3), "t": (1, 2.5, "x", None, True),
             "l": [np.float32(1.5), float("nan")]}
    back = cross(value, tmp_path)
    assert back["a"].dtype == np.int32 and back["a"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert back["t"] == (1, 2.5, "x", None, True) and np.isnan(back["l"][1])
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs))
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    model_back, layer_back = cross((model, layer), tmp_path)
    x = np.ones((1, 4), "float32")
    np.testing.assert_allclose(model_back.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_allclose(layer_back(x), layer(x))
    with pytest.raises(WireError, match="objects cannot cross"):
        Encoder(tmp_path, "reply", 2).dumps({"value": np.array([object()])})
    np.savez(tmp_path / "reply-3-1.npz", a0=np.array([{"pickled": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        loads(json.dumps({"value": {"__array__": "a0"}, "arrays": "reply-3-1.npz"}), tmp_path)
    with pytest.raises(WireError, match="bad file name"):
        loads(json.dumps({"value": {"__model__": "../../etc/x.keras"}}), tmp_path)
    lambda_model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda t: t * 2)])
    with pytest.raises(ValueError, match="safe_mode"):
        cross(lambda_model, tmp_path)


@pytest.mark.parametrize("source, found", [
    ("from segkeras.checks import detection", "imports segkeras.checks"),
    ("from segkeras import checks", "imports segkeras.checks"),
    ("import segkeras.grading.worker", "imports segkeras.grading.worker"),
    ("from keras.src.ops import nn", "imports keras.src.ops"),
    ("import importlib", "imports importlib"),
    ("def f(g):\n    return g.__code__", "uses .__code__"),
    ("def f():\n    import sys\n    return sys.modules", "uses .modules"),
    ("import segkeras\nx = segkeras.checks", "uses .checks"),
    ("def f():\n    return eval('1')", "uses eval"),
    ("def f():\n    import sys\n    return sys._getframe(1)", "uses ._getframe"),
])
def test_sources_reaching_for_the_graders_internals_are_refused(source, found):
    assert found in refusal(source)


def test_honest_sources_are_not_refused():
    assert refusal("import numpy as np\nfrom keras import ops\n\ndef f(x):\n    return x") is None


def start(answer, exercise="box_iou", timeout=20.0):
    return Worker("06_boxes_to_masks", exercise, EXERCISES[exercise], SETUP, answer, EXERCISES,
                  timeout)


FRIENDLY = '''
class Odd(Exception):
    pass

def box_iou(a, b, mode="ok"):
    print("student output on stdout")  # must not corrupt the protocol
    if mode == "odd":
        raise Odd("odd one")
    if mode == "value":
        raise ValueError("bad value")
    if mode == "object":
        return object()
    if mode == "library":
        import segkeras.boxes
        try:
            return segkeras.boxes.box_iou(a, b)
        except Exception:
            return ops.zeros((len(a), len(b)))
    if mode == "earlier":
        return match_anchors(a, b, np.ones(len(b), bool))  # the earlier exercise: its fallback
    return ops.ones((len(a), len(b))), {"n": len(a)}
'''


def test_a_worker_serves_its_answer_and_turns_failures_into_the_answers(monkeypatch):
    monkeypatch.setattr(remote, "MEMORY_LIMIT", 3 * 2**30)
    workers = {
        "friendly": start(FRIENDLY),
        "exits": start("import sys\ndef box_iou(a, b):\n    sys.exit(3)\n"),
        "crashes": start("import os\ndef box_iou(a, b):\n    os._exit(7)\n"),
        "loops": start("def box_iou(a, b):\n    while True:\n        pass\n", timeout=3),
        "eats": start("def box_iou(a, b):\n    kept = []\n    while True:\n"
                      "        kept.append(np.ones(2**25))\n"),
    }
    try:
        rng = np.random.default_rng(0)
        answer = RemoteAnswer(workers["friendly"], "box_iou", rng)
        boxes = np.zeros((3, 4), "float32")
        ones, extra = answer(boxes, boxes[:2])
        assert ones.shape == (3, 2) and isinstance(ones, np.ndarray) and extra == {"n": 3}
        with pytest.raises(ValueError, match="bad value"):
            answer(boxes, boxes, mode="value")
        with pytest.raises(remote.AnswerError, match="odd one") as odd:
            answer(boxes, boxes, mode="odd")
        assert type(odd.value).__name__ == "Odd"
        with pytest.raises(CheckFailed, match="cannot read"):
            answer(boxes, boxes, mode="object")
        with pytest.raises(CheckFailed, match="write it yourself: .*segkeras.boxes.box_iou"):
            answer(boxes, boxes, mode="library")
        labels, matched = answer(boxes, boxes[:2], mode="earlier")
        assert labels.shape == (3,) and matched.shape == (3,)
        ones, _ = answer(boxes, boxes)  # still serving after all that
        assert ones.shape == (3, 3)

        def fails(name):
            with pytest.raises((CheckFailed, OutOfTime)) as failure:
                RemoteAnswer(workers[name], "box_iou", rng)(boxes, boxes)
            return failure.value

        assert str(fails("exits")) == "your code ended the process (SystemExit: 3)"
        assert str(fails("crashes")) == "your code ended the process (exit code 7)"
        assert isinstance(fails("loops"), OutOfTime)
        assert "more than 3 GB of memory" in str(fails("eats"))
        assert workers["eats"].process.poll() is not None  # killed
    finally:
        for worker in workers.values():
            worker.close()


def test_workers_fork_from_one_server_and_an_answer_killing_it_stops_only_itself():
    """Each answer's worker is a fresh fork of one server (its own process group, not the
    grader's child); an answer that kills the server ends only its own grading, and the next
    answer gets a new server."""
    first = start("import os\ndef box_iou(a, b):\n"
                  "    return np.array([os.getpid(), os.getpgid(0)])")
    boxes = np.zeros((1, 4), "float32")
    try:
        pid, group = RemoteAnswer(first, "box_iou", np.random.default_rng(0))(boxes, boxes)
        assert pid == group == first.process.pid and pid != os.getpid()
        server = remote.fork_server()
        killer = start("import os, signal\ndef box_iou(a, b):\n"
                       "    os.kill(os.getppid(), signal.SIGKILL)\n    return np.zeros(2)")
        RemoteAnswer(killer, "box_iou", np.random.default_rng(0))(boxes, boxes)
        killer.close()  # asks the dead server: the worker is killed, nothing hangs
        server.process.wait(timeout=10)
        second = start("def box_iou(a, b):\n    return np.ones(2)")
        assert remote.fork_server() is not server
        assert RemoteAnswer(second, "box_iou", np.random.default_rng(0))(boxes, boxes).sum() == 2
        second.close()
    finally:
        first.close()


def test_check_cell_outputs_give_nbgrader_the_graders_points():
    import nbformat
    from nbgrader.utils import determine_grade

    from segkeras.grading.grade import ExerciseGrade
    from segkeras.grading.nbgrader import SegkerasGrades, autograde_preprocessors, outputs

    for points in (0, 1, 3):
        cell = nbformat.v4.new_code_cell("checks.lab.x(x)", metadata={"nbgrader": {
            "grade": True, "solution": False, "grade_id": "check_x", "points": 3}})
        cell.outputs = outputs(ExerciseGrade("x", points, 3, "" if points == 3 else "a hint"))
        assert determine_grade(cell) == (points, 3)
    pipeline = autograde_preprocessors()
    assert pipeline[pipeline.index(SegkerasGrades) - 1].__name__ == "Execute"
