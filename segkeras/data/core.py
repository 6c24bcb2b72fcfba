"""The in-memory containers every loader returns and every pipeline consumes (data contract)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from segkeras.errors import SegkerasError

IGNORE_LABEL = 255


def nearest_multiples(size: int, stride: int) -> list[int]:
    """The valid sizes next to ``size``: the positive multiples of ``stride`` just below and just
    above it, or, for a size below ``stride`` (negative included), the one nearest to its
    magnitude."""
    below = abs(size) // stride * stride
    if abs(size) % stride == 0:
        return [max(below, stride)]
    return [valid for valid in (below, below + stride) if valid >= stride]


def parse_size(image_size, multiple_of: int = 1) -> tuple[int, int]:
    """``(H, W)`` from an int or an ``(H, W)`` pair: positive whole numbers, multiples of
    ``multiple_of`` (e.g. 32, the encoder stride). Raises SegkerasError with valid sizes to use."""
    pair = (image_size, image_size) if np.ndim(image_size) == 0 else image_size
    try:
        pair = tuple(pair)
    except TypeError:
        pair = ()
    whole = [isinstance(side, numbers.Real) and not isinstance(side, bool)
             and float(side).is_integer() for side in pair]
    if len(pair) != 2 or not all(whole):
        raise SegkerasError(
            f"image_size must be an int or an (H, W) pair of ints, got {image_size!r}.")
    for side in pair:
        if side < 1 or side % multiple_of:
            valid = " or ".join(map(str, nearest_multiples(int(side), multiple_of)))
            kind = (f"a positive multiple of {multiple_of}" if multiple_of > 1
                    else "a positive size")
            raise SegkerasError(f"image size {side} is not {kind}; use {valid}.")
    return int(pair[0]), int(pair[1])


@dataclass
class Instances:
    """The objects of one image: ``masks`` (N, H, W) bool, ``boxes`` (N, 4) float32 as
    ``x1, y1, x2, y2`` in pixels, ``class_ids`` (N,) int32 starting at 1."""

    masks: np.ndarray
    boxes: np.ndarray
    class_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.class_ids)


@dataclass
class SegmentationData:
    """Images with semantic masks (and optionally instances), in memory.

    ``images``: (n, H, W, 3) uint8 array, or a list of HxWx3 uint8 arrays of varying size.
    ``masks``: (n, H, W) uint8 array or list of HxW arrays; 0 = background, 1..C = classes,
    255 = ignore. ``class_names[0]`` is ``"background"``. ``instances``: one :class:`Instances` per
    image, or None for purely semantic datasets. ``extra``: loader-specific metadata, e.g. the COCO
    loader's mapping from contiguous class ids back to the file's category ids.
    """

    images: np.ndarray | list[np.ndarray]
    masks: np.ndarray | list[np.ndarray]
    class_names: list[str]
    instances: list[Instances] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes including background (the model's output channels)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices) -> SegmentationData:
        """The images at ``indices`` (a slice or a sequence of ints), same classes."""
        if isinstance(indices, slice):
            indices = range(len(self))[indices]
        indices = list(indices)

        def pick(items):
            if items is None:
                return None
            if isinstance(items, np.ndarray):
                return items[indices]
            return [items[i] for i in indices]

        return SegmentationData(
            pick(self.images), pick(self.masks), list(self.class_names),
            pick(self.instances), dict(self.extra),
        )

    def split(self, validation_fraction: float = 0.2) -> tuple[SegmentationData, SegmentationData]:
        """(train, validation): the last ``validation_fraction`` of the images is held out."""
        n_train, _ = split_counts(len(self), validation_fraction)
        return self.subset(slice(0, n_train)), self.subset(slice(n_train, None))


def split_counts(n: int, validation_fraction: float) -> tuple[int, int]:
    """(training, validation) image counts of :meth:`SegmentationData.split` for ``n`` images:
    ``round(n * validation_fraction)`` held out, at least 1. Raises SegkerasError for a fraction
    outside (0, 1) or when no training image would be left."""
    if validation_fraction >= 1.0 and n > 0:
        raise SegkerasError(
            f"the data set has only {n} image(s), too few to hold out "
            f"{validation_fraction * n:.0f} for validation (a fraction of "
            f"{validation_fraction:.3g}) and train on the rest; use a data set with more images "
            "(a lab needs TRAIN_IMAGES + VAL_IMAGES) or hold out fewer (e.g. lower VAL_IMAGES)")
    if not 0.0 < validation_fraction < 1.0:
        raise SegkerasError(
            f"the validation fraction must be in (0, 1), e.g. 0.2; got {validation_fraction}.")

    def held_out(count: int) -> int:
        return max(1, int(round(count * validation_fraction)))

    if held_out(n) >= n:
        needed = next(count for count in range(2, 10**6) if held_out(count) < count)
        raise SegkerasError(
            f"{n} image(s) cannot be split into training and validation images; use at least "
            f"{needed} images or a smaller validation fraction.")
    return n - held_out(n), held_out(n)


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float32 tight boxes of (N, H, W) boolean masks: ``x1, y1`` the first pixel column
    and row, ``x2, y2`` one past the last (pixel i spans [i, i + 1), as in COCO's x, y, w, h);
    all zeros for an empty mask."""
    masks = np.asarray(masks, dtype=bool)
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    if len(masks) == 0:
        return boxes
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    nonempty = rows.any(axis=1)
    height, width = masks.shape[1:]
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 2] = width - cols[:, ::-1].argmax(axis=1)
    boxes[:, 3] = height - rows[:, ::-1].argmax(axis=1)
    boxes[~nonempty] = 0
    return boxes
