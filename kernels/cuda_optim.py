"""The optimiser update on the GPU: SGD, seed 004's Adam-like update (no bias correction) and Adam, as
one elementwise kernel over flat parameter, gradient and moment buffers. When every parameter of a
network lives in one flat buffer (see cuda_pack), one launch updates them all."""

from __future__ import annotations

import functools
import math

from numba import cuda

SGD, ADAM_LIKE, ADAM = 0, 1, 2
OPTIMIZER_CODES = {"sgd": SGD, "adam_like": ADAM_LIKE, "adam": ADAM}


@functools.lru_cache(maxsize=None)
def update_kernel(dtype):
    one = dtype.type(1)

    @cuda.jit
    def kernel(kind, p, g, v, s, lr, beta1, beta2, eps, v_scale, s_scale):
        """v_scale, s_scale: 1 / (1 - beta ** step) for Adam, 1 otherwise."""
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


def update(kind: int, p, g, v, s, *, lr, beta1, beta2, eps, step, threads=256, stream=0, most_blocks=1024):
    """Updates the flat (1-D) buffer p in place from g, and the moments v, s (unused by SGD: pass p)."""
    t = p.dtype.type
    v_scale = 1 / (1 - beta1 ** step) if kind == ADAM else 1.0
    s_scale = 1 / (1 - beta2 ** step) if kind == ADAM else 1.0
    blocks = max(1, min(most_blocks, -(-p.shape[0] // threads)))
    update_kernel(p.dtype)[blocks, threads, stream](
        kind, p, g, v, s, t(lr), t(beta1), t(beta2), t(eps), t(v_scale), t(s_scale))
