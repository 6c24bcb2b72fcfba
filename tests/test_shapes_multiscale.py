"""The multi-scale shapes set (issue 23): images of varied size and aspect, objects from about 6
to 250 px, written by ``segkeras data multiscale`` as a COCO folder, with AP_S/M/L defined."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from segkeras.cli import main
from segkeras.data import coco, shapes
from segkeras.data.core import boxes_from_masks
from segkeras.evaluate import detection_ap

N = 24


@pytest.fixture(scope="module")
def data():
    return shapes.generate_multiscale(N, seed=0)


def test_image_and_object_sizes_span_the_stated_ranges(data):
    heights, widths = zip(*(image.shape[:2] for image in data.images), strict=True)
    low, high = shapes.MULTISCALE_SIDES
    assert low <= min(heights + widths) and max(heights + widths) <= high
    assert max(heights + widths) - min(heights + widths) > (high - low) / 2  # varied sizes
    aspects = np.array(widths) / np.array(heights)
    assert aspects.min() < 0.8 and aspects.max() > 1.25  # portrait and landscape
    boxes = np.concatenate([objects.boxes for objects in data.instances])
    extents = np.max(boxes[:, 2:] - boxes[:, :2], axis=1)
    assert extents.min() <= 10 and extents.max() >= 200 and extents.max() <= 260
    areas = np.concatenate([objects.masks.sum(axis=(1, 2)) for objects in data.instances])
    small, large = (areas < 32 ** 2).mean(), (areas > 96 ** 2).mean()
    assert small > 0.2 and large > 0.1 and 1 - small - large > 0.15  # COCO's three bins
    for image, mask, objects in zip(data.images, data.masks, data.instances, strict=True):
        assert image.dtype == np.uint8 and mask.shape == image.shape[:2]
        assert objects.masks.shape[1:] == image.shape[:2] and objects.masks.any(axis=(1, 2)).all()


def test_same_seed_same_bytes_and_prefixes(data):
    again = shapes.generate_multiscale(3, seed=0)
    for i in range(3):
        np.testing.assert_array_equal(again.images[i], data.images[i])
        np.testing.assert_array_equal(again.instances[i].masks, data.instances[i].masks)
    assert not np.array_equal(shapes.generate_multiscale(1, seed=1).images[0][:8, :8],
                              data.images[0][:8, :8])


def test_cli_writes_a_coco_folder_that_reads_back_equal(tmp_path, capsys):
    out = tmp_path / "multiscale"
    assert main(["data", "multiscale", "--n", "4", "--out", str(out)]) == 0
    assert "Wrote 4 images" in capsys.readouterr().out
    data = shapes.generate_multiscale(4, seed=0)
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCO(str(out / "annotations.json"))
    loaded = coco.load(out / "annotations.json", out / "images")
    for i, (image, objects) in enumerate(zip(data.images, data.instances, strict=True)):
        np.testing.assert_array_equal(loaded.images[i], image)
        annotations = reference.loadAnns(reference.getAnnIds(imgIds=[i + 1]))
        assert all(a["iscrowd"] == 0 and a["area"] == int(m.sum())
                   for a, m in zip(annotations, objects.masks, strict=True))
        decoded = np.stack([reference.annToMask(a).astype(bool) for a in annotations])
        np.testing.assert_array_equal(decoded, objects.masks)
        bboxes = np.array([a["bbox"] for a in annotations], np.float32)
        np.testing.assert_array_equal(np.concatenate([bboxes[:, :2], bboxes[:, :2] + bboxes[:, 2:]],
                                                     1), objects.boxes)
        np.testing.assert_array_equal(loaded.instances[i].masks, objects.masks)
        np.testing.assert_array_equal(loaded.instances[i].boxes, boxes_from_masks(objects.masks))
        np.testing.assert_array_equal(loaded.instances[i].class_ids, objects.class_ids)
    # an existing dataset is refused unless --overwrite
    assert main(["data", "multiscale", "--n", "2", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert len(json.loads((out / "annotations.json").read_text())["images"]) == 4
    assert main(["data", "multiscale", "--n", "2", "--out", str(out), "--overwrite"]) == 0
    assert len(json.loads((out / "annotations.json").read_text())["images"]) == 2


def test_ap_is_broken_down_into_small_medium_and_large_objects(data):
    def detections(keep):
        found = []
        for objects in data.instances:
            chosen = np.flatnonzero([keep(int(mask.sum())) for mask in objects.masks])
            found.append({"boxes": objects.boxes[chosen], "class_ids": objects.class_ids[chosen],
                          "scores": np.full(len(chosen), 0.9), "masks": objects.masks[chosen]})
        return found

    perfect = detection_ap(data, detections(lambda area: True), by_size=True)
    for kind in ("box", "mask"):
        assert {key: perfect[kind][key] for key in ("AP_S", "AP_M", "AP_L")} == \
            {"AP_S": 1.0, "AP_M": 1.0, "AP_L": 1.0}
    no_small = detection_ap(data, detections(lambda area: area >= 32 ** 2), by_size=True)
    for kind in ("box", "mask"):
        assert no_small[kind]["AP_S"] == 0.0 and no_small[kind]["AP_L"] == 1.0
        assert no_small[kind]["AP"] < 1.0


def test_mask_rcnn_batches_of_mixed_sizes_keep_the_aspect_ratio(data):
    from segkeras.models.mask_rcnn import mask_rcnn_dataset

    inputs, masks = next(iter(mask_rcnn_dataset(data.subset([2, 4]), 256, batch_size=2,
                                                augment=False, shuffle=False, keep_aspect=True)))
    for row, i in enumerate((2, 4)):
        height, width = data.images[i].shape[:2]
        scale = 256 / max(height, width)  # the longer side fits the 256x256 input
        objects = data.instances[i]
        count = min(len(objects), 100)
        np.testing.assert_allclose(inputs["boxes"][row, :count], objects.boxes[:count] * scale,
                                   atol=0.6)
        fitted_height, fitted_width = round(height * scale), round(width * scale)
        image, planes = inputs["image"][row].numpy(), masks[row].numpy()
        assert image[:fitted_height, :fitted_width].min(axis=2).mean() > 0  # the picture
        assert not image[fitted_height:].any() and not image[:, fitted_width:].any()  # padding
        assert not planes[:, fitted_height:].any() and not planes[:, :, fitted_width:].any()
