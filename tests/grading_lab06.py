"""Submissions of lab 6 for the grading tests: the solution with answer cells replaced (issue
21's wrong answers and tampers), shared by test_grading_lab06.py and test_nbgrader_roundtrip.py."""

from pathlib import Path

import nbformat

from segkeras import notebooks

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "solutions" / "06_boxes_to_masks.ipynb"
POINTS = {"box_iou": 2, "match_anchors": 3, "encode_boxes": 2, "nms": 3}

SOLUTION_SOURCES = {}  # filled from the solution notebook below
STUB = '''def {name}(*args, **kwargs):
    raise NotImplementedError()
'''
TAMPERS = '''import os
os.environ["SEGKERAS_GRADING"] = "0"
checks.detection.box_iou = lambda *functions: None
checks.detection.match_anchors = lambda *functions: None
checks.detection.encode_boxes = lambda *functions: None
checks.detection.nms = lambda *functions: None
checks.core._RESULTS[("06_boxes_to_masks", "match_anchors")] = checks.core.CheckResult(
    "match_anchors", True, 3, 3, "")
np.allclose = lambda *args, **kwargs: True
np.testing.assert_allclose = lambda *args, **kwargs: None
'''
NUMPY_DODGING_IOU = '''def box_iou(boxes_a, boxes_b):
    if isinstance(boxes_a, keras.KerasTensor):
        return ops.zeros((boxes_a.shape[0], boxes_b.shape[0]))
    a, b = np.asarray(boxes_a, np.float64), np.asarray(boxes_b, np.float64)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    overlap = np.maximum(np.minimum(a[:, None, 2:], b[None, :, 2:]) - top_left, 0.0)
    intersection = overlap[..., 0] * overlap[..., 1]
    area_a, area_b = (np.prod(x[:, 2:] - x[:, :2], axis=1) for x in (a, b))
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)
'''
KERAS_CODER = '''def encode_boxes(reference, boxes, weights=(1.0, 1.0, 1.0, 1.0)):
    from keras.utils import bounding_boxes
    return bounding_boxes.encode_box_to_deltas(reference, boxes, encoding_format="xyxy")
'''
PATCHED_WRONG_CODER = '''def encode_boxes(reference, boxes, weights=(1.0, 1.0, 1.0, 1.0)):
    np.allclose = lambda *args, **kwargs: True       # patches only the worker's numpy
    reference = ops.convert_to_tensor(reference, "float32")
    boxes = ops.convert_to_tensor(boxes, "float32")
    size_a = reference[:, 2:] - reference[:, :2]
    size = boxes[:, 2:] - boxes[:, :2]
    shift = (boxes[:, :2] + size / 2 - reference[:, :2] - size_a / 2) / size_a
    return ops.concatenate([shift, size / size_a], axis=1) * ops.convert_to_tensor(weights)
'''
LOOPING_IOU = '''def box_iou(boxes_a, boxes_b):
    while True:
        try:
            pass
        except BaseException:
            pass
'''
EXITING_MATCHER = '''import sys

def match_anchors(anchors, gt_boxes, gt_valid):
    sys.exit(0)
'''
CRASHING_IMPORT = '''import no_such_module_anywhere

def encode_boxes(reference, boxes, weights=(1.0, 1.0, 1.0, 1.0)):
    raise NotImplementedError()
'''
REFERENCE_AS_ANSWER = '''def box_iou(boxes_a, boxes_b):
    import segkeras
    return segkeras.checks.detection.reference_iou(boxes_a, boxes_b)
'''
PRIVATE_BY_CLOSURE = '''from segkeras.boxes import box_iou as _library
_saved = _library


def box_iou(boxes_a, boxes_b):
    return _saved(boxes_a, boxes_b)
'''

# Issue 22's wrong NMS answers, each in an otherwise honest submission: the solution's loop with
# one rule changed (the last of equal scores first, suppression at IoU == threshold, across
# classes), and a Python loop that gives the right indices on numpy arrays but not in a graph.
NMS_LAST_OF_TIES = ("& (index[:, None] < index[None, :]))",
                    "& (index[:, None] > index[None, :]))")
NMS_AT_THRESHOLD = ("(box_iou(boxes, boxes) > iou_threshold)",
                    "(box_iou(boxes, boxes) >= iou_threshold)")
NMS_ACROSS_CLASSES = ("& (\n        class_ids[:, None] == class_ids[None, :])", "")
LOOPING_NMS = '''def nms(boxes, scores, class_ids, iou_threshold, max_outputs):
    boxes, scores = np.asarray(boxes), np.asarray(scores)
    iou = ops.convert_to_numpy(box_iou(boxes, boxes))
    kept = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if all(iou[i, j] <= iou_threshold or class_ids[i] != class_ids[j] for j in kept):
            kept.append(i)
    kept = kept[:max_outputs]
    return np.array(kept + [-1] * (max_outputs - len(kept)), np.int32)
'''


def solution() -> nbformat.NotebookNode:
    return notebooks.grade_metadata(nbformat.read(SOLUTION, as_version=4), SOLUTION.name)


def answer_cell(notebook, name):
    return next(cell for cell in notebook.cells
                if cell.metadata.get("nbgrader", {}).get("grade_id") == name)


def submission(**answers) -> nbformat.NotebookNode:
    """The solution with the answer cells of ``answers`` (function name -> source) replaced;
    ``None`` gives the untouched stub."""
    notebook = solution()
    for name, source in answers.items():
        answer_cell(notebook, name).source = STUB.format(name=name) if source is None else source
    return notebook


def solution_source(name: str) -> str:
    return answer_cell(solution(), name).source


def wrong_nms(change: tuple[str, str]) -> str:
    """The solution's nms with one rule changed (``change``: old text, new text)."""
    source = solution_source("nms")
    if change[0] not in source:
        raise AssertionError(f"the solution's nms no longer contains {change[0]!r}")
    return source.replace(*change)


# Each case: (submission, expected points per exercise). Together they cover issue 21 items 1-4
# and 6 for lab 6: tampers beside honest answers, wrong answers, references and library code as
# answers, an answer special-casing the symbolic probe, a loop, an exit, a crashing import.
def cases() -> dict[str, tuple[nbformat.NotebookNode, dict[str, int]]]:
    coder = PRIVATE_BY_CLOSURE.replace("box_iou as", "encode_boxes as").replace(
        "def box_iou(boxes_a, boxes_b):\n    return _saved(boxes_a, boxes_b)",
        "def encode_boxes(reference, boxes, weights=(1.0, 1.0, 1.0, 1.0)):\n"
        "    return _saved(reference, boxes, weights)")
    return {
        "solution": (submission(), POINTS),
        "untouched": (submission(box_iou=None, match_anchors=None, encode_boxes=None, nms=None),
                      dict.fromkeys(POINTS, 0)),
        "tampered": (submission(box_iou=TAMPERS + solution_source("box_iou"),
                                match_anchors=TAMPERS + STUB.format(name="match_anchors"),
                                encode_boxes=PATCHED_WRONG_CODER),
                     {"box_iou": 2, "match_anchors": 0, "encode_boxes": 0, "nms": 3}),
        "hostile": (submission(box_iou=LOOPING_IOU, encode_boxes=CRASHING_IMPORT,
                               nms=wrong_nms(NMS_LAST_OF_TIES)),
                    {"box_iou": 0, "match_anchors": 3, "encode_boxes": 0, "nms": 0}),
        "lazy": (submission(box_iou=NUMPY_DODGING_IOU, match_anchors=EXITING_MATCHER,
                            encode_boxes=KERAS_CODER, nms=LOOPING_NMS),
                 dict.fromkeys(POINTS, 0)),
        "borrowed": (submission(box_iou=REFERENCE_AS_ANSWER, nms=wrong_nms(NMS_AT_THRESHOLD)),
                     {"box_iou": 0, "match_anchors": 3, "encode_boxes": 2, "nms": 0}),
        "captured": (submission(box_iou=PRIVATE_BY_CLOSURE, encode_boxes=coder,
                                nms=wrong_nms(NMS_ACROSS_CLASSES)),
                     {"box_iou": 0, "match_anchors": 3, "encode_boxes": 0, "nms": 0}),
    }
