"""Lab 5 checks: correct answers score full points, typical mistakes fail with the hint that
names them, answers that call the library fail with "write it yourself", stubs report "not
answered yet"; the RoIAlign check passes under mixed_float16; the fallbacks are segkeras'."""

import keras
import numpy as np
import pytest
from skimage.transform import resize

from segkeras.checks import core
from segkeras.checks import mask_head as checks


@pytest.fixture(autouse=True)
def fresh_score():
    checks.start()
    yield
    core.reset()


def stub(*args, **kwargs):
    raise NotImplementedError()


# --- answers written from the definitions (numpy) --------------------------------------------

def bilinear_sample(features, y, x):
    height, width = features.shape[:2]
    if y < -1 or y > height or x < -1 or x > width:
        return np.zeros(features.shape[-1])
    y, x = min(max(y, 0.0), height - 1.0), min(max(x, 0.0), width - 1.0)
    y0, x0 = int(y), int(x)
    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    dy, dx = y - y0, x - x0
    return ((1 - dy) * ((1 - dx) * features[y0, x0] + dx * features[y0, x1])
            + dy * ((1 - dx) * features[y1, x0] + dx * features[y1, x1]))


def make_roi_align(offset=0.5, legacy_offset=0.0, scaled=True, swap_xy=False, one_sample=False,
                   sample=bilinear_sample):
    """RoIAlign of one box; the keyword arguments introduce one typical mistake each."""

    def roi_align_box(features, box, output_size=2, sampling_ratio=2, spatial_scale=1.0,
                      aligned=True):
        box = np.asarray(box, np.float64)[[1, 0, 3, 2] if swap_xy else [0, 1, 2, 3]]
        x1, y1, x2, y2 = box * (spatial_scale if scaled else 1.0) - (
            offset if aligned else legacy_offset)
        height, width = y2 - y1, x2 - x1
        if not aligned:
            height, width = max(height, 1.0), max(width, 1.0)
        ratio = 1 if one_sample else sampling_ratio
        steps = (np.arange(output_size)[:, None] + (np.arange(ratio) + 0.5) / ratio).ravel()
        ys, xs = y1 + steps * height / output_size, x1 + steps * width / output_size
        samples = np.array([[sample(features, y, x) for x in xs] for y in ys])
        shape = (output_size, ratio, output_size, ratio, -1)
        return samples.reshape(shape).mean(axis=(1, 3))

    return roi_align_box


def mask_target(mask, box, size=28):
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    return resize(mask[y1:y2, x1:x2].astype(np.float32), (size, size), order=1) >= 0.5


def select_class_masks(logits, class_ids):
    return np.take_along_axis(logits, class_ids[:, None, None, None], axis=-1)[..., 0]


def paste_mask(mask, box, height, width):
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    pasted = np.zeros((height, width), bool)
    pasted[y1:y2, x1:x2] = resize(mask, (y2 - y1, x2 - x1), order=1) >= 0.5
    return pasted


def assert_fails(result, *words, points=0):
    assert not result and result.points == points, f"{result.points} points, not {points}"
    for word in words:
        assert word in result.message, f"{word!r} not in hint: {result.message}"


def roi_align_fails(roi_align_box, *words, sample=bilinear_sample, points=1):
    """The RoIAlign check of ``roi_align_box`` (with a right ``bilinear_sample`` by default:
    its part, 1 point, is earned) fails with ``words`` in the hint."""
    assert_fails(checks.roi_align_box(roi_align_box, sample), *words, points=points)


# --- RoIAlign ---------------------------------------------------------------------------------

@pytest.mark.fast
def test_roi_align_accepts_the_definition():
    result = checks.roi_align_box(make_roi_align(), bilinear_sample)
    assert result and result.points == result.max_points == 3


@pytest.mark.fast
def test_roi_align_accepts_keras_ops_answers():
    from keras import ops

    reference = make_roi_align()
    result = checks.roi_align_box(lambda *args, **kwargs: ops.convert_to_tensor(
        reference(*args, **kwargs)), bilinear_sample)
    assert result


@pytest.mark.parametrize("mistake, words", [
    (dict(offset=0.0), ["half a pixel", "subtract 0.5"]),
    (dict(offset=-0.5), ["wrong direction"]),
    (dict(legacy_offset=0.5), ["aligned=False", "no half-pixel offset"]),
    (dict(scaled=False), ["spatial_scale"]),
    (dict(swap_xy=True), ["x and y are swapped"]),
    (dict(one_sample=True), ["sampling_ratio x sampling_ratio samples"]),
])
def test_roi_align_names_the_mistake(mistake, words):
    roi_align_fails(make_roi_align(**mistake), "bilinear_sample is right", *words)


def test_roi_align_checks_bilinear_sampling_first():
    def unclamped(features, y, x):
        return bilinear_sample(features, y, x) if y < features.shape[0] - 1 else np.zeros(3)

    roi_align_fails(make_roi_align(), "y is the row", "roi_align_box is right",
                    sample=lambda f, y, x: bilinear_sample(f, x, y), points=2)
    roi_align_fails(make_roi_align(), "clamped to the last row", sample=unclamped, points=2)


def test_roi_align_rejects_a_wrong_shape_and_a_stub():
    flat = make_roi_align()
    roi_align_fails(lambda *a, **k: flat(*a, **k)[..., 0], "shape")
    assert_fails(checks.roi_align_box(stub, stub), "not answered yet")


# --- mask targets -----------------------------------------------------------------------------

def test_mask_target_accepts_crop_and_resize_and_roi_align():
    assert checks.mask_target(mask_target)
    roi_align_box = make_roi_align()

    def by_roi_align(mask, box, size=28):
        pooled = roi_align_box(mask[..., None].astype(float), box, output_size=size)
        return pooled[..., 0] >= 0.5

    assert checks.mask_target(by_roi_align).points == 2


def test_mask_target_names_the_mistake():
    def unthresholded(mask, box, size=28):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        return resize(mask[y1:y2, x1:x2].astype(np.float32), (size, size), order=1)

    def swapped(mask, box, size=28):
        return mask_target(mask, np.asarray(box)[[1, 0, 3, 2]], size)

    def whole(mask, box, size=28):
        return resize(mask.astype(np.float32), (size, size), order=1) >= 0.5

    assert_fails(checks.mask_target(unthresholded), "threshold", "0.5")
    assert_fails(checks.mask_target(swapped), "x and y are swapped")
    assert_fails(checks.mask_target(whole), "crop it to the box first")
    assert_fails(checks.mask_target(lambda mask, box: mask_target(mask, box, 14)), "28x28")
    assert_fails(checks.mask_target(lambda mask, box: mask_target(mask, box + 6)), "right for box")
    assert_fails(checks.mask_target(stub), "not answered yet")


# --- class-specific masks ---------------------------------------------------------------------

@pytest.mark.fast
def test_select_class_masks_accepts_numpy_and_keras_ops():
    from keras import ops

    assert checks.select_class_masks(select_class_masks).points == 2

    def with_ops(logits, class_ids):
        one_hot = ops.one_hot(class_ids, ops.shape(logits)[-1])
        return ops.einsum("kpqc,kc->kpq", logits, one_hot)

    assert checks.select_class_masks(with_ops)


def test_select_class_masks_rejects_softmax_with_the_sigmoid_hint():
    def softmax_then_select(logits, class_ids):
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return select_class_masks(shifted / shifted.sum(axis=-1, keepdims=True), class_ids)

    assert_fails(checks.select_class_masks(softmax_then_select), "softmax", "per-pixel sigmoid",
                 "do not compete")


@pytest.mark.parametrize("answer, words", [
    (lambda logits, ids: 1 / (1 + np.exp(-select_class_masks(logits, ids))), ["probabilities"]),
    (lambda logits, ids: logits.max(axis=-1), ["highest-scoring class"]),
    (lambda logits, ids: select_class_masks(logits, ids - 1), ["off by one"]),
    (lambda logits, ids: select_class_masks(logits, ids)[..., None], ["drop the last axis"]),
    (lambda logits, ids: logits[..., 1], ["own class"]),
    (stub, ["not answered yet"]),
])
def test_select_class_masks_names_the_mistake(answer, words):
    assert_fails(checks.select_class_masks(answer), *words)


# --- pasting masks ----------------------------------------------------------------------------

def test_paste_mask_accepts_resize_into_the_box():
    assert checks.paste_mask(paste_mask).points == 2


def test_paste_mask_names_the_mistake():
    def unthresholded(mask, box, height, width):
        x1, y1, x2, y2 = (int(v) for v in box)
        pasted = np.zeros((height, width))
        pasted[y1:y2, x1:x2] = resize(mask, (y2 - y1, x2 - x1), order=1)
        return pasted

    def at_the_origin(mask, box, height, width):
        x1, y1, x2, y2 = (int(v) for v in box)
        pasted = np.zeros((height, width), bool)
        pasted[: y2 - y1, : x2 - x1] = resize(mask, (y2 - y1, x2 - x1), order=1) >= 0.5
        return pasted

    def whole_image(mask, box, height, width):
        return resize(mask, (height, width), order=1) >= 0.5

    def inverted(mask, box, height, width):
        return paste_mask(1.0 - mask, box, height, width)

    assert_fails(checks.paste_mask(unthresholded), "threshold")
    assert_fails(checks.paste_mask(at_the_origin), "outside the box")
    assert_fails(checks.paste_mask(whole_image), "outside the box")
    assert_fails(checks.paste_mask(inverted), "IoU")
    assert_fails(checks.paste_mask(lambda mask, box, h, w: paste_mask(mask, box, w, h)), "shape")
    assert_fails(checks.paste_mask(stub), "not answered yet")


def _thresholded_at(threshold, strict=False):
    def paste(mask, box, height, width):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        pasted = np.zeros((height, width), bool)
        resized = resize(mask, (y2 - y1, x2 - x1), order=1)
        pasted[y1:y2, x1:x2] = resized > threshold if strict else resized >= threshold
        return pasted

    return paste


@pytest.mark.parametrize("threshold", [0.3, 0.45, 0.495, 0.505, 0.6])
def test_paste_mask_needs_the_exact_threshold(threshold):
    assert_fails(checks.paste_mask(_thresholded_at(threshold)), "exactly 0.5")


def test_paste_mask_accepts_strictly_above_one_half():
    assert checks.paste_mask(_thresholded_at(0.5, strict=True))


def test_paste_mask_cases_straddle_the_threshold():
    cases = checks._paste_cases(np.random.default_rng(3))
    below = [mask for mask, _ in cases if mask.max() < 0.5]
    above = [mask for mask, _ in cases if mask.min() >= 0.5]
    assert len(below) == 2 and len(above) == 1
    assert max(mask.max() for mask in below) > 0.495 and above[0].min() < 0.505
    assert any(0.3 <= mask.min() and mask.max() < 0.46 for mask in below)
    assert sum(mask.min() < 0.5 <= mask.max() for mask, _ in cases) == len(cases) - 3


# --- the mask loss ----------------------------------------------------------------------------

def mask_loss(targets, logits):
    """Written from the definition with keras.ops."""
    from keras import ops

    counted = ops.cast(targets >= 0, "float32")
    per_pixel = ops.binary_crossentropy(ops.clip(targets, 0.0, 1.0), logits, from_logits=True)
    return ops.sum(per_pixel * counted) / ops.maximum(ops.sum(counted), 1.0)


def test_mask_loss_accepts_the_definition():
    result = checks.mask_loss(mask_loss)
    assert result and result.points == 2


def _with(change):
    """A mask loss with one mistake: ``change(targets, logits, per_pixel, counted)`` -> loss."""
    from keras import ops

    def loss(targets, logits):
        counted = ops.cast(targets >= 0, "float32")
        per_pixel = ops.binary_crossentropy(ops.clip(targets, 0.0, 1.0), logits, from_logits=True)
        return change(targets, logits, per_pixel, counted)

    return loss


def _naive(targets, logits):
    from keras import ops

    counted = ops.cast(targets >= 0, "float32")
    t, p = ops.clip(targets, 0.0, 1.0), ops.sigmoid(logits)
    per_pixel = -(t * ops.log(p) + (1 - t) * ops.log(1 - p))
    return ops.sum(per_pixel * counted) / ops.maximum(ops.sum(counted), 1.0)


def _numpy_loss(targets, logits):
    targets, logits = np.asarray(targets), np.asarray(logits, np.float64)
    valid = targets >= 0
    losses = np.maximum(logits, 0) - logits * np.clip(targets, 0, 1) + np.log1p(
        np.exp(-np.abs(logits)))
    return losses[valid].mean() if valid.any() else 0.0


@pytest.mark.parametrize("answer, words", [
    (_with(lambda t, x, loss, counted: keras.ops.mean(loss)), ["padding rows count"]),
    (_with(lambda t, x, loss, counted: keras.ops.sum(loss * counted) / float(28 * 28 * 6)),
     ["number of real pixels"]),
    (_with(lambda t, x, loss, counted: keras.ops.sum(loss * counted)), ["sum"]),
    (_with(lambda t, x, loss, counted: keras.ops.sum(loss * counted) / keras.ops.sum(counted)),
     ["padding rows only should give 0"]),
    (_with(lambda t, x, loss, counted: keras.ops.mean(loss * counted, axis=(2, 3))),
     ["one number"]),
    (lambda t, x: keras.ops.sum(keras.ops.binary_crossentropy(
        keras.ops.clip(t, 0.0, 1.0), x) * keras.ops.cast(t >= 0, "float32"))
     / keras.ops.sum(keras.ops.cast(t >= 0, "float32")), ["from_logits=True"]),
    (_naive, ["not finite", "log(sigmoid(x)) overflows"]),
    (_numpy_loss, ["inside model.fit", "keras.ops"]),
    (_with(lambda t, x, loss, counted: keras.ops.stop_gradient(
        keras.ops.sum(loss * counted) / keras.ops.maximum(keras.ops.sum(counted), 1.0))),
     ["model.fit", "stop_gradient"]),
    (stub, ["not answered yet"]),
])
def test_mask_loss_names_the_mistake(answer, words):
    assert_fails(checks.mask_loss(answer), *words)


# --- answers that call the library: "write it yourself" ---------------------------------------

def _delegations():
    from segkeras.data.instances import mask_targets
    from segkeras.layers import RoIAlign
    from segkeras.models.mask_head import MaskedBinaryCrossentropy, SelectClassMask, paste_masks

    def roi_align_by_layer(features, box, output_size=2, sampling_ratio=2, spatial_scale=1.0,
                           aligned=True):
        layer = RoIAlign(output_size, sampling_ratio, spatial_scale, aligned)
        pooled = layer(np.asarray(features, "float32")[None], np.asarray(box, "float32")[None],
                       np.zeros(1, "int32"))
        return keras.ops.convert_to_numpy(pooled)[0]

    def target_by_library(mask, box, size=28):
        return np.asarray(mask_targets(np.asarray(mask, "float32")[None],
                                       np.asarray(box, "float32")[None], size))[0]

    def target_by_layer(mask, box, size=28):
        return roi_align_by_layer(np.asarray(mask, "float32")[..., None], box, size)[..., 0] >= 0.5

    def select_by_layer(logits, class_ids):
        chosen = SelectClassMask(len(logits))(logits, np.asarray(class_ids)[None])
        return keras.ops.convert_to_numpy(chosen)[0]

    def paste_by_library(mask, box, height, width):
        return paste_masks(mask[None], box[None], height, width)[0] >= 0.5

    return [
        ("roi_align_box", roi_align_by_layer, "segkeras.layers.RoIAlign.call"),
        ("mask_target", target_by_library, "segkeras.data.instances.mask_targets"),
        ("mask_target", target_by_layer, "segkeras.layers.RoIAlign.call"),
        ("select_class_masks", select_by_layer, "SelectClassMask.call"),
        ("mask_loss", lambda t, x: MaskedBinaryCrossentropy()(t, x),
         "MaskedBinaryCrossentropy.call"),
        ("paste_mask", paste_by_library, "segkeras.models.mask_head.paste_masks"),
    ]


@pytest.mark.parametrize("index", range(6))
def test_answers_that_call_the_library_fail(index):
    exercise, answer, name = _delegations()[index]
    functions = (answer, bilinear_sample) if exercise == "roi_align_box" else (answer,)
    result = getattr(checks, exercise)(*functions)
    assert_fails(result, "write it yourself", name, points=int(exercise == "roi_align_box"))
    assert getattr(checks, exercise)(*functions) is not None  # the library works again after
    checks.LAB.use(exercise, answer)  # the lab would not use it


def test_the_library_works_after_the_checks():
    from segkeras.models.mask_head import paste_masks

    checks.paste_mask(lambda *args: paste_masks(*args))
    pasted = paste_masks(np.ones((1, 28, 28), "float32"), np.array([[0, 0, 10, 10.0]]), 12, 12)
    assert pasted[0, :10, :10].min() > 0.99 and pasted[0, 10:, :].max() == 0


# --- the check's own references and data are not answers --------------------------------------

def _calling(function):
    return lambda *args, **kwargs: function(*args, **kwargs)


PRIVATE_ANSWERS = [
    ("roi_align_box", checks.library_roi_align_box),
    ("roi_align_box", checks._reference_roi_align),
    ("roi_align_box", _calling(checks._roi_align)),
    ("mask_target", checks.library_mask_target),
    ("mask_target", lambda mask, box: checks._reference_targets([mask], [box])[0]),
    ("mask_target", lambda mask, box: checks._pooled_masks([mask], [box])[0] >= 0.5),
    ("select_class_masks", checks.library_select_class_masks),
    ("mask_loss", checks.library_mask_loss),
    ("mask_loss", lambda t, x: keras.ops.mean(checks._pixel_losses(t, x))),
    ("paste_mask", checks.library_paste_mask),
]


@pytest.mark.parametrize("index", range(len(PRIVATE_ANSWERS)))
def test_the_checks_references_handed_in_are_refused(index):
    exercise, answer = PRIVATE_ANSWERS[index]
    if exercise == "roi_align_box":
        roi_align_fails(answer, "write it yourself", "segkeras.checks.mask_head.")
    else:
        assert_fails(getattr(checks, exercise)(answer), "write it yourself",
                     "segkeras.checks.mask_head.")


def test_every_reference_of_the_module_is_private():
    names = {function.__name__ for function in checks.PRIVATE}
    assert {"library_roi_align_box", "_reference_roi_align", "_reference_targets",
            "_roi_align", "_pooled_masks", "library_mask_target", "library_select_class_masks",
            "library_mask_loss", "library_paste_mask", "_pixel_losses"} <= names
    assert checks.library_roi_align_box(np.ones((4, 4, 1)), (0, 0, 2, 2)).shape == (2, 2, 1)


def test_select_class_masks_reads_its_arguments_not_fixed_data():
    fixed_ids = np.array([1, 3, 2, 3, 1, 2])

    def fixed(logits, class_ids):
        return select_class_masks(logits, np.resize(fixed_ids, len(logits)) % logits.shape[-1])

    def module_data(logits, class_ids):
        return select_class_masks(logits, checks._CLASS_IDS)

    assert_fails(checks.select_class_masks(fixed))
    assert_fails(checks.select_class_masks(module_data), "AttributeError")
    shapes = set()
    rng = np.random.default_rng(1)
    for _ in range(8):
        logits, class_ids = checks._select_case(rng)
        shapes.add(logits.shape)
        assert class_ids.min() >= 1 and class_ids.max() < logits.shape[-1]
    assert len(shapes) > 1


# --- partial credit: bilinear_sample and roi_align_box are separable parts -------------------

_right_sample = bilinear_sample


def _wrong_sample(features, y, x):
    return _right_sample(features, x, y)


def test_a_right_roi_align_with_a_wrong_bilinear_sample_is_recognised():
    def roi_align_box(*args, **kwargs):  # calls the module's (here: the wrong) bilinear_sample
        return make_roi_align(sample=lambda f, y, x: bilinear_sample(f, y, x))(*args, **kwargs)

    namespace = globals()
    right = namespace["bilinear_sample"]
    namespace["bilinear_sample"] = _wrong_sample
    try:
        result = checks.roi_align_box(roi_align_box, _wrong_sample)
    finally:
        namespace["bilinear_sample"] = right
    assert_fails(result, "bilinear_sample: ", "y is the row", "roi_align_box is right", points=2)


def test_a_wrong_roi_align_with_a_right_bilinear_sample_is_recognised():
    result = checks.roi_align_box(make_roi_align(swap_xy=True), bilinear_sample)
    assert_fails(result, "bilinear_sample is right", "roi_align_box: ", "x and y are swapped",
                 points=1)


def test_both_parts_unanswered_is_not_answered():
    assert_fails(checks.roi_align_box(stub, stub), "not answered yet")
    assert_fails(checks.roi_align_box(stub, bilinear_sample), "bilinear_sample is right",
                 "roi_align_box: not answered yet", points=1)
    assert_fails(checks.roi_align_box(make_roi_align(), stub), "bilinear_sample: not answered",
                 "roi_align_box is right", points=2)


# --- mixed precision, the fallbacks ------------------------------------------------------------

def test_the_checks_pass_right_answers_under_mixed_float16(mixed_float16):
    assert checks.roi_align_box(make_roi_align(), bilinear_sample)
    assert checks.mask_target(mask_target)
    assert checks.mask_loss(mask_loss)
    assert checks.paste_mask(paste_mask)
    assert keras.config.dtype_policy().name == "mixed_float16"


def test_the_fallbacks_are_the_library_answers(capsys):
    targets, logits = checks._loss_case(np.random.default_rng(0))
    fallbacks = {name: checks.LAB.use(name, stub) for name in checks.LAB.exercises}
    printed = capsys.readouterr().out  # roi_align_box's check takes two functions, here one
    assert printed.count("has not passed its check yet (not answered)") == 4
    assert "roi_align_box has not passed its check yet (it failed)" in printed
    features = np.random.default_rng(0).normal(size=(7, 9, 3))
    np.testing.assert_allclose(fallbacks["roi_align_box"](features, (1.3, 0.7, 6.2, 5.9)),
                               make_roi_align()(features, (1.3, 0.7, 6.2, 5.9)), atol=1e-5)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 5:25] = True
    box = np.array([5, 10, 25, 30], "float32")
    assert fallbacks["mask_target"](mask, box).min() == 1
    class_logits, class_ids = checks._select_case(np.random.default_rng(0))
    np.testing.assert_allclose(fallbacks["select_class_masks"](class_logits, class_ids),
                               select_class_masks(class_logits, class_ids), atol=1e-5)
    np.testing.assert_allclose(float(fallbacks["mask_loss"](targets, logits)),
                               _numpy_loss(targets, logits), rtol=1e-5)
    pasted = fallbacks["paste_mask"](np.ones((28, 28), "float32"), box, 40, 40)
    assert pasted.sum() == 400 and pasted[10:30, 5:25].all()


def test_the_score_adds_up_over_the_lab(capsys):
    checks.roi_align_box(make_roi_align(), bilinear_sample)
    checks.mask_target(mask_target)
    checks.select_class_masks(lambda logits, ids: logits[..., 0])
    checks.paste_mask(paste_mask)
    assert core.total() == (7, 11)
    assert capsys.readouterr().out.endswith(
        "Score in this notebook: 7/11 points (3/5 exercises passed; the grader re-runs every "
        "answer on its own)\n")
