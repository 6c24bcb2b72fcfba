"""One way to name a dataset, shared by the CLI (``--data``) and the labs (``DATA`` /
``SEGKERAS_DATA``).

A source is ``"shapes"`` (built-in synthetic, no download), ``"sample"`` (32 shapes images shipped
in the package as a COCO-format folder), ``"pets"`` (Oxford-IIIT Pet, downloaded
on first use) or ``"pets:FOLDER"`` (Pet files already extracted in FOLDER), the path of a
COCO-format folder holding ``annotations.json`` and ``images/``, or
``"coco:ANNOTATIONS.json:IMAGE_DIR"`` for COCO files laid out otherwise (e.g. the official val2017).
In the ``coco:`` form the annotations file must end in ``.json``: the spec is split at the first
``.json:``, so either path may hold colons (Windows: ``coco:C:\\coco\\val.json:D:\\val2017``).
"""

from __future__ import annotations

import os

from segkeras.data.core import SegmentationData
from segkeras.errors import DataUnavailableError, SegkerasError

SOURCES_HELP = ("shapes (built-in synthetic), sample (32 shipped COCO-format shapes images), "
                "pets (Oxford-IIIT Pet) or pets:FOLDER, a "
                "COCO-format folder with annotations.json and images/, or "
                "coco:ANNOTATIONS.json:IMAGE_DIR")

COCO_SPEC_RULE = ("write coco:ANNOTATIONS.json:IMAGE_DIR; the annotations file must end in "
                  ".json and the spec is split after it, so Windows paths work "
                  "(coco:C:\\data\\val.json:D:\\val2017)")


def parse_coco_spec(source: str) -> tuple[str, str]:
    """(annotations file, image folder) of ``"coco:ANNOTATIONS.json:IMAGE_DIR"``, split at the
    first ``.json:`` (case-insensitive), so that either path may contain colons."""
    rest = source[len("coco:"):]
    cut = rest.lower().find(".json:")
    if cut < 1 or not rest[cut + len(".json:"):]:
        raise SegkerasError(f"{source!r}: {COCO_SPEC_RULE}.")
    return rest[:cut + len(".json")], rest[cut + len(".json:"):]


def coco_files(source: str) -> tuple[str, str] | None:
    """(annotations file, image folder) of a COCO-format ``source`` (``coco:...``, ``sample`` or
    a folder holding ``annotations.json``), None for any other source."""
    if source.startswith("coco:"):
        return parse_coco_spec(source)
    if source == "sample":
        from segkeras import resources

        source = resources.path("sample")
    annotations = os.path.join(os.fspath(source), "annotations.json")
    if os.path.isfile(annotations):
        return annotations, os.path.join(os.fspath(source), "images")
    return None


def load(
    source: str,
    n: int,
    image_size: int,
    seed: int = 0,
    split: str = "train",
) -> SegmentationData:
    """Up to ``n`` images of ``source`` resized to ``image_size``; ``split`` ("train" or "test")
    picks Pets' official split (the shapes and COCO folders are split by the caller)."""
    if split not in ("train", "test"):
        raise SegkerasError(f"split must be 'train' or 'test', got {split!r}.")
    if source == "shapes":
        from segkeras.data import shapes

        return shapes.generate(n, image_size=image_size, seed=seed)
    if source == "pets" or source.startswith("pets:"):
        from segkeras.data import pets

        return pets.load(root=source[len("pets:"):] or None,
                         split="trainval" if split == "train" else "test",
                         image_size=image_size, limit=n)
    files = coco_files(source)
    if files is not None:
        from segkeras.data import coco

        return coco.load(*files, limit=n)
    folder = os.fspath(source)
    if os.path.isdir(folder):
        raise DataUnavailableError(
            f"{folder} has no annotations.json: a COCO-format folder needs annotations.json "
            f"and images/ (e.g. `python -m segkeras data shapes --out {folder}` writes one).")
    if os.sep in folder or folder.startswith("."):
        raise DataUnavailableError(f"no such folder: {folder}; name an existing COCO-format "
                                   f"folder, or use {SOURCES_HELP}.")
    raise DataUnavailableError(f"no dataset {source!r}: use {SOURCES_HELP}.")
