"""Prediction on real photos: any size and aspect ratio, results in each image's own pixels, the
mask branch on kept detections only, masks pasted inside their boxes (bool or RLE), semantic
logits resized bilinearly before the argmax, and peak memory on 12 MP and 6000x6000 images
measured under an address-space limit."""

import os
import sys

import keras
import numpy as np
import pytest
from keras import ops
from PIL import Image
from pycocotools import mask as mask_utils

from segkeras.cli import main
from segkeras.data import shapes
from segkeras.data.images import fit_size, letterbox, upsampled_argmax
from segkeras.errors import SegkerasError
from segkeras.models.mask_head import paste_masks
from segkeras.models.mask_rcnn import mask_rcnn, predict_instances
from segkeras.models.semantic_predict import predict_semantic

sys.path.insert(0, os.path.dirname(__file__))
import predict_memory_probe as probe  # noqa: E402

GiB = 2**30


@pytest.fixture(scope="module")
def detector(small_mask_rcnn):
    """The untrained small Mask R-CNN with a mask predictor 3e7 times larger: its mask logits
    are of the order of 1 (median 1.8) rather than 1e-5, so the 0.5 threshold decides pixels."""
    predictor = small_mask_rcnn.mask_head.get_layer("mask_predictor")
    kernel, bias = predictor.get_weights()
    predictor.set_weights([kernel * 3e7, bias])
    return small_mask_rcnn


def _sigmoid(logits):
    return 1.0 / (1.0 + np.exp(-logits))


def _today(model, canvas_batch, scales, sizes, min_score, paste=True):
    """The detections as predict_instances computed them before: the whole model (mask branch
    on every slot), each mask pasted as a full-size plane, boxes mapped back by ``scales``."""
    out = model.predict(canvas_batch, verbose=0)
    expected = []
    for i, ((height, width), scale) in enumerate(zip(sizes, scales, strict=True)):
        keep = out["valid"][i] & (out["scores"][i] >= min_score)
        boxes = np.clip(out["boxes"][i][keep] / scale, 0, [width, height] * 2)
        inside = np.all(boxes[:, 2:] > boxes[:, :2], axis=1)
        masks = _sigmoid(out["mask_logits"][i][keep][inside])
        expected.append({"boxes": boxes[inside], "scores": out["scores"][i][keep][inside],
                         "class_ids": out["class_ids"][i][keep][inside], "masks_28": masks,
                         "probabilities": paste_masks(masks, boxes[inside], height, width)
                         if paste else None})
    return expected


def _assert_same(found, expected):
    assert len(found) == len(expected)
    for result, want in zip(found, expected, strict=True):
        assert len(result["scores"]) == len(want["scores"])
        np.testing.assert_allclose(result["boxes"], want["boxes"], rtol=1e-6, atol=1e-4)
        np.testing.assert_array_equal(result["class_ids"], want["class_ids"])
        np.testing.assert_array_equal(result["scores"], want["scores"])
        # the same pixels, but where float rounding between batch compositions can decide
        decided = np.abs(want["probabilities"] - 0.5) > 1e-5
        assert decided.size == 0 or decided.mean() > 0.999
        np.testing.assert_array_equal(result["masks"][decided],
                                      want["probabilities"][decided] >= 0.5)


@pytest.mark.parametrize("quantile", [0, 50])
def test_kept_detection_masks_equal_the_whole_models_masks(detector, quantile, eager):
    """The mask branch on the kept detections only gives the masks the whole model (mask branch
    on all 10 slots) gives those detections: same boxes, same pixels; RLE decodes to them.
    ``min_score``: 0, or the median score (about half the detections kept)."""
    images = shapes.generate(3, 64, seed=1).images
    out = detector.predict(np.asarray(images), verbose=0)
    min_score = float(np.percentile(out["scores"][out["valid"]], quantile)) if quantile else 0.0
    expected = _today(detector, np.asarray(images), [np.ones(4, np.float32)] * 3,
                      [(64, 64)] * 3, min_score)
    found = predict_instances(detector, images, min_score=min_score, batch_size=2)
    _assert_same(found, expected)
    assert sum(len(f["scores"]) for f in found) > 0
    if quantile:
        assert any(0 < len(f["scores"]) < 10 for f in found)  # fewer than all slots kept
    as_rle = predict_instances(detector, images, min_score=min_score, batch_size=2,
                               mask_format="rle")
    for result, rles in zip(found, as_rle, strict=True):
        np.testing.assert_array_equal(result["boxes"], rles["boxes"])
        decoded = [mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()})
                   for r in rles["masks"]]
        assert all(r["size"] == [64, 64] for r in rles["masks"])
        np.testing.assert_array_equal(np.array(decoded, bool).reshape(result["masks"].shape),
                                      result["masks"])


@pytest.mark.fast
def test_aspect_kept_size_against_numpy():
    assert fit_size(480, 640, 800, 1333) == (800, 1067)
    assert fit_size(640, 480, 800, 1333) == (1067, 800)
    assert fit_size(6000, 6000, 800, 1333) == (800, 800)
    assert fit_size(100, 2000, 800, 1333) == (67, 1333)  # the longer side caps the scale
    assert fit_size(480, 640, 64, 64, canvas=(64, 64)) == (48, 64)
    assert fit_size(640, 480, 256, 384, canvas=(256, 384)) == (256, 192)  # inside the input
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)
    padded = letterbox(image, (15, 20), (32, 32))
    expected = np.zeros((32, 32, 3), np.uint8)
    expected[:15, :20] = np.asarray(Image.fromarray(image).resize((20, 15), Image.BILINEAR))
    np.testing.assert_array_equal(padded, expected)


def test_two_photo_sizes_in_one_call_come_back_in_their_own_pixels(detector, eager):
    """A 480x640 and a 640x480 photo in one call: each is resized to 48x64 / 64x48 (scale 0.1),
    padded to the 64x64 input, and its boxes and masks are mapped back to its own pixels."""
    rng = np.random.default_rng(3)
    small = [rng.integers(0, 256, (48, 64, 3), np.uint8), rng.integers(0, 256, (64, 48, 3),
                                                                       np.uint8)]
    photos = [np.asarray(Image.fromarray(p).resize((p.shape[1] * 10, p.shape[0] * 10),
                                                   Image.NEAREST)) for p in small]
    assert [p.shape[:2] for p in photos] == [(480, 640), (640, 480)]
    canvas = np.zeros((2, 64, 64, 3), np.uint8)  # the model's input, computed here with numpy
    for i, photo in enumerate(photos):
        height, width = photo.shape[:2]
        canvas[i, : height // 10, : width // 10] = np.asarray(
            Image.fromarray(photo).resize((width // 10, height // 10), Image.BILINEAR))
    expected = _today(detector, canvas, [np.full(4, 0.1, np.float32)] * 2,
                      [(480, 640), (640, 480)], 0.0)
    found = predict_instances(detector, photos)
    _assert_same(found, expected)
    for result, photo in zip(found, photos, strict=True):
        height, width = photo.shape[:2]
        assert result["masks"].shape[1:] == (height, width) and len(result["scores"]) > 0
        assert (result["boxes"] >= 0).all() and (result["boxes"][:, 2:] <= [width, height]).all()
        for mask, (x1, y1, x2, y2) in zip(result["masks"], result["boxes"], strict=True):
            rows, cols = np.nonzero(mask)  # inside its box, half a mask pixel around it at most
            if len(rows):
                assert rows.min() >= y1 - (y2 - y1) / 28 - 1 and rows.max() <= y2 + (y2 - y1) / 28
                assert cols.min() >= x1 - (x2 - x1) / 28 - 1 and cols.max() <= x2 + (x2 - x1) / 28


def test_a_huge_image_is_downscaled_for_the_model_and_mapped_back(detector, eager):
    huge = np.zeros((6000, 6000, 3), np.uint8)
    huge[1000:4000, 2000:5500] = 200
    expected = _today(detector, letterbox(huge, (64, 64), (64, 64))[None],
                      [np.full(4, 64 / 6000, np.float32)], [(6000, 6000)], 0.0, paste=False)[0]
    (found,) = predict_instances(detector, [huge], mask_format="rle")
    np.testing.assert_allclose(found["boxes"], expected["boxes"], rtol=1e-5, atol=1e-2)
    assert len(found["masks"]) == len(expected["boxes"]) > 0
    for rle, mask, box in zip(found["masks"], expected["masks_28"], expected["boxes"],
                              strict=True):
        assert rle["size"] == [6000, 6000]
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        probabilities = paste_masks(mask[None], box[None], 6000, 6000)[0]
        decided = np.abs(probabilities - 0.5) > 1e-5
        np.testing.assert_array_equal(decoded[decided] > 0, probabilities[decided] >= 0.5)


@pytest.mark.parametrize("size, resized, canvas", [(None, (77, 256), (96, 256)),
                                                   (64, (19, 64), (64, 64))])
def test_semantic_predict_keeps_the_aspect_ratio(size, resized, canvas):
    """A model whose logits are the pixels' RGB: the class is the brightest channel. A 60x200
    photo, red on the left, green on the right, comes back 60x200 with the split where it was.
    Any-size model: shorter side 128, longer <= 256, padded to multiples of 32; a fixed 64x64
    input: the photo fits inside it (19x64) and is padded."""
    image = keras.Input((size, size, 3))
    identity = keras.layers.Conv2D(3, 1, use_bias=False)
    model = keras.Model(image, identity(image))
    identity.set_weights([np.eye(3, dtype="float32").reshape(1, 1, 3, 3)])
    photo = np.zeros((60, 200, 3), np.uint8)
    photo[:, :100, 0] = 250
    photo[:, 100:, 1] = 250
    (mask,) = predict_semantic(model, [photo])
    assert mask.shape == (60, 200) and mask.dtype == np.uint8
    assert (mask[:, :96] == 0).all() and (mask[:, 104:] == 1).all()
    assert fit_size(60, 200, *((128, 256) if size is None else (64, 64)),
                    None if size is None else (64, 64)) == resized
    logits = model.predict_on_batch(letterbox(photo, resized, canvas)[None])[0]
    np.testing.assert_array_equal(
        mask, upsampled_argmax(logits[: resized[0], : resized[1]], (60, 200)))


@pytest.mark.fast
def test_upsampled_argmax_is_bilinear_then_argmax():
    logits = np.random.default_rng(0).normal(size=(7, 9, 5)).astype(np.float32)
    reference = ops.convert_to_numpy(ops.image.resize(logits, (40, 23), "bilinear",
                                                      antialias=False))
    found = upsampled_argmax(logits, (40, 23), rows_per_block=16)
    assert (found == reference.argmax(-1)).mean() > 0.995
    assert upsampled_argmax(logits, (7, 9)).tolist() == logits.argmax(-1).tolist()


def test_mixed_precision_gives_float32_mask_logits():
    keras.config.set_dtype_policy("mixed_float16")  # the conftest fixture restores the policy
    keras.utils.set_random_seed(0)
    model = mask_rcnn(3, "vgg16", weights=None, input_shape=(64, 64, 3), seed=0,
                      anchor_sizes=(16, 32), fpn_channels=16, box_head_units=32,
                      mask_head_channels=16, rpn_pre_nms=50, rpn_post_nms_train=20,
                      rpn_post_nms_test=10, rois_per_image=8, max_detections=5)
    image = np.full((1, 64, 64, 3), 100, np.uint8)
    assert ops.convert_to_numpy(model(image)["mask_logits"]).dtype == np.float32
    found = model.detect(image)
    logits = model.detection_mask_logits(found["features"], found["boxes"][0],
                                         np.zeros(5, np.int32), found["class_ids"][0])
    assert ops.convert_to_numpy(logits).dtype == np.float32
    (result,) = predict_instances(model, [np.full((30, 50, 3), 100, np.uint8)])
    assert result["masks"].shape[1:] == (30, 50)


@pytest.mark.parametrize("options, message", [
    ({"mask_format": "png"}, "mask_format must be one of bool, rle"),
    ({"min_side": 0}, "min_side must be a positive int"),
    ({"min_side": 300, "max_side": 200}, "min_side=300 is larger than max_side=200"),
    ({"batch_size": 0}, "batch_size must be a positive int"),
])
def test_bad_options_are_one_line_errors(detector, options, message):
    with pytest.raises(SegkerasError, match=message) as error:
        predict_instances(detector, [np.zeros((20, 30, 3), np.uint8)], **options)
    assert "\n" not in str(error.value)


def test_bad_pixels_keep_their_one_line_errors(detector):
    for image, message in ((np.full((20, 30, 3), np.nan, np.float32), "NaN"),
                           (np.zeros((0, 30, 3), np.uint8), "no pixels"),
                           (np.full((20, 30, 3), 0.5, np.float32), r"\[0, 1\]")):
        with pytest.raises(SegkerasError, match=message):
            predict_instances(detector, [image])
        with pytest.raises(SegkerasError, match=message):
            predict_semantic(keras.Sequential([keras.Input((None, None, 3)),
                                               keras.layers.Conv2D(2, 1)]), [image])


def test_predict_min_side_flag_is_checked(capsys):
    assert main(["predict", "--model", "m.keras", "x.png", "--min-side", "0"]) == 2
    assert "--min-side" in capsys.readouterr().err


def test_peak_memory_on_12_mp_and_6000_square_photos(tmp_path):
    """Library predict on a 12 MP (3000x4000) photo and CLI predict on a 6000x6000 image with an
    untrained Mask R-CNN keeping up to 100 detections: each process, run under an 8 GiB
    address-space limit (TensorFlow reserves far more virtual than resident memory), peaks
    below 2 GiB resident. Before masks were pasted per kept box, 12 MP asked for 4.5 GiB. (The
    CLI runs the library's predict and also decodes and draws the photo, so its peak bounds the
    library's on the same image; and a 36 MP image bounds a 12 MP one.)"""
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "TF_CPP_MIN_LOG_LEVEL": "3"}
    model = str(tmp_path / "model.keras")
    probe.main(["save", model])
    photo = str(tmp_path / "photo_6000x6000.png")  # the library run draws its photo in memory
    probe.main(["photo", photo, "6000", "6000"])
    runs = {
        "library 3000x4000": [sys.executable, probe.__file__, "library", model, "3000", "4000",
                              "rle"],
        "cli 6000x6000": [sys.executable, "-m", "segkeras", "predict", "--model", model, photo,
                          "--out", str(tmp_path / "out")],
    }
    for name, command in runs.items():
        result = probe.measure(command, 8 * GiB, env=env)
        assert result["rc"] == 0, f"{name}: {result['stderr']}"
        assert result["peak_bytes"] < 2 * GiB, (name, result["peak_bytes"])
    assert os.path.isfile(tmp_path / "out" / "photo_6000x6000_instances.png")
