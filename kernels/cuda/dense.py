"""Dense layer forward on the GPU: a tiled, register-blocked X @ W whose epilogue adds the bias, applies
each unit's activation and the dropout mask, writing H = act(X @ W + b) (what the backward pass needs)
and A = H * mask in the same pass."""

from __future__ import annotations

import functools

import numba
from numba import cuda

from .tiles import Tiling, elementwise, tile_product


@functools.lru_cache(maxsize=None)
def forward_kernel(tiling: Tiling, dtype):
    TY, TX, RM, RN, TK = tiling.threads_y, tiling.threads_x, tiling.rows, tiling.cols, tiling.depth
    TM, TN, NT = tiling.tile_m, tiling.tile_n, tiling.threads
    ntype = numba.from_dtype(dtype)
    ew = elementwise(dtype)
    activate, mask_value, zero = ew.activate, ew.mask_value, ew.zero
    product = tile_product(tiling, dtype)

    @cuda.jit(cache=True)
    def kernel(X, W, b, has_bias, codes, mask, mask_mode, H, A):
        a_tile = cuda.shared.array((TK, TM), ntype)
        b_tile = cuda.shared.array((TK, TN), ntype)
        acc = cuda.local.array((RM, RN), ntype)
        for r in range(RM):
            for c in range(RN):
                acc[r, c] = zero
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        tid = ty * TX + tx
        row0, col0 = cuda.blockIdx.y * TM, cuda.blockIdx.x * TN
        m, depth = X.shape
        n = W.shape[1]
        for k0 in range(0, depth, TK):
            for e in range(tid, TM * TK, NT):       # neighbouring threads read along a row of X
                i = e // TK
                k = e - i * TK
                a_tile[k, i] = X[row0 + i, k0 + k] if row0 + i < m and k0 + k < depth else zero
            for e in range(tid, TK * TN, NT):       # ... and along a row of W
                k = e // TN
                j = e - k * TN
                b_tile[k, j] = W[k0 + k, col0 + j] if k0 + k < depth and col0 + j < n else zero
            cuda.syncthreads()
            product(a_tile, b_tile, acc)
            cuda.syncthreads()
        for r in range(RM):
            i = row0 + ty + r * TY
            if i < m:
                for c in range(RN):
                    j = col0 + tx + c * TX
                    if j < n:
                        z = acc[r, c] + b[j] if has_bias else acc[r, c]
                        h = activate(z, codes[j])
                        H[i, j] = h
                        if mask_mode != 0:
                            A[i, j] = h * mask_value(mask, mask_mode, i, j)

    return kernel


def mask_mode(mask) -> int:
    """0 no mask, 1 one row of per-unit scales for every row, 2 one scale per element."""
    if mask is None:
        return 0
    return 1 if mask.shape[0] == 1 else 2


def dense_forward(X, W, b, codes, mask, H, A, tiling: Tiling, stream=0):
    """Writes H = act(X @ W + b) and, when there is a mask, A = H * mask. `codes` holds one activation
    code per unit; `mask` is None or 2-D, (1, units) or (rows, units)."""
    mode = mask_mode(mask)
    kernel = forward_kernel(tiling, X.dtype)
    # Arguments a mode does not read still need an array of the right type: H stands in for them.
    kernel[tiling.grid(X.shape[0], W.shape[1]), tiling.block(), stream](
        X, W, H[0] if b is None else b, b is not None, codes, H if mask is None else mask, mode, H,
        H if mask is None else A)
