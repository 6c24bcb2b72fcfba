"""SparseCEDice, PixelAccuracy and PerClassIoU against NumPy references written here."""

import keras
import numpy as np
import pytest

from segkeras.errors import SegkerasError
from segkeras.losses import SparseCEDice
from segkeras.metrics import PerClassIoU, PixelAccuracy, segmentation_metrics

pytestmark = pytest.mark.fast
C = 4  # classes; class 3 is never labelled nor predicted below


def _batch(seed=0, batch=2, size=8):
    """Random logits and masks with ignored (255) pixels; class 3 is absent from both."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (batch, size, size, C)).astype("float32")
    logits[..., 3] = -50.0
    masks = rng.integers(0, 3, (batch, size, size)).astype("uint8")
    masks[rng.random(masks.shape) < 0.2] = 255
    return masks, logits


def _reference_ce_dice(masks, logits, dice_weight=1.0, smooth=1.0):
    valid = masks != 255
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    labels = masks[valid].astype(int)
    cross_entropy = -log_probs[valid][np.arange(labels.size), labels].mean() if labels.size else 0
    probs, targets = np.exp(log_probs[valid]), np.eye(C)[labels]
    dice = (2 * (probs * targets).sum(0) + smooth) / (probs.sum(0) + targets.sum(0) + smooth)
    return cross_entropy + dice_weight * (1 - dice.mean())


def _reference_confusion(masks, logits):
    valid = masks != 255
    matrix = np.zeros((C, C))
    np.add.at(matrix, (masks[valid].astype(int), logits.argmax(-1)[valid]), 1)
    return matrix


def _value(tensor):
    return float(keras.ops.convert_to_numpy(tensor))


@pytest.mark.parametrize("dice_weight", [0.0, 1.0, 0.3])
def test_ce_dice_matches_numpy(dice_weight):
    masks, logits = _batch()
    loss = SparseCEDice(C, dice_weight=dice_weight)
    expected = _reference_ce_dice(masks, logits, dice_weight)
    assert _value(loss(masks, logits)) == pytest.approx(expected, rel=1e-5)
    assert _value(loss(masks[..., None], logits)) == pytest.approx(expected, rel=1e-5)


def test_cross_entropy_part_is_keras_own():
    masks, logits = _batch(seed=1)
    keras_ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    assert _value(SparseCEDice(C, dice_weight=0.0)(masks, logits)) == pytest.approx(
        _value(keras_ce(masks, logits)), rel=1e-5
    )


def test_confident_right_answer_costs_nothing_and_wrong_costs_more():
    masks, _ = _batch()
    right = 30.0 * np.eye(C, dtype="float32")[np.where(masks == 255, 0, masks)]
    wrong = 30.0 * np.eye(C, dtype="float32")[np.where(masks == 255, 0, (masks + 1) % 3)]
    loss = SparseCEDice(C)
    assert _value(loss(masks, right)) < 1e-3
    assert _value(loss(masks, wrong)) > 10


def test_all_ignored_batch_gives_zero_loss_and_finite_training():
    masks = np.full((2, 8, 8), 255, "uint8")
    images = np.random.uniform(0, 1, (2, 8, 8, 3)).astype("float32")
    assert _value(SparseCEDice(C)(masks, np.random.normal(size=(2, 8, 8, C)))) == 0.0
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(C, 1)])
    model.compile(keras.optimizers.SGD(0.1), SparseCEDice(C), metrics=segmentation_metrics(C))
    before = [keras.ops.convert_to_numpy(w) for w in model.weights]
    logs = model.train_on_batch(images, masks, return_dict=True)
    assert logs["loss"] == 0.0
    assert all(np.isfinite(value) for value in logs.values()), logs
    for old, new in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))


@pytest.mark.parametrize(
    "kwargs",
    [{"num_classes": 1}, {"num_classes": C, "dice_weight": -1}, {"num_classes": C, "smooth": 0}],
)
def test_bad_loss_arguments_are_rejected(kwargs):
    with pytest.raises(SegkerasError):
        SparseCEDice(**kwargs)


def test_metrics_match_a_numpy_confusion_matrix_over_two_batches():
    batches = [_batch(seed=0), _batch(seed=1, batch=3)]
    iou, accuracy = PerClassIoU(C), PixelAccuracy()
    for masks, logits in batches:
        iou.update_state(masks, logits)
        accuracy.update_state(masks[..., None], logits)
    matrix = sum(_reference_confusion(*batch) for batch in batches)
    np.testing.assert_array_equal(iou.confusion_matrix(), matrix)
    diagonal = np.diag(matrix)
    expected = diagonal[:3] / (matrix.sum(0) + matrix.sum(1) - diagonal)[:3]
    per_class = iou.per_class()
    np.testing.assert_allclose(per_class[:3], expected, rtol=1e-6)
    assert np.isnan(per_class[3])  # never labelled nor predicted
    assert _value(iou.result()) == pytest.approx(expected.mean(), rel=1e-5)
    assert _value(accuracy.result()) == pytest.approx(diagonal.sum() / matrix.sum(), rel=1e-6)


def test_pixel_accuracy_weights_images():
    masks, logits = _batch(batch=2)
    accuracy = PixelAccuracy()
    accuracy.update_state(masks, logits, sample_weight=np.array([1.0, 3.0]))
    valid, right = masks != 255, masks == logits.argmax(-1)
    weights = np.array([1.0, 3.0])[:, None, None] * valid
    expected = (weights * right).sum() / weights.sum()
    assert _value(accuracy.result()) == pytest.approx(expected, rel=1e-6)


def test_compiled_metrics_and_loss_give_the_numpy_numbers_and_survive_a_keras_file(tmp_path):
    masks, logits = _batch(batch=4)
    model = keras.Sequential([keras.Input((8, 8, C)), keras.layers.Identity()])
    model.compile("sgd", SparseCEDice(C, dice_weight=0.5), metrics=segmentation_metrics(C))
    matrix = _reference_confusion(masks, logits)
    diagonal = np.diag(matrix)
    iou = diagonal[:3] / (matrix.sum(0) + matrix.sum(1) - diagonal)[:3]
    logs = model.evaluate(logits, masks, batch_size=4, return_dict=True, verbose=0)
    assert logs["mean_iou"] == pytest.approx(iou.mean(), rel=1e-5)
    assert logs["pixel_accuracy"] == pytest.approx(diagonal.sum() / matrix.sum(), rel=1e-5)
    assert logs["loss"] == pytest.approx(_reference_ce_dice(masks, logits, 0.5), rel=1e-5)

    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.loss, SparseCEDice) and loaded.loss.dice_weight == 0.5
    reloaded_logs = loaded.evaluate(logits, masks, batch_size=4, return_dict=True, verbose=0)
    for name, value in logs.items():
        assert reloaded_logs[name] == pytest.approx(value, rel=1e-5), name


def test_configs_round_trip():
    for obj in (SparseCEDice(C, dice_weight=0.2, ignore_class=None), PixelAccuracy(ignore_class=0),
                PerClassIoU(C, ignore_class=None, name="iou")):
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
        assert type(clone) is type(obj) and clone.get_config() == obj.get_config()
