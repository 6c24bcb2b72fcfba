"""The Oxford-IIIT Pet dataset: 7349 photos of 37 cat and dog breeds with pixel trimaps.

O. M. Parkhi, A. Vedaldi, A. Zisserman, C. V. Jawahar, "Cats and Dogs", CVPR 2012;
https://www.robots.ox.ac.uk/~vgg/data/pets/ (CC BY-SA 4.0). The official layout under ``root``::

    images/Abyssinian_1.jpg ...            the photos
    annotations/trimaps/Abyssinian_1.png   1 = pet, 2 = background, 3 = border (not classified)
    annotations/trainval.txt, test.txt     "name class species breed" per line (3680 / 3669)

Class ids (0 = background, as everywhere in segkeras): ``mode="trimap"``: 0 background, 1 pet,
2 border; ``mode="binary"``: 0 background, 1 pet, border = 255 (ignored by losses and metrics).
Some files of the real archive are odd (PNG data or grayscale/RGBA/CMYK pixels behind a .jpg
name, a few unreadable): all are converted to RGB, unreadable ones skipped with a warning.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import warnings

import keras
import numpy as np

from segkeras.data.core import IGNORE_LABEL, SegmentationData, parse_size
from segkeras.data.images import read_mask, read_rgb, resize_image, resize_mask
from segkeras.errors import DataUnavailableError, SegkerasError

ARCHIVES = {
    "images.tar.gz": "5c4f3ee8e5d25df40f4fd59a7f44e54c",
    "annotations.tar.gz": "95a8c909bbe2e81eed6a22bccdf3f68f",
}
"""The two official tarballs and their md5 sums."""

MIRRORS = (
    "https://thor.robots.ox.ac.uk/~vgg/data/pets/data/",
    "https://www.robots.ox.ac.uk/~vgg/data/pets/data/",
)
"""Where the tarballs are downloaded from, tried in order."""

CLASS_NAMES = {"trimap": ["background", "pet", "border"], "binary": ["background", "pet"]}

_TRIMAP_TO_CLASS = {  # trimap value (1 pet, 2 background, 3 border) -> class id; others ignored
    "trimap": {1: 1, 2: 0, 3: 2},
    "binary": {1: 1, 2: 0, 3: IGNORE_LABEL},
}
_SPLITS = ("trainval", "test")


def default_root() -> str:
    """``$KERAS_HOME/datasets/oxford_pets`` (``~/.keras/datasets/oxford_pets`` by default)."""
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(keras_home, "datasets", "oxford_pets")


def load(
    root: str | os.PathLike | None = None,
    split: str = "trainval",
    mode: str = "trimap",
    download: bool = True,
    image_size: int | tuple[int, int] | None = None,
    limit: int | None = None,
) -> SegmentationData:
    """Oxford-IIIT Pet images and masks of one official split.

    Args:
        root: the folder holding ``images/`` and ``annotations/`` (default :func:`default_root`).
        split: ``"trainval"`` (3680 images) or ``"test"`` (3669).
        mode: ``"trimap"`` (classes background, pet, border) or ``"binary"`` (background, pet;
            the border becomes 255 = ignore).
        download: fetch the missing tarballs (about 800 MB) with ``keras.utils.get_file``,
            checking their md5, and extract them into ``root``.
        image_size: resize on load to this int or (height, width) (image bilinear, mask
            nearest), which saves memory; default keeps each photo's own size.
        limit: keep only the first ``limit`` images of the split (quick experiments).

    Returns a :class:`SegmentationData` (lists of arrays unless ``image_size`` is given) with
    ``extra["names"]`` (the image names kept) and ``extra["skipped"]`` (unreadable files).
    Raises :class:`DataUnavailableError` when the files are missing and cannot be downloaded.
    """
    if split not in _SPLITS:
        raise SegkerasError(f"split must be one of {_SPLITS}, got {split!r}")
    if mode not in CLASS_NAMES:
        raise SegkerasError(f"mode must be one of {tuple(CLASS_NAMES)}, got {mode!r}")
    size = None if image_size is None else parse_size(image_size)
    root = os.fspath(default_root() if root is None else root)
    _ensure_files(root, download)
    split_file = os.path.join(root, "annotations", f"{split}.txt")
    names = _read_split(split_file)
    if not names:
        raise DataUnavailableError(f"{split_file} lists no images; delete {root} to download the "
                                   "dataset again, or re-extract annotations.tar.gz there")
    if limit is not None:
        if int(limit) < 1:
            raise SegkerasError(f"limit must be at least 1 image, got {limit!r}")
        names = names[: int(limit)]
    lookup = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for value, class_id in _TRIMAP_TO_CLASS[mode].items():
        lookup[value] = class_id

    images, masks, kept, unreadable = [], [], [], {}
    for name in names:
        image_path = os.path.join(root, "images", f"{name}.jpg")
        trimap_path = os.path.join(root, "annotations", "trimaps", f"{name}.png")
        try:
            image = read_rgb(image_path)
            trimap = read_mask(trimap_path)
        except SegkerasError as error:  # unreadable content (missing files raise, not skip)
            unreadable[name] = str(error)
            continue
        if image.shape[:2] != trimap.shape:
            raise SegkerasError(f"{image_path} is {image.shape[:2]} but its trimap "
                                f"{trimap_path} is {trimap.shape}; re-extract the archives")
        mask = lookup[trimap]
        if size is not None:
            image, mask = resize_image(image, size), resize_mask(mask, size)
        images.append(image)
        masks.append(mask)
        kept.append(name)
    if unreadable:
        warnings.warn(f"Oxford-IIIT Pet: skipped {len(unreadable)} unreadable file(s): "
                      + "; ".join(unreadable.values()), stacklevel=2)
    if not images:
        raise DataUnavailableError(f"Oxford-IIIT Pet: none of the {len(names)} images of {split} "
                                   f"could be read ({next(iter(unreadable.values()))}); delete "
                                   f"{root} to download the dataset again")
    if size is not None:
        images, masks = np.stack(images), np.stack(masks)
    extra = {"names": kept, "skipped": list(unreadable), "split": split, "mode": mode,
             "root": root}
    return SegmentationData(images, masks, list(CLASS_NAMES[mode]), None, extra)


def _missing_parts(root: str) -> list[str]:
    """The tarballs whose extracted content is not (completely) under ``root``."""
    missing = []
    if not os.path.isdir(os.path.join(root, "images")):
        missing.append("images.tar.gz")
    annotations = os.path.join(root, "annotations")
    if not all(os.path.exists(os.path.join(annotations, part))
               for part in ("trimaps", "trainval.txt", "test.txt")):
        missing.append("annotations.tar.gz")
    return missing


def _ensure_files(root: str, download: bool) -> None:
    """Download and extract the missing tarballs into ``root``, or explain how to."""
    missing = _missing_parts(root)
    if not missing:
        return
    how = (f"download {' and '.join(missing)} from {MIRRORS[1]} and extract them into {root} "
           "(giving images/ and annotations/ there), or pass root=FOLDER where they are")
    if not download:
        raise DataUnavailableError(f"Oxford-IIIT Pet not found in {root} (missing "
                                   f"{', '.join(missing)}) and download=False: {how}")
    created = not os.path.exists(root)
    os.makedirs(root, exist_ok=True)
    try:
        for fname in missing:
            archive = _download(fname, root, how)
            with tarfile.open(archive) as tar:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and security backports
                    tar.extractall(root, filter="data")
                else:
                    tar.extractall(root)
            os.remove(archive)
        still_missing = _missing_parts(root)
        if still_missing:
            raise DataUnavailableError(f"Oxford-IIIT Pet: {', '.join(still_missing)} did not "
                                       f"give the expected files in {root}: {how}")
    except BaseException:
        if created:  # leave no empty or half-extracted folder that looks like a dataset
            shutil.rmtree(root, ignore_errors=True)
        raise


def _download(fname: str, root: str, how: str) -> str:
    errors = []
    for mirror in MIRRORS:
        try:
            return keras.utils.get_file(fname, origin=mirror + fname, file_hash=ARCHIVES[fname],
                                        hash_algorithm="md5", cache_subdir=os.path.abspath(root))
        except Exception as error:  # offline, HTTP error, wrong checksum...
            errors.append(f"{mirror + fname}: {error}")
    raise DataUnavailableError(f"Oxford-IIIT Pet: cannot download {fname} ({'; '.join(errors)}); "
                               f"{how}")


def _read_split(path: str) -> list[str]:
    """Image names of a split file ("name class species breed" lines, # comments)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    with open(path) as file:
        return [line.split()[0] for line in file if line.strip() and not line.startswith("#")]
