"""Checks for lab 5, Mask R-CNN's mask head (He et al., ICCV 2017): RoIAlign of one box, a 28x28
mask target, the class-specific mask of each box, the mask loss, pasting a mask back into the image.

Every check runs the student's function on fixed inputs and compares it with the library
(:class:`segkeras.layers.RoIAlign`, :func:`segkeras.models.mask_head.paste_masks`...), computed in
float32 whatever the global dtype policy. The library function that answers an exercise is
forbidden while its check runs ("write it yourself"). When the answer is wrong, the typical
mistakes (half-pixel offset, x and y swapped, softmax over classes...) are recognised by comparing
it with the library run on the mistaken inputs, so the hint names them. The fallbacks are what the
lab uses until an exercise passes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import keras
import numpy as np

import segkeras.data.instances
import segkeras.layers
import segkeras.models.mask_head
from segkeras.checks.core import CheckFailed, Lab, forbid, in_float32, reference, require

MASK_SIZE = 28
_ATOL = 1e-4
_MIN_AGREEMENT = 0.85  # mask targets: fraction of the 28x28 pixels equal to the reference
_TARGET_IMAGE_SIZE = 96
_MIN_IOU = 0.9  # pasted masks: IoU with the reference


def _numpy(value) -> np.ndarray:
    """A student's result (numpy array, list or backend tensor) as a float64 numpy array."""
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=_ATOL))


def _roi_align(images, boxes, box_indices, output_size, sampling_ratio, spatial_scale, aligned):
    """The library's RoIAlign in float32 (never the global policy's float16): (K, P, P, C)."""
    with reference():
        layer = segkeras.layers.RoIAlign(output_size, sampling_ratio, spatial_scale, aligned,
                                         dtype="float32")
        pooled = layer(np.asarray(images, np.float32), np.asarray(boxes, np.float32).reshape(-1, 4),
                       np.asarray(box_indices, np.int32))
        return np.asarray(keras.ops.convert_to_numpy(pooled), dtype=np.float64)


def _reference_roi_align(features, boxes, output_size, sampling_ratio, spatial_scale, aligned):
    """The library's RoIAlign of (H, W, C) ``features`` over (K, 4) boxes: (K, P, P, C)."""
    count = len(np.asarray(boxes).reshape(-1, 4))
    return _roi_align(features[None], boxes, np.zeros(count), output_size, sampling_ratio,
                      spatial_scale, aligned)


def library_roi_align_box(features, box, output_size=2, sampling_ratio=2, spatial_scale=1.0,
                          aligned=True) -> np.ndarray:
    """segkeras' answer to exercise 1 (what the lab uses until the student's passes)."""
    features = np.asarray(features, np.float64)
    return _reference_roi_align(features, box, output_size, sampling_ratio, spatial_scale,
                                aligned)[0]


LAB = Lab("05_mask_rcnn_head", {"roi_align_box": 3, "mask_target": 2, "select_class_masks": 2,
                                "mask_loss": 2, "paste_mask": 2})
start, use, guard, total = LAB.start, LAB.use, LAB.guard, LAB.total
# What answers exercises 1 and 2: a student's answer must not call them.
_ROI_ALIGN_CODE = (segkeras.layers.RoIAlign.call, segkeras.data.instances.mask_targets,
                   segkeras.data.instances._roi_align_matrix)


# --- exercise 1: RoIAlign of one box ---------------------------------------------------------

_FEATURES = np.random.default_rng(5).normal(size=(7, 9, 3))
# (box, output_size, sampling_ratio, spatial_scale, aligned): inside, across the border, tiny,
# the whole map, a coarser map (spatial_scale 1/2), the legacy definition (aligned=False).
_ROI_CASES = (
    ((1.3, 0.7, 6.2, 5.9), 2, 2, 1.0, True),
    ((2.0, 1.0, 8.0, 6.0), 3, 2, 1.0, True),
    ((-2.0, -1.5, 3.0, 2.5), 2, 2, 1.0, True),
    ((0.0, 0.0, 9.0, 7.0), 4, 1, 1.0, True),
    ((3.0, 2.2, 15.0, 12.6), 2, 2, 0.5, True),
    ((1.3, 0.7, 6.2, 5.9), 2, 2, 1.0, False),
    ((4.0, 3.0, 4.4, 3.2), 2, 2, 1.0, False),
)


def _check_bilinear(bilinear_sample: Callable) -> None:
    """Pixel centres, a point between pixels, clamping near the border, zero far outside."""
    features = _FEATURES
    height, width = features.shape[:2]
    at = lambda y, x: _numpy(bilinear_sample(features.copy(), y, x))  # noqa: E731
    centre = at(2.0, 3.0)
    require(centre.shape == (features.shape[-1],),
            f"bilinear_sample(features, y, x) should return one value per channel, shape "
            f"({features.shape[-1]},); got {centre.shape}.")
    require(not _close(centre, features[3, 2]),
            "bilinear_sample(features, y=2, x=3) returned features[3, 2]: y is the row, x the "
            "column, so it is features[y, x].")
    require(_close(centre, features[2, 3]),
            "bilinear_sample at integer (y, x) = (2, 3) should return features[2, 3] exactly: "
            "array index i is the centre of pixel i.")
    expected = 0.75 * (0.5 * features[2, 3] + 0.5 * features[2, 4]) + 0.25 * (
        0.5 * features[3, 3] + 0.5 * features[3, 4])
    require(_close(at(2.25, 3.5), expected),
            "bilinear_sample at (2.25, 3.5) should weigh rows 2 and 3 by 0.75 and 0.25, columns 3 "
            "and 4 by 0.5 each (the four neighbouring pixels).")
    require(_close(at(height - 0.6, width - 0.6), features[height - 1, width - 1]),
            "a point between the last pixel centre and the map's edge (H - 0.6, W - 0.6) should "
            "be clamped to the last row/column: features[H - 1, W - 1].")
    require(_close(at(-0.5, 2.0), features[0, 2]),
            "a point in [-1, 0) (here y = -0.5) should be clamped to row 0.")
    require(_close(at(-1.5, 2.0), np.zeros(features.shape[-1])) and
            _close(at(3.0, width + 0.5), np.zeros(features.shape[-1])),
            "a point more than one pixel outside the map (y < -1, y > H, x < -1 or x > W) "
            "contributes 0.")


def _diagnose_roi_align(answer: np.ndarray, box, size, ratio, scale, aligned) -> str:
    """A hint naming the mistake whose result ``answer`` reproduces."""
    box = np.asarray(box, np.float64)
    shift = 0.5 / scale  # half a feature-map pixel, in image pixels
    mistakes = [
        (_reference_roi_align(_FEATURES, box, size, ratio, scale, not aligned),
         "your samples are off by half a pixel. With aligned=True subtract 0.5 after scaling the "
         "box: in box coordinates feature pixel i spans [i, i + 1) and its centre is i + 0.5, "
         "but bilinear sampling finds that centre at index i. With aligned=False do not."
         if aligned else
         "with aligned=False (the original Mask R-CNN definition) there is no half-pixel "
         "offset: only scale the box; its width and height are then at least 1."),
        (_reference_roi_align(_FEATURES, box + 2 * shift, size, ratio, scale, aligned),
         "your samples are off by half a pixel in the wrong direction: subtract 0.5 (not add)."),
        (_reference_roi_align(_FEATURES, box[[1, 0, 3, 2]], size, ratio, scale, aligned),
         "x and y are swapped: a box is (x1, y1, x2, y2), x is the column, y the row."),
        (_reference_roi_align(_FEATURES, box, size, ratio, 1.0, aligned),
         "the box is in image pixels: multiply it by spatial_scale to get feature-map pixels."),
        (_reference_roi_align(_FEATURES, box, size, 1, scale, aligned),
         "each bin averages sampling_ratio x sampling_ratio samples at its sub-bin centres "
         "y1 + (p + (i + 0.5) / sampling_ratio) * h / output_size, not one."),
    ]
    for expected, hint in mistakes:
        if _close(answer, expected[0]):
            return hint
    legacy = "" if aligned else " With aligned=False the box is at least 1 x 1 (h = max(h, 1))."
    return ("the values differ from segkeras.layers.RoIAlign. Bin p along y takes samples at "
            "y1 + (p + (i + 0.5) / sampling_ratio) * h / output_size; each sample is bilinear "
            "between its four neighbouring pixels; the bin is the mean of its samples." + legacy)


@LAB.check("roi_align_box", fallback=library_roi_align_box)
@forbid(*_ROI_ALIGN_CODE)
def roi_align_box(roi_align_box: Callable, bilinear_sample: Callable | None = None) -> None:
    """``roi_align_box(features, box, output_size, sampling_ratio, spatial_scale, aligned)`` on
    one (H, W, C) map must equal :class:`segkeras.layers.RoIAlign`; ``bilinear_sample(features,
    y, x)``, if given, is checked first."""
    if bilinear_sample is not None:
        _check_bilinear(bilinear_sample)
    for box, size, ratio, scale, aligned in _ROI_CASES:
        answer = _numpy(roi_align_box(_FEATURES.copy(), np.array(box), output_size=size,
                                      sampling_ratio=ratio, spatial_scale=scale, aligned=aligned))
        expected = _reference_roi_align(_FEATURES, box, size, ratio, scale, aligned)[0]
        call = (f"roi_align_box(features, box={box}, output_size={size}, sampling_ratio={ratio}, "
                f"spatial_scale={scale}, aligned={aligned})")
        require(answer.shape == expected.shape,
                f"{call} should have shape (output_size, output_size, channels) = "
                f"{expected.shape}, got {answer.shape}.")
        if not _close(answer, expected):
            require(False, f"{call}: " + _diagnose_roi_align(answer, box, size, ratio, scale,
                                                             aligned))


# --- exercise 2: mask targets ----------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _mask_target_cases() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(H, W) ground-truth masks of built-in shapes (boxes of at least 16 pixels a side) and their
    boxes, shifted and rescaled a little like proposals (fractional pixels)."""
    from segkeras.data import shapes

    data = shapes.generate(4, image_size=_TARGET_IMAGE_SIZE, seed=11, min_objects=2,
                           max_objects=3)
    rng = np.random.default_rng(3)
    cases = []
    for objects in data.instances:
        for mask, box in zip(objects.masks, objects.boxes, strict=True):
            size = box[2:] - box[:2]
            if size.min() < 16:
                continue
            centre = box[:2] + size / 2 + rng.uniform(-0.1, 0.1, 2) * size
            size = size * np.exp(rng.uniform(-0.1, 0.1, 2))
            jittered = np.concatenate([centre - size / 2, centre + size / 2])
            cases.append((mask, np.clip(jittered, 0, _TARGET_IMAGE_SIZE).astype(np.float32)))
    return tuple(cases)


def _pooled_masks(masks, boxes) -> np.ndarray:
    """RoIAlign (aligned, sampling ratio 2, scale 1) of each (H, W) mask over its own box:
    (K, 28, 28) values in [0, 1], like :func:`segkeras.data.instances.mask_targets` before the
    threshold."""
    stacked = np.stack([np.asarray(mask, np.float32) for mask in masks])[..., None]
    return _roi_align(stacked, boxes, np.arange(len(stacked)), MASK_SIZE, 2, 1.0, True)[..., 0]


def library_mask_target(mask, box, size: int = MASK_SIZE) -> np.ndarray:
    """segkeras' answer to exercise 2."""
    return np.asarray(segkeras.data.instances.mask_targets(
        np.asarray(mask, np.float32)[None], np.asarray(box, np.float32)[None], size))[0]


def _reference_targets(masks, boxes) -> np.ndarray:
    """The 28x28 binary targets of each mask over its box: (K, 28, 28) 0/1."""
    return (_pooled_masks(masks, boxes) >= 0.5).astype(np.float64)


def _agreement(answer: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean((answer >= 0.5) == (expected >= 0.5)))


@LAB.check("mask_target", fallback=library_mask_target)
@forbid(*_ROI_ALIGN_CODE)
def mask_target(mask_target_fn: Callable) -> None:
    """``mask_target_fn(mask, box)`` -> the 28x28 binary target of an (H, W) mask over ``box``;
    for every box at least 85 % of its pixels must equal RoIAlign-and-threshold (a bilinear
    crop-and-resize on rounded boxes differs only along the edges)."""
    cases = _mask_target_cases()
    masks, boxes = [mask for mask, _ in cases], [box for _, box in cases]
    answers = []
    for mask, box in cases:
        answer = _numpy(mask_target_fn(mask.copy(), box.copy()))
        require(answer.shape == (MASK_SIZE, MASK_SIZE),
                f"the target should be {MASK_SIZE}x{MASK_SIZE}, got shape {answer.shape}.")
        require(bool(np.isin(answer, (0.0, 1.0)).all()),
                "the target should be binary (0/1 or bool): threshold the resized mask at 0.5.")
        answers.append(answer)

    def reproduces(expected: np.ndarray) -> list[float]:
        return [_agreement(answer, target) for answer, target in zip(answers, expected,
                                                                     strict=True)]

    agreement = reproduces(_reference_targets(masks, boxes))
    if min(agreement) >= _MIN_AGREEMENT:
        return
    swapped = _reference_targets(masks, [box[[1, 0, 3, 2]] for box in boxes])
    require(np.mean(reproduces(swapped)) < _MIN_AGREEMENT,
            "x and y are swapped: rows are y, columns x, so the crop is mask[y1:y2, x1:x2] for a "
            "box (x1, y1, x2, y2).")
    whole = _reference_targets(masks, [np.array([0, 0, *mask.shape[::-1]], np.float32)
                                       for mask in masks])
    require(np.mean(reproduces(whole)) < _MIN_AGREEMENT,
            "this is the whole mask resized: crop it to the box first, then resize the crop to "
            "28x28.")
    worst = int(np.argmin(agreement))
    require(False,
            f"only {agreement[worst]:.0%} of the target pixels are right for box "
            f"{np.round(boxes[worst], 1).tolist()}: crop the mask to the box (x1, y1, x2, y2), "
            "resize the crop bilinearly to 28x28 (or RoIAlign it with your roi_align_box), then "
            "threshold at 0.5.")


# --- exercise 3: class-specific masks --------------------------------------------------------

_LOGITS = np.random.default_rng(7).normal(0.0, 3.0, size=(6, MASK_SIZE, MASK_SIZE, 4))
_CLASS_IDS = np.array([1, 3, 2, 3, 1, 2])


def library_select_class_masks(logits, class_ids) -> np.ndarray:
    """segkeras' answer to exercise 3 (the model's ``SelectClassMask`` layer)."""
    logits = np.asarray(logits, np.float32)
    layer = segkeras.models.mask_head.SelectClassMask(len(logits), dtype="float32")
    return keras.ops.convert_to_numpy(layer(logits, np.asarray(class_ids)[None]))[0]


@LAB.check("select_class_masks", fallback=library_select_class_masks)
@forbid(segkeras.models.mask_head.SelectClassMask.call)
def select_class_masks(select_class_masks: Callable) -> None:
    """``select_class_masks(logits, class_ids)``: (K, 28, 28, C) logits and (K,) class ids ->
    the (K, 28, 28) logits of each box's own class (no softmax, no sigmoid)."""
    logits, ids = _LOGITS.astype(np.float32), _CLASS_IDS.copy()
    answer = _numpy(select_class_masks(logits.copy(), ids.copy()))
    rows = np.arange(len(ids))
    expected = logits[rows, ..., ids].astype(np.float64)
    if answer.shape == expected.shape + (1,):
        require(False, f"got shape {answer.shape}: drop the last axis to get (K, 28, 28).")
    require(answer.shape == expected.shape,
            f"expected one 28x28 map per box, shape {expected.shape}, got {answer.shape}.")
    if _close(answer, expected):
        return
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    softmax = shifted / shifted.sum(axis=-1, keepdims=True)
    require(not (_close(answer, softmax[rows, ..., ids])
                 or _close(answer, np.log(softmax[rows, ..., ids]))),
            "this is a softmax over the classes. Mask R-CNN predicts each class's mask with its "
            "own per-pixel sigmoid (binary cross-entropy), so classes do not compete: select the "
            "raw logits of the box's class, nothing else.")
    require(not _close(answer, 1.0 / (1.0 + np.exp(-expected))),
            "these are probabilities: return the logits of the box's class; the per-pixel "
            "sigmoid belongs to the loss (binary cross-entropy from logits) and to prediction.")
    require(not (_close(answer, logits.max(axis=-1))
                 or _close(answer, logits[rows, ..., logits.mean(axis=(1, 2)).argmax(-1)])),
            "this picks the highest-scoring class: the box's class is given (class_ids), take "
            "that channel.")
    require(not _close(answer, logits[rows, ..., ids - 1]),
            "off by one: channel c holds class id c (channel 0 is the background), so use "
            "class_ids as they are.")
    require(False, "the maps differ from logits[k, :, :, class_ids[k]] for each box k: take the "
                   "channel of each box's own class.")


# --- exercise 4: the mask loss ------------------------------------------------------------------

def _loss_case() -> tuple[np.ndarray, np.ndarray]:
    """(2, 3, 28, 28) targets (0/1, -1 on the padding rows [0, 2], [1, 1], [1, 2]) and logits,
    a few of them large (|x| = 60) where a naive log(sigmoid(x)) overflows."""
    rng = np.random.default_rng(9)
    targets = (rng.uniform(size=(2, 3, MASK_SIZE, MASK_SIZE)) < 0.4).astype(np.float32)
    targets[0, 2] = targets[1, 1:] = segkeras.data.instances.PADDING_TARGET
    logits = rng.normal(0.0, 3.0, size=targets.shape).astype(np.float32)
    logits[0, 0, :2, :2] = [[60.0, -60.0], [-60.0, 60.0]]
    targets[0, 0, :2, :2] = [[0.0, 1.0], [0.0, 1.0]]
    return targets, logits


def _pixel_losses(targets: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Per-pixel sigmoid cross-entropy from logits, computed stably."""
    x = logits.astype(np.float64)
    return np.maximum(x, 0) - x * targets + np.log1p(np.exp(-np.abs(x)))


def library_mask_loss(targets, logits):
    """segkeras' answer to exercise 4 (:class:`MaskedBinaryCrossentropy`)."""
    return segkeras.models.mask_head.MaskedBinaryCrossentropy()(targets, logits)


def _trains(mask_loss_fn: Callable, targets: np.ndarray, logits: np.ndarray) -> None:
    """One training step of a tiny model with the answer as its loss (inside the backend's
    compiled step, as in the lab)."""
    inputs = keras.Input(logits.shape[1:])
    model = keras.Model(inputs, keras.layers.Dense(MASK_SIZE)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=mask_loss_fn)
    before = [np.array(weight) for weight in model.get_weights()]
    try:
        history = model.fit(logits, targets, batch_size=len(logits), epochs=1, verbose=0)
    except CheckFailed:
        raise
    except Exception as error:
        raise CheckFailed(f"mask_loss fails inside model.fit ({type(error).__name__}: "
                          f"{str(error).splitlines()[0][:200]}): write it with keras.ops (no "
                          "numpy, no stop_gradient), so that it runs and differentiates on the "
                          "symbolic tensors of the compiled training step.") from None
    require(np.isfinite(history.history["loss"][0]) and any(
        not np.allclose(old, new) for old, new in zip(before, model.get_weights(), strict=True)),
        "training with your mask_loss in model.fit changes no weight: the loss must be "
        "differentiable (keras.ops, no numpy, no stop_gradient).")


@LAB.check("mask_loss", fallback=library_mask_loss)
@forbid(segkeras.models.mask_head.MaskedBinaryCrossentropy.call)
@in_float32
def mask_loss(mask_loss_fn: Callable) -> None:
    """``mask_loss_fn(targets, logits)``: (B, N, 28, 28) 0/1 targets with -1 on padding rows and
    (B, N, 28, 28) logits -> the mean per-pixel sigmoid cross-entropy over the real boxes' pixels
    (0 if there are none); stable for large logits; trains in ``model.fit``."""
    targets, logits = _loss_case()
    answer = _numpy(mask_loss_fn(keras.ops.convert_to_tensor(targets),
                                 keras.ops.convert_to_tensor(logits)))
    require(answer.size == 1, f"mask_loss should return one number (the mean over the real "
                              f"boxes' pixels), got shape {answer.shape}.")
    answer = float(answer.reshape(()))
    require(np.isfinite(answer),
            "your loss is not finite where a logit is large (|x| = 60): log(sigmoid(x)) "
            "overflows. Use keras.ops.binary_crossentropy(targets, logits, from_logits=True), "
            "or max(x, 0) - x * t + log(1 + exp(-|x|)).")
    valid = targets >= 0
    losses = _pixel_losses(np.clip(targets, 0, 1), logits)
    expected = losses[valid].mean()
    if abs(answer - expected) > 1e-3 * max(1.0, expected):
        probabilities = np.clip(logits, 1e-7, 1 - 1e-7)
        as_probabilities = -(targets * np.log(probabilities)
                             + (1 - targets) * np.log(1 - probabilities))[valid].mean()
        mistakes = [
            (losses.mean(), "the padding rows count: average over the pixels whose target is "
                            ">= 0 only (padding rows hold -1)."),
            (losses[valid].sum() / losses.size, "divide by the number of real pixels (target "
                                                ">= 0), not by all pixels of the batch."),
            (losses[valid].sum(), "sum: take the mean over the real boxes' pixels."),
            (as_probabilities, "the model outputs logits: the per-pixel sigmoid belongs to the "
                               "loss (from_logits=True)."),
        ]
        for value, hint in mistakes:
            require(abs(answer - value) > 1e-3 * max(1.0, abs(value)), hint)
        require(False, f"got {answer:.4f}, expected {expected:.4f}: the mean per-pixel sigmoid "
                       "cross-entropy over the pixels of the real boxes (target >= 0).")
    padding_only = np.full_like(targets, segkeras.data.instances.PADDING_TARGET)
    empty = _numpy(mask_loss_fn(keras.ops.convert_to_tensor(padding_only),
                                keras.ops.convert_to_tensor(logits)))
    require(empty.size == 1 and float(empty.reshape(())) == 0.0,
            f"a batch of padding rows only should give 0 (got {empty.reshape(-1)[:1]}): divide "
            "by max(count, 1).")
    _trains(mask_loss_fn, targets, logits)


# --- exercise 5: pasting masks back ----------------------------------------------------------

_PASTE_SIZE = (72, 96)  # (height, width), not square so that swapped axes show
_PASTE_BOXES = np.array([[10, 5, 50, 41], [30, 20, 91, 70], [0, 0, 24, 30], [62, 48, 80, 66],
                         [4, 40, 44, 72]], dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _paste_cases() -> np.ndarray:
    """(K, 28, 28) soft mask probabilities: shapes' masks RoIAligned over their boxes."""
    cases = _mask_target_cases()[: len(_PASTE_BOXES)]
    return _pooled_masks([mask for mask, _ in cases], [box for _, box in cases]).astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def library_paste_mask(mask, box, height: int, width: int) -> np.ndarray:
    """segkeras' answer to exercise 5."""
    pasted = segkeras.models.mask_head.paste_masks(
        np.asarray(mask, np.float32)[None], np.asarray(box, np.float32)[None], height, width)
    return pasted[0] >= 0.5


@LAB.check("paste_mask", fallback=library_paste_mask)
@forbid(segkeras.models.mask_head.paste_masks, segkeras.models.mask_head._paste_weights)
def paste_mask(paste_mask_fn: Callable) -> None:
    """``paste_mask_fn(mask, box, height, width)``: a 28x28 probability mask resized into its box
    of an (height, width) image and thresholded at 0.5; IoU >= 0.9 with
    :func:`segkeras.models.mask_head.paste_masks`, nothing outside the box."""
    height, width = _PASTE_SIZE
    probabilities = _paste_cases()
    with reference():
        expected = segkeras.models.mask_head.paste_masks(probabilities, _PASTE_BOXES, height,
                                                         width) >= 0.5
    for mask, box, truth in zip(probabilities, _PASTE_BOXES, expected, strict=True):
        answer = _numpy(paste_mask_fn(mask.copy(), box.copy(), height, width))
        require(answer.shape == (height, width),
                f"paste_mask(mask, box, height={height}, width={width}) should return the whole "
                f"image's mask, shape ({height}, {width}); got {answer.shape}.")
        require(bool(np.isin(answer, (0.0, 1.0)).all()),
                "the pasted mask should be binary (bool or 0/1): threshold the resized "
                "probabilities at 0.5.")
        x1, y1, x2, y2 = box.astype(int)
        outside = answer.astype(bool)
        outside[max(y1 - 1, 0): y2 + 1, max(x1 - 1, 0): x2 + 1] = False
        require(not outside.any(),
                f"pixels outside the box {box.astype(int).tolist()} are set: resize the 28x28 "
                "mask to the box's size (y2 - y1 rows, x2 - x1 columns; not the image's), put it "
                "at out[y1:y2, x1:x2] and leave the rest of the image 0.")
        iou = _iou(answer.astype(bool), truth)
        require(iou >= _MIN_IOU,
                f"IoU {iou:.2f} with the expected mask for box {box.astype(int).tolist()}: resize "
                "the 28x28 probabilities bilinearly to the box (y2 - y1, x2 - x1), put them at "
                "out[y1:y2, x1:x2], threshold at 0.5.")


__all__ = ["LAB", "guard", "mask_loss", "mask_target", "paste_mask", "roi_align_box",
           "select_class_masks", "start", "total", "use"]
