"""What the grader reads from notebooks: only definitions (imports, functions, constants) from a
cell, the answer cells of each exercise (nbgrader metadata, or the last cell defining the
function), the lab from the notebook, and the shipped lab setup (without the answers)."""

import nbformat
import pytest

from segkeras.errors import SegkerasError
from segkeras.grading import submission

pytestmark = pytest.mark.fast

CELL = '''%matplotlib inline
import os
from segkeras import checks, viz
os.environ["SEGKERAS_GRADING"] = "0"
checks.detection.box_iou = lambda f: None
LIMIT = 0.7
derived = compute()
np.allclose = lambda *a, **k: True

def box_iou(a, b):
    return a
'''


def test_only_definitions_are_kept():
    kept = submission.definitions(CELL)
    assert kept.splitlines()[:3] == ["import os", "from segkeras import viz", "LIMIT = 0.7"]
    assert "def box_iou(a, b):" in kept
    for dropped in ("checks", "environ", "compute", "allclose", "matplotlib"):
        assert dropped not in kept


def spec():
    return {"exercises": {"box_iou": {"functions": ["box_iou"]},
                          "roi": {"functions": ["roi", "sample"]}}}


def test_answer_sources_from_metadata_or_the_last_defining_cell():
    cells = [nbformat.v4.new_code_cell("def box_iou(a, b):\n    return 1\n"),
             nbformat.v4.new_code_cell("def sample(x):\n    return x\n"),
             nbformat.v4.new_code_cell("def box_iou(a, b):\n    return 2\n"),
             nbformat.v4.new_code_cell("def roi(x):\n    return sample(x)\n")]
    notebook = nbformat.v4.new_notebook(cells=cells)
    sources = submission.answer_sources(notebook, spec())
    assert "return 2" in sources["box_iou"] and "return 1" not in sources["box_iou"]
    assert sources["roi"].index("def sample") < sources["roi"].index("def roi")
    cells[0].metadata["nbgrader"] = {"solution": True, "grade_id": "box_iou"}
    assert "return 1" in submission.answer_sources(notebook, spec())["box_iou"]
    assert submission.answer_sources(nbformat.v4.new_notebook(), spec()) == {
        "box_iou": None, "roi": None}
    broken = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("def box_iou(a, b:\n")])
    assert "def box_iou(a, b:" in submission.answer_sources(broken, spec())["box_iou"]


def test_the_lab_comes_from_metadata_or_check_cells():
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("checks.detection.box_iou(box_iou)")])
    assert submission.lab_of(notebook) == "06_boxes_to_masks"
    notebook.metadata["segkeras"] = {"lab": "01_fcn"}
    assert submission.lab_of(notebook) == "01_fcn"
    assert submission.lab_of(notebook, trust_metadata=False) == "06_boxes_to_masks"
    assert submission.lab_name("detection") == "06_boxes_to_masks"
    with pytest.raises(SegkerasError, match="no lab 'nope'"):
        submission.lab_name("nope")


def test_the_shipped_setup_defines_the_lab_but_not_its_answers():
    setup, spec = submission.shipped("06_boxes_to_masks")
    assert list(spec["exercises"]) == ["box_iou", "match_anchors", "encode_boxes", "nms"]
    assert spec["exercises"]["match_anchors"] == {
        "functions": ["match_anchors"], "points": 3, "parts": {"match_anchors": 3}}
    compile(setup, "<setup>", "exec")
    assert "QUICK = True" in setup and "def padded(" in setup and "ANCHOR_SIZES" in setup
    for answer in ("def box_iou", "def match_anchors", "def encode_boxes", "checks"):
        assert answer not in setup
