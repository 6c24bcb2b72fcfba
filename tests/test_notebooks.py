"""labs/ is generated from solutions/ and stays in sync; every notebook has the course furniture;
each lab runs up to its first exercise. (nbval executes the solutions themselves: `make test`.)"""

import os
from pathlib import Path

import nbformat
import pytest

from segkeras import notebooks

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
STUB = "raise NotImplementedError()"


def _code(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_there_are_five_labs_with_the_same_names():
    assert len(SOLUTIONS) == 5
    assert sorted(p.name for p in (ROOT / "labs").glob("*.ipynb")) == [p.name for p in SOLUTIONS]


def test_labs_are_up_to_date_with_solutions():
    out_of_date = notebooks.stale(ROOT / "solutions", ROOT / "labs")
    assert out_of_date == [], f"run `make labs`: {out_of_date}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solution_has_the_course_furniture(path):
    solution = nbformat.read(path, as_version=4)
    text = "\n".join(cell.source for cell in solution.cells)
    assert notebooks.colab_url("solutions", path.name) in text, "Colab badge"
    tags = [tag for cell in solution.cells for tag in cell.get("metadata", {}).get("tags", [])]
    assert "setup" in tags and "parameters" in tags
    assert "SEGKERAS_QUICK" in text and "SEGKERAS_WEIGHTS" in text
    assert solution.metadata.get("accelerator") == "GPU", "Colab should ask for a GPU"
    assert "### BEGIN SOLUTION" in text and "checks." in text and "NBVAL_CHECK_OUTPUT" in text
    assert any(cell.get("outputs") for cell in _code(solution)), "solutions keep their outputs"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_lab_has_no_outputs_and_no_solutions(path):
    lab = nbformat.read(ROOT / "labs" / path.name, as_version=4)
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in _code(lab))
    text = "\n".join(cell.source for cell in lab.cells)
    assert "BEGIN SOLUTION" not in text and STUB in text
    assert notebooks.colab_url("labs", path.name) in text


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_lab_runs_up_to_the_first_exercise(path, monkeypatch):
    from nbclient import NotebookClient

    lab = nbformat.read(ROOT / "labs" / path.name, as_version=4)
    first_exercise = next(i for i, cell in enumerate(lab.cells) if STUB in cell.source)
    lab.cells = lab.cells[:first_exercise]
    monkeypatch.setenv("SEGKERAS_QUICK", "1")
    monkeypatch.setenv("SEGKERAS_WEIGHTS", "none")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    client = NotebookClient(lab, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "labs")}})
    client.execute()  # raises CellExecutionError on the first failing cell


def test_sync_writes_labs_from_a_solution(tmp_path):
    solutions, labs = tmp_path / "solutions", tmp_path / "labs"
    solutions.mkdir()
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell(
            "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            "(https://colab.research.google.com/github/old/place/blob/main/solutions/x.ipynb)"),
        nbformat.v4.new_code_cell(
            "print('keep me')\n### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION"),
    ]
    notebook.cells[1].outputs = [nbformat.v4.new_output("stream", text="keep me\n")]
    nbformat.write(notebook, solutions / "01_x.ipynb")
    assert notebooks.stale(solutions, labs) == ["01_x.ipynb"]
    notebooks.sync(solutions, labs)
    assert notebooks.stale(solutions, labs) == []
    lab = nbformat.read(labs / "01_x.ipynb", as_version=4)
    assert "answer = 42" not in lab.cells[1].source and STUB in lab.cells[1].source
    assert "print('keep me')" in lab.cells[1].source and lab.cells[1].outputs == []
    assert notebooks.colab_url("labs", "01_x.ipynb") in lab.cells[0].source
    solution = nbformat.read(solutions / "01_x.ipynb", as_version=4)
    assert solution.cells[1].outputs, "solution keeps outputs"
    os.remove(labs / "01_x.ipynb")
    assert notebooks.stale(solutions, labs) == ["01_x.ipynb"]


def test_native_tensorflow_log_lines_are_dropped_from_outputs():
    cell = nbformat.v4.new_code_cell("import keras")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=(
            "WARNING: All log messages before absl::InitializeLog() is called "
            "are written to STDERR\n"
            "I0000 00:00:1795523312.058389   29477 port.cc:153] "
            "oneDNN custom operations are on.\n")),
        nbformat.v4.new_output("stream", name="stderr",
                               text="I0000 00:00:1.0 1 x.cc:1] a\nreal warning\n"),
        nbformat.v4.new_output("stream", name="stdout",
                               text="I0000 stays: it is the notebook's print\n"),
    ]
    notebook = nbformat.v4.new_notebook(cells=[cell])
    outputs = notebooks.drop_native_logs(notebook).cells[0].outputs
    assert [output.text for output in outputs] == [
        "real warning\n", "I0000 stays: it is the notebook's print\n"]
