"""Shared test setup: hermetic Keras home (no cached weights, no user keras.json), quiet logs, the
dtype policy of ``SEGKERAS_PRECISION`` when set (CI's mixed-precision pass), and what running in
parallel (pytest-xdist, ``make test``: ``-n 2 --dist loadfile``) needs."""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="segkeras-keras-home-")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each worker's TensorFlow computes an op on its share of the cores (read by TensorFlow here
    # and in the kernels and commands the tests start); the inter-op pool stays TensorFlow's
    # default, since blocking ops (collectives, tf.data) can deadlock on a single thread.
    share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(share))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(autouse=True)
def _precision():
    """Every test starts under the policy CI asked for (float32 unless SEGKERAS_PRECISION)."""
    keras.config.set_dtype_policy(os.environ.get("SEGKERAS_PRECISION") or "float32")
    yield


@pytest.fixture(scope="module")
def small_mask_rcnn():
    """An untrained Mask R-CNN small enough for fast tests: MobileNetV2 from scratch, 64x64
    inputs, 4 classes, seed 0."""
    from segkeras.models.mask_rcnn import mask_rcnn

    keras.utils.set_random_seed(0)
    return mask_rcnn(4, "mobilenetv2", weights=None, input_shape=(64, 64, 3), seed=0,
                     anchor_sizes=(16, 32), fpn_channels=16, box_head_units=32,
                     mask_head_channels=16, rpn_pre_nms=100, rpn_post_nms_train=40,
                     rpn_post_nms_test=20, rois_per_image=16, max_detections=10)
