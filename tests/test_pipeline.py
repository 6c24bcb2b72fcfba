"""The tf.data pipeline: batches, resizing, validation, paired augmentation, model.fit."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from segkeras.data import pipeline, shapes
from segkeras.errors import SegkerasError


@pytest.fixture(scope="module")
def data():
    return shapes.generate(10, 64, seed=1)


def collect(dataset):
    images, masks = zip(*((x.numpy(), y.numpy()) for x, y in dataset), strict=True)
    return np.concatenate(images), np.concatenate(masks)


def halves(count=8, size=64):
    """Images whose left half is label 1 (red) and right half label 2 (blue), a green border
    row of label 0 at the top: any misalignment or flip shows."""
    masks = np.ones((count, size, size), np.uint8)
    masks[:, :, size // 2:] = 2
    masks[:, : size // 8] = 0
    colors = np.array([[0, 200, 0], [220, 20, 20], [20, 20, 220]], np.uint8)
    return colors[masks], masks


def test_batches_without_augmentation_are_the_data(data):
    dataset = pipeline.make_dataset(data, 64, batch_size=4)
    shapes_seen = [(tuple(x.shape), tuple(y.shape)) for x, y in dataset]
    assert shapes_seen == [((4, 64, 64, 3), (4, 64, 64))] * 2 + [((2, 64, 64, 3), (2, 64, 64))]
    x, y = next(iter(dataset))
    assert x.dtype == tf.float32 and y.dtype == tf.int32
    images, masks = collect(dataset)
    np.testing.assert_array_equal(images, data.images.astype(np.float32))
    np.testing.assert_array_equal(masks, data.masks)


def test_shuffle_permutes_and_reshuffles(data):
    dataset = pipeline.make_dataset(data, 64, batch_size=10, shuffle=True, seed=3)
    first, second = collect(dataset)[1], collect(dataset)[1]
    for epoch in (first, second):
        order = [next(i for i in range(10) if np.array_equal(m, data.masks[i])) for m in epoch]
        assert sorted(order) == list(range(10))
    assert not np.array_equal(first, second)


def test_resize_varying_sizes_nearest_for_masks():
    rng = np.random.default_rng(0)
    sizes = [(50, 70), (64, 64), (81, 40)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    masks = [rng.choice(np.array([0, 3, 5, 255], np.uint8), (h, w)) for h, w in sizes]
    dataset = pipeline.make_dataset((images, masks), (32, 48), batch_size=3, num_classes=6)
    x, y = collect(dataset)
    assert x.shape == (3, 32, 48, 3) and y.shape == (3, 32, 48)
    for mask, resized in zip(masks, y, strict=True):
        # nearest neighbour with half-pixel centres: source index floor((i + 0.5) * in / out)
        rows = np.floor((np.arange(32) + 0.5) * mask.shape[0] / 32).astype(int)
        cols = np.floor((np.arange(48) + 0.5) * mask.shape[1] / 48).astype(int)
        np.testing.assert_array_equal(resized, mask[rows][:, cols])
    assert 0 <= x.min() and x.max() <= 255


def test_grayscale_and_rgba_are_converted():
    gray = np.full((2, 16, 16), 90, np.uint8)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 17
    mask = np.zeros((16, 16), np.uint8)
    x, _ = collect(pipeline.make_dataset((gray, np.zeros((2, 16, 16), np.uint8)), 16, 2))
    assert x.shape == (2, 16, 16, 3) and (x == 90).all()
    x, _ = collect(pipeline.make_dataset(([rgba], [mask]), 16, 1))
    np.testing.assert_array_equal(x[0, 0, 0], [200, 0, 0])


def test_label_above_num_classes_is_named():
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[1, 2, 3], masks[0, 0, 0], masks[0, 1, 1] = 7, 255, 2
    with pytest.raises(SegkerasError, match=r"label 7 .*num_classes=4"):
        pipeline.make_dataset((np.zeros((2, 8, 8, 3), np.uint8), masks), 8, 2, num_classes=4)
    # 255 is the ignore label, not a class
    masks[1, 2, 3] = 3
    dataset = pipeline.make_dataset((np.zeros((2, 8, 8, 3), np.uint8), masks), 8, 2,
                                    num_classes=4)
    assert 255 in collect(dataset)[1]


def test_segmentation_data_num_classes_is_checked(data):
    broken = data.subset(range(2))
    broken.masks = broken.masks.copy()
    broken.masks[0, 0, 0] = 9
    with pytest.raises(SegkerasError, match=r"label 9 .*num_classes=4"):
        pipeline.make_dataset(broken, 64, 2)


def test_size_mismatch_names_both_shapes():
    with pytest.raises(SegkerasError, match=r"\(32, 32, 3\).*\(30, 32\)"):
        pipeline.make_dataset(([np.zeros((32, 32, 3), np.uint8)], [np.zeros((30, 32))]), 32, 1)
    with pytest.raises(SegkerasError, match="2 images but 1 masks"):
        pipeline.make_dataset((np.zeros((2, 8, 8, 3)), np.zeros((1, 8, 8))), 8, 1)


@pytest.mark.parametrize("image_size, batch_size", [(0, 2), ((8, 8, 8), 2), (8, 0)])
def test_bad_sizes(data, image_size, batch_size):
    with pytest.raises(SegkerasError):
        pipeline.make_dataset(data, image_size, batch_size)


def test_augmentation_keeps_labels_and_alignment():
    images, masks = halves()
    dataset = pipeline.make_dataset((images, masks), 64, batch_size=8, augment=True, seed=0)
    x, y = collect(dataset.repeat(4))
    assert set(np.unique(y).tolist()) <= {0, 1, 2}, "nearest neighbour: no new labels"
    assert x.min() >= 0 and x.max() <= 255
    assert not np.array_equal(x[:8], images.astype(np.float32)), "augmentation changed images"
    # the colour of every pixel still says its label (photometric changes keep the order of
    # the channels), except on a thin band along label edges (bilinear vs nearest)
    colour_label = np.argmax(x[..., [1, 0, 2]], axis=-1)
    assert (colour_label == y).mean() > 0.97
    # some images were flipped: label 2 (blue) on the left
    flipped = (y[:, 16:, :8] == 2).mean(axis=(1, 2)) > 0.5
    assert 0 < flipped.sum() < len(flipped)


def test_augmentation_is_seeded_and_changes_every_epoch():
    images, masks = halves(4)

    def epochs(seed):
        dataset = pipeline.make_dataset((images, masks), 64, 4, augment=True, seed=seed)
        return collect(dataset)[0], collect(dataset)[0]

    first, second = epochs(1)
    again, _ = epochs(1)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, epochs(2)[0])


@pytest.mark.fast
def test_model_fit_consumes_batches(data):
    """Runs on whatever KERAS_BACKEND is set (CI runs the fast tests on TF, JAX and torch)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(4, 3, padding="same")])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                     ignore_class=255))
    dataset = pipeline.make_dataset(data, 64, batch_size=4, augment=True, shuffle=True)
    history = model.fit(dataset, epochs=2, verbose=0, shuffle=False)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


JAX_FIT = """
import keras, numpy as np
from segkeras.data import pipeline, shapes
assert keras.backend.backend() == "jax"
model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, padding="same")])
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
dataset = pipeline.make_dataset(shapes.generate(6, 32), 32, batch_size=4, augment=True)
loss = model.fit(dataset, epochs=1, verbose=0, shuffle=False).history["loss"][0]
assert np.isfinite(loss)
print("ok", loss)
"""


@pytest.mark.fast  # CI installs JAX only for the fast passes: this runs there
def test_jax_backend_fits_on_the_batches():
    """The suite runs on one backend; this checks JAX consumes the tf.data batches too."""
    pytest.importorskip("jax")
    environment = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", JAX_FIT], env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


@pytest.mark.fast
@pytest.mark.parametrize("augment", [False, True])
def test_the_autotuner_is_off_by_default_and_changes_no_data(augment):
    data = shapes.generate(6, 32, seed=0)
    make = {"image_size": 32, "batch_size": 4, "augment": augment, "shuffle": True, "seed": 3}
    default = pipeline.make_dataset(data, **make)
    tuned = pipeline.make_dataset(data, **make, autotune=True)
    assert default.options().autotune.enabled is False
    assert tuned.options().autotune.enabled is not False
    for (images, masks), (tuned_images, tuned_masks) in zip(default, tuned, strict=True):
        np.testing.assert_array_equal(images, tuned_images)
        np.testing.assert_array_equal(masks, tuned_masks)
