"""Keep the notebooks in step: ``solutions/`` is the single source, ``labs/`` is generated from it.

``python -m segkeras.notebooks`` (``make labs``) rewrites every solution's Colab badge and install
cell from :data:`REPOSITORY`, then writes each lab: nbgrader's ``ClearSolutions`` replaces the code
between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` with a stub, ``ClearOutput`` drops outputs,
both run through nbconvert. ``--check`` only reports labs that are out of date (exit 1).
``--execute NAME...`` first re-runs those solutions in full mode (what instructors commit, e.g.
after a run on a GPU), then writes the labs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import nbformat

REPOSITORY = "https://github.com/segkeras/segkeras"
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
    """Run a solution notebook top to bottom in full mode and save it with its outputs."""
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
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old_environment)
    path.write_text(_text(drop_native_logs(notebook)), encoding="utf-8")


def lab_from_solution(solution: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The student version of a solution notebook: solutions stubbed out, no outputs."""
    from nbconvert.exporters import NotebookExporter
    from nbgrader.preprocessors import ClearOutput, ClearSolutions
    from traitlets.config import Config

    config = Config()
    config.ClearSolutions.enforce_metadata = False
    exporter = NotebookExporter(config=config)
    exporter.register_preprocessor(ClearSolutions(config=config), enabled=True)
    exporter.register_preprocessor(ClearOutput(config=config), enabled=True)
    body, _ = exporter.from_notebook_node(solution)
    lab = nbformat.reads(body, as_version=4)
    for cell in lab.cells:
        cell.get("metadata", {}).pop("execution", None)
    return stamp(lab, "labs", name)


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _text(notebook: nbformat.NotebookNode) -> str:
    return nbformat.writes(notebook) + "\n"


def sync(solutions: Path = Path("solutions"), labs: Path = Path("labs")) -> list[Path]:
    """Stamp the solutions and regenerate every lab; returns the files written."""
    written = []
    labs.mkdir(exist_ok=True)
    for path in sorted(solutions.glob("*.ipynb")):
        solution = drop_native_logs(stamp(_read(path), "solutions", path.name))
        path.write_text(_text(solution), encoding="utf-8")
        target = labs / path.name
        target.write_text(_text(lab_from_solution(solution, path.name)), encoding="utf-8")
        written += [path, target]
    return written


def stale(solutions: Path = Path("solutions"), labs: Path = Path("labs")) -> list[str]:
    """Names of labs that are missing or differ from what :func:`sync` would write."""
    out_of_date = []
    for path in sorted(solutions.glob("*.ipynb")):
        expected = _text(lab_from_solution(stamp(_read(path), "solutions", path.name), path.name))
        target = labs / path.name
        if not target.exists() or target.read_text(encoding="utf-8") != expected:
            out_of_date.append(path.name)
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
            print(f"labs/{name} is out of date: run `make labs`")
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
