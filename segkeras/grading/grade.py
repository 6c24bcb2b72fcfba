"""Grading a submission: each exercise's answer runs in its own worker (two started ahead), the
lab's judge runs here on a :class:`~segkeras.grading.remote.RemoteAnswer` with inputs drawn from a
hidden seed."""

from __future__ import annotations

import secrets
import zlib
from dataclasses import dataclass
from pathlib import Path

import nbformat
import numpy as np

from segkeras.checks import core
from segkeras.errors import SegkerasError
from segkeras.grading import submission
from segkeras.grading.remote import RemoteAnswer, Worker

AHEAD = 2  # workers alive at once: the next one imports while the judge works


@dataclass(frozen=True)
class ExerciseGrade:
    """One exercise's grade."""

    exercise: str
    points: int
    max_points: int
    message: str

    @property
    def passed(self) -> bool:
        return self.points == self.max_points

    def __str__(self) -> str:
        mark = "✓" if self.passed else "✗"
        line = f"{mark} {self.exercise}: {self.points}/{self.max_points} points"
        return line if not self.message else f"{line}\n  hint: {self.message}"


def draw_seed() -> int:
    """A hidden seed: the grading inputs no student can know in advance."""
    return secrets.randbits(32)


def grade_answers(lab: str, answers: dict[str, str | None], seed: int | None = None,
                  timeout: float | None = None) -> list[ExerciseGrade]:
    """Grade ``answers`` (exercise -> answer source, None if missing) of lab ``lab``."""
    setup, spec = submission.shipped(lab)
    module = core.lab_module(spec["module"])
    judges = module.LAB
    seed = draw_seed() if seed is None else int(seed)
    exercises = {name: info["functions"] for name, info in spec["exercises"].items()}
    order = list(spec["exercises"])
    workers: dict[str, Worker] = {}

    def start(index: int) -> None:
        for name in order[index:]:
            if len(workers) >= AHEAD:
                return
            if name not in workers and answers.get(name) is not None:
                workers[name] = Worker(judges.name, name, exercises[name], setup, answers[name],
                                       exercises, timeout or judges.timeouts[name])

    grades = []
    try:
        for index, name in enumerate(order):
            start(index)
            points = judges.exercises[name]
            if answers.get(name) is None:
                grades.append(ExerciseGrade(name, 0, points, core.NOT_ANSWERED))
                continue
            worker = workers[name]
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            result = core.outcome(judges.judges[name], name, points,
                                  RemoteAnswer(worker, name, rng))
            grades.append(ExerciseGrade(name, result.points, points, result.message))
            workers.pop(name).close()
    finally:
        for worker in workers.values():
            worker.close()
    return grades


def grade_notebook(path: str | Path, lab: str | None = None, seed: int | None = None,
                   timeout: float | None = None) -> list[ExerciseGrade]:
    """Grade the submitted notebook at ``path``: one :class:`ExerciseGrade` per exercise of its
    lab (``lab``, else the notebook's ``metadata.segkeras.lab``, else its check cells')."""
    try:
        notebook = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as error:
        raise SegkerasError(f"cannot read notebook {path}: {error}") from None
    lab = lab or submission.lab_of(notebook)
    if lab is None:
        raise SegkerasError(f"{path}: which lab is this? give it (segkeras grade LAB ...)")
    _, spec = submission.shipped(lab)
    return grade_answers(spec["lab"], submission.answer_sources(notebook, spec), seed, timeout)
