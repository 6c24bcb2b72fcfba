"""segkeras.evaluate.semantic against an independent per-class numpy IoU formula."""

import json

import keras
import numpy as np
import pytest

from segkeras.errors import SegkerasError
from segkeras.evaluate import semantic

NAMES = ["background", "circle", "square"]


def reference_iou(labels, predictions, num_classes):
    """IoU per class from boolean masks (None where the class is in neither), and pixel accuracy."""
    valid = labels != 255
    ious = []
    for c in range(num_classes):
        truth, guess = (labels == c) & valid, (predictions == c) & valid
        union = (truth | guess).sum()
        ious.append((truth & guess).sum() / union if union else None)
    accuracy = ((labels == predictions) & valid).sum() / valid.sum()
    return ious, accuracy


def one_hot_model(num_classes=3, outputs=1):
    """Logits = the input image (one-hot planes): the prediction is argmax of the image channels.
    A second output, if asked for, predicts class 0 everywhere."""
    image = keras.Input((None, None, num_classes))
    final = keras.layers.Conv2D(num_classes, 1, use_bias=False, dtype="float32", name="final")
    logits = final(image)
    final.set_weights([np.eye(num_classes).reshape(1, 1, num_classes, num_classes)])
    if outputs == 1:
        return keras.Model(image, logits)
    first = keras.layers.Conv2D(num_classes, 1, name="first")
    background = first(image)
    first.set_weights([np.zeros((1, 1, num_classes, num_classes)), np.eye(num_classes)[0]])
    return keras.Model(image, [background, logits])


def batches(seed=0, num_classes=3, count=3):
    """Random (one-hot image, mask) batches with ignore pixels; class 2 is never labelled."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        predicted = rng.integers(0, num_classes, (2, 8, 8))
        images = np.eye(num_classes, dtype="float32")[predicted]
        masks = rng.integers(0, 2, (2, 8, 8))
        masks[rng.random((2, 8, 8)) < 0.2] = 255
        out.append((images, masks.astype("int32")))
    return out


def test_confusion_matrix_counts_pairs_and_skips_ignore():
    labels = np.array([[0, 1, 255], [2, 2, 1]])
    predictions = np.array([[0, 2, 1], [2, 0, 1]])
    expected = np.zeros((3, 3), int)
    for t, p in [(0, 0), (1, 2), (2, 2), (2, 0), (1, 1)]:
        expected[t, p] += 1
    np.testing.assert_array_equal(semantic.confusion_matrix(labels, predictions, 3), expected)


def test_confusion_matrix_rejects_labels_beyond_the_model_classes():
    with pytest.raises(SegkerasError, match="class id 5 but the model predicts 3"):
        semantic.confusion_matrix(np.array([0, 5]), np.array([0, 1]), 3)


def test_scores_match_reference_and_skip_absent_classes():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 500)
    labels[rng.random(500) < 0.1] = 255
    predictions = rng.integers(0, 3, 500)
    labels[labels == 2] = 1  # class 2 only predicted: IoU 0, still counted
    result = semantic.scores(semantic.confusion_matrix(labels, predictions, 4), NAMES + ["star"])
    ious, accuracy = reference_iou(labels, predictions, 4)
    assert result["iou"]["star"] is None  # neither labelled nor predicted
    assert result["iou"]["square"] == 0.0
    np.testing.assert_allclose([result["iou"][n] for n in NAMES], ious[:3])
    np.testing.assert_allclose(result["mean_iou"], np.mean(ious[:3]))
    np.testing.assert_allclose(result["pixel_accuracy"], accuracy)
    assert result["pixels"]["circle"] == int((labels == 1).sum())


@pytest.mark.fast
def test_evaluate_semantic_over_a_dataset_matches_reference():
    data = batches()
    result = semantic.evaluate_semantic(one_hot_model(), data, NAMES)
    labels = np.concatenate([m for _, m in data])
    predictions = np.concatenate([np.argmax(i, -1) for i, _ in data])
    ious, accuracy = reference_iou(labels, predictions, 3)
    np.testing.assert_allclose([result["iou"][n] for n in NAMES], ious)
    np.testing.assert_allclose(result["mean_iou"], np.mean(ious))
    np.testing.assert_allclose(result["pixel_accuracy"], accuracy)
    assert "per_output" not in result


def test_evaluate_semantic_reads_tf_data():
    import tensorflow as tf

    data = batches()
    images = np.concatenate([i for i, _ in data])
    masks = np.concatenate([m for _, m in data])
    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).batch(4)
    from_tf = semantic.evaluate_semantic(one_hot_model(), dataset, NAMES)
    from_list = semantic.evaluate_semantic(one_hot_model(), data, NAMES)
    assert from_tf["confusion_matrix"] == from_list["confusion_matrix"]


@pytest.mark.fast
def test_multi_output_scores_the_last_output_and_each_one():
    data = batches()
    result = semantic.evaluate_semantic(one_hot_model(outputs=2), data, NAMES)
    labels = np.concatenate([m for _, m in data])
    last = np.concatenate([np.argmax(i, -1) for i, _ in data])
    np.testing.assert_allclose(result["mean_iou"], np.mean(reference_iou(labels, last, 3)[0]))
    first, final = result["per_output"]
    assert final["mean_iou"] == result["mean_iou"]
    zeros_ious, zeros_accuracy = reference_iou(labels, np.zeros_like(labels), 3)
    np.testing.assert_allclose(first["mean_iou"], np.mean([v for v in zeros_ious if v is not None]))
    np.testing.assert_allclose(first["pixel_accuracy"], zeros_accuracy)


def test_class_count_mismatch_is_a_one_line_error():
    with pytest.raises(SegkerasError, match="predicts 3 classes but the data has 2"):
        semantic.evaluate_semantic(one_hot_model(), batches(), ["background", "circle"])


def test_table_and_json(tmp_path):
    result = semantic.scores(np.array([[5, 1, 0], [1, 3, 0], [0, 0, 0]]), NAMES)
    table = semantic.format_table(result)
    assert "circle" in table and f"{3 / 5:.3f}" in table and "mean IoU" in table
    assert table.splitlines()[4].split()[:2] == ["square", "-"]  # no IoU for an absent class
    path = semantic.save_json(result, str(tmp_path / "sub" / "metrics.json"))
    loaded = json.loads(open(path).read())
    assert loaded["iou"]["square"] is None
    assert loaded["mean_iou"] == pytest.approx(result["mean_iou"])
