"""Shared test setup: hermetic Keras home (no cached weights, no user keras.json), quiet logs, and
the dtype policy of ``SEGKERAS_PRECISION`` when set (CI's mixed-precision pass)."""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="segkeras-keras-home-")

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
