"""nbgrader for real, offline, with the segkeras grader in its autograde pipeline (as the README's
instructor guide configures it): a course directory with lab 6's graded part, released with
``nbgrader generate_assignment``, then autograded. The solution gets full points, the untouched
lab 0, a lab with one wrong answer loses exactly that exercise's points, and a tampered lab
(environment flip, rebinding the checks, forging their results, patching numpy, an infinite loop,
sys.exit, a crashing import) scores what its honest answers earn: the check cells' outputs come
from the grader, which runs each answer in its own process, not from the student's kernel.

To keep it quick the assignment is lab 6 cut down to its graded part: the cell that starts the
lab, the solution cells, the check cells and the final score (the training cells are the Run-all
test's job, in test_notebooks.py)."""

import nbformat
import pytest
from grading_lab06 import (
    LOOPING_IOU,
    PATCHED_WRONG_CODER,
    POINTS,
    TAMPERS,
    answer_cell,
    solution,
    solution_source,
)

ASSIGNMENT, NOTEBOOK = "lab06", "boxes"
pytestmark = pytest.mark.filterwarnings("ignore:Object of type:Warning")  # nbgrader's SQLAlchemy
CHECKS = {f"check_{exercise}": points for exercise, points in POINTS.items()}


def graded_part(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The cells nbgrader autogrades, with what they need: the cell starting the lab (the
    imports), the solution and check cells, the score (code cells only: the written answers are
    graded by hand)."""
    keep = []
    for index, cell in enumerate(notebook.cells):
        grading = cell.metadata["nbgrader"]
        if cell.cell_type == "code" and (grading["solution"] or grading["grade"]
                                         or ".start()" in cell.source
                                         or index == len(notebook.cells) - 1):
            keep.append(cell)
    notebook.cells = keep
    return notebook


def answered_with(notebook: nbformat.NotebookNode, **sources) -> nbformat.NotebookNode:
    notebook = nbformat.from_dict(notebook)
    for grade_id, source in sources.items():
        answer_cell(notebook, grade_id).source = source
    return notebook


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A course directory with the assignment released (the gradebook knows its cells) and the
    nbgrader_config.py lines of the README."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    from segkeras.grading.nbgrader import autograde_preprocessors

    root = tmp_path_factory.mktemp("course")
    source = root / "source" / ASSIGNMENT
    source.mkdir(parents=True)
    nbformat.write(graded_part(solution()), source / f"{NOTEBOOK}.ipynb")
    config = Config()
    config.CourseDirectory.root = str(root)
    config.Execute.timeout = 300
    config.Autograde.autograde_preprocessors = autograde_preprocessors()
    config.SegkerasGrades.seed = 21
    config.SegkerasGrades.timeout = 10
    api = NbGraderAPI(config=config)
    result = api.generate_assignment(ASSIGNMENT)
    assert result["success"], result.get("error") or result.get("log")
    released = nbformat.read(root / "release" / ASSIGNMENT / f"{NOTEBOOK}.ipynb", as_version=4)
    solved = nbformat.read(source / f"{NOTEBOOK}.ipynb", as_version=4)
    return api, root, solved, released


def autograde(course, student: str, notebook: nbformat.NotebookNode, monkeypatch):
    """Submit ``notebook`` for ``student`` and autograde it: (score, max, {grade_id: score})."""
    from nbgrader.api import Gradebook

    api, root, _, _ = course
    submitted = root / "submitted" / student / ASSIGNMENT
    submitted.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, submitted / f"{NOTEBOOK}.ipynb")
    monkeypatch.setenv("SEGKERAS_QUICK", "1")
    monkeypatch.setenv("SEGKERAS_WEIGHTS", "none")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    result = api.autograde(ASSIGNMENT, student)
    assert result["success"], result.get("error") or result.get("log")
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission_notebook(NOTEBOOK, ASSIGNMENT, student)
        grades = {grade.name: grade.score for grade in submission.grades}
        return submission.score, submission.max_score, grades


def declared_points(notebook) -> dict[str, int]:
    return {cell.metadata["nbgrader"]["grade_id"]: cell.metadata["nbgrader"]["points"]
            for cell in notebook.cells if cell.metadata["nbgrader"]["grade"]}


def test_the_release_is_the_student_version(course):
    _, _, solved, released = course
    assert declared_points(solved) == declared_points(released) == CHECKS
    text = "\n".join(cell.source for cell in released.cells)
    assert "BEGIN SOLUTION" not in text and "raise NotImplementedError()" in text


def test_a_solution_gets_full_points(course, monkeypatch):
    _, _, solved, _ = course
    score, maximum, grades = autograde(course, "solution", solved, monkeypatch)
    assert (score, maximum) == (10, 10) and grades == CHECKS


def test_an_untouched_lab_gets_zero(course, monkeypatch):
    _, _, _, released = course
    score, maximum, grades = autograde(course, "untouched", released, monkeypatch)
    assert (score, maximum) == (0, 10) and set(grades.values()) == {0}


def test_one_wrong_answer_loses_exactly_that_exercises_points(course, monkeypatch):
    _, _, solved, _ = course
    wrong = answered_with(solved, encode_boxes=PATCHED_WRONG_CODER)
    score, _, grades = autograde(course, "wrong", wrong, monkeypatch)
    assert grades == {**CHECKS, "check_encode_boxes": 0} and score == 8


def test_tampering_scores_only_what_the_honest_answers_earn(course, monkeypatch):
    """box_iou: honest, beside every tamper (the kernel's checks rebound, their results forged,
    numpy patched, SEGKERAS_GRADING=0); match_anchors: loops forever; encode_boxes: honest after
    a sys.exit(); and a cell of its own with a crashing import. Untampered, the kernel would
    print 10/10; nms: honest."""
    _, _, solved, released = course
    tampered = answered_with(
        released, box_iou=TAMPERS + solution_source("box_iou"),
        match_anchors=LOOPING_IOU.replace("box_iou(boxes_a, boxes_b)",
                                          "match_anchors(anchors, gt_boxes, gt_valid)"),
        encode_boxes="import sys\nsys.exit()\n" + solution_source("encode_boxes"),
        nms=solution_source("nms"))
    tampered.cells.insert(1, nbformat.v4.new_code_cell("import no_such_module_anywhere"))
    score, maximum, grades = autograde(course, "tampered", tampered, monkeypatch)
    assert grades == {**CHECKS, "check_match_anchors": 0} and (score, maximum) == (7, 10)
