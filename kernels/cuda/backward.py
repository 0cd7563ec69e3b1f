"""Dense layer backward on the GPU. Neither product stores dZ = dA * act'(Z) * mask: both compute it
while loading their shared-memory tiles.

  input gradient   dX = dZ @ W.T
  weight gradient  dW = X.T @ dZ + l2 * W,  db = column sums of dZ

The weight gradient sums over the batch, which is long (50,000 rows) while dW is small, so the batch
is split into `splits` slices (grid z) whose partial products a second kernel adds in a fixed order,
with the L2 term: the result does not depend on timing.
"""

from __future__ import annotations

import functools

import numba
from numba import cuda

from .dense import mask_mode
from .tiles import Tiling, elementwise, tile_product


@functools.lru_cache(maxsize=None)
def input_grad_kernel(tiling: Tiling, dtype):
    TY, TX, RM, RN, TK = tiling.threads_y, tiling.threads_x, tiling.rows, tiling.cols, tiling.depth
    TM, TN, NT = tiling.tile_m, tiling.tile_n, tiling.threads
    ntype = numba.from_dtype(dtype)
    ew = elementwise(dtype)
    dz, zero = ew.pre_activation_grad, ew.zero
    product = tile_product(tiling, dtype)

    @cuda.jit(cache=True)
    def kernel(dA, H, codes, mask, mode, W, dX):
        a_tile = cuda.shared.array((TK, TM), ntype)
        b_tile = cuda.shared.array((TK, TN), ntype)
        acc = cuda.local.array((RM, RN), ntype)
        for r in range(RM):
            for c in range(RN):
                acc[r, c] = zero
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        tid = ty * TX + tx
        row0, col0 = cuda.blockIdx.y * TM, cuda.blockIdx.x * TN
        m, units = dA.shape
        n = W.shape[0]
        for k0 in range(0, units, TK):
            for e in range(tid, TM * TK, NT):
                i = e // TK
                k = e - i * TK
                a_tile[k, i] = dz(dA, H, codes, mask, mode, row0 + i, k0 + k) \
                    if row0 + i < m and k0 + k < units else zero
            for e in range(tid, TK * TN, NT):       # B[k, j] = W[j, k]: neighbouring threads read a row of W
                j = e // TK
                k = e - j * TK
                b_tile[k, j] = W[col0 + j, k0 + k] if k0 + k < units and col0 + j < n else zero
            cuda.syncthreads()
            product(a_tile, b_tile, acc)
            cuda.syncthreads()
        for r in range(RM):
            i = row0 + ty + r * TY
            if i < m:
                for c in range(RN):
                    j = col0 + tx + c * TX
                    if j < n:
                        dX[i, j] = acc[r, c]

    return kernel


@functools.lru_cache(maxsize=None)
def weight_grad_kernel(tiling: Tiling, dtype):
    TY, TX, RM, RN, TK = tiling.threads_y, tiling.threads_x, tiling.rows, tiling.cols, tiling.depth
    TM, TN, NT = tiling.tile_m, tiling.tile_n, tiling.threads
    ntype = numba.from_dtype(dtype)
    ew = elementwise(dtype)
    dz, zero = ew.pre_activation_grad, ew.zero
    product = tile_product(tiling, dtype)

    @cuda.jit(cache=True)
    def kernel(X, dA, H, codes, mask, mode, dW_parts, db_parts):
        a_tile = cuda.shared.array((TK, TM), ntype)
        b_tile = cuda.shared.array((TK, TN), ntype)
        acc = cuda.local.array((RM, RN), ntype)
        db_acc = cuda.local.array(RN, ntype)
        for r in range(RM):
            for c in range(RN):
                acc[r, c] = zero
        for c in range(RN):
            db_acc[c] = zero
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        tid = ty * TX + tx
        row0, col0 = cuda.blockIdx.y * TM, cuda.blockIdx.x * TN
        sums_db = cuda.blockIdx.y == 0 and ty == 0
        batch, n_in = X.shape
        units = dA.shape[1]
        part = cuda.blockIdx.z
        chunk = ((batch + cuda.gridDim.z - 1) // cuda.gridDim.z + TK - 1) // TK * TK
        start = part * chunk
        stop = min(batch, start + chunk)
        for k0 in range(start, stop, TK):
            for e in range(tid, TK * TM, NT):       # A[i, k] = X[k, i]: neighbouring threads read a row of X
                k = e // TM
                i = e - k * TM
                a_tile[k, i] = X[k0 + k, row0 + i] if k0 + k < stop and row0 + i < n_in else zero
            for e in range(tid, TK * TN, NT):
                k = e // TN
                j = e - k * TN
                b_tile[k, j] = dz(dA, H, codes, mask, mode, k0 + k, col0 + j) \
                    if k0 + k < stop and col0 + j < units else zero
            cuda.syncthreads()
            product(a_tile, b_tile, acc)
            if sums_db:
                for c in range(RN):
                    for k in range(TK):
                        db_acc[c] += b_tile[k, tx + c * TX]
            cuda.syncthreads()
        for r in range(RM):
            i = row0 + ty + r * TY
            if i < n_in:
                for c in range(RN):
                    j = col0 + tx + c * TX
                    if j < units:
                        dW_parts[part, i, j] = acc[r, c]
        if sums_db:
            for c in range(RN):
                j = col0 + tx + c * TX
                if j < units:
                    db_parts[part, j] = db_acc[c]

    return kernel


@functools.lru_cache(maxsize=None)
def reduce_parts_kernel(dtype):
    zero = elementwise(dtype).zero

    @cuda.jit(cache=True)
    def kernel(dW_parts, db_parts, W, l2, has_l2, dW, db):
        j, i = cuda.grid(2)
        parts, n_in, units = dW_parts.shape
        if i < n_in and j < units:
            total = zero
            for s in range(parts):
                total += dW_parts[s, i, j]
            if has_l2:
                total += W[i, j] * l2[j]
            dW[i, j] = total
            if i == 0:
                total = zero
                for s in range(parts):
                    total += db_parts[s, j]
                db[j] = total

    return kernel


REDUCE_BLOCK = (32, 8)


def input_grad(dA, H, codes, mask, W, dX, tiling: Tiling, stream=0):
    """dX = (dA * act'(Z) * mask) @ W.T."""
    kernel = input_grad_kernel(tiling, dA.dtype)
    kernel[tiling.grid(dA.shape[0], W.shape[0]), tiling.block(), stream](
        dA, H, codes, H if mask is None else mask, mask_mode(mask), W, dX)


def weight_grad(X, dA, H, codes, mask, W, l2, dW, db, dW_parts, db_parts, tiling: Tiling, stream=0):
    """dW = X.T @ dZ + l2 * W and db = dZ summed over rows, through the workspaces dW_parts
    (splits, inputs, units) and db_parts (splits, units); splits = dW_parts.shape[0]."""
    n_in, units = W.shape
    kernel = weight_grad_kernel(tiling, X.dtype)
    kernel[tiling.grid(n_in, units, dW_parts.shape[0]), tiling.block(), stream](
        X, dA, H, codes, H if mask is None else mask, mask_mode(mask), dW_parts, db_parts)
    grid = (-(-units // REDUCE_BLOCK[0]), -(-n_in // REDUCE_BLOCK[1]))
    reduce_parts_kernel(X.dtype)[grid, REDUCE_BLOCK, stream](
        dW_parts, db_parts, W, W[0] if l2 is None else l2, l2 is not None, dW, db)


def weight_grad_splits(tiling: Tiling, batch: int, n_in: int, units: int, target_blocks: int) -> int:
    """How many batch slices give the weight-gradient product about `target_blocks` blocks, keeping
    each slice at least 8 depth steps long."""
    gx, gy, _ = tiling.grid(n_in, units)
    most = max(1, batch // (8 * tiling.depth))
    return max(1, min(most, target_blocks // (gx * gy)))
