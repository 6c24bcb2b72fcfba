"""Bad ground truth for Mask R-CNN (issue 12): images without objects, boxes outside the image,
zero-area boxes, more objects than the padding, NaN. Each is refused up front, clipped, or dropped
with a warning (mask_rcnn_dataset's docstring), and no NaN ever reaches a loss."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops
from tracing import EAGER_IS_CHEAPER

from segkeras.data import shapes
from segkeras.data.core import Instances, SegmentationData
from segkeras.errors import SegkerasError
from segkeras.models.mask_rcnn import mask_rcnn, mask_rcnn_dataset, predict_instances
from segkeras.models.mask_rcnn.model import LOSS_NAMES

SIZE = 64
SMALL = dict(anchor_sizes=(16, 32), fpn_channels=16, box_head_units=32, mask_head_channels=16,
             rpn_pre_nms=100, rpn_post_nms_train=40, rpn_post_nms_test=20, rois_per_image=16,
             max_detections=10)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return mask_rcnn(4, "vgg16", weights=None, input_shape=(SIZE, SIZE, 3), seed=0,
                     **SMALL)


def square_mask(x1, y1, x2, y2, size=SIZE):
    mask = np.zeros((size, size), bool)
    mask[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = True
    return mask


def dataset_of(boxes_per_image, images=None, class_id=1):
    """SegmentationData of SIZE x SIZE images whose objects have the given boxes (and the
    masks of those boxes inside the image)."""
    count = len(boxes_per_image)
    if images is None:
        images = np.random.default_rng(0).integers(0, 256, (count, SIZE, SIZE, 3), np.uint8)
    instances = []
    for boxes in boxes_per_image:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        masks = np.stack([square_mask(*np.clip(b, -1, SIZE + 1).astype(int)) for b in boxes]) \
            if len(boxes) else np.zeros((0, SIZE, SIZE), bool)
        instances.append(Instances(masks, boxes, np.full(len(boxes), class_id, np.int32)))
    return SegmentationData(images, np.zeros((count, SIZE, SIZE), np.uint8),
                            list(shapes.CLASS_NAMES), instances)


def first_batch(data, **kwargs):
    inputs, targets = next(iter(mask_rcnn_dataset(data, SIZE, batch_size=len(data),
                                                  augment=False, shuffle=False, **kwargs)))
    return {key: value.numpy() for key, value in inputs.items()}, targets.numpy()


def losses_of(model, inputs, targets):
    outputs = model(inputs, training=True)
    total = model.compute_loss(inputs, targets, outputs)
    values = {name: float(ops.convert_to_numpy(outputs[name])) for name in LOSS_NAMES[:-1]}
    values["loss"] = float(ops.convert_to_numpy(total))
    return values


@pytest.mark.fast
def test_a_batch_without_any_object_gives_finite_losses(model):
    inputs, targets = first_batch(dataset_of([[], []]), max_instances=4)
    assert not inputs["class_ids"].any() and not targets.any()  # all padding
    losses = losses_of(model, inputs, targets)
    assert all(np.isfinite(value) for value in losses.values()), losses
    assert losses["box_loss"] == 0 and losses["rpn_box_loss"] == 0  # nothing to regress


def test_a_training_step_on_empty_images_keeps_every_weight_finite():
    keras.utils.set_random_seed(1)
    fresh = mask_rcnn(4, "mobilenetv2", weights=None, input_shape=(SIZE, SIZE, 3), seed=1,
                      **SMALL)
    # eagerly on TensorFlow: tracing the training step costs five times the two steps
    # (test_mask_rcnn_model's fits trace it; tests/tracing.py)
    fresh.compile(keras.optimizers.Adam(1e-3), run_eagerly=EAGER_IS_CHEAPER)
    data = dataset_of([[], [[8, 8, 40, 40]]])
    history = fresh.fit(mask_rcnn_dataset(data, SIZE, batch_size=1, max_instances=2,
                                          shuffle=False), epochs=1, shuffle=False,
                       verbose=0).history
    assert all(np.isfinite(values).all() for values in history.values()), history
    assert all(np.isfinite(ops.convert_to_numpy(weight)).all() for weight in fresh.weights)


@pytest.mark.fast
@pytest.mark.parametrize("image", [np.zeros((SIZE, SIZE, 3), np.uint8),
                                   np.full((40, 90, 3), 255, np.uint8)],
                         ids=["black", "white-odd-size"])
def test_predict_on_a_blank_image_returns_few_well_formed_detections(model, image):
    (found,) = predict_instances(model, [image])
    count = len(found["scores"])
    assert count <= SMALL["max_detections"]
    assert np.isfinite(found["scores"]).all() and ((0 <= found["scores"]) &
                                                   (found["scores"] <= 1)).all()
    assert found["masks"].shape == (count, *image.shape[:2]) and found["masks"].dtype == bool
    assert np.isfinite(found["boxes"]).all()
    assert (found["boxes"][:, :2] >= 0).all()
    assert (found["boxes"][:, 2:] <= [image.shape[1], image.shape[0]]).all()


@pytest.mark.fast
def test_boxes_reaching_outside_the_image_are_clipped():
    inputs, _ = first_batch(dataset_of([[[-10, -6, 20, 30], [50, 40, 80, 70]]]), max_instances=3)
    expected = np.clip(np.array([[-10, -6, 20, 30], [50, 40, 80, 70]], np.float32), 0, SIZE)
    np.testing.assert_array_equal(inputs["boxes"][0, :2], expected)
    np.testing.assert_array_equal(inputs["class_ids"][0], [1, 1, 0])


@pytest.mark.fast
def test_boxes_without_area_inside_the_image_are_dropped_with_a_warning(model):
    boxes = [[10, 10, 10, 30],   # zero width
             [70, 70, 90, 90],   # entirely outside
             [5, 20, 40, 20],    # zero height
             [8, 8, 24, 30]]     # a real one
    with pytest.warns(UserWarning, match="3 ground-truth boxes have no area"):
        inputs, targets = first_batch(dataset_of([boxes]), max_instances=4)
    np.testing.assert_array_equal(inputs["boxes"][0, 0], [8, 8, 24, 30])
    np.testing.assert_array_equal(inputs["class_ids"][0], [1, 0, 0, 0])
    losses = losses_of(model, inputs, targets)
    assert all(np.isfinite(value) for value in losses.values()), losses


@pytest.mark.fast
def test_more_objects_than_max_instances_keeps_the_first_with_a_warning():
    boxes = [[4 * i, 4 * i, 4 * i + 10, 4 * i + 10] for i in range(5)]
    data = dataset_of([boxes, boxes[:2]])
    with pytest.warns(UserWarning, match=r"1 of 2 images have more than max_instances=3 "
                                         r"objects \(up to 5\).*max_instances=5"):
        inputs, _ = first_batch(data, max_instances=3)
    np.testing.assert_array_equal(inputs["boxes"][0], np.array(boxes[:3], np.float32))
    # the others are ignore regions, not background
    np.testing.assert_array_equal(inputs["ignore_boxes"][0, :2], np.array(boxes[3:], np.float32))
    assert not inputs["ignore_boxes"][0, 2:].any() and not inputs["ignore_boxes"][1].any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough room: no warning
        first_batch(data, max_instances=5)


@pytest.mark.fast
def test_more_ignore_regions_than_16_are_all_kept():
    """40 objects with max_instances=3: the 37 beyond are all ignore regions (rows sized from the
    data: 48), none trained as background; the other image's rows are padding."""
    boxes = [[i % 8 * 8, i // 8 * 12, i % 8 * 8 + 6, i // 8 * 12 + 10] for i in range(40)]
    with pytest.warns(UserWarning, match="max_instances=3"):
        inputs, _ = first_batch(dataset_of([boxes, boxes[:2]]), max_instances=3)
    assert inputs["ignore_boxes"].shape == (2, 48, 4)
    np.testing.assert_array_equal(inputs["ignore_boxes"][0, :37], np.array(boxes[3:], "float32"))
    assert not inputs["ignore_boxes"][0, 37:].any() and not inputs["ignore_boxes"][1].any()


@pytest.mark.fast
def test_coco_crowds_beyond_16_are_all_ignore_regions(tmp_path):
    """A COCO image with 20 crowd regions and 3 objects (max_instances=2): 21 ignore regions,
    all kept (32 rows); prepare_instances refuses rather than drop any that do not fit."""
    import json

    from PIL import Image

    from segkeras.data.coco import CocoIndex
    from segkeras.data.instances import prepare_instances

    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    crowds = [[i % 5 * 12.0, i // 5 * 16.0, 8.0, 8.0] for i in range(20)]
    objects = [[2.0, 2.0, 10.0, 10.0], [30.0, 30.0, 12.0, 12.0], [50.0, 4.0, 10.0, 20.0]]
    annotations = [{"id": k + 1, "image_id": 1, "category_id": 1, "bbox": box,
                    "iscrowd": int(k < 20), "area": box[2] * box[3],
                    "segmentation": [[box[0], box[1], box[0] + box[2], box[1], box[0] + box[2],
                                      box[1] + box[3], box[0], box[1] + box[3]]]}
                   for k, box in enumerate(crowds + objects)]
    (tmp_path / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": SIZE, "width": SIZE}],
        "categories": [{"id": 1, "name": "thing"}], "annotations": annotations}))
    index = CocoIndex(tmp_path / "annotations.json", tmp_path / "images")
    with pytest.warns(UserWarning, match="max_instances=2"):
        dataset = mask_rcnn_dataset(index, SIZE, batch_size=1, max_instances=2, augment=False)
    inputs, _ = next(iter(dataset))
    ignore = inputs["ignore_boxes"].numpy()[0]
    assert ignore.shape == (32, 4) and (ignore.any(axis=1)).sum() == 21
    expected = [[x, y, x + w, y + h] for x, y, w, h in crowds]
    np.testing.assert_allclose(ignore[:1], [[50, 4, 60, 24]], atol=1)  # the overflow object
    np.testing.assert_allclose(ignore[1:21], expected, atol=1e-4)
    image, found, crowd_boxes = index.example(0)
    with pytest.raises(SegkerasError, match="21 ignore regions .* room for 16"):
        prepare_instances(image, found, (SIZE, SIZE), 2, crowd_boxes)


@pytest.mark.fast
@pytest.mark.parametrize("spoil, message", [
    (lambda data: data.images.__setitem__((1, 3, 3, 0), np.nan), "Image 1 has NaN"),
    (lambda data: data.images.__setitem__((0, 0, 0, 0), 300.0), r"\[0, 255\]"),
    (lambda data: data.instances[0].boxes.__setitem__((0, 2), np.nan),
     "Image 0: boxes contain NaN"),
    (lambda data: data.instances[1].boxes.__setitem__(0, [30, 5, 10, 20]), "x2 < x1"),
    (lambda data: data.instances[1].class_ids.__setitem__(0, 4), "class id 4"),
], ids=["nan-pixel", "pixel-300", "nan-box", "inverted-box", "class-id"])
def test_values_that_would_poison_a_loss_are_refused_up_front(spoil, message):
    images = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    data = dataset_of([[[4, 4, 30, 30]], [[10, 10, 40, 40]]], images=images)
    spoil(data)
    with pytest.raises(SegkerasError, match=message):
        mask_rcnn_dataset(data, SIZE)


@pytest.mark.parametrize("case, message", [
    ("fewer boxes than masks", "2 masks, 1 boxes and 2 class ids"),
    ("masks of another size", "is 64x64 but its masks are 32x32"),
    ("fractional class ids", "whole numbers"),
])
def test_instances_that_do_not_fit_their_image_are_refused(case, message):
    """Objects are never silently dropped, stretched or truncated (issue 24)."""
    data = dataset_of([[(4, 4, 20, 20), (30, 30, 50, 50)]])
    objects = data.instances[0]
    if case == "fewer boxes than masks":
        objects.boxes = objects.boxes[:1]
    elif case == "masks of another size":
        objects.masks = objects.masks[:, :32, :32]
    else:
        objects.class_ids = np.array([1.0, 1.5], np.float32)
    with pytest.raises(SegkerasError, match=message):
        mask_rcnn_dataset(data, SIZE, batch_size=1)
