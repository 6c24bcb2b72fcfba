"""Image and mask files <-> arrays in the data contract (RGB uint8 images, integer masks)."""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from segkeras.errors import SegkerasError
from segkeras.runs import atomic_path


def _voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map: class id -> RGB by spreading the id's bits over the channels."""
    ids = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (ids >> (3 * shift + channel)) & 1
            palette[:, channel] |= bit << (7 - shift)
    return palette.astype(np.uint8)


MAX_IMAGE_PIXELS = 100_000_000
"""The most pixels segkeras decodes from one image file (a 100 MP photo; 12 MP phone photos are
well inside): a larger header, or a decompression bomb, is refused before any pixel is decoded."""

PALETTE = _voc_palette()
"""(256, 3) uint8 colour of each class id (PASCAL VOC map): 0 black, 1 dark red, ..., 255 cream."""


def to_rgb(image: np.ndarray) -> np.ndarray:
    """An HxWx3 RGB array from a grayscale (HxW or HxWx1), RGB or RGBA (alpha dropped) array."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise SegkerasError(
            f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}; "
            "pass grayscale, RGB or RGBA pixels"
        )
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


_WIDE_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
"""PIL modes of grayscale pixels wider than 8 bits (16-bit PNGs open as "I;16" or "I")."""


def check_pixels(image: np.ndarray, what: str) -> np.ndarray:
    """``image`` if its pixels are valid in the data contract (RGB in [0, 255]), else SegkerasError.

    Refused: NaN or infinite pixels (they would silently become 0), values outside [0, 255], and
    float images whose values all lie in [0, 1] (scaled for display, not raw pixels: a [0, 255]
    model sees them as almost black)."""
    image = np.asarray(image)
    if image.dtype == np.uint8 or image.size == 0:
        return image
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise SegkerasError(f"{what}: pixels must be numbers in [0, 255], got dtype {image.dtype}")
    if not np.isfinite(image).all():
        raise SegkerasError(f"{what} has NaN or infinite pixels; replace them (e.g. "
                            "np.nan_to_num(image)) or drop the image")
    low, high = image.min(), image.max()
    if low < 0 or high > 255:
        hint = ("; 16-bit pixels? pass (image / 257).astype(np.uint8)" if low >= 0
                and high <= 65535 and np.issubdtype(image.dtype, np.integer) else "")
        raise SegkerasError(f"{what}: pixel values must be in [0, 255], found {low}..{high}"
                            f"{hint}")
    if np.issubdtype(image.dtype, np.floating) and 0 < high <= 1:
        raise SegkerasError(
            f"{what} has float pixels in [0, 1] but segkeras expects RGB in [0, 255]; pass "
            "image * 255 (or uint8 pixels)")
    return image


def check_images(images, what: str = "Image") -> list[np.ndarray]:
    """The images given to a predictor as a list of HxWx3 RGB arrays, each checked.

    ``images``: a (B, H, W, C) array or a sequence of images (grayscale HxW, RGB or RGBA; see
    :func:`to_rgb`). SegkerasError, naming the image, for one bare (H, W, 3) image instead of a
    batch, an image without pixels (0xW or Hx0), and pixels :func:`check_pixels` refuses (NaN or
    infinite, negative, above 255 as in 16-bit images, floats in [0, 1])."""
    if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] in (3, 4):
        raise SegkerasError(f"got one {images.shape} image, not a batch; pass [image] or a "
                            "(B, H, W, 3) array")
    checked = []
    for i, image in enumerate(images):
        try:
            image = to_rgb(image)
        except SegkerasError as error:
            raise SegkerasError(f"{what} {i}: {error}") from error
        if 0 in image.shape[:2]:
            raise SegkerasError(f"{what} {i} is {image.shape[0]}x{image.shape[1]}: it has no "
                                "pixels; drop it")
        checked.append(check_pixels(image, f"{what} {i}"))
    return checked


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The file's pixels as HxWx3 uint8 RGB, whatever its real format (PNG behind a .jpg name,
    grayscale, RGBA, CMYK, palette, 16-bit grayscale scaled to 8 bits: 65535 -> 255; 32-bit
    float grayscale (TIFF) in [0, 1] scaled to 0..255, in [0, 255] kept). Raises
    FileNotFoundError or SegkerasError naming the path."""
    with _open(path) as image:
        if image.mode in _WIDE_GRAY_MODES:
            return to_rgb(_to_8_bits(np.asarray(image), path))
        if image.mode == "F":  # PIL's convert("RGB") would clip [0, 1] floats to black
            return to_rgb(_float_to_8_bits(np.asarray(image), path))
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _to_8_bits(gray: np.ndarray, path) -> np.ndarray:
    """16-bit gray levels 0..65535 as 8-bit 0..255 (PIL's convert would clip them at 255)."""
    if gray.min(initial=0) < 0 or gray.max(initial=0) > 65535:
        raise SegkerasError(f"{path} has pixel values outside 0..65535; save it as an 8-bit "
                            "or 16-bit image")
    return np.round(gray.astype(np.float64) * (255 / 65535)).astype(np.uint8)


def _float_to_8_bits(gray: np.ndarray, path) -> np.ndarray:
    """Float gray levels as 8-bit: values in [0, 1] are scaled by 255, values in [0, 255] kept."""
    if not np.isfinite(gray).all():
        raise SegkerasError(f"{path} has NaN or infinite pixels; save it without them")
    low, high = float(gray.min(initial=0)), float(gray.max(initial=0))
    if low < 0 or high > 255:
        raise SegkerasError(f"{path} has float pixels in [{low:.3g}, {high:.3g}]; segkeras reads "
                            "float images in [0, 1] or [0, 255]: rescale it")
    scale = 255.0 if high <= 1.0 else 1.0
    return np.round(gray.astype(np.float64) * scale).astype(np.uint8)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A label image (grayscale or palette PNG) as an HxW uint8 array of the stored values."""
    with _open(path) as image:
        if image.mode not in ("L", "P", "I", "I;16", "1"):
            raise SegkerasError(
                f"{path} is a {image.mode} image, not a label map; "
                "masks must be single-channel (grayscale or palette) PNGs"
            )
        mask = np.asarray(image)
    if mask.max(initial=0) > 255:
        raise SegkerasError(f"{path} has label {mask.max()} > 255; masks hold class ids 0..255")
    return mask.astype(np.uint8)


def write_png(path: str | os.PathLike, array: np.ndarray, palette: bool = False) -> None:
    """Write an RGB image or, with ``palette=True``, a label map as a palette PNG: the stored
    values are the class ids and viewers show them in :data:`PALETTE` colours."""
    image = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if palette:
        image.putpalette(PALETTE.tobytes())  # an "L" image becomes "P" with the same values
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG", optimize=False)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An HxWxC image resized bilinearly (anti-aliased when shrinking, PIL) to ``size`` (H, W).

    uint8 images stay uint8; any other dtype is resized in float32 and returned as float32."""
    image = np.asarray(image)
    height, width = size
    if image.dtype == np.uint8:
        if image.shape[:2] == (height, width):
            return image
        return np.asarray(Image.fromarray(image).resize((width, height),
                                                        Image.Resampling.BILINEAR))
    image = image.astype(np.float32)
    if image.shape[:2] == (height, width):
        return image
    channels = [Image.fromarray(np.ascontiguousarray(image[..., c])).resize(
        (width, height), Image.Resampling.BILINEAR) for c in range(image.shape[-1])]
    return np.stack([np.asarray(channel) for channel in channels], axis=-1)


def check_sides(min_side, max_side) -> tuple[int, int]:
    """``(min_side, max_side)`` if both are positive ints with ``min_side <= max_side``, else
    SegkerasError."""
    for name, value in (("min_side", min_side), ("max_side", max_side)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise SegkerasError(f"{name} must be a positive int (pixels), got {value!r}")
    if min_side > max_side:
        raise SegkerasError(f"min_side={min_side} is larger than max_side={max_side}; the shorter "
                            "side cannot exceed the longer")
    return int(min_side), int(max_side)


def fit_size(height: int, width: int, min_side: int, max_side: int,
             canvas: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (H, W) of an image resized keeping its aspect ratio: the shorter side ``min_side``
    unless that makes the longer side exceed ``max_side`` (Faster R-CNN's rule), and the whole
    inside ``canvas`` (H, W) when given (a model with a fixed input). Sides are at least 1."""
    scale = min(min_side / min(height, width), max_side / max(height, width))
    if canvas is not None:
        scale = min(scale, canvas[0] / height, canvas[1] / width)
    return (min(max(1, round(height * scale)), canvas[0] if canvas else max_side),
            min(max(1, round(width * scale)), canvas[1] if canvas else max_side))


def letterbox(image: np.ndarray, size: tuple[int, int], canvas: tuple[int, int]) -> np.ndarray:
    """``image`` resized (:func:`resize_image`) to ``size`` (H, W), aspect ratio kept by the
    caller (:func:`fit_size`), at the top left of a zero (black) ``canvas`` (H, W): the pixels
    keep their coordinates up to the scale, the padding is below and right of them."""
    resized = resize_image(image, size)
    if resized.shape[:2] == tuple(canvas):
        return resized
    padded = np.zeros((*canvas, resized.shape[-1]), resized.dtype)
    padded[: size[0], : size[1]] = resized
    return padded


def bilinear_weights(source: int, target: int) -> np.ndarray:
    """(target, source) float32 weights resampling ``source`` samples to ``target`` bilinearly
    (pixel centres at +0.5, edges clamped: ``tf.image.resize``'s bilinear without
    anti-aliasing); ``weights @ values`` resizes along the first axis."""
    coords = np.clip((np.arange(target) + 0.5) * (source / target) - 0.5, 0, source - 1)
    low = np.floor(coords).astype(int)
    high = np.minimum(low + 1, source - 1)
    weights = np.zeros((target, source), np.float32)
    rows = np.arange(target)
    np.add.at(weights, (rows, low), 1.0 - (coords - low))
    np.add.at(weights, (rows, high), coords - low)
    return weights


def upsampled_argmax(logits: np.ndarray, size: tuple[int, int], rows_per_block: int = 512):
    """(H, W) uint8 class ids: (h, w, C) ``logits`` resized bilinearly to ``size`` (H, W), the
    argmax taken there (the first class on ties, as ``np.argmax``). Computed class by class on
    blocks of rows, so memory grows with H x W, not with H x W x C."""
    logits = np.asarray(logits, np.float32)
    height, width = size
    if logits.shape[-1] > 256:
        raise SegkerasError(f"{logits.shape[-1]} classes do not fit in uint8 class ids")
    row_weights = bilinear_weights(logits.shape[0], height)
    col_weights = bilinear_weights(logits.shape[1], width).T
    ids = np.zeros((height, width), np.uint8)
    for top in range(0, height, rows_per_block):
        rows = row_weights[top: top + rows_per_block]
        best = None
        for c in range(logits.shape[-1]):
            plane = rows @ logits[..., c] @ col_weights
            if best is None:
                best = plane
                continue
            better = plane > best
            ids[top: top + rows_per_block][better] = c
            np.maximum(best, plane, out=best)
    return ids


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 label map resized to ``size`` (H, W) with nearest neighbour (no new labels)."""
    if mask.shape[:2] == tuple(size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.Resampling.NEAREST))


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of the image file at ``path`` from its header, without decoding it;
    FileNotFoundError or SegkerasError (not an image, a decompression bomb) naming the path."""
    with _open_header(path) as image:
        return image.size[1], image.size[0]


def _open(path: str | os.PathLike) -> Image.Image:
    image = _open_header(path)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        image.close()
        raise SegkerasError(f"cannot read {path} as an image ({error})") from error
    return image


def _open_header(path: str | os.PathLike) -> Image.Image:
    """The image at ``path`` opened (its header read, its size checked), not decoded."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    too_large = (f"more than {MAX_IMAGE_PIXELS:,} pixels (a decompression bomb, or a photo to "
                 "downscale first); not decoded")
    try:
        with warnings.catch_warnings():  # sizes are checked below, against our own budget
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as error:
        raise SegkerasError(f"{path} has {too_large} ({error})") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise SegkerasError(f"cannot read {path} as an image ({error})") from error
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise SegkerasError(f"{path} is {width}x{height} pixels: {too_large}")
    return image
