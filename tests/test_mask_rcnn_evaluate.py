"""COCO box and mask AP of detections (pycocotools) on hand-made cases."""

import numpy as np
import pytest

from segkeras.data.core import Instances
from segkeras.errors import SegkerasError
from segkeras.evaluate import detection_ap


def square(x1, y1, x2, y2, size=64):
    mask = np.zeros((size, size), bool)
    mask[y1:y2, x1:x2] = True
    return mask


TRUTH = [
    Instances(np.stack([square(4, 4, 24, 24), square(30, 30, 60, 50)]),
              np.array([[4, 4, 24, 24], [30, 30, 60, 50]], np.float32), np.array([1, 2])),
    Instances(np.stack([square(10, 10, 40, 40)]), np.array([[10, 10, 40, 40]], np.float32),
              np.array([1])),
]


def detections_of(truth, shift=0, class_offset=0, score=0.9):
    boxes = truth.boxes + np.array([shift, 0, shift, 0], np.float32)
    masks = np.roll(truth.masks, shift, axis=2)
    return {"boxes": boxes, "class_ids": truth.class_ids + class_offset,
            "scores": np.full(len(boxes), score), "masks": masks}


def test_perfect_detections_score_one():
    scores = detection_ap(TRUTH, [detections_of(t) for t in TRUTH])
    for kind in ("box", "mask"):
        assert scores[kind] == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})


def test_shifted_detections_pass_iou_half_but_not_three_quarters():
    # a 20-px square shifted by 5 px: IoU 15/25 = 0.6
    truth = [Instances(np.stack([square(4, 4, 24, 24)]), np.array([[4, 4, 24, 24]], "f4"),
                       np.array([1]))]
    scores = detection_ap(truth, [detections_of(truth[0], shift=5)])
    for kind in ("box", "mask"):
        assert scores[kind]["AP50"] == pytest.approx(1.0)
        assert scores[kind]["AP75"] == pytest.approx(0.0)


def test_wrong_classes_and_no_detections_score_zero():
    assert detection_ap(TRUTH, [detections_of(t, class_offset=1) for t in TRUTH])[
        "box"]["AP"] == 0.0
    empty = {"boxes": np.zeros((0, 4)), "class_ids": np.zeros(0), "scores": np.zeros(0),
             "masks": np.zeros((0, 64, 64), bool)}
    assert detection_ap(TRUTH, [empty, empty])["mask"]["AP"] == 0.0


def test_a_confident_false_positive_lowers_ap():
    found = [detections_of(t) for t in TRUTH]
    found[1] = {"boxes": np.concatenate([[[50, 0, 60, 10]], found[1]["boxes"]]),
                "class_ids": np.array([1, 1]), "scores": np.array([0.99, 0.5]),
                "masks": np.concatenate([square(50, 0, 60, 10)[None], found[1]["masks"]])}
    assert 0.5 < detection_ap(TRUTH, found)["box"]["AP"] < 1.0


def test_bad_input_is_reported():
    found = [detections_of(t) for t in TRUTH]
    with pytest.raises(SegkerasError, match="one per image"):
        detection_ap(TRUTH, found[:1])
    found[0]["scores"] = found[0]["scores"][:1]
    with pytest.raises(SegkerasError, match="one each"):
        detection_ap(TRUTH, found)


def test_cocos_undefined_minus_one_is_nan_not_zero(monkeypatch):
    """COCOeval writes -1 where a setting has nothing to score (e.g. AP of large objects where
    there are none): that is no score of 0, so it comes back as NaN."""
    from pycocotools.cocoeval import COCOeval

    summarize = COCOeval.summarize

    def undefined_ap75(self):
        summarize(self)
        self.stats[2] = -1.0

    monkeypatch.setattr(COCOeval, "summarize", undefined_ap75)
    scores = detection_ap(TRUTH, [detections_of(t) for t in TRUTH])
    for kind in ("box", "mask"):
        assert scores[kind]["AP"] == pytest.approx(1.0) and np.isnan(scores[kind]["AP75"])
    no_detection = {"boxes": np.zeros((0, 4)), "class_ids": np.zeros(0, int),
                    "scores": np.zeros(0), "masks": np.zeros((0, 64, 64), bool)}
    assert detection_ap(TRUTH, [no_detection] * 2)["box"]["AP"] == 0.0  # defined: nothing found
