"""nbgrader for real, offline: a course directory with lab 5's exercises, released with
``nbgrader generate_assignment``, then autograded in grading mode (``SEGKERAS_GRADING=1``): the
solution gets full points, the untouched lab 0, and a lab with one wrong answer loses exactly that
exercise's points.

To keep it quick the assignment is lab 5 cut down to its graded part: the cell that starts the
lab, the solution cells, the check cells and the final score (what nbgrader grades; the training
cells are the Run-all test's job, in test_notebooks.py).
"""

from pathlib import Path

import nbformat
import pytest

from segkeras import notebooks

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "05_mask_rcnn_head.ipynb"
ASSIGNMENT, NOTEBOOK = "lab05", "mask_head"
# From issue 11's list: paste_mask answered by the library's paste_masks.
pytestmark = pytest.mark.filterwarnings("ignore:Object of type:Warning")  # nbgrader's SQLAlchemy
WRONG_ANSWER = ("paste_mask", '''\
def paste_mask(mask, box, height, width):
    from segkeras.models.mask_head import paste_masks
    return paste_masks(mask[None], box[None], height, width)[0] >= 0.5
''')


def graded_part(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The cells nbgrader grades, with what they need: the cell starting the lab (the imports),
    the solution and check cells, the score."""
    keep = []
    for index, cell in enumerate(solution.cells):
        grading = cell.metadata["nbgrader"]
        if grading["solution"] or grading["grade"] or ".start()" in cell.source \
                or index == len(solution.cells) - 1:
            keep.append(cell)
    solution.cells = keep
    return solution


def answered_with(notebook: nbformat.NotebookNode, grade_id: str, source: str):
    cell = next(cell for cell in notebook.cells
                if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    cell.source = source
    return notebook


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A course directory with the assignment released (the gradebook knows its cells)."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    root = tmp_path_factory.mktemp("course")
    solution = graded_part(notebooks.grade_metadata(nbformat.read(SOLUTION, as_version=4)))
    source = root / "source" / ASSIGNMENT
    source.mkdir(parents=True)
    nbformat.write(solution, source / f"{NOTEBOOK}.ipynb")
    config = Config()
    config.CourseDirectory.root = str(root)
    config.Execute.timeout = 600
    api = NbGraderAPI(config=config)
    result = api.generate_assignment(ASSIGNMENT)
    assert result["success"], result.get("error") or result.get("log")
    released = nbformat.read(root / "release" / ASSIGNMENT / f"{NOTEBOOK}.ipynb", as_version=4)
    return api, root, solution, released


def autograde(course, student: str, notebook: nbformat.NotebookNode, monkeypatch):
    """Submit ``notebook`` for ``student`` and autograde it: (score, max, {grade_id: score})."""
    from nbgrader.api import Gradebook

    api, root, _, _ = course
    submitted = root / "submitted" / student / ASSIGNMENT
    submitted.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, submitted / f"{NOTEBOOK}.ipynb")
    monkeypatch.setenv("SEGKERAS_GRADING", "1")  # the kernel inherits it: failed checks raise
    monkeypatch.setenv("SEGKERAS_QUICK", "1")
    monkeypatch.setenv("SEGKERAS_WEIGHTS", "none")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    result = api.autograde(ASSIGNMENT, student)
    assert result["success"], result.get("error") or result.get("log")
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission_notebook(NOTEBOOK, ASSIGNMENT, student)
        grades = {grade.name: grade.score for grade in submission.grades}
        return submission.score, submission.max_score, grades


def declared_points(solution) -> dict[str, int]:
    return {cell.metadata["nbgrader"]["grade_id"]: cell.metadata["nbgrader"]["points"]
            for cell in solution.cells if cell.metadata["nbgrader"]["grade"]}


def test_the_release_is_the_student_version(course):
    _, _, solution, released = course
    assert declared_points(solution) == declared_points(released)
    text = "\n".join(cell.source for cell in released.cells)
    assert "BEGIN SOLUTION" not in text and "raise NotImplementedError()" in text


def test_a_solution_gets_full_points(course, monkeypatch):
    _, _, solution, _ = course
    score, maximum, grades = autograde(course, "solution", solution, monkeypatch)
    assert maximum == sum(declared_points(solution).values()) > 0
    assert score == maximum and grades == declared_points(solution)


def test_an_untouched_lab_gets_zero(course, monkeypatch):
    _, _, solution, released = course
    score, maximum, grades = autograde(course, "untouched", released, monkeypatch)
    assert (score, maximum) == (0, sum(declared_points(solution).values()))
    assert set(grades.values()) == {0}


def test_one_wrong_answer_loses_exactly_that_exercises_points(course, monkeypatch):
    _, _, solution, _ = course
    grade_id, source = WRONG_ANSWER
    wrong = answered_with(nbformat.from_dict(solution), grade_id, source)
    score, maximum, grades = autograde(course, "wrong", wrong, monkeypatch)
    points = declared_points(solution)
    assert grades == {**points, f"check_{grade_id}": 0}
    assert score == maximum - points[f"check_{grade_id}"]

