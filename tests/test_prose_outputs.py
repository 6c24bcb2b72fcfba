"""Every number the solutions' prose takes from a run (marked `<!-- from: pattern -->`) agrees
with the committed output it names; a planted mismatch is caught."""

import copy
from pathlib import Path

import nbformat
import pytest

from segkeras import prose

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_the_prose_agrees_with_the_committed_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    assert prose.disagreements(notebook) == []
    if path.name[:2] in ("01", "02", "03"):
        assert len(prose.claims(notebook)) >= 5, "the lab's measured numbers are marked"


def _planted(notebook, claim: prose.Claim, written: str):
    changed = copy.deepcopy(notebook)
    cell = changed.cells[claim.cell]
    marker = f"{claim.written}<!-- from: {claim.pattern} -->"
    assert marker in cell.source
    cell.source = cell.source.replace(marker, f"{written}<!-- from: {claim.pattern} -->", 1)
    return changed


def test_a_changed_number_is_caught():
    notebook = nbformat.read(ROOT / "solutions" / "01_fcn.ipynb", as_version=4)
    claim = next(c for c in prose.claims(notebook) if c.pattern.startswith("fcn8s: *"))
    assert claim.written == "0.77"
    problems = prose.disagreements(_planted(notebook, claim, "0.78"))
    assert len(problems) == 1 and "the output says 0.773" in problems[0]
    assert prose.disagreements(_planted(notebook, claim, "0.773")) == []  # finer, still right
    assert prose.disagreements(_planted(notebook, claim, "0.8")) == []  # coarser, still right
    assert prose.disagreements(_planted(notebook, claim, "0.772")) != []


def test_a_changed_output_and_a_pattern_that_matches_nothing_are_caught():
    notebook = nbformat.read(ROOT / "solutions" / "02_transposed_convolutions.ipynb", as_version=4)
    rerun = copy.deepcopy(notebook)
    for cell in rerun.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                output.text = output.text.replace("mean IoU 0.520", "mean IoU 0.470")
    naming = [f"cell {c.cell}" for c in prose.claims(notebook)
              if c.pattern.startswith("unpooling * valid")]
    assert naming and [problem.split(":")[0] for problem in prose.disagreements(rerun)] == naming
    renamed = copy.deepcopy(notebook)
    claim = prose.claims(notebook)[0]
    renamed.cells[claim.cell].source = renamed.cells[claim.cell].source.replace(
        f"<!-- from: {claim.pattern} -->", "<!-- from: no such line {} -->", 1)
    assert "no output line above it matches" in prose.disagreements(renamed)[0]


def test_patterns_keys_and_percentages():
    cell = nbformat.v4.new_code_cell("print(...)")
    cell.outputs = [nbformat.v4.new_output("stream", text=(
        "fcn8s_miou = 0.706\n  model b: kept 24% of 4,461 crops\nmodel bb: kept 30%\n"))]
    notebook = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_markdown_cell(
        "0.71<!-- from: fcn8s_miou --> and 24%<!-- from: model b: kept {}% --> of "
        "4,461<!-- from: model b: * of {} crops --> (30%<!-- from: model bb: kept {}% -->)"),
        nbformat.v4.new_markdown_cell("0.706<!-- from: fcn8s_miou -->")])
    notebook.cells.insert(2, nbformat.v4.new_code_cell("print(...)"))
    notebook.cells[2].outputs = [nbformat.v4.new_output("stream", text="fcn8s_miou = 0.5\n")]
    assert [claim.written for claim in prose.claims(notebook)] == [
        "0.71", "24", "4,461", "30", "0.706"]
    assert prose.disagreements(notebook) == [  # the nearest output above the claim counts
        "cell 3: 0.706 <!-- from: fcn8s_miou -->: the output says 0.5"]
    notebook.cells[3].source = "0.5<!-- from: fcn8s_miou -->"
    assert prose.disagreements(notebook) == []
    notebook.cells[1].source = "0.70<!-- from: fcn8s_miou -->"
    assert "the output says 0.706" in prose.disagreements(notebook)[0]
