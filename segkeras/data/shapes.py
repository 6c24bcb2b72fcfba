"""Built-in synthetic segmentation data: circles, rectangles and triangles on cluttered backgrounds.

Every lab's default data. Each image shows 1-6 objects (15-45 % of the image side, random sizes,
rotations and overlaps, later objects occlude earlier ones) on a textured, noisy two-colour
gradient with clutter that is not an object (thin lines, small blobs). Objects, clutter and
background all take their colours from one palette, so colour alone does not tell the classes
apart: a model has to look at shape.

The same seed gives the same bytes on any machine: all geometry and pixel arithmetic is done in
integers (fixed-point coordinates, a rounded sine table), and image ``i`` is drawn from its own
random stream ``numpy.random.PCG64([seed, i])`` (raw bits only, which numpy keeps stable across
versions), so ``generate(n)[:k]`` equals ``generate(k)``.
"""

from __future__ import annotations

import math
import os

import numpy as np
from skimage.draw import line

from segkeras.data.core import Instances, SegmentationData, boxes_from_masks
from segkeras.errors import SegkerasError

CLASS_NAMES = ["background", "circle", "rectangle", "triangle"]
CIRCLE, RECTANGLE, TRIANGLE = 1, 2, 3

COLORS = (
    (215, 45, 40), (240, 140, 30), (235, 210, 55), (60, 165, 65), (35, 160, 160), (45, 90, 210),
    (135, 65, 190), (230, 115, 180), (140, 90, 50), (125, 125, 125), (235, 235, 230), (40, 40, 45),
)
"""The one RGB palette shared by backgrounds, clutter and every object class."""

SIZE_RANGE = (0.15, 0.45)
"""Object size (circle diameter, rectangle long side) as a fraction of the image side."""

MIN_VISIBLE = 0.7
"""Fraction of each object that stays visible: placements that would hide more are redrawn."""

_SUB = 16  # fixed-point coordinates: 1/16 pixel
_ONE = 1 << 12  # fixed-point sine and cosine: 4096 = 1.0
_TURN = 256  # angles in 1/256 of a turn
# rounded to integers; no entry is within 0.01 of a rounding tie, so libm differences cannot matter
_COS = [round(_ONE * math.cos(2 * math.pi * k / _TURN)) for k in range(_TURN)]
_SIN = [round(_ONE * math.sin(2 * math.pi * k / _TURN)) for k in range(_TURN)]
_SIN_TABLE = np.array(_SIN, dtype=np.int64)
_COLOR_PLANES = np.array(COLORS, dtype=np.int16)[:, :, None, None]  # (colours, 3, 1, 1)
_MIN_CONTRAST = 150  # L1 RGB distance between an object and the background under its centre
_MAX_OBJECTS = 255  # object indices are stored as uint8

MULTISCALE_SIDES = (256, 512)
"""Image heights and widths of :func:`generate_multiscale`, in pixels (inclusive)."""
MULTISCALE_OBJECT_SIDES = (6, 230)
"""Object sizes of :func:`generate_multiscale` (circle diameter, rectangle long side), pixels."""
_MULTISCALE_STREAM = 1  # keeps the multi-scale images' random streams apart from generate()'s
# log-uniform radii, fixed-point (64 steps; rounded to 1/16 px, far from any rounding tie)
_MULTISCALE_RADII = tuple(
    round(_SUB * MULTISCALE_OBJECT_SIDES[0] / 2
          * (MULTISCALE_OBJECT_SIDES[1] / MULTISCALE_OBJECT_SIDES[0]) ** (k / 63))
    for k in range(64))


def generate(
    n: int,
    image_size: int = 128,
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 6,
) -> SegmentationData:
    """``n`` synthetic images with semantic masks and instances.

    Returns a :class:`SegmentationData` with images (n, S, S, 3) uint8, masks (n, S, S) uint8
    (0 background, 1 circle, 2 rectangle, 3 triangle) and one :class:`Instances` per image
    (boxes as x1, y1, x2, y2 with x2, y2 one past the last pixel, like COCO's x, y, w, h).
    ``min_objects``/``max_objects`` bound the objects drawn per image (a placement that would
    hide more than 30 % of an earlier object is retried, then left out).
    """
    _check_arguments(n, image_size, min_objects, max_objects)
    size = int(image_size)
    centres = np.arange(size, dtype=np.int64) * _SUB + _SUB // 2  # pixel centres, fixed-point
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=np.uint8)
    instances = []
    for index in range(n):
        scene = _Scene(np.random.PCG64([seed, index]), centres)
        scene.draw_clutter()
        scene.draw_objects(min_objects, max_objects)
        scene.render(images[index])
        masks[index] = scene.semantic
        instances.append(scene.instances())
    return SegmentationData(images, masks, list(CLASS_NAMES), instances,
                            {"generator": "segkeras.data.shapes", "seed": seed})


def export(n: int, out_dir: str | os.PathLike, image_size: int = 128, seed: int = 0) -> dict:
    """Write ``generate(n, image_size, seed)`` as a COCO-format dataset
    (:func:`segkeras.data.coco.export`: ``images/``, ``masks/``, ``annotations.json``)."""
    from segkeras.data.coco import export as write_coco

    description = f"segkeras synthetic shapes: generate({n}, {image_size}, seed={seed})"
    return write_coco(generate(n, image_size, seed), out_dir, description, supercategory="shape")


def generate_multiscale(
    n: int,
    seed: int = 0,
    sides: tuple[int, int] = MULTISCALE_SIDES,
    min_objects: int = 4,
    max_objects: int = 16,
) -> SegmentationData:
    """``n`` shapes images of varied size and aspect ratio with objects from about 6 to 250 px.

    Each image's height and width are drawn independently from ``sides`` (inclusive), and each
    object's size (circle diameter, rectangle long side; triangles are drawn about 1.1x larger)
    log-uniformly from :data:`MULTISCALE_OBJECT_SIDES`, so COCO's small (under 32x32 pixels),
    medium and large objects are all common and AP_S/M/L mean something. No clutter blobs (they
    would look like small circles); clutter lines remain. Images are lists (sizes differ); the
    same seed gives the same bytes, ``generate_multiscale(n)[:k]`` equals
    ``generate_multiscale(k)``.
    """
    _check_arguments(n, 32, min_objects, max_objects)
    low, high = (int(side) for side in sides)
    if not 32 <= low <= high:
        raise SegkerasError(f"sides must be (low, high) with 32 <= low <= high, got {sides!r}")
    images, masks, instances = [], [], []
    for index in range(n):
        bit_generator = np.random.PCG64([seed, _MULTISCALE_STREAM, index])
        height, width = (low + int(value) % (high - low + 1)
                         for value in bit_generator.random_raw(2))
        side = max(height, width)
        centres = np.arange(side, dtype=np.int64) * _SUB + _SUB // 2
        scene = _Scene(bit_generator, centres, radii=_MULTISCALE_RADII)
        scene.extent = (height, width)  # objects in the part that is kept
        scene.draw_clutter(blobs=False)
        scene.draw_objects(min_objects, max_objects)
        image = np.empty((side, side, 3), dtype=np.uint8)
        scene.render(image)
        scene.crop(height, width)
        images.append(np.ascontiguousarray(image[:height, :width]))
        masks.append(scene.semantic)
        instances.append(scene.instances())
    return SegmentationData(images, masks, list(CLASS_NAMES), instances,
                            {"generator": "segkeras.data.shapes.generate_multiscale",
                             "seed": seed})


def _check_arguments(n: int, image_size: int, min_objects: int, max_objects: int) -> None:
    if int(n) != n or n < 0:
        raise SegkerasError(f"n must be a whole number >= 0, got {n!r}")
    if int(image_size) != image_size or image_size < 32:
        raise SegkerasError(f"image_size must be an int >= 32, got {image_size!r}")
    if not 1 <= min_objects <= max_objects <= _MAX_OBJECTS:
        raise SegkerasError(
            f"need 1 <= min_objects <= max_objects <= {_MAX_OBJECTS}, got "
            f"min_objects={min_objects}, max_objects={max_objects}"
        )


def _raw_integers(bit_generator: np.random.BitGenerator):
    """Endless uniform 64-bit integers, fetched in blocks (one numpy call per 64 draws)."""
    while True:
        yield from bit_generator.random_raw(64).tolist()


class _Scene:
    """One image being drawn: a channels-first (3, S, S) int16 canvas (long, fast numpy loops)
    and ``owner``, the 1-based index of the object on top of each pixel (0 = background)."""

    def __init__(self, bit_generator: np.random.BitGenerator, centres: np.ndarray,
                 radii: tuple[int, ...] | None = None):
        self.radii = radii  # None: SIZE_RANGE of the image side; else drawn from this table
        self.extent = (len(centres), len(centres))  # (H, W) where object centres may fall
        self.bit_generator = bit_generator
        self._draws = _raw_integers(bit_generator).__next__
        self.centres = centres
        self.size = size = len(centres)
        self.canvas = self._background()
        self.owner = np.zeros((size, size), dtype=np.uint8)
        self.semantic = np.zeros((size, size), dtype=np.uint8)
        self.class_ids: list[int] = []
        self.areas: list[int] = []
        self.visible: list[int] = []

    def integer(self, low: int, high: int) -> int:
        """Uniform integer in [low, high)."""
        return low + self._draws() % (high - low)

    def _background(self) -> np.ndarray:
        """A linear gradient between two palette colours plus a smooth texture (the product of
        two sine waves of 1-4 cycles per side, amplitude 8-20)."""
        size, pixels, integer = self.size, np.arange(self.size, dtype=np.int64), self.integer
        first = integer(0, len(COLORS))
        second = (first + integer(1, len(COLORS))) % len(COLORS)
        angle = integer(0, _TURN)
        cos, sin = _COS[angle], _SIN[angle]
        span = (abs(cos) + abs(sin)) * (size - 1)
        # weight of the second colour, 0..128, from the position along the gradient direction
        weight_x = ((cos * pixels - min(cos, 0) * (size - 1)) * 128 // span).astype(np.int16)
        weight_y = ((sin * pixels - min(sin, 0) * (size - 1)) * 128 // span).astype(np.int16)
        difference = _COLOR_PLANES[second] - _COLOR_PLANES[first]
        canvas = (weight_y[:, None] + weight_x[None, :])[None] * difference
        canvas >>= 7
        amplitude = integer(8, 21)
        waves = []  # +-64
        for _ in range(2):
            cycles, phase = integer(1, 5), integer(0, _TURN)
            waves.append(_SIN_TABLE[(cycles * pixels * _TURN // size + phase) % _TURN] >> 6)
        wave_x, wave_y = waves[0].astype(np.int16), (amplitude * waves[1] >> 6).astype(np.int16)
        canvas += ((wave_y[:, None] * wave_x[None, :]) >> 6)[None]
        canvas += _COLOR_PLANES[first]
        return canvas

    def draw_clutter(self, blobs: bool = True) -> None:
        """1-4 thin lines and (with ``blobs``) 1-5 small blobs in palette colours: background,
        not objects."""
        size, integer = self.size, self.integer
        for _ in range(integer(1, 5)):
            rows, cols = line(*(integer(0, size) for _ in range(4)))
            self.canvas[:, rows, cols] = _COLOR_PLANES[integer(0, len(COLORS))][:, :, 0]
        if not blobs:
            return
        low, high = _SUB * max(1, size // 100), _SUB * max(2, size // 30)
        for _ in range(integer(1, 6)):
            radius = integer(low, high + 1)
            box, inside = self._circle(integer(0, size * _SUB), integer(0, size * _SUB), radius)
            if box is not None:
                np.copyto(self.canvas[(slice(None), *box)], _COLOR_PLANES[integer(0, len(COLORS))],
                          where=inside[None])

    def draw_objects(self, min_objects: int, max_objects: int, tries: int = 4) -> None:
        """Objects in random order, later ones on top; a placement that would leave less than
        MIN_VISIBLE of an earlier object visible is redrawn elsewhere, after ``tries`` left out."""
        for _ in range(self.integer(min_objects, max_objects + 1)):
            class_id = self.integer(1, len(CLASS_NAMES))
            vertices, radius = self._outline(class_id)
            margin = radius // 2  # at most half the radius may leave the image
            for _ in range(tries):
                cx = self.integer(margin, self.extent[1] * _SUB - margin + 1)
                cy = self.integer(margin, self.extent[0] * _SUB - margin + 1)
                if class_id == CIRCLE:
                    box, inside = self._circle(cx, cy, radius)
                else:
                    box, inside = self._polygon([(x + cx, y + cy) for x, y in vertices])
                if box is not None and self._paint(box, inside, class_id):
                    break

    def render(self, out: np.ndarray) -> None:
        """Add uniform pixel noise in [-8, 7] (std 4.6) and write the (S, S, 3) uint8 image."""
        count = self.canvas.size
        raw = self.bit_generator.random_raw(-(-count // 8)).astype("<u8", copy=False)
        self.canvas += raw.view(np.int8)[:count].reshape(self.canvas.shape) >> 4
        np.clip(self.canvas, 0, 255, out=self.canvas)
        for channel in range(3):
            out[..., channel] = self.canvas[channel]

    def crop(self, height: int, width: int) -> None:
        """Keep the top-left ``height`` x ``width`` pixels of the masks; objects left without
        a visible pixel are no longer objects."""
        self.owner, self.semantic = self.owner[:height, :width], self.semantic[:height, :width]
        seen = np.bincount(self.owner.ravel(), minlength=len(self.class_ids) + 1)[1:]
        kept = np.flatnonzero(seen)
        relabel = np.zeros(len(self.class_ids) + 1, np.uint8)
        relabel[kept + 1] = np.arange(1, len(kept) + 1)
        self.owner = relabel[self.owner]
        self.class_ids = [self.class_ids[i] for i in kept]

    def instances(self) -> Instances:
        indices = np.arange(1, len(self.class_ids) + 1, dtype=np.uint8)
        masks = self.owner[None] == indices[:, None, None]
        return Instances(masks, boxes_from_masks(masks), np.array(self.class_ids, dtype=np.int32))

    def _outline(self, class_id: int) -> tuple[list, int]:
        """(polygon vertices around the origin, [] for a circle; radius), fixed-point."""
        if self.radii is None:
            low, high = SIZE_RANGE
            radius = self.integer(int(low * self.size * _SUB / 2),
                                  int(high * self.size * _SUB / 2) + 1)
        else:
            radius = self.radii[self.integer(0, len(self.radii))]
        if class_id == CIRCLE:
            return [], radius
        if class_id == RECTANGLE:
            half_h = radius * self.integer(141, 257) // 256  # short / long side 0.55..1
            corners = [(-radius, -half_h), (radius, -half_h), (radius, half_h), (-radius, half_h)]
        else:
            # vertices on a circumcircle 1.25x larger (an area similar to the other classes),
            # about 120 degrees apart (+-17 degrees)
            big = radius * 5 // 4
            angles = [(k * _TURN // 3 + self.integer(-12, 13)) % _TURN for k in range(3)]
            corners = [(big * _COS[a] // _ONE, big * _SIN[a] // _ONE) for a in angles]
        angle = self.integer(0, _TURN)
        cos, sin = _COS[angle], _SIN[angle]
        rotated = [((x * cos - y * sin) // _ONE, (x * sin + y * cos) // _ONE) for x, y in corners]
        return rotated, radius

    def _box(self, x_min: int, x_max: int, y_min: int, y_max: int):
        """(rows, cols) slices of the pixels a fixed-point extent touches, clipped; None if none."""
        x0, x1 = max(0, x_min // _SUB), min(self.size, x_max // _SUB + 1)
        y0, y1 = max(0, y_min // _SUB), min(self.size, y_max // _SUB + 1)
        if x0 >= x1 or y0 >= y1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def _circle(self, cx: int, cy: int, radius: int) -> tuple:
        """(box, mask within the box) of the pixels whose centres lie in the circle."""
        box = self._box(cx - radius, cx + radius, cy - radius, cy + radius)
        if box is None:
            return None, None
        rows, cols = self.centres[box[0], None], self.centres[None, box[1]]
        return box, (rows - cy) ** 2 <= radius * radius - (cols - cx) ** 2

    def _polygon(self, points: list) -> tuple:
        """(box, mask within the box) of the pixels whose centres lie in a convex polygon."""
        xs, ys = [x for x, _ in points], [y for _, y in points]
        box = self._box(min(xs), max(xs), min(ys), max(ys))
        if box is None:
            return None, None
        rows, cols = self.centres[box[0], None], self.centres[None, box[1]]
        edges = list(zip(points, points[1:] + points[:1], strict=True))
        sign = 1 if sum(ax * by - bx * ay for (ax, ay), (bx, by) in edges) > 0 else -1
        # p is inside when the cross product (b - a) x (p - a) has the polygon's orientation for
        # every edge a->b: dx * (py - ay) - dy * (px - ax) >= 0, all edges at once
        terms = [(bx - ax, by - ay, (bx - ax) * ay - (by - ay) * ax)
                 for (ax, ay), (bx, by) in edges]
        dx, dy, offset = (sign * np.array(terms, dtype=np.int64).T)[:, :, None, None]
        inside = dx * rows - offset >= dy * cols
        return box, inside.all(axis=0)

    def _paint(self, box: tuple, inside: np.ndarray, class_id: int) -> bool:
        """Draw an object in a flat palette colour (jittered by up to +-12 per channel) unless
        it is empty or would hide too much of an earlier one."""
        area = int(np.count_nonzero(inside))
        if area == 0:
            return False
        owner = self.owner[box]
        if self.areas:
            lost = np.bincount(owner[inside], minlength=len(self.areas) + 1)[1:].tolist()
            visible = [seen - hidden for seen, hidden in zip(self.visible, lost, strict=True)]
            if any(seen < MIN_VISIBLE * total
                   for seen, total in zip(visible, self.areas, strict=True)):
                return False
            self.visible = visible
        self.areas.append(area)
        self.visible.append(area)
        owner[inside] = len(self.areas)
        self.semantic[box][inside] = class_id
        self.class_ids.append(class_id)
        canvas = self.canvas[(slice(None), *box)]
        height, width = inside.shape
        color = self._contrasting_color(canvas[:, height // 2, width // 2])
        color = color + [[[self.integer(-12, 13)]] for _ in range(3)]
        np.copyto(canvas, color, where=inside[None])
        return True

    def _contrasting_color(self, under: np.ndarray) -> np.ndarray:
        """(3, 1, 1) random palette colour at least _MIN_CONTRAST away from the pixel ``under``."""
        distances = np.abs(_COLOR_PLANES[:, :, 0, 0] - under).sum(axis=1)
        choices = np.flatnonzero(distances >= _MIN_CONTRAST)
        if len(choices) == 0:
            choices = np.argsort(distances)[-3:]
        return _COLOR_PLANES[choices[self.integer(0, len(choices))]]
