"""Shared by tests/ and solutions/ (nbval): every notebook kernel the tests start (nbval's of the
solutions, the untouched labs' Run-all, nbgrader's autograde) runs its Keras steps eagerly.

In quick mode a lab trains a few steps, and tracing a training step costs several times those
steps (lab 6's solution: 56 s of kernel time traced, 25 s eagerly). Graph mode stays tested where
it is the point: the students' functions traced inside a training step (tests/test_checks_*:
the matcher inside the RPN loss, the losses, the modules in a network that trains) and
segkeras' own training code (tests/test_train.py, the CLI tests).

A kernel started with ``SEGKERAS_TEST_FIGURES=off`` in its environment also skips turning figures
into PNGs (the figure code itself still runs): the untouched labs' Run-all sets it, since labs/ is
generated from solutions/ and nbval renders the same figure cells of the solutions."""

import os
import tempfile
from pathlib import Path

EAGER_STARTUP = """\
import os
import warnings

import tensorflow as tf

tf.config.run_functions_eagerly(True)
# tf.data's functions stay traced, as they should; TensorFlow warns that they do
warnings.filterwarnings("ignore", message="Even though the `tf.config.experimental_run_functions")
if os.environ.get("SEGKERAS_TEST_FIGURES") == "off":
    get_ipython().display_formatter.formatters["image/png"].enabled = False
"""

_ipython = Path(tempfile.mkdtemp(prefix="segkeras-test-ipython-"))
(_ipython / "profile_default" / "startup").mkdir(parents=True)
(_ipython / "profile_default" / "startup" / "00-eager.py").write_text(EAGER_STARTUP)
os.environ["IPYTHONDIR"] = str(_ipython)  # read by the kernels, which inherit the environment
