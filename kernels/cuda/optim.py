"""The optimiser update on the GPU: SGD, seed 004's Adam-like update (no bias correction) and Adam, as
one elementwise kernel over flat parameter, gradient and moment buffers. When every parameter of a
network lives in one flat buffer (see cuda_pack), one launch updates them all."""

from __future__ import annotations

import functools
import math

import numba
import numpy
from numba import cuda

from ..codes import ADAM, SGD


@functools.lru_cache(maxsize=None)
def update_kernel(dtype):
    one = dtype.type(1)
    cast = numba.from_dtype(dtype)

    @cuda.jit(cache=True)
    def kernel(kind, p, g, v, s, hyper):
        """hyper (float64, on the device so that a captured step replays with new values): lr, beta1,
        beta2, eps, v_scale, s_scale, where the scales are 1 / (1 - beta ** step) for Adam, 1 otherwise."""
        lr, beta1, beta2, eps = cast(hyper[0]), cast(hyper[1]), cast(hyper[2]), cast(hyper[3])
        v_scale, s_scale = cast(hyper[4]), cast(hyper[5])
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            if kind == SGD:
                p[i] -= lr * g[i]
            else:
                gi = g[i]
                vi = v[i] * beta1 + (one - beta1) * gi
                si = s[i] * beta2 + (one - beta2) * (gi * gi)
                v[i] = vi
                s[i] = si
                p[i] -= lr * (vi * v_scale) / (math.sqrt(si * s_scale) + eps)

    return kernel


HYPER_SIZE = 6


def hyper_values(kind: int, *, lr, beta1, beta2, eps, step, out=None) -> numpy.ndarray:
    """The host vector that `update` reads on the device."""
    out = numpy.empty(HYPER_SIZE) if out is None else out
    out[:] = (lr, beta1, beta2, eps, 1 / (1 - beta1 ** step) if kind == ADAM else 1.0,
              1 / (1 - beta2 ** step) if kind == ADAM else 1.0)
    return out


def update(kind: int, p, g, v, s, hyper, threads=256, stream=0, most_blocks=1024):
    """Updates the flat (1-D) buffer p in place from g, and the moments v, s (unused by SGD: pass p),
    with the hyper-parameters in the float64 device vector `hyper` (see hyper_values)."""
    blocks = max(1, min(most_blocks, -(-p.shape[0] // threads)))
    update_kernel(p.dtype)[blocks, threads, stream](kind, p, g, v, s, hyper)
