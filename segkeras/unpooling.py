"""Max-unpooling with the switches of the encoder's max pooling (DeconvNet's "unpooling").

Noh, Hong & Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015, Sec. 3.2:
max pooling keeps one value per window and forgets where it was; the decoder's unpooling puts each
value back at the position of that window's maximum (the *switch*, recorded at pooling time) and
zeros elsewhere, so the decoder recovers the exact locations the encoder saw.

The switches are recomputed from the pooling layer's input: in each window, the position of the
maximum. Tie rule: when a window has several maxima (plateaus are common after a ReLU: a window of
zeros), the first one in row-major order wins (top-left, then top-right, bottom-left,
bottom-right), as in ``torch.nn.MaxPool2d(return_indices=True)``. Every window therefore has
exactly one switch per channel. ``keras.ops`` only: TensorFlow, JAX and PyTorch backends.
"""

from __future__ import annotations

import keras
from keras import ops

from segkeras.errors import SegkerasError


def _windows(x, pool_size: int):
    """``(B, H, W, C)`` -> ``(B, H / k, W / k, C, k * k)``: each window's values, row-major."""
    shape = ops.shape(x)
    k = pool_size
    x = ops.reshape(x, (-1, shape[1] // k, k, shape[2] // k, k, shape[3]))
    x = ops.transpose(x, (0, 1, 3, 5, 2, 4))
    return ops.reshape(x, (-1, shape[1] // k, shape[2] // k, shape[3], k * k))


def _from_windows(windows, shape, pool_size: int):
    """The inverse of :func:`_windows` for a tensor of the pre-pool ``shape``."""
    k = pool_size
    x = ops.reshape(windows, (-1, shape[1] // k, shape[2] // k, shape[3], k, k))
    x = ops.transpose(x, (0, 1, 4, 2, 5, 3))
    return ops.reshape(x, (-1, shape[1], shape[2], shape[3]))


def max_pool_switches(pre_pool, pool_size: int = 2):
    """The switches of a ``MaxPooling2D(pool_size)`` (stride = pool size) applied to ``pre_pool``.

    Returns a float tensor shaped like ``pre_pool`` (``(batch, H, W, channels)``, H and W multiples
    of ``pool_size``): 1 at the first maximum of every window and channel, 0 elsewhere.
    """
    windows = _windows(pre_pool, pool_size)
    is_max = ops.equal(windows, ops.max(windows, axis=-1, keepdims=True))
    first = ops.logical_and(is_max, ops.equal(ops.cumsum(ops.cast(is_max, "int32"), axis=-1), 1))
    return _from_windows(ops.cast(first, pre_pool.dtype), ops.shape(pre_pool), pool_size)


@keras.saving.register_keras_serializable(package="segkeras")
class MaxUnpooling(keras.layers.Layer):
    """Unpooling with switches (Noh et al., ICCV 2015): ``[values, pre_pool] -> unpooled``.

    ``values`` (``(batch, H / k, W / k, C)``, e.g. decoder features at the pooled resolution) are
    put back at the switches of the max pooling that turned ``pre_pool`` (``(batch, H, W, C)``,
    the pooling layer's input) into ``H / k x W / k``; every other position is 0. Gradients flow to
    ``values`` (at the switch positions); the switches themselves are constants. Ties: the first
    maximum of a window in row-major order (see the module docstring).
    """

    def __init__(self, pool_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(pool_size, int) or pool_size < 2:
            raise SegkerasError(f"pool_size must be an int >= 2, got {pool_size!r}.")
        self.pool_size = pool_size

    def build(self, input_shape):
        values_shape, pre_pool_shape = input_shape
        if values_shape[-1] != pre_pool_shape[-1]:
            raise SegkerasError(
                f"{self.name}: the values have {values_shape[-1]} channels but the switches "
                f"{pre_pool_shape[-1]}; unpool a tensor with as many channels as the pooled one."
            )
        for values_size, pre_pool_size in zip(values_shape[1:3], pre_pool_shape[1:3], strict=True):
            if None not in (values_size, pre_pool_size) and (
                values_size * self.pool_size != pre_pool_size
            ):
                raise SegkerasError(
                    f"{self.name}: values of spatial shape {tuple(values_shape[1:3])} do not "
                    f"come from pooling {tuple(pre_pool_shape[1:3])} by {self.pool_size}; pass "
                    "the input of the pooling layer whose output has the values' size."
                )

    def call(self, inputs):
        values, pre_pool = inputs
        k = self.pool_size
        switches = ops.stop_gradient(ops.cast(max_pool_switches(pre_pool, k), values.dtype))
        return ops.repeat(ops.repeat(values, k, axis=1), k, axis=2) * switches

    def compute_output_shape(self, input_shape):
        values_shape, pre_pool_shape = input_shape
        return (values_shape[0], *pre_pool_shape[1:3], values_shape[-1])

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}
