"""Pictures: palette, overlays, grids, instances and curves are Figures with the right content."""

import keras
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from segkeras import viz
from segkeras.data.core import Instances, boxes_from_masks
from segkeras.errors import SegkerasError

NAMES = ["background", "circle", "rectangle", "triangle"]


@pytest.fixture
def sample():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    mask = np.zeros((24, 32), np.uint8)
    mask[2:10, 3:12], mask[12:20, 15:30], mask[0, 0] = 1, 3, 255
    return image, mask


def legend_labels(figure):
    return [text.get_text() for text in figure.legends[0].get_texts()]


def test_palette_is_the_pascal_voc_map():
    assert viz.PALETTE.shape == (256, 3) and viz.PALETTE.dtype == np.uint8
    np.testing.assert_array_equal(viz.PALETTE[[0, 1, 2, 3, 15]],
                                  [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
                                   [192, 128, 128]])
    np.testing.assert_array_equal(viz.PALETTE[255], [224, 224, 192])
    assert len({tuple(c) for c in viz.PALETTE}) == 256


def test_colorize(sample):
    _, mask = sample
    colours = viz.colorize(mask)
    assert colours.shape == (24, 32, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours[5, 5], [128, 0, 0])
    np.testing.assert_array_equal(colours[0, 0], [224, 224, 192])
    with pytest.raises(SegkerasError):
        viz.colorize(np.array([[-1, 2]]))


def test_overlay_blends_only_the_objects(sample):
    image, mask = sample
    figure = viz.overlay(image, mask, NAMES, alpha=0.4)
    assert isinstance(figure, Figure)
    shown = np.asarray(figure.axes[0].images[0].get_array())
    background = mask == 0
    np.testing.assert_array_equal(shown[background], image[background])
    expected = np.round(0.6 * image[5, 5] + 0.4 * np.array([128, 0, 0])).astype(np.uint8)
    np.testing.assert_array_equal(shown[5, 5], expected)
    assert legend_labels(figure) == ["circle", "triangle", "ignore"]


def test_prediction_grid_takes_ids_or_logits(sample):
    image, mask = sample
    images, masks = np.stack([image] * 3), np.stack([mask] * 3)
    logits = np.eye(4)[np.minimum(masks, 3)] * 5.0
    figure = viz.prediction_grid(images, masks, logits, NAMES, max_images=2)
    assert len(figure.axes) == 2 * 3
    assert [ax.get_title() for ax in figure.axes[:3]] == ["image", "truth", "prediction"]
    prediction = np.asarray(figure.axes[2].images[0].get_array())
    np.testing.assert_array_equal(prediction, viz.colorize(np.minimum(mask, 3)))
    assert legend_labels(figure) == ["background", "circle", "triangle", "ignore"]
    assert len(viz.prediction_grid(images, masks).axes) == 3 * 2
    with pytest.raises(SegkerasError, match=r"\(24, 32\).*\(10, 10\)"):
        viz.prediction_grid(images, np.zeros((3, 10, 10), np.uint8))


def test_instance_overlay_draws_boxes_and_names(sample):
    image, _ = sample
    masks = np.zeros((2, 24, 32), bool)
    masks[0, 2:10, 3:12], masks[1, 12:20, 15:30] = True, True
    instances = Instances(masks, boxes_from_masks(masks), np.array([2, 3], np.int32))
    figure = viz.instance_overlay(image, instances, NAMES, scores=[0.9, 0.25])
    boxes = [patch for patch in figure.axes[0].patches if isinstance(patch, Rectangle)]
    assert [(b.get_x(), b.get_y(), b.get_width(), b.get_height()) for b in boxes] == [
        (2.5, 1.5, 9.0, 8.0), (14.5, 11.5, 15.0, 8.0)]
    assert [t.get_text() for t in figure.axes[0].texts] == ["rectangle 0.90", "triangle 0.25"]
    shown = np.asarray(figure.axes[0].images[0].get_array())
    np.testing.assert_array_equal(shown[~masks.any(axis=0)], image[~masks.any(axis=0)])
    assert not np.array_equal(shown[masks[0]], image[masks[0]])
    with pytest.raises(SegkerasError, match="does not match"):
        viz.instance_overlay(image[:10], instances, NAMES)


def test_training_curves_from_history_or_dict():
    logs = {"loss": [1.0, 0.6, 0.4], "val_loss": [1.2, 0.8, 0.7], "mean_iou": [0.2, 0.4, 0.5],
            "val_mean_iou": [0.1, 0.3, 0.45], "learning_rate": [1e-3] * 3}
    history = keras.callbacks.History()
    history.history = logs
    for source in (history, logs):
        figure = viz.training_curves(source)
        assert [ax.get_title() for ax in figure.axes] == ["loss", "mean_iou"]
        lines = figure.axes[1].get_lines()
        assert len(lines) == 2
        np.testing.assert_array_equal(lines[1].get_ydata(), logs["val_mean_iou"])
        np.testing.assert_array_equal(lines[0].get_xdata(), [1, 2, 3])
    assert len(viz.training_curves(logs, metrics=["loss"]).axes) == 1
    with pytest.raises(SegkerasError, match="no metric accuracy.*loss, mean_iou"):
        viz.training_curves(logs, metrics=["accuracy"])
    with pytest.raises(SegkerasError):
        viz.training_curves({})


def test_no_pyplot_state_is_left(sample):
    image, mask = sample
    plt.close("all")
    viz.overlay(image, mask)
    viz.prediction_grid(image[None], mask[None])
    assert plt.get_fignums() == []
