"""MaxUnpooling puts each value back at its window's maximum (numpy reference), breaks ties by the
documented rule, passes gradients to the values and reloads from a ``.keras`` file."""

import keras
import numpy as np
import pytest

from segkeras.errors import SegkerasError
from segkeras.unpooling import MaxUnpooling, max_pool_switches


def numpy_unpool(values: np.ndarray, pre_pool: np.ndarray, k: int) -> np.ndarray:
    """Loop reference: each value goes to the first (row-major) maximum of its window."""
    out = np.zeros(pre_pool.shape, dtype="float64")
    batch, height, width, channels = values.shape
    for b, i, j, c in np.ndindex(batch, height, width, channels):
        window = pre_pool[b, i * k:(i + 1) * k, j * k:(j + 1) * k, c]
        di, dj = np.unravel_index(np.argmax(window), window.shape)  # numpy: first maximum
        out[b, i * k + di, j * k + dj, c] = values[b, i, j, c]
    return out


def _numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


@pytest.mark.fast
@pytest.mark.parametrize("k, shape", [(2, (2, 6, 8, 3)), (3, (1, 6, 9, 2))])
def test_values_go_back_to_the_argmax_and_zeros_elsewhere(k, shape):
    rng = np.random.default_rng(k)
    pre_pool = rng.normal(size=shape).astype("float32")
    values = rng.normal(size=(shape[0], shape[1] // k, shape[2] // k, shape[3])).astype("float32")
    unpooled = _numpy(MaxUnpooling(k)([values, pre_pool]))
    np.testing.assert_array_equal(unpooled, numpy_unpool(values, pre_pool, k))
    # Unpooling the pooled map itself keeps the maxima where they were and zeros the rest.
    pooled = _numpy(keras.ops.max_pool(pre_pool, k, strides=k))
    back = _numpy(MaxUnpooling(k)([pooled, pre_pool]))
    kept = back != 0
    np.testing.assert_array_equal(back[kept], pre_pool[kept])
    assert kept.sum() == pooled.size


@pytest.mark.fast
def test_ties_go_to_the_first_maximum_in_row_major_order():
    pre_pool = np.zeros((1, 4, 4, 1), "float32")  # window (0, 0): all zeros, a ReLU plateau
    pre_pool[0, 0:2, 2:4, 0] = [[1, 5], [5, 5]]    # window (0, 1): three maxima, first top-right
    pre_pool[0, 2:4, 0:2, 0] = [[-1, -2], [-1, -1]]  # window (1, 0): first is top-left
    pre_pool[0, 2:4, 2:4, 0] = [[0, 0], [7, 7]]    # window (1, 1): bottom-left
    switches = _numpy(max_pool_switches(pre_pool))[0, ..., 0]
    np.testing.assert_array_equal(switches, [[1, 0, 0, 1],
                                             [0, 0, 0, 0],
                                             [1, 0, 0, 0],
                                             [0, 0, 1, 0]])
    values = np.array([[[[2.0], [3.0]], [[4.0], [6.0]]]], "float32")
    np.testing.assert_array_equal(_numpy(MaxUnpooling()([values, pre_pool])),
                                  numpy_unpool(values, pre_pool, 2))


@pytest.mark.fast
def test_gradients_flow_to_the_pooled_values_at_the_switches():
    rng = np.random.default_rng(0)
    pre_pool = rng.normal(size=(1, 4, 4, 2)).astype("float32")
    weights = rng.normal(size=(1, 4, 4, 2)).astype("float32")
    values = keras.Variable(np.ones((1, 2, 2, 2), "float32"))
    layer = MaxUnpooling()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = keras.ops.sum(layer([values.value, pre_pool]) * weights)
        gradient = tape.gradient(loss, values.value)
    elif keras.backend.backend() == "jax":
        import jax

        gradient = jax.grad(lambda v: keras.ops.sum(layer([v, pre_pool]) * weights))(values.value)
    else:
        import torch

        leaf = torch.ones((1, 2, 2, 2), requires_grad=True)
        keras.ops.sum(layer([leaf, pre_pool]) * keras.ops.convert_to_tensor(weights)).backward()
        gradient = leaf.grad
    # d loss / d value = the weight at that window's switch.
    expected = numpy_unpool(np.ones((1, 2, 2, 2)), pre_pool, 2) * weights
    expected = expected.reshape(1, 2, 2, 2, 2, 2).sum(axis=(2, 4))
    np.testing.assert_allclose(_numpy(gradient), expected, rtol=1e-6)


@pytest.mark.fast
def test_a_keras_file_reloads_without_custom_objects(tmp_path):
    values, pre_pool = keras.Input((None, None, 3)), keras.Input((None, None, 3))
    model = keras.Model([values, pre_pool], MaxUnpooling(name="unpool")([values, pre_pool]))
    path = str(tmp_path / "unpool.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("unpool"), MaxUnpooling)
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(1, 2, 3, 3)).astype("float32"),
              rng.normal(size=(1, 4, 6, 3)).astype("float32")]
    np.testing.assert_array_equal(_numpy(loaded(inputs)), _numpy(model(inputs)))


@pytest.mark.fast
@pytest.mark.parametrize("values_shape, pre_pool_shape, message", [
    ((4, 4, 8), (8, 8, 3), "channels"),
    ((4, 4, 3), (16, 16, 3), "do not come from pooling"),
])
def test_mismatched_inputs_are_rejected(values_shape, pre_pool_shape, message):
    with pytest.raises(SegkerasError, match=message):
        MaxUnpooling()([keras.Input(values_shape), keras.Input(pre_pool_shape)])
