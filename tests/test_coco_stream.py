"""A COCO-format folder streams through mask_rcnn_dataset: images and RLE/polygon masks are decoded
per element, so one epoch over 2,000 images peaks at the memory of one over 200 (issue 23)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segkeras.data.coco import CocoIndex, load
from segkeras.models.mask_rcnn import mask_rcnn_dataset

SIDE = 64


def _annotations(image_id: int, rng: np.random.Generator, first_id: int) -> list[dict]:
    """Two to four objects: squares as polygons, discs as compressed RLE; every fifth image
    also a crowd region (uncompressed RLE)."""
    annotations = []
    rows, cols = np.mgrid[:SIDE, :SIDE]
    for k in range(int(rng.integers(2, 5))):
        x, y, size = (int(v) for v in rng.integers([0, 0, 6], [SIDE - 20, SIDE - 20, 20]))
        if k % 2:
            segmentation = [[x, y, x + size, y, x + size, y + size, x, y + size]]
        else:
            disc = ((rows - y - size / 2) ** 2 + (cols - x - size / 2) ** 2) < (size / 2) ** 2
            rle = mask_utils.encode(np.asfortranarray(disc.astype(np.uint8)))
            segmentation = {"size": [SIDE, SIDE], "counts": rle["counts"].decode("ascii")}
        annotations.append({"id": first_id + k, "image_id": image_id, "category_id": 1 + k % 2,
                            "segmentation": segmentation, "iscrowd": 0})
    if image_id % 5 == 0:
        columns_40_to_43 = {"size": [SIDE, SIDE], "counts": [SIDE * 40, SIDE * 4, SIDE * 20]}
        annotations.append({"id": first_id + 10, "image_id": image_id, "category_id": 1,
                            "iscrowd": 1, "segmentation": columns_40_to_43,
                            "bbox": [40.0, 0.0, 4.0, 64.0]})
    return annotations


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory):
    """2,000 small PNGs and two annotation files: all of them, and the first 200."""
    folder = tmp_path_factory.mktemp("coco_stream")
    (folder / "images").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in range(1, 2001):
        name = f"{image_id:06d}.png"
        pixels = rng.integers(0, 256, (SIDE, SIDE, 3), np.uint8)
        Image.fromarray(pixels).save(folder / "images" / name, compress_level=1)
        images.append({"id": image_id, "file_name": name, "height": SIDE, "width": SIDE})
        annotations += _annotations(image_id, rng, image_id * 100)
    categories = [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}]
    for count in (2000, 200):
        kept = {image["id"] for image in images[:count]}
        content = {"images": images[:count], "categories": categories,
                   "annotations": [a for a in annotations if a["image_id"] in kept]}
        (folder / f"annotations_{count}.json").write_text(json.dumps(content))
    return folder


def test_streamed_batches_equal_the_in_memory_pipeline(coco_folder):
    files = (coco_folder / "annotations_200.json", coco_folder / "images")
    index = CocoIndex(*files, limit=12)
    with pytest.warns(UserWarning, match="the others are ignored regions"):
        streamed = mask_rcnn_dataset(index, SIDE, batch_size=12, augment=False, shuffle=False,
                                     max_instances=3, keep_aspect=False)
    with pytest.warns(UserWarning, match="the others are ignored regions"):
        in_memory = mask_rcnn_dataset(load(*files, limit=12), SIDE, batch_size=12,
                                      augment=False, shuffle=False, max_instances=3)
    (inputs, masks), (expected_inputs, expected_masks) = next(iter(streamed)), \
        next(iter(in_memory))
    for key in ("image", "boxes", "class_ids"):
        np.testing.assert_array_equal(inputs[key], expected_inputs[key], err_msg=key)
    np.testing.assert_array_equal(masks, expected_masks)
    # crowd regions (image 5, 10) and the fourth object of an image are ignore boxes
    ignore = inputs["ignore_boxes"].numpy()
    np.testing.assert_array_equal(ignore[4, 0], [40, 0, 44, 64])
    overflow = [i for i in range(12) if len(index.objects(i)[0]) > 3]
    assert overflow and all(ignore[i].any() for i in overflow)
    assert not expected_inputs["ignore_boxes"].numpy()[4].any()  # in memory, crowds are gone


def test_streaming_keeps_the_aspect_ratio_like_predict(coco_folder):
    """A 64x64 image into a 64x128 input: resized to 64x64 at the left, zero padding right."""
    index = CocoIndex(coco_folder / "annotations_200.json", coco_folder / "images", limit=2)
    inputs, masks = next(iter(mask_rcnn_dataset(index, (64, 128), batch_size=2, augment=False,
                                                shuffle=False)))
    image = np.asarray(Image.open(coco_folder / "images" / "000001.png"), np.float32)
    np.testing.assert_array_equal(inputs["image"][0, :, :64], image)
    assert not inputs["image"][0, :, 64:].numpy().any() and not masks[0, :, :, 64:].numpy().any()
    objects, _ = index.objects(0)
    np.testing.assert_array_equal(masks[0, : len(objects), :, :64], objects.masks)


EPOCH = textwrap.dedent("""
    import resource, sys
    from segkeras.data.coco import CocoIndex
    from segkeras.models.mask_rcnn import mask_rcnn_dataset
    index = CocoIndex(sys.argv[1], sys.argv[2])
    images = 0
    for inputs, masks in mask_rcnn_dataset(index, 64, batch_size=16, max_instances=32, seed=0):
        images += int(inputs["image"].shape[0])
    assert images == len(index), (images, len(index))
    print(images, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_images(coco_folder):
    """One epoch in a fresh process each: peak RSS (ru_maxrss) of 2,000 images within 20 % of
    200 images'. (Holding the padded dataset, as before streaming, 2,000 images would add about
    360 MB: 32 mask planes and a float32 image each.)"""
    peaks = {}
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for count in (200, 2000):
        done = subprocess.run(
            [sys.executable, "-c", EPOCH, str(coco_folder / f"annotations_{count}.json"),
             str(coco_folder / "images")], capture_output=True, text=True, timeout=600,
            env=environment, check=True)
        images, peak = (int(value) for value in done.stdout.split()[-2:])
        assert images == count
        peaks[count] = peak
    print(f"peak RSS: 200 images {peaks[200] / 1024:.0f} MiB, 2000 images "
          f"{peaks[2000] / 1024:.0f} MiB")
    assert peaks[2000] <= 1.2 * peaks[200], peaks
