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


@pytest.fixture
def mixed_float16():
    """The test runs under the mixed_float16 policy (the GPU path), whatever CI asked for."""
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy(policy)


@pytest.fixture
def eager():
    """The test's traced functions run eagerly (see tests/tracing.py)."""
    from tracing import eagerly

    with eagerly():
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


# --- pytest-xdist (`make test`: -n 2 --dist loadfile): what runs together, longest first ---------
# A notebook's cells share one kernel and a module's tests its module fixtures, so work goes to a
# worker file by file, except these long self-contained tests, handed out one by one; and the
# longest work is handed out first, so that no worker is left alone with a long tail.
ONE_BY_ONE = ("test_run_all_on_an_untouched_lab_reaches_the_end",
              "test_the_solution_gets_full_marks_out_of_process",
              "test_each_wrong_answer_loses_exactly_its_points_out_of_process",
              "test_lab04_solution_full", "test_lab05_solution_full")
LONGEST_FIRST = ("tests/test_nbgrader_roundtrip.py", "tests/test_grading_lab06.py",
                 "tests/test_notebooks.py::test_run_all", "solutions/", "tests/test_grading_",
                 "tests/test_cli", "tests/test_lab_resume.py", "tests/test_mask_rcnn_model.py",
                 "tests/test_train.py", "tests/test_runs.py")


def _rank(nodeid: str) -> int:
    return next((rank for rank, prefix in enumerate(LONGEST_FIRST) if nodeid.startswith(prefix)),
                len(LONGEST_FIRST))


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: _rank(item.nodeid))  # stable: a notebook's cells keep their order


def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path, _, test = nodeid.partition("::")
            return nodeid if test.startswith(ONE_BY_ONE) else path

    config.option.loadscopereorder = False  # keep the order above
    return FileByFile(config, log)
