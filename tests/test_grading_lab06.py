"""Lab 6 graded out of process, through ``python -m segkeras grade`` on a class folder: the
solution gets full marks, the untouched lab 0, and each wrong answer and tamper of issue 21
(environment flip, rebinding checks, forging results, patching numpy, references and library code
as answers, an answer that special-cases the symbolic probe, an infinite loop, sys.exit, a
crashing import) scores exactly what the honest part of the submission earns."""

import csv
import time

import nbformat
import pytest
from grading_lab06 import POINTS, cases

from segkeras.grading import cli


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    expected = {}
    for student, (notebook, points) in cases().items():
        folder = root / "submitted" / student / "lab06"
        folder.mkdir(parents=True)
        nbformat.write(notebook, folder / "06_boxes_to_masks.ipynb")
        expected[student] = points
    out = root / "grades"
    started = time.perf_counter()
    code = cli.main(["grade", "06_boxes_to_masks", str(root / "submitted"), "--out", str(out),
                     "--seed", "21", "--timeout", "10"])
    seconds = (time.perf_counter() - started) / len(expected)
    return code, out, expected, seconds


def test_each_submission_scores_what_its_honest_part_earns(graded, capsys):
    code, out, expected, seconds = graded
    assert code == 0
    with open(out / "grades.csv", newline="", encoding="utf-8") as table:
        rows = list(csv.DictReader(table))
    got = {}
    for row in rows:
        got.setdefault(row["student"], {})[row["exercise"]] = int(row["points"])
        assert int(row["max"]) == POINTS[row["exercise"]]
        assert (row["message"] == "") == (int(row["points"]) == POINTS[row["exercise"]])
    assert got == expected
    messages = {(row["student"], row["exercise"]): row["message"] for row in rows}
    assert "ran out of time (10 s)" in messages["hostile", "box_iou"]
    assert "ModuleNotFoundError" in messages["hostile", "encode_boxes"]
    assert messages["lazy", "match_anchors"] == "your code ended the process (SystemExit: 0)"
    assert "keras.ops" in messages["lazy", "box_iou"]
    assert "encode_box_to_deltas" in messages["lazy", "encode_boxes"]
    assert "write it yourself" in messages["captured", "box_iou"]
    assert "not answered" in messages["untouched", "box_iou"]
    assert "earlier index comes first" in messages["hostile", "nms"]
    assert "strictly above the threshold" in messages["borrowed", "nms"]
    assert "different classes never suppress" in messages["captured", "nms"]
    assert "traced as a graph" in messages["lazy", "nms"]
    print(f"grading one lab-6 submission took {seconds:.0f} s on average")  # bench/s9_grading.py


def test_feedback_per_student_and_an_earlier_grading_is_kept(graded, capsys):
    code, out, expected, _ = graded
    assert sorted(path.stem for path in (out / "feedback").glob("*.md")) == sorted(expected)
    text = (out / "feedback" / "tampered.md").read_text(encoding="utf-8")
    assert "**5/10 points**" in text and "✓ **box_iou**: 2/2 points" in text
    assert "dw and dh are logarithms" in text
    before = (out / "grades.csv").read_text(encoding="utf-8")
    capsys.readouterr()
    assert cli.main(["grade", "06_boxes_to_masks", str(out.parent / "submitted"),
                     "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "--overwrite" in error and error.count("\n") == 1
    assert (out / "grades.csv").read_text(encoding="utf-8") == before
    assert cli.main(["grade", "no_such_lab", str(out)]) == 2
    assert "no lab 'no_such_lab'" in capsys.readouterr().err
