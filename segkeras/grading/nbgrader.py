"""nbgrader's autograding through the segkeras grader: :class:`SegkerasGrades` runs right after
``Execute``, grades the notebook's answer sources out of process (the same grades as
``segkeras grade``) and replaces the outputs of every check cell (``check_<exercise>``), which is
what nbgrader scores. In ``nbgrader_config.py``::

    from segkeras.grading.nbgrader import autograde_preprocessors
    c.Autograde.autograde_preprocessors = autograde_preprocessors()
"""

from __future__ import annotations

import nbformat
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Float, Integer

from segkeras.grading import submission
from segkeras.grading.grade import ExerciseGrade, grade_answers


def outputs(grade: ExerciseGrade) -> list:
    """A check cell's outputs that make nbgrader score ``grade``: the line alone for full
    points, plus the points as the cell's result for partial credit, an error for none."""
    line = nbformat.v4.new_output("stream", name="stdout", text=f"{grade}\n")
    if grade.points == grade.max_points:
        return [line]
    if grade.points > 0:
        return [line, nbformat.v4.new_output("execute_result", {"text/plain": str(grade.points)},
                                             execution_count=None)]
    return [line, nbformat.v4.new_output("error", ename="CheckFailed", evalue=grade.message,
                                         traceback=[f"CheckFailed: {grade.message}"])]


class SegkerasGrades(NbGraderPreprocessor):
    """Grade a segkeras lab's answers out of process; the check cells' outputs say the grade."""

    seed = Integer(None, allow_none=True,
                   help="the inputs' seed (default: a hidden one per notebook)").tag(config=True)
    timeout = Float(None, allow_none=True,
                    help="seconds per exercise (default: the lab's)").tag(config=True)

    def preprocess(self, nb, resources):
        lab = submission.lab_of(nb, trust_metadata=False)  # the check cells: locked, restored
        if lab is None:
            return nb, resources
        _, spec = submission.shipped(lab)
        grades = grade_answers(spec["lab"], submission.answer_sources(nb, spec), self.seed,
                               self.timeout)
        by_cell = {f"check_{grade.exercise}": grade for grade in grades}
        for cell in nb.cells:
            grading = cell.get("metadata", {}).get("nbgrader", {})
            if grading.get("grade") and grading.get("grade_id") in by_cell:
                cell.outputs = outputs(by_cell[grading["grade_id"]])
                self.log.info("%s", by_cell[grading["grade_id"]])
        return nb, resources


def autograde_preprocessors() -> list[type]:
    """nbgrader's autograde preprocessors with :class:`SegkerasGrades` right after ``Execute``."""
    from nbgrader.converters import Autograde

    default = list(Autograde.autograde_preprocessors.default_value)
    return default[:default.index(Execute) + 1] + [SegkerasGrades] \
        + default[default.index(Execute) + 1:]
