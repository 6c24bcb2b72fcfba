"""Running a test's traced functions eagerly: for a test of a step or two whose point is not the
traced graph, tracing the training step costs several times the steps themselves. Graph mode
stays covered where it is the point (the model fits that check learning, the students' functions
inside a training step, the solutions of labs 3 and 6 in CI's wheel pass). The notebook kernels
the tests start run eagerly too: see the root conftest.py."""

import contextlib
import warnings

import keras

EAGER_IS_CHEAPER = keras.backend.backend() != "jax"
"""For a step or two, TensorFlow runs faster eagerly than it traces a graph (PyTorch is eager
anyway); JAX eagerly compiles every operation on its own, which costs more than compiling the
whole step once."""


@contextlib.contextmanager
def eagerly():
    """Keras' training, evaluation and prediction steps run eagerly inside (TensorFlow; other
    backends unchanged)."""
    if keras.backend.backend() != "tensorflow":
        yield
        return
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    try:
        with warnings.catch_warnings():  # tf.data's functions stay traced, as they should
            warnings.filterwarnings("ignore", message="Even though the `tf.config.experimental")
            yield
    finally:
        tf.config.run_functions_eagerly(False)
