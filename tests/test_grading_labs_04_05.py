"""Labs 04 and 05 graded out of process (``python -m segkeras grade`` on a class folder, one run
per lab): the solution gets full marks, and each of issue 21's wrong answers for these labs loses
exactly its exercise's points (or part): a loop-based hourglass behind ``functools.partial``,
intermediate stacks weighted 1e-9, ``max(output_names)`` for the last stack, the library captured
at definition time, a wrong ``bilinear_sample`` under a right ``roi_align_box`` (its part kept),
fixed class ids instead of the argument, ``paste_mask`` thresholded at 0.3, a numpy mask loss, the
check's reference as an answer, an untouched exercise."""

import csv
import time
from pathlib import Path

import nbformat
import pytest

from segkeras import notebooks
from segkeras.grading import cli

ROOT = Path(__file__).resolve().parents[1]
STUB = "def {name}(*args, **kwargs):\n    raise NotImplementedError()\n"

LOOP_IN_PARTIAL = '''import functools


@functools.partial
def hourglass_module(x, depth, filters, name="hg"):
    branches = []
    for level in range(depth, 0, -1):
        branches.append(residual(x, filters, f"{name}_d{level}_skip"))
        x = layers.MaxPooling2D(2, name=f"{name}_d{level}_pool")(x)
        x = residual(x, filters, f"{name}_d{level}_down")
    x = residual(x, filters, f"{name}_d1_bottom")
    for level in range(1, depth + 1):
        x = layers.UpSampling2D(2, name=f"{name}_d{level}_upsample")(
            residual(x, filters, f"{name}_d{level}_up"))
        x = layers.Add(name=f"{name}_d{level}_add")([branches.pop(), x])
    return x
'''
SUPERVISION_OFF = '''def stack_losses(model):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    last = f"stack_{len(model.output_names)}"
    return ({name: loss for name in model.output_names},
            {name: 1.0 if name == last else 1e-9 for name in model.output_names})
'''
LARGEST_NAME = '''def final_stack(model):
    return keras.Model(model.input, model.get_layer(max(model.output_names)).output)
'''
LAST_NAME = '''def final_stack(model):
    return keras.Model(model.input, model.get_layer(model.output_names[-1]).output)
'''
CAPTURED_LIBRARY = '''from segkeras.train import per_output as _per_output
_saved = _per_output


def stack_losses(model):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    return _saved(model, loss), _saved(model, 1.0)
'''
SWAPPED_SAMPLE = '''def bilinear_sample(features, y, x):
    y, x = x, y
    height, width = features.shape[:2]
    if y < -1 or y > height or x < -1 or x > width:
        return np.zeros(features.shape[-1])
    y, x = min(max(y, 0.0), height - 1.0), min(max(x, 0.0), width - 1.0)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    dy, dx = y - y0, x - x0
    return ((1 - dy) * ((1 - dx) * features[y0, x0] + dx * features[y0, x1])
            + dy * ((1 - dx) * features[y1, x0] + dx * features[y1, x1]))
'''
LIBRARY_TARGET = '''from segkeras.data.instances import mask_targets


def mask_target(mask, box, size=28):
    return np.asarray(mask_targets(np.asarray(mask, "float32")[None],
                                   np.asarray(box, "float32")[None], size))[0]
'''
FIXED_CLASS_IDS = '''def select_class_masks(logits, class_ids):
    ids = np.resize(np.array([1, 3, 2, 3, 1, 2]), len(logits)) % logits.shape[-1]
    return np.asarray(logits)[np.arange(len(logits)), ..., ids]
'''
NUMPY_LOSS = '''def mask_loss(targets, logits):
    targets, logits = np.asarray(targets), np.asarray(logits, np.float64)
    valid = targets >= 0
    losses = (np.maximum(logits, 0) - logits * np.clip(targets, 0, 1)
              + np.log1p(np.exp(-np.abs(logits))))
    return losses[valid].mean() if valid.any() else 0.0
'''
REFERENCE_PASTE = '''def paste_mask(mask, box, height, width):
    import segkeras
    return segkeras.checks.mask_head.library_paste_mask(mask, box, height, width)
'''


def _solution(name: str) -> nbformat.NotebookNode:
    path = ROOT / "solutions" / name
    return notebooks.grade_metadata(nbformat.read(path, as_version=4), path.name)


def _source(notebook, name: str) -> str:
    return _cell(notebook, name).source


def _cell(notebook, name: str):
    return next(cell for cell in notebook.cells
                if cell.metadata.get("nbgrader", {}).get("grade_id") == name)


def _submission(name: str, **answers) -> nbformat.NotebookNode:
    """The solution with the answer cells of ``answers`` (function name -> source: None for the
    untouched stub, "" for an emptied cell) replaced."""
    notebook = _solution(name)
    for function, source in answers.items():
        _cell(notebook, function).source = STUB.format(name=function) if source is None \
            else source
    return notebook


def _roi_align_swapping_xy() -> str:
    source = _source(_solution("05_mask_rcnn_head.ipynb"), "roi_align_box")
    swapped = source.replace("x1, y1, x2, y2 = np.asarray(box", "y1, x1, y2, x2 = np.asarray(box")
    assert swapped != source
    return swapped


LAB04 = ("04_stacked_hourglass", {"hourglass_module": 3, "intermediate_supervision": 2,
                                  "final_stack": 1})
LAB05 = ("05_mask_rcnn_head", {"roi_align_box": 3, "mask_target": 2, "select_class_masks": 2,
                               "mask_loss": 2, "paste_mask": 2})


def _cases(lab: str) -> dict:
    """student -> (submission, {exercise: expected points})."""
    name = f"{lab}.ipynb"
    if lab == LAB04[0]:
        return {
            "solution": (_submission(name), LAB04[1]),
            "wrong": (_submission(name, hourglass_module=LOOP_IN_PARTIAL,
                                  stack_losses=SUPERVISION_OFF, final_stack=LARGEST_NAME),
                      dict.fromkeys(LAB04[1], 0)),
            "mixed": (_submission(name, hourglass_module=None, stack_losses=CAPTURED_LIBRARY,
                                  final_stack=LAST_NAME),
                      dict.fromkeys(LAB04[1], 0)),
        }
    return {
        "solution": (_submission(name), LAB05[1]),
        "wrong": (_submission(name, bilinear_sample=SWAPPED_SAMPLE, mask_target=LIBRARY_TARGET,
                              select_class_masks=FIXED_CLASS_IDS, mask_loss=NUMPY_LOSS,
                              paste_mask=_source(_solution(name), "paste_mask").replace(
                                  "resized >= 0.5", "resized >= 0.3")),
                  {"roi_align_box": 2, "mask_target": 0, "select_class_masks": 0,
                   "mask_loss": 0, "paste_mask": 0}),
        "mixed": (_submission(name, roi_align_box=_roi_align_swapping_xy(), mask_target=None,
                              select_class_masks="", mask_loss="", paste_mask=REFERENCE_PASTE),
                  {"roi_align_box": 1, "mask_target": 0, "select_class_masks": 0,
                   "mask_loss": 0, "paste_mask": 0}),
    }


def _grade(lab: str, root: Path) -> tuple[dict, dict, dict, float]:
    expected = {}
    for student, (notebook, points) in _cases(lab).items():
        folder = root / "submitted" / student / lab
        folder.mkdir(parents=True)
        nbformat.write(notebook, folder / f"{lab}.ipynb")
        expected[student] = points
    started = time.perf_counter()
    assert cli.main(["grade", lab, str(root / "submitted"), "--out", str(root / "grades"),
                     "--seed", "21"]) == 0
    seconds = (time.perf_counter() - started) / len(expected)
    with open(root / "grades" / "grades.csv", newline="", encoding="utf-8") as table:
        rows = list(csv.DictReader(table))
    points = {}
    messages = {}
    for row in rows:
        points.setdefault(row["student"], {})[row["exercise"]] = int(row["points"])
        messages[row["student"], row["exercise"]] = row["message"]
    return points, expected, messages, seconds


@pytest.mark.slow
def test_lab04_solution_full_each_wrong_answer_loses_its_points(tmp_path):
    points, expected, messages, seconds = _grade(LAB04[0], tmp_path)
    assert points == expected, messages
    assert "nests at most 1 call" in messages["wrong", "hourglass_module"]
    assert "weight 1.0" in messages["wrong", "intermediate_supervision"]
    assert "outputs stack_9" in messages["wrong", "final_stack"]
    assert "alphabetical order" in messages["mixed", "final_stack"]
    assert "not answered" in messages["mixed", "hourglass_module"]
    assert "write it yourself" in messages["mixed", "intermediate_supervision"]
    print(f"grading one lab-04 submission took {seconds:.0f} s on average")


@pytest.mark.slow
def test_lab05_solution_full_each_wrong_answer_loses_its_points(tmp_path):
    points, expected, messages, seconds = _grade(LAB05[0], tmp_path)
    assert points == expected, messages
    assert "y is the row" in messages["wrong", "roi_align_box"]
    assert "roi_align_box is right" in messages["wrong", "roi_align_box"]
    assert "x and y are swapped" in messages["mixed", "roi_align_box"]
    assert "bilinear_sample is right" in messages["mixed", "roi_align_box"]
    assert "write it yourself" in messages["wrong", "mask_target"]
    assert "exactly 0.5" in messages["wrong", "paste_mask"]
    assert "model.fit" in messages["wrong", "mask_loss"]
    assert ".checks" in messages["mixed", "paste_mask"]
    assert "not answered" in messages["mixed", "mask_target"]
    print(f"grading one lab-05 submission took {seconds:.0f} s on average")
