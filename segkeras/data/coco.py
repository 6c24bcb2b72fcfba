"""Any COCO-format instance segmentation dataset (annotations JSON + image folder), via pycocotools.

Polygons and RLE (compressed or not) are decoded by pycocotools. Category ids, which need not be
contiguous in the file, become class ids 1..C in increasing id order (0 = background); the
mapping is kept in ``extra``. Semantic masks paint the objects largest first, so small objects
stay visible where they overlap; crowd regions (``iscrowd=1``) that no object covers become 255
(ignore), and crowd annotations are not instances. Images without annotations are kept.

The whole file is validated in Python before pycocotools (C code) sees any of it
(:func:`validate`): a malformed field is one :class:`SegkerasError` line naming the file, the
image or annotation id and the field, never a crash, a traceback or a silently different mask.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os

import numpy as np
from pycocotools.coco import COCO

from segkeras.data.core import IGNORE_LABEL, Instances, SegmentationData, boxes_from_masks
from segkeras.data.images import MAX_IMAGE_PIXELS, read_rgb
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
    Raises SegkerasError (one line: file, id, field) for anything :func:`validate` refuses.
    """
    annotation_file, image_dir = os.fspath(annotation_file), os.fspath(image_dir)
    if not os.path.isfile(annotation_file):
        raise FileNotFoundError(f"no such file: {annotation_file}")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"no such folder: {image_dir}")
    content = read_json(annotation_file)
    validate(content, annotation_file)
    coco = COCO()
    coco.dataset = content
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    categories = sorted(content["categories"], key=lambda category: category["id"])
    if len(categories) >= IGNORE_LABEL:
        raise SegkerasError(f"{annotation_file} has {len(categories)} categories; masks hold at "
                            f"most {IGNORE_LABEL - 1} classes")
    class_of = {category["id"]: index + 1 for index, category in enumerate(categories)}
    image_ids = sorted(coco.getImgIds())[:limit]

    images, masks, instances, file_names = [], [], [], []
    for image_id in image_ids:
        info = coco.imgs[image_id]
        path = os.path.join(image_dir, info["file_name"])
        image = read_rgb(path)
        if image.shape[:2] != (info["height"], info["width"]):
            raise SegkerasError(
                f"{path} is {image.shape[0]}x{image.shape[1]} (HxW) but {annotation_file} says "
                f"{info['height']}x{info['width']}; the image and the annotations disagree")
        annotations = [coco.anns[i] for i in coco.getAnnIds(imgIds=[image_id], iscrowd=None)]
        mask, objects = _rasterize(coco, annotations, image.shape[:2], class_of)
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


def read_json(annotation_file: str) -> dict:
    """The parsed JSON of ``annotation_file``; SegkerasError for a file that is not UTF-8 or not
    JSON (one line, with the position of the problem)."""
    with open(annotation_file, "rb") as file:
        raw = file.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SegkerasError(f"{annotation_file} is not UTF-8 text (byte {error.start}); save the "
                            "annotations as UTF-8 JSON") from error
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise SegkerasError(f"{annotation_file} is not a COCO instances JSON ({error})") from error


# --------------------------------------------------------------------------- validation

_NUMBER = (int, float)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def validate(content, annotation_file: str) -> None:
    """SegkerasError (one line naming ``annotation_file``, the image / annotation / category id
    and the field) unless ``content`` is a COCO instances file that pycocotools can decode safely.

    Checked: ``images``, ``annotations`` and ``categories`` lists; integer ids, unique within each
    list; categories with a name; images with a string ``file_name`` and integer ``height`` and
    ``width`` within :data:`~segkeras.data.images.MAX_IMAGE_PIXELS`; annotations pointing at a
    known image and category, ``iscrowd`` 0 or 1, and a segmentation that is either polygons
    (lists of at least 6 finite numbers, x and y within the image extended by its own size) or an
    RLE whose ``size`` is the image's ``[height, width]`` and whose ``counts`` (a list of
    non-negative integers, or COCO's compressed string) cover exactly height x width pixels.
    """
    if not isinstance(content, dict):
        raise SegkerasError(f"{annotation_file} holds a JSON {type(content).__name__}, not a COCO "
                            "instances object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if key not in content:
            raise SegkerasError(f"{annotation_file} has no {key!r} list; a COCO instances file "
                                "needs images, annotations and categories")
        if not isinstance(content[key], list):
            raise SegkerasError(f"{annotation_file}: {key!r} is a "
                                f"{type(content[key]).__name__}, not a list")
    categories = _unique_ids(content["categories"], "category", annotation_file)
    for category in content["categories"]:
        name = category.get("name")
        if not isinstance(name, str) or not name.strip():
            raise SegkerasError(f"category {category['id']} of {annotation_file}, name: "
                                f"{'missing' if name is None else repr(name)}; every category "
                                "needs a name (a non-empty string)")
    images = _unique_ids(content["images"], "image", annotation_file)
    for image in content["images"]:
        _check_image(image, annotation_file)
    _unique_ids(content["annotations"], "annotation", annotation_file)
    for annotation in content["annotations"]:
        _check_annotation(annotation, images, categories, annotation_file)


def _unique_ids(entries: list, what: str, annotation_file: str) -> dict:
    """{id: entry} of a list of entries that are objects with unique integer ids."""
    by_id = {}
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise SegkerasError(f"{what} number {position + 1} of {annotation_file} is a "
                                f"{type(entry).__name__}, not an object")
        if "id" not in entry:
            raise SegkerasError(f"{what} number {position + 1} of {annotation_file} has no id")
        identifier = entry["id"]
        if not _is_int(identifier):
            raise SegkerasError(f"{what} {identifier!r} of {annotation_file}, id: a "
                                f"{type(identifier).__name__}; ids must be integers (all of them, "
                                "not a mix of types)")
        if identifier in by_id:
            raise SegkerasError(f"{what} {identifier} of {annotation_file}, id: used twice; every "
                                f"{what} needs its own id")
        by_id[identifier] = entry
    return by_id


def _check_image(image: dict, annotation_file: str) -> None:
    where = f"image {image['id']} of {annotation_file}"
    missing = [key for key in ("file_name", "height", "width") if key not in image]
    if missing:
        raise SegkerasError(f"{where} has no {', '.join(missing)}; every image entry needs "
                            "file_name, height and width")
    if not isinstance(image["file_name"], str) or not image["file_name"]:
        raise SegkerasError(f"{where}, file_name: {image['file_name']!r} is not a file name; "
                            "write it as a string, e.g. \"000001.jpg\"")
    for key in ("height", "width"):
        if not _is_int(image[key]) or image[key] < 1:
            raise SegkerasError(f"{where}, {key}: {image[key]!r}; it must be a whole number of "
                                "pixels >= 1 (not a string)")
    if image["height"] * image["width"] > MAX_IMAGE_PIXELS:
        raise SegkerasError(f"{where} is {image['height']}x{image['width']} pixels, more than "
                            f"{MAX_IMAGE_PIXELS:,}; downscale the image (and its annotations) "
                            "or drop it")


def _check_annotation(annotation: dict, images: dict, categories: dict,
                      annotation_file: str) -> None:
    where = f"annotation {annotation['id']} of {annotation_file}"
    missing = [key for key in ("image_id", "category_id", "segmentation") if key not in annotation]
    if missing:
        raise SegkerasError(f"{where} has no {' or '.join(missing)}; give it one or remove it")
    for key, known in (("image_id", images), ("category_id", categories)):
        if not _is_int(annotation[key]) or annotation[key] not in known:
            kind = key[:-3]
            raise SegkerasError(f"{where}, {key}: {annotation[key]!r} is not the id of any "
                                f"{'category' if kind == 'category' else 'image'} in the file; "
                                "fix it or remove the annotation")
    crowd = annotation.get("iscrowd", 0)
    if not _is_int(crowd) or crowd not in (0, 1):
        raise SegkerasError(f"{where}, iscrowd: {crowd!r}; it must be the number 0 or 1 (not a "
                            "string)")
    image = images[annotation["image_id"]]
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, dict):
        _check_rle(segmentation, image["height"], image["width"], where)
        return
    if not isinstance(segmentation, list) or not segmentation:
        raise SegkerasError(f"{where}, segmentation: empty or unknown; give it polygons "
                            "[[x1, y1, x2, y2, ...]] or an RLE {size, counts}, or remove it")
    for polygon in segmentation:
        _check_polygon(polygon, image["height"], image["width"], where)


def _check_polygon(polygon, height: int, width: int, where: str) -> None:
    if not isinstance(polygon, list) or not all(_is_number(value) for value in polygon):
        raise SegkerasError(f"{where}, segmentation: a polygon must be a list of numbers [x1, y1, "
                            f"x2, y2, ...], got {str(polygon)[:60]}")
    if len(polygon) < 6 or len(polygon) % 2:
        raise SegkerasError(f"{where}, segmentation: a polygon with {len(polygon) / 2} points; a "
                            "polygon needs at least 3 (x, y) points: fix or remove it")
    if not all(math.isfinite(value) for value in polygon):
        raise SegkerasError(f"{where}, segmentation: a polygon has a NaN or infinite coordinate; "
                            "fix or remove it")
    for values, size, axis in ((polygon[0::2], width, "x"), (polygon[1::2], height, "y")):
        low, high = min(values), max(values)
        if low < -size or high > 2 * size:
            raise SegkerasError(f"{where}, segmentation: polygon {axis} coordinates reach "
                                f"{low:g}..{high:g}, far outside the {width}x{height} (WxH) image "
                                f"(allowed {-size}..{2 * size}); fix or remove it")


def _check_rle(rle: dict, height: int, width: int, where: str) -> None:
    if "counts" not in rle or "size" not in rle:
        raise SegkerasError(f"{where}, segmentation: an RLE segmentation needs counts and size")
    size, counts = rle["size"], rle["counts"]
    if not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) for v in size):
        raise SegkerasError(f"{where}, segmentation.size: {size!r}; an RLE size is [height, "
                            "width], two whole numbers")
    if size != [height, width]:
        raise SegkerasError(f"{where}, segmentation.size: {size} but the image is "
                            f"[{height}, {width}] ([height, width]); encode the mask at the "
                            "image's size")
    if isinstance(counts, str):
        try:
            runs = rle_string_counts(counts)
        except ValueError as error:
            raise SegkerasError(f"{where}, segmentation.counts: not a valid compressed RLE "
                                f"({error}); re-encode the mask with pycocotools") from error
    elif isinstance(counts, list) and all(_is_int(v) for v in counts):
        runs = counts
    else:
        raise SegkerasError(f"{where}, segmentation.counts: a {type(counts).__name__}; RLE counts "
                            "are a list of whole numbers or COCO's compressed string")
    if any(run < 0 for run in runs) or sum(runs) != height * width:
        raise SegkerasError(f"{where}, segmentation.counts: the runs cover {sum(runs)} pixels "
                            f"(negative runs: {sum(run < 0 for run in runs)}) but the image has "
                            f"{height}x{width} = {height * width}; re-encode the mask")


def rle_string_counts(text: str) -> list[int]:
    """The run lengths of COCO's compressed RLE string (pycocotools' ``rleFrString`` in Python:
    6-bit digits from ``chr(48)``, 5 payload bits each, a continuation bit, sign-extended; from
    the third run on, each value is a difference to the run two before). ValueError for a
    character outside the alphabet or a string ending inside a number."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError("the string ends inside a number")
            digit = ord(text[position]) - 48
            if not 0 <= digit < 64:
                raise ValueError(f"character {text[position]!r} at {position}")
            value |= (digit & 0x1F) << shift
            more = bool(digit & 0x20)
            position += 1
            shift += 5
            if not more and digit & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


# --------------------------------------------------------------------------- masks


def _rasterize(coco: COCO, annotations: list, shape: tuple, class_of: dict):
    """(semantic mask, Instances) of one image's (validated) annotations."""
    semantic = np.zeros(shape, dtype=np.uint8)
    crowd = np.zeros(shape, dtype=bool)
    decoded = []
    for annotation in annotations:
        object_mask = coco.annToMask(annotation).astype(bool)
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
