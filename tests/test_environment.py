"""SEGKERAS_QUICK (issue 24): true/yes turn the quick mode on, an unknown value is refused in one
line; never a silent full run."""

import json
from pathlib import Path

import pytest

from segkeras.environment import quick_mode
from segkeras.errors import SegkerasError

SOLUTIONS = sorted((Path(__file__).parent.parent / "solutions").glob("*.ipynb"))


@pytest.mark.parametrize("value", ["1", "true", "True", "YES", " on ", True])
def test_on(value):
    assert quick_mode(value) is True


@pytest.mark.parametrize("value", ["0", "false", "No", "off", "", False])
def test_off(value):
    assert quick_mode(value) is False


@pytest.mark.parametrize("value", ["treu", "2", "quick"])
def test_unknown_values_are_refused(value):
    with pytest.raises(SegkerasError, match=rf"SEGKERAS_QUICK='{value}' is neither on \(1, true, "
                                            r"yes\) nor off"):
        quick_mode(value)


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_every_lab_parses_quick_right_after_its_parameters(path):
    cells = [cell for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code"]
    position = next(i for i, cell in enumerate(cells) if "parameters" in cell["metadata"].get(
        "tags", []))
    parameters, following = "".join(cells[position]["source"]), "".join(
        cells[position + 1]["source"])
    assert 'QUICK = os.environ.get("SEGKERAS_QUICK", "0")' in parameters
    assert "QUICK = environment.quick_mode(QUICK)" in following
    assert following.index("quick_mode") < following.index("if QUICK")


def test_a_lab_on_a_six_image_folder_says_what_to_do():
    """Labs 5 and 6 split VAL_IMAGES / len(data): 16 / 6 = 2.67 used to be reported as a
    validation fraction the student never set."""
    from segkeras.data import shapes

    with pytest.raises(SegkerasError, match=r"the data set has only 6 image\(s\), too few to hold "
                                            r"out 16 for validation .* lower VAL_IMAGES"):
        shapes.generate(6, 32).split(16 / 6)
