"""Bad input to the Python API: one clear SegkerasError (or a documented safe result), one test
per case of the bad-input sweep (issue 14)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from segkeras.data import coco, pets
from segkeras.data.core import Instances, SegmentationData, parse_size
from segkeras.data.images import read_mask, read_rgb, resize_image
from segkeras.data.instances import make_instance_dataset
from segkeras.data.pipeline import make_dataset
from segkeras.errors import DataUnavailableError, SegkerasError
from segkeras.layers import RoIAlign
from segkeras.losses import SparseCEDice
from segkeras.metrics import PerClassIoU, PixelAccuracy
from segkeras.models.mask_head import instance_segmenter, predict_masks_in_boxes

# ---------------------------------------------------------------- COCO files


def write_coco(tmp_path, annotation=None, image_entry=None):
    """A one-image COCO folder; ``annotation`` / ``image_entry`` replace the good ones."""
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    good_annotation = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                       "segmentation": [[2, 2, 12, 2, 12, 10]], "area": 40.0,
                       "bbox": [2, 2, 10, 8]}
    good_image = {"id": 1, "file_name": "a.png", "height": 20, "width": 30}
    content = {"images": [image_entry or good_image],
               "annotations": [annotation or good_annotation],
               "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "annotations.json").write_text(json.dumps(content))
    return tmp_path / "annotations.json", tmp_path / "images"


def test_coco_good_file_loads(tmp_path):  # the fixture itself is valid
    data = coco.load(*write_coco(tmp_path))
    assert len(data.instances[0]) == 1 and data.instances[0].masks[0, 3, 9]


def test_coco_polygon_with_fewer_than_three_points(tmp_path):
    annotation = {"id": 9, "image_id": 1, "category_id": 1, "iscrowd": 0,
                  "segmentation": [[2, 2, 12, 2]], "area": 0.0, "bbox": [2, 2, 10, 0]}
    with pytest.raises(SegkerasError, match=r"annotation 9 .* polygon with 2\.0 points; a polygon "
                                            r"needs at least 3"):
        coco.load(*write_coco(tmp_path, annotation=annotation))


def test_coco_annotation_without_segmentation(tmp_path):
    annotation = {"id": 4, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 0.0,
                  "bbox": [2, 2, 10, 8]}
    with pytest.raises(SegkerasError, match="annotation 4 .* has no segmentation; give it one "
                                            "or remove it"):
        coco.load(*write_coco(tmp_path, annotation=annotation))


def test_coco_image_entry_without_height_and_width(tmp_path):
    with pytest.raises(SegkerasError, match="image 1 of .* has no height, width; every image "
                                            "entry needs file_name, height and width"):
        coco.load(*write_coco(tmp_path, image_entry={"id": 1, "file_name": "a.png"}))


# ---------------------------------------------------------------- RoIAlign


def compiled(function):
    """``function`` compiled into a graph, where tensor values are unknown while it is built:
    tf.function or jax.jit; None on torch, which runs eagerly (the eager errors apply)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return tf.function(function)
    if backend == "jax":
        import jax

        return jax.jit(function)
    return None

FEATURES = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
GOOD_BOXES = np.array([[0, 0, 4, 4], [1, 1, 6, 5]], "float32")


def roi_align(boxes, indices, graph=False):
    layer = RoIAlign(2, spatial_scale=1.0)
    call = compiled(layer) if graph else layer
    return keras.ops.convert_to_numpy(call(FEATURES, boxes, np.array(indices, "int32")))


def check_roi_align_case(boxes, indices, bad_row, message):
    with pytest.raises(SegkerasError, match=message):
        roi_align(boxes, indices)
    if compiled(len) is None:
        return
    crops = roi_align(boxes, indices, graph=True)  # values unknown: the bad box's crop is zero
    good_row = 1 - bad_row
    reference = roi_align(GOOD_BOXES[good_row:good_row + 1], [indices[good_row]])
    np.testing.assert_array_equal(crops[bad_row], 0.0)
    np.testing.assert_allclose(crops[good_row], reference[0], rtol=1e-5, atol=1e-6)


@pytest.mark.fast
def test_roi_align_nan_box_coordinates():
    boxes = GOOD_BOXES.copy()
    boxes[1, 2] = np.nan
    check_roi_align_case(boxes, [0, 1], 1, r"box 1 \[.*nan.*\] has NaN or infinite coordinates")


@pytest.mark.fast
def test_roi_align_box_index_beyond_the_batch():
    check_roi_align_case(GOOD_BOXES, [0, 2], 1, r"box 1 .* has image index 2, outside 0\.\.1")


@pytest.mark.fast
def test_roi_align_box_with_x2_below_x1():
    boxes = GOOD_BOXES.copy()
    boxes[0] = [4, 0, 0, 4]
    check_roi_align_case(boxes, [0, 1], 0, r"box 0 .* has x2 < x1 or y2 < y1; boxes are x1, y1")


@pytest.mark.fast
def test_roi_align_box_index_minus_one():
    check_roi_align_case(GOOD_BOXES, [-1, 1], 0, r"box 0 .* has image index -1, outside 0\.\.1")


# ---------------------------------------------------------------- instance entry points


@pytest.fixture(scope="module")
def mask_model():
    return instance_segmenter(3, "mobilenetv2", weights=None, input_shape=(64, 64, 3),
                              max_instances=2, head_channels=8)


def test_predict_masks_in_boxes_on_a_grayscale_image_equals_its_rgb_copy(mask_model):
    gray = np.random.default_rng(1).integers(0, 256, (50, 60), dtype=np.uint8)
    boxes, ids = [np.array([[5, 5, 40, 30]], "float32")], [np.array([2])]
    masks, scores = predict_masks_in_boxes(mask_model, [gray], boxes, ids, return_scores=True)
    rgb_masks, rgb_scores = predict_masks_in_boxes(mask_model, [np.dstack([gray] * 3)], boxes, ids,
                                              return_scores=True)
    assert masks[0].shape == (1, 50, 60)
    np.testing.assert_array_equal(masks[0], rgb_masks[0])
    np.testing.assert_allclose(scores[0], rgb_scores[0])


def test_predict_masks_in_boxes_refuses_inverted_boxes_nan_pixels_and_unit_floats(mask_model):
    image = np.full((50, 60, 3), 100, np.uint8)
    ids = [np.array([1])]
    with pytest.raises(SegkerasError, match=r"Image 0: box 0 .* x2 < x1 or y2 < y1"):
        predict_masks_in_boxes(mask_model, [image], [np.array([[40, 5, 5, 30]], "float32")], ids)
    box = [np.array([[5, 5, 40, 30]], "float32")]
    nan_image = image.astype("float32")
    nan_image[3, 3] = np.nan
    with pytest.raises(SegkerasError, match="Image 0 has NaN or infinite pixels"):
        predict_masks_in_boxes(mask_model, [nan_image], box, ids)
    with pytest.raises(SegkerasError, match=r"Image 0 has float pixels in \[0, 1\]"):
        predict_masks_in_boxes(mask_model, [image / 255.0], box, ids)


def test_instance_dataset_refuses_inverted_boxes():
    mask = np.zeros((1, 64, 64), bool)
    mask[0, 10:20, 10:30] = True
    data = SegmentationData(np.zeros((1, 64, 64, 3), np.uint8), np.zeros((1, 64, 64), np.uint8),
                            ["background", "thing"],
                            [Instances(mask, np.array([[30, 10, 10, 20]], "float32"),
                                       np.array([1], np.int32))])
    with pytest.raises(SegkerasError, match="x2 < x1 or y2 < y1"):
        make_instance_dataset(data, 64)


# ---------------------------------------------------------------- losses and metrics

LOGITS = np.random.default_rng(2).normal(size=(2, 4, 4, 4)).astype("float32")


@pytest.mark.fast
def test_sparse_ce_dice_refuses_logits_of_another_class_count():
    with pytest.raises(SegkerasError, match="logits have 4 channels but num_classes=3; use "
                                            "num_classes=4"):
        SparseCEDice(3)(np.zeros((2, 4, 4), "int32"), LOGITS)


def labels_with(value):
    labels = np.zeros((2, 4, 4), "int32")
    labels[0, 1, 2] = value
    labels[1, 0, 0] = 255  # ignored: fine
    return labels


@pytest.mark.fast
@pytest.mark.parametrize("value", [7, -1])
def test_loss_refuses_labels_outside_the_classes(value):
    loss = SparseCEDice(4)
    with pytest.raises(SegkerasError, match=rf"labels \[{value}\] are not class ids of 4 classes"):
        loss(labels_with(value), LOGITS)
    graph_loss = compiled(loss)
    if graph_loss is not None:  # compiled: NaN, which TerminateOnNaN stops on
        assert np.isnan(float(graph_loss(labels_with(value), LOGITS)))
        assert np.isfinite(float(graph_loss(labels_with(3), LOGITS)))


@pytest.mark.fast
@pytest.mark.parametrize("value", [7, -1])
@pytest.mark.parametrize("metric", [PixelAccuracy, lambda: PerClassIoU(4)])
def test_metrics_refuse_labels_outside_the_classes(value, metric):
    with pytest.raises(SegkerasError, match=rf"labels \[{value}\] are not class ids"):
        metric().update_state(labels_with(value), LOGITS)
    graph_metric = metric()
    update = compiled(graph_metric.stateless_update_state)
    if update is None:
        return
    start = [keras.ops.convert_to_tensor(v) for v in graph_metric.variables]
    variables = update(start, labels_with(value), LOGITS)
    assert np.isnan(float(graph_metric.stateless_result(variables)))
    variables = update([keras.ops.zeros_like(v) for v in start],
                       labels_with(3), LOGITS)
    assert np.isfinite(float(graph_metric.stateless_result(variables)))


def test_fit_on_labels_outside_the_classes_stops_on_nan():
    """Unchecked masks reaching model.fit (a compiled graph): the loss is NaN and
    TerminateOnNaN stops at the first batch instead of training on mis-scored pixels."""
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1)(inputs))
    model.compile("sgd", SparseCEDice(4))
    images = np.zeros((8, 4, 4, 3), "float32")
    labels = np.concatenate([labels_with(7)] * 4)
    history = model.fit(images, labels, batch_size=2, epochs=3, verbose=0,
                        callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])


def test_make_dataset_refuses_labels_outside_the_classes():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    for value, message in [(7, "mask label 7 found but num_classes=4"),
                           (-1, r"mask values must be 0\.\.255, found -1")]:
        masks = np.zeros((2, 8, 8), np.int32)
        masks[1, 2, 2] = value
        with pytest.raises(SegkerasError, match=message):
            make_dataset((images, masks), 8, 2, num_classes=4)


# ---------------------------------------------------------------- images


def test_float_images_in_unit_range_are_refused_with_what_to_do():
    images = np.random.default_rng(3).random((2, 8, 8, 3)).astype("float32")
    masks = np.zeros((2, 8, 8), np.uint8)
    with pytest.raises(SegkerasError, match=r"float pixels in \[0, 1\] but segkeras expects RGB "
                                            r"in \[0, 255\]; pass image \* 255"):
        make_dataset((images, masks), 8, 2)
    batch, _ = next(iter(make_dataset((images * 255, masks), 8, 2)))  # what the message says
    np.testing.assert_allclose(batch.numpy(), np.round(images * 255), atol=0)


def test_nan_pixels_are_refused_not_cast_to_zero():
    images = np.full((2, 8, 8, 3), 100.0, "float32")
    images[1, 4, 4, 0] = np.nan
    with pytest.raises(SegkerasError, match="has NaN or infinite pixels"):
        make_dataset((images, np.zeros((2, 8, 8), np.uint8)), 8, 2)
    listed = [images[0], images[1]]
    with pytest.raises(SegkerasError, match="image 1 has NaN or infinite pixels"):
        make_dataset((listed, [np.zeros((8, 8), np.uint8)] * 2), 8, 2)


def test_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    levels = np.linspace(0, 65535, 40 * 30).reshape(40, 30).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    rgb = read_rgb(tmp_path / "deep.png")
    expected = np.round(levels / 65535 * 255).astype(np.uint8)
    assert rgb.dtype == np.uint8 and rgb.shape == (40, 30, 3)
    np.testing.assert_array_equal(rgb, np.dstack([expected] * 3))
    assert (rgb == 255).mean() < 0.01  # PIL's convert("RGB") gave 255 in 99.6% of the pixels


def test_16_bit_masks_keep_labels_or_refuse_what_does_not_fit(tmp_path):
    labels = np.zeros((10, 12), np.uint16)
    labels[2:5, 3:7] = 3
    Image.fromarray(labels).save(tmp_path / "labels.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "labels.png"), labels)
    labels[0, 0] = 1000
    Image.fromarray(labels).save(tmp_path / "big.png")
    with pytest.raises(SegkerasError, match="has label 1000 > 255"):
        read_mask(tmp_path / "big.png")


# ---------------------------------------------------------------- Oxford-IIIT Pet


def minimal_pets(root, split_lines):
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(root / "images" / "cat_1.jpg")
    Image.fromarray(np.full((20, 24), 1, np.uint8)).save(
        root / "annotations" / "trimaps" / "cat_1.png")
    (root / "annotations" / "trainval.txt").write_text(split_lines)
    (root / "annotations" / "test.txt").write_text("")


def test_pets_empty_split_file_is_an_error(tmp_path):
    minimal_pets(tmp_path / "pets", "cat_1 1 1 1\n")
    assert len(pets.load(tmp_path / "pets", split="trainval", download=False)) == 1
    with pytest.raises(DataUnavailableError, match=r"test\.txt lists no images; delete .* to "
                                                   "download the dataset again"):
        pets.load(tmp_path / "pets", split="test", download=False)


def test_pets_failed_download_leaves_no_empty_folder(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    root = tmp_path / "keras" / "oxford_pets"
    with pytest.raises(DataUnavailableError, match="cannot download images.tar.gz"):
        pets.load(root, download=True)
    assert not root.exists()
    root.mkdir(parents=True)  # a folder the user made stays, with what was in it
    (root / "notes.txt").write_text("mine")
    with pytest.raises(DataUnavailableError):
        pets.load(root, download=True)
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------- sizes and resizing


@pytest.mark.parametrize("size, multiple, message", [
    (-64, 1, "image size -64 is not a positive size; use 64"),
    (-64, 32, "image size -64 is not a positive multiple of 32; use 64"),
    (0, 32, "use 32"),
    (100, 32, "use 96 or 128"),
    ((64, 7.5), 1, "an int or an .H, W. pair of ints"),
    ("64", 1, "an int or an .H, W. pair of ints"),
])
def test_one_size_parser_suggests_a_valid_size(size, multiple, message):
    with pytest.raises(SegkerasError, match=message):
        parse_size(size, multiple)


def test_every_data_entry_point_uses_the_one_size_parser():
    data = SegmentationData(np.zeros((2, 32, 32, 3), np.uint8), np.zeros((2, 32, 32), np.uint8),
                            ["background", "thing"],
                            [Instances(np.zeros((0, 32, 32), bool), np.zeros((0, 4), "float32"),
                                       np.zeros(0, np.int32))] * 2)
    with pytest.raises(SegkerasError, match="image size -64 is not a positive size; use 64"):
        make_dataset(data, -64, 2)
    with pytest.raises(SegkerasError, match="is not a positive multiple of 32; use 64"):
        make_instance_dataset(data, -64)
    with pytest.raises(SegkerasError, match="image size -64 is not a positive size; use 64"):
        pets.load("/nonexistent", image_size=-64, download=False)
    assert parse_size((64, 96), 32) == (64, 96) and parse_size(np.int64(48)) == (48, 48)


def test_one_image_resize_for_uint8_and_float_images():
    image = np.random.default_rng(4).integers(0, 256, (30, 44, 3), dtype=np.uint8)
    small, small_float = resize_image(image, (15, 22)), resize_image(image.astype("f8"), (15, 22))
    assert small.dtype == np.uint8 and small_float.dtype == np.float32
    np.testing.assert_allclose(small_float, small, atol=1.0)  # the same filter (uint8: fixed point)
    # a 2x shrink with PIL's anti-aliased bilinear filter: each output pixel mixes a 4x4 window
    # (triangle weights 1, 3, 3, 1 along each axis), clamped at the border
    weights = np.array([1, 3, 3, 1], float) / 8
    padded = np.pad(image.astype(float), ((1, 1), (1, 1), (0, 0)), mode="edge")
    expected = np.zeros((15, 22, 3))
    for dy, wy in enumerate(weights):
        for dx, wx in enumerate(weights):
            expected += wy * wx * padded[dy:dy + 30:2, dx:dx + 44:2]
    interior = (slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(small_float[interior], expected[interior], atol=0.01)


@pytest.mark.fast
def test_negative_model_input_size_gets_a_suggestion():
    from segkeras.backbones import check_input_shape

    with pytest.raises(SegkerasError, match=r"H=-64 is not a positive multiple of the encoder "
                                            r"stride 32; use 64 \(or None"):
        check_input_shape((-64, 64, 3))


def test_a_float_tiff_in_0_1_is_read_as_its_picture_not_black(tmp_path):
    """A 32-bit float TIFF (PIL mode "F") in [0, 1] is scaled to 0..255; one in [0, 255] is kept;
    NaN or out-of-range values are refused in one line (issue 24: it read as black)."""
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp, mode="F").save(tmp_path / "unit.tif")
    Image.fromarray(ramp * 255, mode="F").save(tmp_path / "wide.tif")
    expected = np.repeat(np.round(ramp * 255).astype(np.uint8)[..., None], 3, axis=-1)
    np.testing.assert_array_equal(read_rgb(tmp_path / "unit.tif"), expected)
    np.testing.assert_array_equal(read_rgb(tmp_path / "wide.tif"), expected)
    Image.fromarray(np.full((8, 8), np.nan, np.float32), mode="F").save(tmp_path / "nan.tif")
    Image.fromarray(np.full((8, 8), 300.0, np.float32), mode="F").save(tmp_path / "hot.tif")
    with pytest.raises(SegkerasError, match="NaN or infinite"):
        read_rgb(tmp_path / "nan.tif")
    with pytest.raises(SegkerasError, match="rescale it"):
        read_rgb(tmp_path / "hot.tif")
