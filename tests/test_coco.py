"""COCO-format loader: polygons, RLE, crowds, non-contiguous categories, empty images, errors."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segkeras.data import coco, shapes
from segkeras.errors import SegkerasError

HEIGHT, WIDTH = 40, 50


def rectangle(x0, y0, x1, y1, height=HEIGHT, width=WIDTH):
    """Independent mask: pixels with x0 <= col < x1 and y0 <= row < y1."""
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths of 0s and 1s in column-major order."""
    flat = mask.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]]))
    counts = runs.tolist() if flat[0] == 0 else [0, *runs.tolist()]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def compressed_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


@pytest.fixture
def dataset(tmp_path):
    """Three images: one with a polygon, an RLE, an uncompressed RLE and a crowd; one without
    annotations; one of another size. Category ids 12, 3, 7 (not contiguous, not sorted)."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    images = {
        1: ("a.png", rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)),
        2: ("b.jpg", rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)),
        5: ("c.png", rng.integers(0, 256, (20, 30), dtype=np.uint8)),  # grayscale
    }
    for file_name, pixels in images.values():
        Image.fromarray(pixels).save(image_dir / file_name)
    big, small = rectangle(5, 5, 30, 25), rectangle(20, 10, 28, 20)  # small overlaps big
    crowd = rectangle(35, 0, 50, 40)
    annotations = [
        # polygon of the big box's outline (pixel corners): category 3 -> class 1
        {"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0,
         "segmentation": [[5, 5, 30, 5, 30, 25, 5, 25]], "area": 500.0,
         "bbox": [5, 5, 25, 20]},
        {"id": 2, "image_id": 1, "category_id": 12, "iscrowd": 0,
         "segmentation": compressed_rle(small), "area": 80.0, "bbox": [20, 10, 8, 10]},
        {"id": 3, "image_id": 1, "category_id": 7, "iscrowd": 0,
         "segmentation": uncompressed_rle(rectangle(0, 30, 10, 40)), "area": 100.0,
         "bbox": [0, 30, 10, 10]},
        {"id": 4, "image_id": 1, "category_id": 7, "iscrowd": 1,
         "segmentation": uncompressed_rle(crowd), "area": 600.0, "bbox": [35, 0, 15, 40]},
        {"id": 5, "image_id": 5, "category_id": 12, "iscrowd": 0,
         "segmentation": compressed_rle(rectangle(2, 2, 6, 9, 20, 30)), "area": 28.0,
         "bbox": [2, 2, 4, 7]},
    ]
    content = {
        "images": [{"id": i, "file_name": f, "height": p.shape[0], "width": p.shape[1]}
                   for i, (f, p) in images.items()],
        "annotations": annotations,
        "categories": [{"id": 12, "name": "bird"}, {"id": 3, "name": "cat"},
                       {"id": 7, "name": "dog"}],
    }
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(json.dumps(content))
    return annotation_file, image_dir, images, (big, small, crowd)


def test_categories_are_remapped_in_id_order(dataset):
    annotation_file, image_dir, _, _ = dataset
    data = coco.load(annotation_file, image_dir)
    assert data.class_names == ["background", "cat", "dog", "bird"]
    assert data.extra["category_ids"] == [3, 7, 12]
    assert data.extra["class_of_category"] == {3: 1, 7: 2, 12: 3}
    assert data.extra["image_ids"] == [1, 2, 5]
    assert data.extra["file_names"] == ["a.png", "b.jpg", "c.png"]


def test_semantic_mask_polygon_rle_crowd(dataset):
    annotation_file, image_dir, images, (big, small, crowd) = dataset
    data = coco.load(annotation_file, image_dir)
    mask = data.masks[0]
    assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[small], 3)  # the smaller object stays on top
    np.testing.assert_array_equal(mask[rectangle(0, 30, 10, 40)], 2)
    np.testing.assert_array_equal(mask[crowd], 255)  # crowd -> ignore
    # the polygon as pycocotools rasterises it (about the 25x20 box)
    polygon = mask_utils.decode(mask_utils.frPyObjects([[5, 5, 30, 5, 30, 25, 5, 25]],
                                                       HEIGHT, WIDTH))[..., 0].astype(bool)
    assert abs(int(polygon.sum()) - int(big.sum())) <= 25 + 20 + 1
    np.testing.assert_array_equal(mask[polygon & ~small], 1)
    others = polygon | small | crowd | rectangle(0, 30, 10, 40)
    np.testing.assert_array_equal(mask[~others], 0)
    np.testing.assert_array_equal(data.images[0], images[1][1])


def test_instances_exclude_crowds_and_have_tight_boxes(dataset):
    annotation_file, image_dir, _, (_, small, _) = dataset
    data = coco.load(annotation_file, image_dir)
    objects = data.instances[0]
    assert sorted(objects.class_ids.tolist()) == [1, 2, 3]
    index = objects.class_ids.tolist().index(3)
    np.testing.assert_array_equal(objects.masks[index], small)  # RLE decoded exactly
    np.testing.assert_array_equal(objects.boxes[index], [20, 10, 28, 20])
    for object_mask, box in zip(objects.masks, objects.boxes, strict=True):
        rows, cols = np.nonzero(object_mask)
        np.testing.assert_array_equal(box, [cols.min(), rows.min(), cols.max() + 1,
                                            rows.max() + 1])


def test_images_without_annotations_and_mixed_sizes(dataset):
    annotation_file, image_dir, images, _ = dataset
    data = coco.load(annotation_file, image_dir)
    assert isinstance(data.images, list) and len(data) == 3
    assert data.masks[1].max() == 0 and len(data.instances[1]) == 0
    assert data.instances[1].masks.shape == (0, HEIGHT, WIDTH)
    assert data.images[2].shape == (20, 30, 3)  # grayscale converted to RGB
    np.testing.assert_array_equal(data.images[2][..., 1], images[5][1])
    same_size = coco.load(annotation_file, image_dir, limit=2)
    assert isinstance(same_size.images, np.ndarray) and same_size.images.shape[0] == 2


def test_missing_image_names_the_path(dataset):
    annotation_file, image_dir, _, _ = dataset
    os.remove(image_dir / "b.jpg")
    with pytest.raises(FileNotFoundError, match="b.jpg"):
        coco.load(annotation_file, image_dir)


def test_size_disagreement_names_both(dataset):
    annotation_file, image_dir, _, _ = dataset
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(image_dir / "a.png")
    with pytest.raises(SegkerasError, match=r"10x10.*40x50"):
        coco.load(annotation_file, image_dir)


def test_bad_files(tmp_path, dataset):
    annotation_file, image_dir, _, _ = dataset
    with pytest.raises(FileNotFoundError, match="missing.json"):
        coco.load(tmp_path / "missing.json", image_dir)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SegkerasError, match="not a COCO"):
        coco.load(broken, image_dir)
    content = json.loads(annotation_file.read_text())
    content["annotations"][0]["category_id"] = 99
    annotation_file.write_text(json.dumps(content))
    with pytest.raises(SegkerasError, match="category_id: 99 is not the id of any category"):
        coco.load(annotation_file, image_dir)


def test_shapes_export_reads_back_exactly(tmp_path):
    paths = shapes.export(4, tmp_path, image_size=64, seed=9)
    data = shapes.generate(4, 64, seed=9)
    loaded = coco.load(paths["annotations"], paths["images"])
    assert loaded.class_names == data.class_names
    np.testing.assert_array_equal(loaded.images, data.images)
    np.testing.assert_array_equal(loaded.masks, data.masks)
    for got, expected in zip(loaded.instances, data.instances, strict=True):
        np.testing.assert_array_equal(got.masks, expected.masks)
        np.testing.assert_array_equal(got.boxes, expected.boxes)
        np.testing.assert_array_equal(got.class_ids, expected.class_ids)
