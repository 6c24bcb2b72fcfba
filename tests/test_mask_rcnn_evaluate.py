"""COCO box and mask AP of detections (pycocotools) on hand-made cases."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segkeras.data.coco import CocoIndex, load
from segkeras.data.core import Instances
from segkeras.data.images import write_png
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


# ------------------------------------------------------------------ crowds and streamed RLE


def _rle_text(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


@pytest.fixture
def crowd_folder(tmp_path):
    """Two 64x64 images: image 1 holds two objects and a crowd region of class 1, image 2 one
    object; written as a COCO folder (polygons, RLE and the crowd as uncompressed RLE)."""
    crowd = square(36, 4, 62, 30)
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        write_png(images / name, np.zeros((64, 64, 3), np.uint8))
    objects = [  # (image id, category id, iscrowd, mask, segmentation)
        (1, 1, 0, square(4, 4, 24, 24), [[4, 4, 24, 4, 24, 24, 4, 24]]),
        (1, 2, 0, square(30, 34, 60, 54), _rle_text(square(30, 34, 60, 54))),
        (1, 1, 1, crowd, {"size": [64, 64], "counts": _uncompressed(crowd)}),
        (2, 1, 0, square(10, 10, 40, 40), _rle_text(square(10, 10, 40, 40))),
    ]
    annotations = []
    for number, (image_id, category_id, iscrowd, mask, segmentation) in enumerate(objects, 1):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append({"id": number, "image_id": image_id, "category_id": category_id,
                            "iscrowd": iscrowd, "segmentation": segmentation,
                            "area": float(mask_utils.area(rle)),  # as COCO files carry them
                            "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    content = {"images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 64},
                          {"id": 2, "file_name": "b.png", "height": 64, "width": 64}],
               "annotations": annotations,
               "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]}
    (tmp_path / "annotations.json").write_text(json.dumps(content))
    return tmp_path


def _uncompressed(mask):
    flat = mask.astype(np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def _detections(folder):
    """Image 1: both objects found, plus a confident class-1 detection on the crowd (and one of
    class 2 there, which the class-1 crowd does not excuse); image 2: its object, shifted."""
    on_crowd = square(38, 6, 60, 28)
    first = {"boxes": np.array([[38, 6, 60, 28], [4, 4, 24, 24], [30, 34, 60, 54],
                                [40, 8, 58, 26]], np.float32),
             "class_ids": np.array([1, 1, 2, 2]), "scores": np.array([0.95, 0.9, 0.8, 0.3]),
             "masks": [_rle_text(m) for m in (on_crowd, square(4, 4, 24, 24),
                                              square(30, 34, 60, 54), square(40, 8, 58, 26))]}
    second = {"boxes": np.array([[13, 10, 43, 40]], np.float32), "class_ids": np.array([1]),
              "scores": np.array([0.7]), "masks": np.roll(square(10, 10, 40, 40), 3, 1)[None]}
    return [first, second]


def _pycocotools_ap(annotation_file, detections, iou_type):
    """The reference: pycocotools' own COCO(file), loadRes and COCOeval on the same numbers."""
    results = []
    for image_id, found in enumerate(detections, 1):
        masks = found["masks"]
        for k, (box, class_id, score) in enumerate(zip(found["boxes"], found["class_ids"],
                                                       found["scores"], strict=True)):
            x1, y1, x2, y2 = (float(v) for v in box)
            mask = masks[k] if isinstance(masks[k], dict) else _rle_text(masks[k])
            results.append({"image_id": image_id, "category_id": int(class_id),
                            "score": float(score), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "segmentation": mask})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotation_file))
        evaluation = COCOeval(coco, coco.loadRes(results), iouType=iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats[:6]


def test_crowd_regions_change_ap_exactly_as_pycocotools_does(crowd_folder):
    index = CocoIndex(crowd_folder / "annotations.json", crowd_folder / "images")
    detections = _detections(crowd_folder)
    ours = detection_ap(index, iter(detections), by_size=True)  # a stream, RLE masks
    for kind, iou_type in (("box", "bbox"), ("mask", "segm")):
        reference = _pycocotools_ap(crowd_folder / "annotations.json", detections, iou_type)
        got = [ours[kind][key] for key in ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")]
        np.testing.assert_allclose(got, np.where(reference < 0, np.nan, reference), rtol=0,
                                   atol=1e-12, err_msg=kind)
    # the same ground truth as Instances plus crowd regions gives the same numbers
    objects, crowd = zip(*(index.objects(i) for i in range(len(index))), strict=True)
    crowds = [Instances(crowd[0][None], np.zeros((1, 4), "f4"), np.array([1])), None]
    given = detection_ap(list(objects), detections, crowds=crowds)
    for kind in ("box", "mask"):
        assert given[kind] == {key: ours[kind][key] for key in ("AP", "AP50", "AP75")}
    # dropping the crowd makes the detection on it a confident false positive
    dropped = detection_ap(load(crowd_folder / "annotations.json", crowd_folder / "images"),
                           detections)
    for kind in ("box", "mask"):
        assert dropped[kind]["AP"] < ours[kind]["AP"] - 0.05, kind


def test_rle_and_boolean_detection_masks_score_the_same():
    found = [detections_of(t, shift=2) for t in TRUTH]
    as_rle = [{**f, "masks": [_rle_text(m) for m in f["masks"]]} for f in found]
    assert detection_ap(TRUTH, as_rle) == detection_ap(TRUTH, found)
    as_rle[0]["masks"][0] = {**as_rle[0]["masks"][0], "size": [32, 32]}
    with pytest.raises(SegkerasError, match="RLE mask of size"):
        detection_ap(TRUTH, as_rle)
