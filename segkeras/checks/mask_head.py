"""Checks for lab 5, Mask R-CNN's mask head (He et al., ICCV 2017): RoIAlign of one box, a 28x28
mask target, the class-specific mask of each box, the mask loss, pasting a mask back into the image.

Every check runs the student's function on inputs drawn at check time and compares it with the
library (:class:`segkeras.layers.RoIAlign`, :func:`segkeras.models.mask_head.paste_masks`...),
computed in float32 whatever the global dtype policy. The library function that answers an
exercise is forbidden while the student's code runs ("write it yourself"). When the answer is
wrong, the typical mistakes (half-pixel offset, x and y swapped, softmax over classes...) are
recognised by comparing it with the library run on the mistaken inputs, so the hint names them.
The fallbacks are what the lab uses until an exercise passes.

Each check is a judge: it talks to the student's function through an
:class:`~segkeras.grading.answer.Answer` (``answer(...)`` for values, ``answer.probe(probe_fn,
...)`` for what must run where the answer lives: training with the answer as the loss, RoIAlign
with an exact bilinear sampler), draws its inputs from ``answer.rng`` (never module constants the
answer could read) and compares with references that only it computes (:data:`PRIVATE`, refused
if a student's code calls them). RoIAlign earns its two parts separately.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

import segkeras.data.instances
import segkeras.layers
import segkeras.models.mask_head
from segkeras.checks.core import NOT_ANSWERED, CheckFailed, Lab, in_float32, require
from segkeras.grading.answer import Answer
from segkeras.grading.probes import probe

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


LAB = Lab("05_mask_rcnn_head", {
    "roi_align_box": {"bilinear_sample": 1, "roi_align_box": 2},  # separable parts
    "mask_target": 2, "select_class_masks": 2, "mask_loss": 2, "paste_mask": 2})
start, use, guard, total = LAB.start, LAB.use, LAB.guard, LAB.total
# What answers exercises 1 and 2: a student's answer must not call them.
_ROI_ALIGN_CODE = (segkeras.layers.RoIAlign.call, segkeras.data.instances.mask_targets,
                   segkeras.data.instances._roi_align_matrix)


# --- exercise 1: RoIAlign of one box ---------------------------------------------------------

_FEATURE_SHAPE = (7, 9, 3)
# (box, output_size, sampling_ratio, spatial_scale, aligned): inside, across the border, tiny,
# the whole map, a coarser map (spatial_scale 1/2), the legacy definition (aligned=False). Each
# box is moved by a shift drawn at grading time.
_ROI_CASES = (
    ((1.3, 0.7, 6.2, 5.9), 2, 2, 1.0, True),
    ((2.0, 1.0, 8.0, 6.0), 3, 2, 1.0, True),
    ((-2.0, -1.5, 3.0, 2.5), 2, 2, 1.0, True),
    ((0.0, 0.0, 9.0, 7.0), 4, 1, 1.0, True),
    ((3.0, 2.2, 15.0, 12.6), 2, 2, 0.5, True),
    ((1.3, 0.7, 6.2, 5.9), 2, 2, 1.0, False),
    ((4.0, 3.0, 4.4, 3.2), 2, 2, 1.0, False),
)


def _judge_bilinear_sample(bilinear_sample, features: np.ndarray) -> None:
    """Pixel centres, a point between pixels, clamping near the border, zero far outside."""
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


@probe
def _probe_roi_align_exact_sampler(roi_align_box: Callable, *args, **kwargs):
    """Probe: ``roi_align_box(*args, **kwargs)`` with the name ``bilinear_sample`` of the
    answer's module bound to an exact bilinear sampler while it runs (so a right RoIAlign earns
    its part even when the student's sampler is wrong)."""

    def exact(features, y, x):
        features = np.asarray(features, np.float64)
        height, width = features.shape[:2]
        if y < -1 or y > height or x < -1 or x > width:
            return np.zeros(features.shape[-1])
        y, x = min(max(y, 0.0), height - 1.0), min(max(x, 0.0), width - 1.0)
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
        dy, dx = y - y0, x - x0
        return ((1 - dy) * ((1 - dx) * features[y0, x0] + dx * features[y0, x1])
                + dy * ((1 - dx) * features[y1, x0] + dx * features[y1, x1]))

    namespace = getattr(roi_align_box, "__globals__", {})
    missing = object()
    previous = namespace.get("bilinear_sample", missing)
    if previous is not missing:
        namespace["bilinear_sample"] = exact
    try:
        return roi_align_box(*args, **kwargs)
    finally:
        if previous is not missing:
            namespace["bilinear_sample"] = previous


def _roi_case(rng: np.random.Generator, box, scale: float) -> np.ndarray:
    """``box`` moved by a random shift of up to a third of a feature pixel."""
    shift = rng.uniform(-1 / 3, 1 / 3, 2) / scale
    return np.asarray(box, np.float64) + np.tile(shift, 2)


def _diagnose_roi_align(answer: np.ndarray, features, box, size, ratio, scale, aligned) -> str:
    """A hint naming the mistake whose result ``answer`` reproduces."""
    box = np.asarray(box, np.float64)
    shift = 0.5 / scale  # half a feature-map pixel, in image pixels
    mistakes = [
        (_reference_roi_align(features, box, size, ratio, scale, not aligned),
         "your samples are off by half a pixel. With aligned=True subtract 0.5 after scaling the "
         "box: in box coordinates feature pixel i spans [i, i + 1) and its centre is i + 0.5, "
         "but bilinear sampling finds that centre at index i. With aligned=False do not."
         if aligned else
         "with aligned=False (the original Mask R-CNN definition) there is no half-pixel "
         "offset: only scale the box; its width and height are then at least 1."),
        (_reference_roi_align(features, box + 2 * shift, size, ratio, scale, aligned),
         "your samples are off by half a pixel in the wrong direction: subtract 0.5 (not add)."),
        (_reference_roi_align(features, box[[1, 0, 3, 2]], size, ratio, scale, aligned),
         "x and y are swapped: a box is (x1, y1, x2, y2), x is the column, y the row."),
        (_reference_roi_align(features, box, size, ratio, 1.0, aligned),
         "the box is in image pixels: multiply it by spatial_scale to get feature-map pixels."),
        (_reference_roi_align(features, box, size, 1, scale, aligned),
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


def _judge_roi_align_cases(roi_align_box, features: np.ndarray, boxes: list,
                           exact_sampler: bool) -> None:
    """``roi_align_box`` on every case equals the library's RoIAlign (run with an exact
    bilinear sampler in place of the student's if ``exact_sampler``)."""
    for box, (_, size, ratio, scale, aligned) in zip(boxes, _ROI_CASES, strict=True):
        arguments = (features.copy(), box.copy())
        options = dict(output_size=size, sampling_ratio=ratio, spatial_scale=scale,
                       aligned=aligned)
        answer = _numpy(roi_align_box.probe(_probe_roi_align_exact_sampler, *arguments, **options)
                        if exact_sampler else roi_align_box(*arguments, **options))
        expected = _reference_roi_align(features, box, size, ratio, scale, aligned)[0]
        call = (f"roi_align_box(features, box={np.round(box, 2).tolist()}, output_size={size}, "
                f"sampling_ratio={ratio}, spatial_scale={scale}, aligned={aligned})")
        require(answer.shape == expected.shape,
                f"{call} should have shape (output_size, output_size, channels) = "
                f"{expected.shape}, got {answer.shape}.")
        if not _close(answer, expected):
            require(False, f"{call}: " + _diagnose_roi_align(answer, features, box, size, ratio,
                                                             scale, aligned))


def _failure(judge: Callable, *args) -> str | None:
    """None if ``judge(*args)`` passes, else its hint (an unanswered or crashing part too)."""
    try:
        judge(*args)
    except CheckFailed as failure:
        return str(failure)
    except NotImplementedError:
        return NOT_ANSWERED
    except Exception as error:  # the student's code crashed in this part
        return f"your code raised {type(error).__name__}: {error}"
    return None


@LAB.check("roi_align_box", forbid=_ROI_ALIGN_CODE, fallback=library_roi_align_box)
def roi_align_box(roi_align_box: Answer) -> None:
    """``roi_align_box(features, box, output_size, sampling_ratio, spatial_scale, aligned)`` on
    one (H, W, C) map must equal :class:`segkeras.layers.RoIAlign` (2 points); the second
    function, ``bilinear_sample(features, y, x)``, is judged on its own (1 point). A right
    RoIAlign built on a wrong sampler earns its part: it is run again with an exact sampler."""
    bilinear_sample = roi_align_box.using(1)
    rng = roi_align_box.rng
    features = rng.normal(size=_FEATURE_SHAPE)
    boxes = [_roi_case(rng, box, scale) for box, _, _, scale, _ in _ROI_CASES]
    sample_hint = _failure(_judge_bilinear_sample, bilinear_sample, features)
    roi_hint = _failure(_judge_roi_align_cases, roi_align_box, features, boxes, False)
    if roi_hint is not None and sample_hint is not None and _failure(
            _judge_roi_align_cases, roi_align_box, features, boxes, True) is None:
        roi_hint = None
    if sample_hint is None and roi_hint is None:
        return
    if roi_hint == sample_hint == NOT_ANSWERED:
        raise NotImplementedError
    parts = LAB.parts["roi_align_box"]
    earned = (parts["bilinear_sample"] if sample_hint is None else 0) + (
        parts["roi_align_box"] if roi_hint is None else 0)
    raise CheckFailed(" ".join([
        f"bilinear_sample: {sample_hint}" if sample_hint else "bilinear_sample is right.",
        f"roi_align_box: {roi_hint}" if roi_hint else
        "roi_align_box is right (checked with an exact bilinear sampler in place of yours)."]),
        points=earned)


# --- exercise 2: mask targets ----------------------------------------------------------------

def _mask_target_cases(seed: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(H, W) ground-truth masks of built-in shapes drawn with ``seed`` (boxes of at least 16
    pixels a side) and their boxes, shifted and rescaled a little like proposals (fractional
    pixels)."""
    from segkeras.data import shapes

    data = shapes.generate(6, image_size=_TARGET_IMAGE_SIZE, seed=seed, min_objects=2,
                           max_objects=3)
    rng = np.random.default_rng(seed)
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


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31))


@LAB.check("mask_target", forbid=_ROI_ALIGN_CODE, fallback=library_mask_target)
def mask_target(mask_target_fn: Answer) -> None:
    """``mask_target_fn(mask, box)`` -> the 28x28 binary target of an (H, W) mask over ``box``;
    for every box at least 85 % of its pixels must equal RoIAlign-and-threshold (a bilinear
    crop-and-resize on rounded boxes differs only along the edges)."""
    cases = _mask_target_cases(_seed(mask_target_fn.rng))
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
    mistakes = {  # the hint of the mistake the answer reproduces best, if it does
        "x and y are swapped: rows are y, columns x, so the crop is mask[y1:y2, x1:x2] for a "
        "box (x1, y1, x2, y2).": [box[[1, 0, 3, 2]] for box in boxes],
        "this is the whole mask resized: crop it to the box first, then resize the crop to "
        "28x28.": [np.array([0, 0, *mask.shape[::-1]], np.float32) for mask in masks],
    }
    scores = {hint: np.mean(reproduces(_reference_targets(masks, mistaken)))
              for hint, mistaken in mistakes.items()}
    best = max(scores, key=scores.get)
    require(scores[best] < _MIN_AGREEMENT, best)
    worst = int(np.argmin(agreement))
    require(False,
            f"only {agreement[worst]:.0%} of the target pixels are right for box "
            f"{np.round(boxes[worst], 1).tolist()}: crop the mask to the box (x1, y1, x2, y2), "
            "resize the crop bilinearly to 28x28 (or RoIAlign it with your roi_align_box), then "
            "threshold at 0.5.")


# --- exercise 3: class-specific masks --------------------------------------------------------

def _select_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(K, 28, 28, C) logits and (K,) class ids in 1..C-1 (0 is the background), K and C drawn
    too (an answer must read its arguments)."""
    boxes, classes = int(rng.integers(5, 9)), int(rng.integers(4, 7))
    logits = rng.normal(0.0, 3.0, size=(boxes, MASK_SIZE, MASK_SIZE, classes)).astype(np.float32)
    ids = rng.permutation(np.resize(np.arange(1, classes), boxes))
    return logits, ids


def library_select_class_masks(logits, class_ids) -> np.ndarray:
    """segkeras' answer to exercise 3 (the model's ``SelectClassMask`` layer)."""
    logits = np.asarray(logits, np.float32)
    layer = segkeras.models.mask_head.SelectClassMask(len(logits), dtype="float32")
    return keras.ops.convert_to_numpy(layer(logits, np.asarray(class_ids)[None]))[0]


@LAB.check("select_class_masks", forbid=[segkeras.models.mask_head.SelectClassMask.call],
           fallback=library_select_class_masks)
def select_class_masks(select_class_masks: Answer) -> None:
    """``select_class_masks(logits, class_ids)``: (K, 28, 28, C) logits and (K,) class ids ->
    the (K, 28, 28) logits of each box's own class (no softmax, no sigmoid)."""
    for _ in range(2):  # two draws: an answer that ignores its arguments cannot match both
        _judge_select_case(select_class_masks, *_select_case(select_class_masks.rng))


def _judge_select_case(select_class_masks, logits: np.ndarray, ids: np.ndarray) -> None:
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

def _loss_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(2, 3, 28, 28) targets (0/1, -1 on three padding rows drawn among the last five) and
    logits, a few of them large (|x| = 60) where a naive log(sigmoid(x)) overflows."""
    targets = (rng.uniform(size=(2, 3, MASK_SIZE, MASK_SIZE)) < 0.4).astype(np.float32)
    padding = 1 + rng.permutation(5)[:3]
    targets.reshape(6, MASK_SIZE, MASK_SIZE)[padding] = segkeras.data.instances.PADDING_TARGET
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


@probe
def _probe_loss_value(mask_loss_fn: Callable, targets: np.ndarray, logits: np.ndarray):
    """Probe: the answer on backend tensors (as Keras hands them to a loss), as an array."""
    value = mask_loss_fn(keras.ops.convert_to_tensor(targets), keras.ops.convert_to_tensor(logits))
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)


@probe
def _probe_fit(mask_loss_fn: Callable, targets: np.ndarray, logits: np.ndarray) -> dict:
    """Probe: one training step of a tiny model with the answer as its loss (inside the
    backend's compiled step, as in the lab): the error if it fails, the logged loss, whether a
    weight changed."""
    inputs = keras.Input(logits.shape[1:])
    model = keras.Model(inputs, keras.layers.Dense(MASK_SIZE)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=mask_loss_fn)
    before = [np.array(weight) for weight in model.get_weights()]
    try:
        history = model.fit(logits, targets, batch_size=len(logits), epochs=1, verbose=0)
    except CheckFailed:
        raise
    except Exception as error:  # the answer does not run on the compiled step's tensors
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    return {"error": None, "loss": float(history.history["loss"][0]),
            "changed": any(not np.allclose(old, new)
                           for old, new in zip(before, model.get_weights(), strict=True))}


@LAB.check("mask_loss", forbid=[segkeras.models.mask_head.MaskedBinaryCrossentropy.call],
           fallback=library_mask_loss)
@in_float32
def mask_loss(mask_loss_fn: Answer) -> None:
    """``mask_loss_fn(targets, logits)``: (B, N, 28, 28) 0/1 targets with -1 on padding rows and
    (B, N, 28, 28) logits -> the mean per-pixel sigmoid cross-entropy over the real boxes' pixels
    (0 if there are none); stable for large logits; trains in ``model.fit``."""
    targets, logits = _loss_case(mask_loss_fn.rng)
    answer = mask_loss_fn.probe(_probe_loss_value, targets, logits)
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
    empty = mask_loss_fn.probe(_probe_loss_value, padding_only, logits)
    require(empty.size == 1 and float(empty.reshape(())) == 0.0,
            f"a batch of padding rows only should give 0 (got {empty.reshape(-1)[:1]}): divide "
            "by max(count, 1).")
    fitted = mask_loss_fn.probe(_probe_fit, targets, logits)
    require(fitted["error"] is None,
            f"mask_loss fails inside model.fit ({fitted['error']}): write it with keras.ops (no "
            "numpy, no stop_gradient), so that it runs and differentiates on the symbolic "
            "tensors of the compiled training step.")
    require(np.isfinite(fitted["loss"]) and fitted["changed"],
            "training with your mask_loss in model.fit changes no weight: the loss must be "
            "differentiable (keras.ops, no numpy, no stop_gradient).")


# --- exercise 5: pasting masks back ----------------------------------------------------------

_PASTE_SIZE = (72, 96)  # (height, width), not square so that swapped axes show


def _box(rng: np.random.Generator, low: int, high: int) -> np.ndarray:
    """An integer box (x1, y1, x2, y2) of sides in [low, high] inside the image."""
    height, width = _PASTE_SIZE
    sides = rng.integers(low, high + 1, 2)
    corner = rng.integers(0, [width - sides[0] + 1, height - sides[1] + 1])
    return np.concatenate([corner, corner + sides]).astype(np.float32)


def _paste_cases(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(28x28 probabilities, box) pairs: shapes' masks RoIAligned over their boxes (two of them
    on a background raised to 0.3-0.45), and masks near the threshold: constant just above 0.5,
    just below, in [0.3, 0.45], and a mask split between just below and just above 0.5."""
    shapes_cases = _mask_target_cases(_seed(rng))[:5]
    soft = _pooled_masks([mask for mask, _ in shapes_cases], [box for _, box in shapes_cases])
    cases = []
    for index, probabilities in enumerate(soft):
        background = rng.uniform(0.3, 0.45) if index >= 3 else 0.0
        cases.append((background + (1 - background) * probabilities, _box(rng, 16, 60)))
    near = rng.uniform(0.001, 0.004, 2)  # a threshold off by more than 0.004 fails
    for value in (0.5 + near[0], 0.5 - near[1], rng.uniform(0.3, 0.45)):
        cases.append((np.full((MASK_SIZE, MASK_SIZE), value), _box(rng, 12, MASK_SIZE)))
    split = np.full((MASK_SIZE, MASK_SIZE), 0.5 + near[0])
    split[:, :8] = 0.5 - near[1]
    cases.append((split if rng.uniform() < 0.5 else split.T, _box(rng, 20, MASK_SIZE)))
    return [(mask.astype(np.float32), box) for mask, box in cases]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def library_paste_mask(mask, box, height: int, width: int) -> np.ndarray:
    """segkeras' answer to exercise 5."""
    pasted = segkeras.models.mask_head.paste_masks(
        np.asarray(mask, np.float32)[None], np.asarray(box, np.float32)[None], height, width)
    return pasted[0] >= 0.5


def _threshold_hint(mask: np.ndarray) -> str:
    """What the pasted mask of ``mask`` must be when its values all lie on one side of 0.5."""
    values = f"every value of this mask is between {mask.min():.3f} and {mask.max():.3f}"
    if mask.max() < 0.5:
        return (f"{values}, below 0.5, so nothing should be pasted: threshold the resized "
                "probabilities at exactly 0.5 (probability >= 0.5 is the object).")
    if mask.min() >= 0.5:
        return (f"{values}, at least 0.5, so the whole box should be set: threshold the resized "
                "probabilities at exactly 0.5 (probability >= 0.5 is the object).")
    return ("resize the 28x28 probabilities bilinearly to the box (y2 - y1, x2 - x1), put them "
            "at out[y1:y2, x1:x2], threshold at exactly 0.5.")


@LAB.check("paste_mask", forbid=[segkeras.models.mask_head.paste_masks,
                                 segkeras.models.mask_head._paste_weights],
           fallback=library_paste_mask)
def paste_mask(paste_mask_fn: Answer) -> None:
    """``paste_mask_fn(mask, box, height, width)``: a 28x28 probability mask resized into its box
    of an (height, width) image and thresholded at exactly 0.5; IoU >= 0.9 with
    :func:`segkeras.models.mask_head.paste_masks`, nothing outside the box."""
    height, width = _PASTE_SIZE
    for mask, box in _paste_cases(paste_mask_fn.rng):
        truth = library_paste_mask(mask, box, height, width)
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
                f"IoU {iou:.2f} with the expected mask for box {box.astype(int).tolist()}: "
                + _threshold_hint(mask))


PRIVATE = (_roi_align, _reference_roi_align, library_roi_align_box, _diagnose_roi_align,
           _mask_target_cases, _pooled_masks, library_mask_target, _reference_targets,
           library_select_class_masks, _pixel_losses, library_mask_loss, _paste_cases,
           library_paste_mask)
"""The references of this module's judges: refused if a student's code calls them."""

__all__ = ["LAB", "PRIVATE", "guard", "mask_loss", "mask_target", "paste_mask", "roi_align_box",
           "select_class_masks", "start", "total", "use"]
