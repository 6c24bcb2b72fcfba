"""The grader's outputs for a class: ``grades.csv`` (student, exercise, points, max, message) and
one feedback file per student, written atomically; an earlier grading is kept unless asked."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from segkeras.errors import SegkerasError
from segkeras.grading.grade import ExerciseGrade
from segkeras.runs import atomic_write_text

_UNSAFE = re.compile(r"[^\w.@+-]+")


def find_submissions(paths: list[str | Path]) -> list[tuple[str, Path]]:
    """``(student, notebook)`` for each notebook given or found (recursively) in the folders
    given. nbgrader's ``submitted/<student>/<assignment>/x.ipynb`` layout names the student;
    otherwise the file's stem does. A student with several notebooks gets ``student-stem``."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(notebook for notebook in path.rglob("*.ipynb")
                            if ".ipynb_checkpoints" not in notebook.parts)
        elif path.suffix == ".ipynb" and path.is_file():
            found.append(path)
        else:
            raise SegkerasError(f"{path}: not a notebook or a folder of notebooks")
    if not found:
        raise SegkerasError(f"no notebooks in {', '.join(map(str, paths))}")
    named = []
    for notebook in found:
        parts = notebook.resolve().parts
        student = parts[-3] if len(parts) >= 4 and parts[-4] == "submitted" else notebook.stem
        named.append((_UNSAFE.sub("_", student), notebook))
    counts = {}
    for student, _ in named:
        counts[student] = counts.get(student, 0) + 1
    return [(f"{student}-{_UNSAFE.sub('_', notebook.stem)}" if counts[student] > 1 else student,
             notebook) for student, notebook in named]


def feedback(lab: str, student: str, grades: list[ExerciseGrade]) -> str:
    """One student's feedback in Markdown: the total, then each exercise with its hint."""
    points = sum(grade.points for grade in grades)
    maximum = sum(grade.max_points for grade in grades)
    lines = [f"# {lab}: {student}", "", f"**{points}/{maximum} points**", ""]
    for grade in grades:
        mark = "✓" if grade.passed else "✗"
        lines.append(f"- {mark} **{grade.exercise}**: {grade.points}/{grade.max_points} points")
        if grade.message:
            lines.append(f"  - {grade.message}")
    return "\n".join(lines) + "\n"


def check_out(out: str | Path, overwrite: bool) -> Path:
    """The output folder, refusing one that holds an earlier grading unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SegkerasError(f"--out {out} is a file, not a folder")
    if (out / "grades.csv").exists() and not overwrite:
        raise SegkerasError(f"{out / 'grades.csv'} exists (an earlier grading): pass --overwrite "
                            "to replace it, or another --out")
    return out


def write_report(out: str | Path, lab: str, results: dict[str, list[ExerciseGrade]],
                 overwrite: bool = False) -> Path:
    """Write ``out/grades.csv`` and ``out/feedback/<student>.md``; returns the CSV's path."""
    out = check_out(out, overwrite)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["student", "exercise", "points", "max", "message"])
    for student, grades in results.items():
        for grade in grades:
            writer.writerow([student, grade.exercise, grade.points, grade.max_points,
                             grade.message])
        atomic_write_text(out / "feedback" / f"{student}.md", feedback(lab, student, grades))
    return atomic_write_text(out / "grades.csv", table.getvalue())
