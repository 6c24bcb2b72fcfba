"""How fast this machine multiplies matrices: a few-second calibration printed by the demo and by
``bench/run.py``, so that "3 minutes here" can be compared with a time measured on another machine.

The number is the best float32 matrix-multiply rate over a few repeats, through the active Keras
backend: about the peak a dense layer or a convolution (an im2col matmul) can reach. On a busy
machine it is low, like every other time measured then; the load average is printed beside it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from segkeras.errors import SegkerasError


@dataclass(frozen=True)
class Calibration:
    """A matmul measurement: ``gflops`` = ``2 * size**3`` FLOPs / ``seconds`` (the best repeat)."""

    gflops: float
    size: int
    seconds: float
    load_average: float

    def __str__(self) -> str:
        return (f"calibration: float32 {self.size}x{self.size} matmul {self.gflops:.0f} GFLOP/s "
                f"on {os.cpu_count()} cores (load average {self.load_average:.1f})")


def matmul_flops(size: int) -> int:
    """Floating-point operations of one ``size x size`` by ``size x size`` product: ``2 size^3``
    (a multiply and an add per term)."""
    return 2 * size**3


def matmul_gflops(size: int = 2048, repeats: int = 5) -> Calibration:
    """Time ``repeats`` float32 ``size x size`` products (after one untimed warm-up) and return the
    fastest as a :class:`Calibration`. Takes ``(repeats + 1) * 2 size^3 / rate`` seconds: about 1 s
    at 2048 on a 2-core CPU (~100 GFLOP/s)."""
    import keras
    import numpy as np

    if int(size) != size or size < 1 or int(repeats) != repeats or repeats < 1:
        raise SegkerasError(f"matmul_gflops needs size >= 1 and repeats >= 1 (ints), got "
                            f"size={size!r}, repeats={repeats!r}.")
    rng = np.random.default_rng(0)
    a, b = (keras.ops.convert_to_tensor(rng.standard_normal((size, size), dtype=np.float32))
            for _ in range(2))

    def product() -> None:  # reading one element back waits for asynchronous backends (JAX)
        keras.ops.convert_to_numpy(keras.ops.matmul(a, b)[0, 0])

    product()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - start)
    return Calibration(matmul_flops(size) / best / 1e9, int(size), best, os.getloadavg()[0])
