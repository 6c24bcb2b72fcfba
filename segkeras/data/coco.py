"""Any COCO-format instance segmentation dataset (annotations JSON + image folder), via pycocotools.

Polygons and RLE (compressed or not) are decoded by pycocotools. Category ids, which need not be
contiguous in the file, become class ids 1..C in increasing id order (0 = background); the
mapping is kept in ``extra``. Semantic masks paint the objects largest first, so small objects
stay visible where they overlap; crowd regions (``iscrowd=1``) that no object covers become 255
(ignore), and crowd annotations are not instances. Images without annotations are kept.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
from pycocotools.coco import COCO

from segkeras.data.core import IGNORE_LABEL, Instances, SegmentationData, boxes_from_masks
from segkeras.data.images import read_rgb
from segkeras.errors import SegkerasError


def load(
    annotation_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    limit: int | None = None,
) -> SegmentationData:
    """Images, semantic masks and instances of a COCO-format dataset.

    Args:
        annotation_file: the COCO instances JSON.
        image_dir: the folder the JSON's ``file_name`` entries are relative to.
        limit: keep only the first ``limit`` images (by image id).

    Returns a :class:`SegmentationData` with instances filled (one :class:`Instances` per image,
    boxes tight around each decoded mask); images are stacked into arrays when all have the same
    size, else lists. ``extra``: ``category_ids`` (the file's category id of class 1, 2, ...),
    ``class_of_category`` ({category id: class id}), ``image_ids`` and ``file_names``.
    """
    annotation_file, image_dir = os.fspath(annotation_file), os.fspath(image_dir)
    if not os.path.isfile(annotation_file):
        raise FileNotFoundError(f"no such file: {annotation_file}")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"no such folder: {image_dir}")
    coco = _read_annotations(annotation_file)
    categories = sorted(coco.loadCats(coco.getCatIds()), key=lambda category: category["id"])
    if len(categories) >= IGNORE_LABEL:
        raise SegkerasError(f"{annotation_file} has {len(categories)} categories; masks hold at "
                            f"most {IGNORE_LABEL - 1} classes")
    class_of = {category["id"]: index + 1 for index, category in enumerate(categories)}
    image_ids = sorted(coco.getImgIds())[:limit]

    images, masks, instances, file_names = [], [], [], []
    for image_id in image_ids:
        info = coco.loadImgs(image_id)[0]
        missing = [key for key in ("file_name", "height", "width") if key not in info]
        if missing:
            raise SegkerasError(f"image {image_id} of {annotation_file} has no "
                                f"{', '.join(missing)}; every image entry needs file_name, "
                                "height and width")
        path = os.path.join(image_dir, info["file_name"])
        image = read_rgb(path)
        if image.shape[:2] != (info["height"], info["width"]):
            raise SegkerasError(
                f"{path} is {image.shape[0]}x{image.shape[1]} (HxW) but {annotation_file} says "
                f"{info['height']}x{info['width']}; the image and the annotations disagree")
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
        mask, objects = _rasterize(coco, annotations, image.shape[:2], class_of, path)
        images.append(image)
        masks.append(mask)
        instances.append(objects)
        file_names.append(info["file_name"])
    if images and len({image.shape for image in images}) == 1:
        images, masks = np.stack(images), np.stack(masks)
    extra = {
        "category_ids": [category["id"] for category in categories],
        "class_of_category": class_of,
        "image_ids": list(image_ids),
        "file_names": file_names,
    }
    class_names = ["background"] + [category["name"] for category in categories]
    return SegmentationData(images, masks, class_names, instances, extra)


def _read_annotations(annotation_file: str) -> COCO:
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            return COCO(annotation_file)
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as error:
        raise SegkerasError(
            f"{annotation_file} is not a COCO instances JSON ({error!r})") from error


def _check_annotation(annotation: dict, path: str) -> None:
    """SegkerasError for what pycocotools cannot decode: a missing ``category_id`` or
    ``segmentation``, an empty segmentation, a polygon with fewer than 3 points."""
    where = f"annotation {annotation.get('id', '(without id)')} of {path}"
    missing = [key for key in ("category_id", "segmentation") if key not in annotation]
    if missing:
        raise SegkerasError(f"{where} has no {' or '.join(missing)}; give it one or remove it")
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, dict):  # RLE
        if not {"counts", "size"} <= set(segmentation):
            raise SegkerasError(f"{where}: an RLE segmentation needs counts and size")
        return
    if not isinstance(segmentation, list) or not segmentation:
        raise SegkerasError(f"{where} has an empty or unknown segmentation; give it polygons "
                            "[[x1, y1, x2, y2, ...]] or an RLE, or remove it")
    for polygon in segmentation:
        if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
            points = len(polygon) / 2 if isinstance(polygon, list) else "no"
            raise SegkerasError(f"{where} has a polygon with {points} points; a polygon needs "
                                "at least 3 (x, y) points: fix or remove it")


def _rasterize(coco: COCO, annotations: list, shape: tuple, class_of: dict, path: str):
    """(semantic mask, Instances) of one image's annotations."""
    semantic = np.zeros(shape, dtype=np.uint8)
    crowd = np.zeros(shape, dtype=bool)
    decoded = []
    for annotation in annotations:
        _check_annotation(annotation, path)
        if annotation["category_id"] not in class_of:
            raise SegkerasError(f"annotation {annotation['id']} of {path} has category_id "
                                f"{annotation['category_id']}, which is not in the categories")
        object_mask = coco.annToMask(annotation).astype(bool)
        if object_mask.shape != shape:
            raise SegkerasError(f"annotation {annotation['id']} of {path} is "
                                f"{object_mask.shape} but the image is {shape}")
        if annotation.get("iscrowd", 0):
            crowd |= object_mask
        elif object_mask.any():
            decoded.append((object_mask, class_of[annotation["category_id"]]))
    for object_mask, class_id in sorted(decoded, key=lambda item: -int(item[0].sum())):
        semantic[object_mask] = class_id
    semantic[crowd & (semantic == 0)] = IGNORE_LABEL
    object_masks = np.array([m for m, _ in decoded], dtype=bool).reshape(len(decoded), *shape)
    class_ids = np.array([c for _, c in decoded], dtype=np.int32)
    return semantic, Instances(object_masks, boxes_from_masks(object_masks), class_ids)
