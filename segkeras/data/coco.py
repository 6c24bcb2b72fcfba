"""Any COCO-format instance segmentation dataset (annotations JSON + image folder), via pycocotools.

Polygons and RLE (compressed or not) are decoded by pycocotools. Category ids, which need not be
contiguous in the file, become class ids 1..C in increasing id order (0 = background); the
mapping is kept in ``extra``. Semantic masks paint the objects largest first, so small objects
stay visible where they overlap; crowd regions (``iscrowd=1``) that no object covers become 255
(ignore), and crowd annotations are not instances. Images without annotations are kept.

:func:`load` reads everything into memory; :class:`CocoIndex` keeps only the annotation index
and decodes an image and its masks when asked (what streaming pipelines use); :func:`export`
writes an in-memory dataset as a COCO folder.

The whole file is validated in Python before pycocotools (C code) sees any of it
(:func:`validate`): a malformed field is one :class:`SegkerasError` line naming the file, the
image or annotation id and the field, never a crash, a traceback or a silently different mask.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from segkeras.data.core import (
    IGNORE_LABEL,
    Instances,
    SegmentationData,
    boxes_from_masks,
    split_counts,
)
from segkeras.data.images import MAX_IMAGE_PIXELS, image_size, read_rgb, write_png
from segkeras.errors import SegkerasError
from segkeras.runs import atomic_write_text


class CocoIndex:
    """A COCO-format dataset read lazily: the annotation index in memory, each image and its
    masks decoded only when :meth:`example` asks for it (what streaming pipelines use).

    Args:
        annotation_file: the COCO instances JSON (validated by :func:`validate` before
            pycocotools sees it).
        image_dir: the folder the JSON's ``file_name`` entries are relative to.
        limit: keep only the first ``limit`` images (by image id).

    Category ids, which need not be contiguous, become class ids 1..C in increasing id order
    (``class_of_category``); ``image_ids`` lists the images kept, in order.
    """

    def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
                 limit: int | None = None):
        annotation_file, image_dir = os.fspath(annotation_file), os.fspath(image_dir)
        if not os.path.isfile(annotation_file):
            raise FileNotFoundError(f"no such file: {annotation_file}")
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"no such folder: {image_dir}")
        content = read_json(annotation_file)
        validate(content, annotation_file)
        self.coco = COCO()
        self.coco.dataset = content
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()
        categories = sorted(content["categories"], key=lambda category: category["id"])
        if len(categories) >= IGNORE_LABEL:
            raise SegkerasError(f"{annotation_file} has {len(categories)} categories; masks hold "
                                f"at most {IGNORE_LABEL - 1} classes")
        self.annotation_file, self.image_dir = annotation_file, image_dir
        self.category_ids = [category["id"] for category in categories]
        self.class_of_category = {category["id"]: index + 1
                                  for index, category in enumerate(categories)}
        self.class_names = ["background"] + [category["name"] for category in categories]
        self.image_ids = sorted(self.coco.getImgIds())[:limit]

    def __len__(self) -> int:
        return len(self.image_ids)

    def split(self, validation_fraction: float = 0.2) -> tuple[CocoIndex, CocoIndex]:
        """(train, validation) as :meth:`SegmentationData.split` makes them (the last
        ``validation_fraction`` of the images held out), sharing this index's annotations."""
        n_train, _ = split_counts(len(self), validation_fraction)
        return self._subset(self.image_ids[:n_train]), self._subset(self.image_ids[n_train:])

    def _subset(self, image_ids: list[int]) -> CocoIndex:
        part = copy.copy(self)
        part.image_ids = list(image_ids)
        return part

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names)

    def annotations(self, index: int) -> list[dict]:
        """The annotations (crowds included) of image number ``index``."""
        ids = self.coco.getAnnIds(imgIds=[self.image_ids[index]], iscrowd=None)
        return [self.coco.anns[i] for i in ids]

    def object_counts(self) -> list[int]:
        """Per image, its annotations that are objects (not crowds), without decoding any."""
        return [sum(not a.get("iscrowd", 0) for a in self.annotations(i)) for i in range(len(self))]

    def crowd_counts(self) -> list[int]:
        """Per image, its crowd annotations (``iscrowd=1``), without decoding any."""
        return [sum(bool(a.get("iscrowd", 0)) for a in self.annotations(i))
                for i in range(len(self))]

    def check_image_files(self) -> None:
        """Every image the annotations list is a file whose header gives the JSON's size
        (FileNotFoundError or SegkerasError for the first that is not), read without decoding
        any: a stream would otherwise stop at it mid-way."""
        for image_id in self.image_ids:
            info = self.coco.imgs[image_id]
            path = os.path.join(self.image_dir, info["file_name"])
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no such image: {path} (listed in "
                                        f"{self.annotation_file})")
            self._check_size(path, image_size(path), info)

    def _check_size(self, path: str, size: tuple[int, int], info: dict) -> None:
        if size != (info["height"], info["width"]):
            raise SegkerasError(
                f"{path} is {size[0]}x{size[1]} (HxW) but {self.annotation_file} says "
                f"{info['height']}x{info['width']}; the image and the annotations disagree")

    def image(self, index: int) -> np.ndarray:
        """Image number ``index`` as HxWx3 uint8 (SegkerasError if its size is not the JSON's)."""
        info = self.coco.imgs[self.image_ids[index]]
        path = os.path.join(self.image_dir, info["file_name"])
        image = read_rgb(path)
        self._check_size(path, image.shape[:2], info)
        return image

    def objects(self, index: int) -> tuple[Instances, np.ndarray]:
        """(the objects of image ``index``: masks decoded at the image's size, tight boxes, class
        ids; the union of its crowd regions, an HxW bool mask). Objects whose mask is empty are
        left out."""
        info = self.coco.imgs[self.image_ids[index]]
        shape = (info["height"], info["width"])
        crowd = np.zeros(shape, dtype=bool)
        masks, class_ids = [], []
        for annotation in self.annotations(index):
            mask = self.coco.annToMask(annotation).astype(bool)
            if annotation.get("iscrowd", 0):
                crowd |= mask
            elif mask.any():
                masks.append(mask)
                class_ids.append(self.class_of_category[annotation["category_id"]])
        masks = np.array(masks, dtype=bool).reshape(len(masks), *shape)
        return Instances(masks, boxes_from_masks(masks), np.array(class_ids, np.int32)), crowd

    def crowd_boxes(self, index: int) -> np.ndarray:
        """(K, 4) ``x1, y1, x2, y2`` boxes of image ``index``'s crowd regions (from the JSON)."""
        boxes = [annotation["bbox"] for annotation in self.annotations(index)
                 if annotation.get("iscrowd", 0) and "bbox" in annotation]
        boxes = np.array(boxes, np.float32).reshape(-1, 4)
        return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)

    def example(self, index: int) -> tuple[np.ndarray, Instances, np.ndarray]:
        """(image, its objects, its crowd boxes) of image number ``index``, decoded now."""
        objects, crowd = self.objects(index)
        boxes = self.crowd_boxes(index)
        if crowd.any() and not len(boxes):  # crowds without a bbox field: their mask's box
            boxes = boxes_from_masks(crowd[None])
        return self.image(index), objects, boxes


def load(
    annotation_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    limit: int | None = None,
) -> SegmentationData:
    """Images, semantic masks and instances of a COCO-format dataset, all in memory (for a large
    dataset, stream it instead: :class:`CocoIndex` with
    :func:`segkeras.models.mask_rcnn.mask_rcnn_dataset`).

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
    index = CocoIndex(annotation_file, image_dir, limit)
    images, masks, instances = [], [], []
    for i in range(len(index)):
        images.append(index.image(i))
        objects, crowd = index.objects(i)
        masks.append(_semantic(objects, crowd))
        instances.append(objects)
    if images and len({image.shape for image in images}) == 1:
        images, masks = np.stack(images), np.stack(masks)
    extra = {
        "category_ids": list(index.category_ids),
        "class_of_category": dict(index.class_of_category),
        "image_ids": list(index.image_ids),
        "file_names": [index.coco.imgs[i]["file_name"] for i in index.image_ids],
    }
    return SegmentationData(images, masks, list(index.class_names), instances, extra)


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


def _semantic(objects: Instances, crowd: np.ndarray) -> np.ndarray:
    """The semantic mask of one image: objects painted largest first (small ones stay visible
    where they overlap), crowd pixels no object covers = IGNORE_LABEL."""
    semantic = np.zeros(crowd.shape, dtype=np.uint8)
    for i in np.argsort([-int(mask.sum()) for mask in objects.masks], kind="stable"):
        semantic[objects.masks[i]] = objects.class_ids[i]
    semantic[crowd & (semantic == 0)] = IGNORE_LABEL
    return semantic


# --------------------------------------------------------------------------- writing


def export(data: SegmentationData, out_dir: str | os.PathLike, description: str,
           supercategory: str = "object") -> dict:
    """Write an in-memory dataset with instances as a COCO-format folder.

    ``out_dir/images/000000.png`` (RGB), ``out_dir/masks/000000.png`` (palette PNG of the
    semantic mask, values = class ids) and ``out_dir/annotations.json``: COCO instances with
    compressed-RLE masks, ``area``, ``bbox`` (``x, y, w, h`` of the mask) and ``iscrowd`` 0;
    category id = class id. Each file is written atomically, the annotations last, so a folder
    with ``annotations.json`` is complete. Returns ``{"images", "masks", "annotations"}``.
    """
    if data.instances is None:
        raise SegkerasError("This dataset has no instances; a COCO folder needs instance masks.")
    image_dir, mask_dir = os.path.join(out_dir, "images"), os.path.join(out_dir, "masks")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(mask_dir, exist_ok=True)
    coco = {
        "info": {"description": description, "version": "1"},
        "licenses": [{"id": 1, "name": "CC0 1.0",
                      "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": name, "supercategory": supercategory}
                       for i, name in enumerate(data.class_names) if i > 0],
    }
    for index, (image, mask, objects) in enumerate(
            zip(data.images, data.masks, data.instances, strict=True)):
        file_name = f"{index:06d}.png"
        write_png(os.path.join(image_dir, file_name), image)
        write_png(os.path.join(mask_dir, file_name), mask, palette=True)
        height, width = np.shape(image)[:2]
        coco["images"].append({"id": index + 1, "file_name": file_name, "width": int(width),
                               "height": int(height), "license": 1})
        for instance_mask, class_id in zip(objects.masks, objects.class_ids, strict=True):
            rle = mask_utils.encode(np.asfortranarray(instance_mask.astype(np.uint8)))
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1,
                "image_id": index + 1,
                "category_id": int(class_id),
                "segmentation": {"size": [int(v) for v in rle["size"]],
                                 "counts": rle["counts"].decode("ascii")},
                "area": int(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            })
    annotation_file = os.path.join(out_dir, "annotations.json")
    atomic_write_text(annotation_file, json.dumps(coco))  # last: a complete dataset or none
    return {"images": image_dir, "masks": mask_dir, "annotations": annotation_file}
