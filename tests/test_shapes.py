"""The built-in synthetic shapes: contract, determinism, difficulty and the COCO export."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from segkeras import resources
from segkeras.data import shapes, sources
from segkeras.data.core import Instances, SegmentationData
from segkeras.errors import SegkerasError

# sha256 of generate(4, 64, seed=0): images, masks, then each image's instance masks, boxes and
# class ids, in little-endian bytes. Change it only when the generator is meant to change (and
# regenerate segkeras/resources/sample then).
GENERATE_4_64_SEED_0 = "8e8f669f36551b3177f0e06bfb43544d20dfcd76c3729d5254b9a357161a73ad"

SAMPLE_DIR = resources.path("sample")
SAMPLE_ARGUMENTS = {"n": 32, "image_size": 128, "seed": 0}


def digest(data: SegmentationData) -> str:
    hasher = hashlib.sha256()
    hasher.update(data.images.tobytes())
    hasher.update(data.masks.tobytes())
    for objects in data.instances:
        hasher.update(objects.masks.tobytes())
        hasher.update(objects.boxes.astype("<f4").tobytes())
        hasher.update(objects.class_ids.astype("<i4").tobytes())
    return hasher.hexdigest()


@pytest.fixture(scope="module")
def data():
    return shapes.generate(24, 64, seed=5)


def tight_boxes(masks):
    """Independent formula: min and max+1 of the nonzero coordinates."""
    boxes = []
    for mask in masks:
        rows, cols = np.nonzero(mask)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    return np.array(boxes, dtype=np.float32).reshape(-1, 4)


def test_contract(data):
    assert isinstance(data, SegmentationData)
    assert data.images.shape == (24, 64, 64, 3) and data.images.dtype == np.uint8
    assert data.masks.shape == (24, 64, 64) and data.masks.dtype == np.uint8
    assert data.class_names == ["background", "circle", "rectangle", "triangle"]
    assert data.num_classes == 4
    assert len(data.instances) == 24
    for objects in data.instances:
        assert isinstance(objects, Instances)
        assert 1 <= len(objects) <= 6
        assert objects.masks.shape == (len(objects), 64, 64) and objects.masks.dtype == bool
        assert objects.boxes.shape == (len(objects), 4) and objects.boxes.dtype == np.float32
        assert objects.class_ids.dtype == np.int32
        assert set(objects.class_ids.tolist()) <= {1, 2, 3}


def test_semantic_mask_is_the_visible_instances(data):
    for mask, objects in zip(data.masks, data.instances, strict=True):
        assert objects.masks.any(axis=(1, 2)).all(), "every instance has visible pixels"
        assert objects.masks.sum(axis=0).max() <= 1, "occlusion makes instances disjoint"
        expected = np.zeros_like(mask)
        for object_mask, class_id in zip(objects.masks, objects.class_ids, strict=True):
            expected[object_mask] = class_id
        np.testing.assert_array_equal(mask, expected)


def test_boxes_are_tight(data):
    for objects in data.instances:
        np.testing.assert_array_equal(objects.boxes, tight_boxes(objects.masks))


def test_objects_counts_classes_and_sizes(data):
    counts = [len(objects) for objects in data.instances]
    assert min(counts) <= 2 and max(counts) >= 5
    class_ids = np.concatenate([objects.class_ids for objects in data.instances])
    assert np.bincount(class_ids, minlength=4)[1:].min() >= 0.15 * len(class_ids)
    sides = np.concatenate([np.maximum(o.boxes[:, 2] - o.boxes[:, 0], o.boxes[:, 3] - o.boxes[:, 1])
                            for o in data.instances]) / 64
    assert sides.max() <= 0.6
    assert 0.15 <= np.median(sides) <= 0.45


def test_overlaps_happen(data):
    """Some object hides part of another: its visible box is smaller than its shape's."""
    touching = 0
    for objects in data.instances:
        for i in range(len(objects)):
            grown = np.zeros_like(objects.masks[i])
            grown[:-1] |= objects.masks[i][1:]
            grown[1:] |= objects.masks[i][:-1]
            others = objects.masks[np.arange(len(objects)) != i].any(axis=0)
            touching += bool((grown & others).any())
    assert touching >= 4


def test_colour_alone_does_not_tell_the_classes():
    """Per-pixel colour classifiers (majority label per RGB bin) fitted on some images fail on
    others: the classes, the background and the clutter share one palette."""
    train, test = shapes.generate(32, 64, seed=11), shapes.generate(32, 64, seed=12)

    def bins(images):
        return images[..., 0] // 32 * 64 + images[..., 1] // 32 * 8 + images[..., 2] // 32

    def fit_predict(labels, where):
        votes = np.zeros((512, labels.max() + 1), dtype=np.int64)
        np.add.at(votes, (bins(train.images)[where], labels[where]), 1)
        return votes.argmax(axis=1)[bins(test.images)]

    # which shape, given it is an object: chance is about 1/3
    on_objects = test.masks > 0
    shape_guess = fit_predict(train.masks, train.masks > 0)
    assert (shape_guess[on_objects] == test.masks[on_objects]).mean() < 0.5
    # object or background
    foreground = fit_predict((train.masks > 0).astype(int), np.ones_like(train.masks, bool)) > 0
    assert (foreground & on_objects).sum() / (foreground | on_objects).sum() < 0.5


def test_background_has_texture_noise_and_clutter(data):
    background = data.masks == 0
    # pixel noise: neighbouring background pixels differ
    differences = np.abs(np.diff(data.images.astype(int), axis=2))[background[:, :, 1:]]
    assert differences.mean() > 3
    # the background spans many colours within an image (gradient, texture, clutter)
    spread = [data.images[i][background[i]].std(axis=0).mean() for i in range(len(data))]
    assert np.median(spread) > 10


def test_same_seed_same_bytes():
    assert digest(shapes.generate(4, 64, seed=0)) == GENERATE_4_64_SEED_0


def test_seeds_and_prefixes():
    five = shapes.generate(5, 64, seed=3)
    three = shapes.generate(3, 64, seed=3)
    np.testing.assert_array_equal(five.images[:3], three.images)
    np.testing.assert_array_equal(five.masks[:3], three.masks)
    other = shapes.generate(3, 64, seed=4)
    assert not np.array_equal(other.images, three.images)


def test_object_count_bounds():
    single = shapes.generate(6, 64, seed=1, min_objects=1, max_objects=1)
    assert all(len(objects) == 1 for objects in single.instances)


@pytest.mark.parametrize(
    "arguments, message",
    [({"n": -1}, "n must be"), ({"n": 2, "image_size": 16}, "image_size"),
     ({"n": 2, "min_objects": 3, "max_objects": 2}, "min_objects")],
)
def test_bad_arguments(arguments, message):
    with pytest.raises(SegkerasError, match=message):
        shapes.generate(**arguments)


def test_export_reads_back_exactly(tmp_path):
    paths = shapes.export(5, tmp_path, image_size=64, seed=2)
    data = shapes.generate(5, 64, seed=2)
    assert sorted(os.listdir(paths["images"])) == [f"{i:06d}.png" for i in range(5)]
    coco = COCO(paths["annotations"])
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == data.class_names[1:]
    for index, image_id in enumerate(sorted(coco.getImgIds())):
        info = coco.loadImgs(image_id)[0]
        image = np.asarray(Image.open(os.path.join(paths["images"], info["file_name"])))
        mask = np.asarray(Image.open(os.path.join(paths["masks"], info["file_name"])))
        np.testing.assert_array_equal(image, data.images[index])
        np.testing.assert_array_equal(mask, data.masks[index])
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        objects = data.instances[index]
        assert [a["category_id"] for a in annotations] == objects.class_ids.tolist()
        for annotation, object_mask, box in zip(annotations, objects.masks, objects.boxes,
                                                strict=True):
            np.testing.assert_array_equal(coco.annToMask(annotation).astype(bool), object_mask)
            x, y, w, h = annotation["bbox"]
            np.testing.assert_array_equal([x, y, x + w, y + h], box)
            assert annotation["area"] == object_mask.sum() and annotation["iscrowd"] == 0
    with open(paths["annotations"]) as file:
        assert isinstance(json.load(file)["annotations"][0]["segmentation"]["counts"], str)


def test_shipped_sample_matches_the_generator():
    """segkeras/resources/sample is export(**SAMPLE_ARGUMENTS): regenerate it when the generator
    changes."""
    data = shapes.generate(**SAMPLE_ARGUMENTS)
    names = sorted(os.listdir(os.path.join(SAMPLE_DIR, "images")))
    assert len(names) == SAMPLE_ARGUMENTS["n"]
    for index, name in enumerate(names):
        image = np.asarray(Image.open(os.path.join(SAMPLE_DIR, "images", name)))
        mask = np.asarray(Image.open(os.path.join(SAMPLE_DIR, "masks", name)))
        np.testing.assert_array_equal(image, data.images[index])
        np.testing.assert_array_equal(mask, data.masks[index])
    coco = COCO(os.path.join(SAMPLE_DIR, "annotations.json"))
    assert len(coco.getAnnIds()) == sum(len(objects) for objects in data.instances)
    first = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]
    np.testing.assert_array_equal(mask_utils.decode(first["segmentation"]).astype(bool),
                                  data.instances[0].masks[0])
    total = sum(os.path.getsize(os.path.join(folder, name))
                for folder, _, files in os.walk(SAMPLE_DIR) for name in files)
    assert total <= 2 * 1024 * 1024


def test_the_sample_source_is_the_shipped_sample_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # like a lab run outside the repository
    data = sources.load("sample", n=4, image_size=128)
    expected = shapes.generate(4, image_size=128, seed=SAMPLE_ARGUMENTS["seed"])
    np.testing.assert_array_equal(data.images, expected.images)
    np.testing.assert_array_equal(data.masks, expected.masks)
    assert [len(objects) for objects in data.instances] == [
        len(objects) for objects in expected.instances]
