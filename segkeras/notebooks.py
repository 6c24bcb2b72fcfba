"""Keep the notebooks in step: ``solutions/`` is the single source, ``labs/`` is generated from it.

``python -m segkeras.notebooks`` (``make labs``) stamps every solution: its Colab badge and install
cell from :data:`REPOSITORY`, nbgrader metadata derived from the cells (:func:`grade_metadata`) and
the lab's name (``metadata.segkeras.lab``). Then it writes each lab with nbgrader's release
preprocessors (those of ``nbgrader generate_assignment`` except the one that writes the
gradebook): solutions replaced by stubs, outputs cleared, cells locked, checksums computed; and
the grader's files of each lab (:data:`GRADING`: the setup a worker runs before an answer, and
the exercises' function names and points). ``--check`` only reports labs or grading files that
are out of date (exit 1). ``--execute NAME...`` first re-runs those solutions in full mode (what
instructors commit, e.g. after a run on a GPU), then writes the labs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import nbformat

from segkeras.errors import SegkerasError
from segkeras.grading.submission import check_arguments
from segkeras.runs import atomic_write_text

REPOSITORY = "https://github.com/segkeras/segkeras"
GRADING = Path(__file__).resolve().parent / "resources" / "grading"
BRANCH = "main"
SETUP_TAG = "setup"
SETUP_CELL = """\
# Setup: on Colab (or wherever segkeras is missing) install it from the course repository.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("segkeras") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "git+{repository}"])"""
_BADGE_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^)\s]+")
# Native (C++) log lines TensorFlow writes to stderr on import; ipykernel captures them.
_NATIVE_LOG = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} "
                         r"|To enable the following instructions:).*\n?", re.MULTILINE)


def colab_url(folder: str, name: str) -> str:
    """The "Open in Colab" address of ``folder/name`` in the course repository."""
    repo_path = REPOSITORY.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{repo_path}/blob/{BRANCH}/{folder}/{name}"


def stamp(notebook: nbformat.NotebookNode, folder: str, name: str) -> nbformat.NotebookNode:
    """Point the badge at ``folder/name`` and write the install cell from :data:`REPOSITORY`."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = _BADGE_LINK.sub(colab_url(folder, name), cell.source)
        elif SETUP_TAG in cell.get("metadata", {}).get("tags", []):
            cell.source = SETUP_CELL.format(repository=REPOSITORY)
    return notebook


_DEFINITION = re.compile(r"^(?:def|class)\s+(\w+)", re.MULTILINE)
SOLUTION_MARK = "### BEGIN SOLUTION"
# A written answer's points, in its markdown cell (an HTML comment: students see no markup).
_POINTS = re.compile(r"<!--\s*points:\s*(\d+)\s*-->")
RUBRIC_MARK = "**Rubric**"


def _check_points(lab: str, name: str, where: str) -> tuple[str, int]:
    """The exercise a ``checks.<lab>.<name>`` check grades and its points."""
    try:
        check = getattr(importlib.import_module(f"segkeras.checks.{lab}"), name)
        return getattr(check, "exercise", name), int(check.points)
    except (ImportError, AttributeError) as error:
        raise SegkerasError(f"{where} calls checks.{lab}.{name}, which is not a check: "
                            f"{error}") from None


def grade_metadata(notebook: nbformat.NotebookNode, name: str = "") -> nbformat.NotebookNode:
    """nbgrader metadata from the cells: a code cell with ``### BEGIN SOLUTION`` is a solution
    cell (``grade_id`` the function it defines); a cell that is one ``checks.<lab>.<exercise>(...)``
    call an autograded, locked test cell (``grade_id`` ``check_<exercise>``, the check's points);
    a markdown cell with ``### BEGIN SOLUTION`` a manually graded written answer (the model answer
    and its ``**Rubric**`` inside the block, the points in ``<!-- points: N -->``; ``grade_id``
    ``<lab>_q<k>``, k counting the lab's written answers); every other cell a locked read-only
    cell."""
    seen, questions = set(), 0
    lab = lab_name(notebook)
    for index, cell in enumerate(notebook.cells):
        metadata = {"grade": False, "solution": False, "locked": True,
                    "grade_id": f"cell-{index:02d}", "schema_version": 3}
        call = check_arguments(cell.source) if cell.cell_type == "code" else None
        if cell.cell_type == "markdown" and SOLUTION_MARK in cell.source:
            questions += 1
            metadata = {"grade": True, "solution": True, "locked": False,  # nbgrader's schema
                        "points": _written_points(cell.source, f"{name} cell {index}"),
                        "grade_id": f"{lab or 'lab'}_q{questions}", "schema_version": 3}
        elif cell.cell_type == "code" and SOLUTION_MARK in cell.source:
            defined = _DEFINITION.findall(cell.source)
            metadata.update(solution=True, locked=False,
                            grade_id=defined[0] if defined else f"solution-{index:02d}")
        elif call is not None and call[1] != "total":
            exercise, points = _check_points(*call[:2], where=f"{name} cell {index}")
            metadata.update(grade=True, grade_id=f"check_{exercise}", points=points)
        if metadata["grade_id"] in seen:
            raise SegkerasError(f"{name} cell {index}: a second cell for {metadata['grade_id']}; "
                                "keep one exercise function per solution cell and one check "
                                "call per check cell.")
        seen.add(metadata["grade_id"])
        cell.metadata["nbgrader"] = metadata
    if lab is not None:
        notebook.metadata["segkeras"] = {"lab": lab}
    return notebook


def _written_points(source: str, where: str) -> int:
    """The points of a written answer cell: its ``<!-- points: N -->``; it must carry a rubric."""
    found = _POINTS.findall(source)
    if len(found) != 1 or int(found[0]) <= 0:
        raise SegkerasError(f"{where}: a written answer cell needs one `<!-- points: N -->` line "
                            "(N > 0) with its question")
    block = source.partition(SOLUTION_MARK)[2].partition("### END SOLUTION")[0]
    if not any(line.startswith(RUBRIC_MARK) for line in block.splitlines()):
        raise SegkerasError(f"{where}: put a line starting `{RUBRIC_MARK}` (how the points are "
                            "given) after the model answer, inside the solution block")
    return int(found[0])


def lab_name(notebook: nbformat.NotebookNode) -> str | None:
    """The name of the lab whose checks the notebook calls (None if it calls none)."""
    for cell in notebook.cells:
        call = check_arguments(cell.source) if cell.cell_type == "code" else None
        if call is not None:
            return importlib.import_module(f"segkeras.checks.{call[0]}").LAB.name
    return None


def grading_files(solution: nbformat.NotebookNode, name: str) -> dict[Path, str]:
    """The grader's files of a (stamped) solution: ``<lab>.py`` (the setup) and ``<lab>.json``
    (the spec), by path; none for a notebook without checks."""
    from segkeras.grading.submission import grading_spec

    if lab_name(solution) is None:
        return {}
    setup, spec = grading_spec(solution, name)
    header = (f"# The setup a grading worker runs before an answer of lab {spec['lab']}: generated "
              f"from solutions/{name}\n# by `python -m segkeras.notebooks`; do not edit.\n\n")
    return {GRADING / f"{spec['lab']}.py": header + setup,
            GRADING / f"{spec['lab']}.json": json.dumps(spec, indent=1) + "\n"}


def drop_native_logs(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove TensorFlow's C++ start-up lines from stderr outputs (they differ on every run)."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                output.text = _NATIVE_LOG.sub("", output.text)
        cell.outputs = [output for output in cell.get("outputs", [])
                        if output.get("output_type") != "stream" or output.text]
    return notebook


def execute(path: Path, timeout: int = 3600) -> None:
    """Run a solution notebook top to bottom in full mode (training from scratch: checkpoints go to
    a temporary folder) and save it with its outputs."""
    from nbclient import NotebookClient

    notebook = _read(path)
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("SEGKERAS_QUICK", "SEGKERAS_WEIGHTS")}
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    old_environment = dict(os.environ)
    os.environ.clear()
    os.environ.update(environment)  # the kernel inherits this process's environment
    try:
        with tempfile.TemporaryDirectory() as checkpoints:  # trains from scratch, leaves none
            os.environ["SEGKERAS_CHECKPOINTS"] = checkpoints
            client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old_environment)
    path.write_text(_text(drop_native_logs(notebook)), encoding="utf-8")


def release_preprocessors() -> list[type]:
    """``nbgrader generate_assignment``'s preprocessors, without ``SaveCells`` (the gradebook
    database: the course's ``nbgrader generate_assignment`` fills it)."""
    from nbgrader.converters import GenerateAssignment
    from nbgrader.preprocessors import SaveCells

    pipeline = GenerateAssignment(config=None).preprocessors
    return [preprocessor for preprocessor in pipeline if preprocessor is not SaveCells]


def lab_from_solution(solution: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The student version of a (stamped) solution notebook, as nbgrader releases it."""
    from nbconvert.exporters import NotebookExporter

    exporter = NotebookExporter()
    for preprocessor in release_preprocessors():
        exporter.register_preprocessor(preprocessor(), enabled=True)
    body, _ = exporter.from_notebook_node(solution, resources={"nbgrader": {}})
    lab = nbformat.reads(body, as_version=4)
    for cell in lab.cells:
        cell.get("metadata", {}).pop("execution", None)
    return stamp(lab, "labs", name)


def _stamped(path: Path) -> nbformat.NotebookNode:
    return grade_metadata(stamp(_read(path), "solutions", path.name), str(path))


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _text(notebook: nbformat.NotebookNode) -> str:
    return nbformat.writes(notebook) + "\n"


def sync(solutions: Path = Path("solutions"), labs: Path = Path("labs")) -> list[Path]:
    """Stamp the solutions and regenerate every lab; returns the files written."""
    written = []
    labs.mkdir(exist_ok=True)
    for path in sorted(solutions.glob("*.ipynb")):
        solution = drop_native_logs(_stamped(path))
        path.write_text(_text(solution), encoding="utf-8")
        target = labs / path.name
        target.write_text(_text(lab_from_solution(solution, path.name)), encoding="utf-8")
        written += [path, target]
        for grading, text in grading_files(solution, path.name).items():
            atomic_write_text(grading, text)
            written.append(grading)
    return written


def stale(solutions: Path = Path("solutions"), labs: Path = Path("labs")) -> list[str]:
    """Names of labs that are missing or differ from what :func:`sync` would write."""
    out_of_date = []
    for path in sorted(solutions.glob("*.ipynb")):
        solution = _stamped(path)
        expected = _text(lab_from_solution(solution, path.name))
        target = labs / path.name
        if not target.exists() or target.read_text(encoding="utf-8") != expected:
            out_of_date.append(path.name)
        for grading, text in grading_files(solution, path.name).items():
            if not grading.exists() or grading.read_text(encoding="utf-8") != text:
                out_of_date.append(str(grading.relative_to(GRADING.parents[1])))
    return out_of_date


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segkeras.notebooks", description=__doc__)
    parser.add_argument("--solutions", type=Path, default=Path("solutions"))
    parser.add_argument("--labs", type=Path, default=Path("labs"))
    parser.add_argument("--check", action="store_true", help="only report out-of-date labs")
    parser.add_argument("--execute", nargs="+", metavar="NAME", default=[],
                        help="first re-run these solutions (e.g. 01_fcn.ipynb) in full mode")
    args = parser.parse_args(argv)
    if not args.solutions.is_dir():
        print(f"error: no solutions folder at {args.solutions}; run from the repository root.",
              file=sys.stderr)
        return 2
    if args.check:
        out_of_date = stale(args.solutions, args.labs)
        for name in out_of_date:
            where = name if "/" in name else f"labs/{name}"
            print(f"{where} is out of date: run `make labs`")
        return 1 if out_of_date else 0
    for name in args.execute:
        path = args.solutions / name
        if not path.is_file():
            print(f"error: no notebook {path}; give names like 01_fcn.ipynb.", file=sys.stderr)
            return 2
        print(f"executing {path} in full mode...", flush=True)
        execute(path)
    for path in sync(args.solutions, args.labs):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
