"""Compiled element-wise halves of a dense layer; the matrix products stay with numpy's BLAS.

forward:  H = act(Z + b) in place of Z, A = H * mask
backward: dZ = dA * act'(H) * mask and db = column sums of dZ, in one pass
Masks are (1, units) (one scale per unit) or (rows, units); an absent bias or mask is an empty array.
The public functions take C-contiguous arrays of one dtype. They run on the calling thread: these passes
move little data per element and follow a BLAS product, and a parallel pass measured slower at every shape
the presets train (a forked pass wakes Numba's OpenMP workers, which then spin while OpenBLAS's next product
wants the cores; docs/performance.md).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .activation import activate, derivative
from .simd import CACHE, MAX_TILE, gather_planned, scatter_planned, tile_plan, width

SMALL_WIDTH = width("dense_small")      # bytes per SIMD vector in the small layers' products


@njit(cache=True)
def bias_activate_mask(Z, b, codes, mask, A):
    """Z <- act(Z + b); A <- Z * mask when the mask is not empty."""
    k = Z.shape[1]
    for i in range(Z.shape[0]):
        mrow = 0 if mask.shape[0] == 1 else i
        for j in range(k):
            z = Z[i, j]
            if b.shape[0]:
                z += b[j]
            h = activate(z, codes[j])
            Z[i, j] = h
            if mask.shape[0]:
                A[i, j] = h * mask[mrow, j]


@njit(cache=True)
def activation_grad(dA, H, codes, mask, dZ, db):
    """dZ <- dA * act'(H) * mask; db <- dZ summed over rows (accumulated in float64)."""
    k = dA.shape[1]
    acc = np.zeros(k)
    for i in range(dA.shape[0]):
        mrow = 0 if mask.shape[0] == 1 else i
        for j in range(k):
            d = dA[i, j] * derivative(H[i, j], codes[j])
            if mask.shape[0]:
                d *= mask[mrow, j]
            dZ[i, j] = d
            acc[j] += d
    for j in range(k):
        db[j] = acc[j]


@njit(cache=True)
def column_sums(partial, out):
    """out[j] = sum of partial[:, j], in a plain loop."""
    for j in range(out.shape[0]):
        s = partial[0, j]
        for c in range(1, partial.shape[0]):
            s += partial[c, j]
        out[j] = s


@njit(cache=True)
def add_column_scaled(dW, W, c):
    """dW += W * c with one factor per column (the L2 term)."""
    for i in range(dW.shape[0]):
        for j in range(dW.shape[1]):
            dW[i, j] += W[i, j] * c[j]


# -- small layers: the whole layer in one compiled call ---------------------------------------------------
# A BLAS call costs microseconds of set-up whatever its size, and its product with one row (X.T @ dZ at
# batch 1) is slow; for small layers (takes_small_path) one compiled call that also skips zero inputs (image
# pixels, ReLU outputs) does the whole layer in less.

SMALL_WORK = 1 << 17        # rows * inputs * units at or below which a layer takes the fused loops


def takes_small_path(rows, inputs, units, itemsize) -> bool:
    """Whether a layer's forward and backward run as forward_small / backward_small: little work, and either one
    row or units enough for two whole vectors (a narrower layer's rows are short chains of dependent adds,
    where BLAS's blocking over rows wins)."""
    return rows * inputs * units <= SMALL_WORK and (rows == 1 or units * itemsize >= 2 * SMALL_WIDTH)


@njit(cache=CACHE, fastmath={"contract"}, inline="always")
def _nonzero(x, idx, val):
    """The nonzero entries of the vector x into idx (positions) and val (values); returns how many."""
    count = 0
    for i in range(x.shape[0]):
        if x[i] != 0:
            idx[count] = i
            val[count] = x[i]
            count += 1
    return count


@njit(cache=CACHE, fastmath={"contract"})
def forward_small(X, W, b, codes, mask, Z, A):
    """Z <- act(X @ W + b); A <- Z * mask when the mask is not empty. X, W C-contiguous; each row's product
    sums W's rows at its nonzero inputs, in SIMD tiles; then bias_activate_mask, as after BLAS."""
    rows, k = X.shape
    n = W.shape[1]
    plan = tile_plan(0, n, W.itemsize, MAX_TILE, SMALL_WIDTH)
    idx = np.empty(k, np.intp)
    val = np.empty(k, X.dtype)
    for r in range(rows):
        count = _nonzero(X[r], idx, val)
        gather_planned(plan, idx, val, 0, count, W, Z[r], 0, n, SMALL_WIDTH)
    bias_activate_mask(Z, b, codes, mask, A)


@njit(cache=CACHE, fastmath={"contract"})
def backward_small(dA, X, W, H, codes, mask, l2, dZ, db, dW, dX, need_dx):
    """dZ <- dA * act'(H) * mask, db its column sums (accumulated in float64), dW <- X.T @ dZ (+ W * l2 per
    column when l2 is not empty), dX <- dZ @ W.T when need_dx. X, W C-contiguous; dW's product skips zero
    inputs, in SIMD tiles."""
    rows, n = dA.shape
    k = X.shape[1]
    activation_grad(dA, H, codes, mask, dZ, db)
    dW[:] = 0
    idx = np.empty(k, np.intp)
    val = np.empty(k, X.dtype)
    to_n = tile_plan(0, n, W.itemsize, MAX_TILE, SMALL_WIDTH)
    for r in range(rows):           # dW[i] += X[r, i] * dZ[r] at each nonzero input i
        count = _nonzero(X[r], idx, val)
        scatter_planned(to_n, idx, val, 0, count, dZ[r], dW, 0, n, SMALL_WIDTH)
    if l2.shape[0]:
        add_column_scaled(dW, W, l2)
    if need_dx:
        for r in range(rows):
            _row_dots(dZ[r], W, dX[r])


@njit(cache=CACHE, fastmath={"contract", "reassoc"})
def _row_dots(d, W, out):
    """out[i] = W[i] . d for every row i of W: dZ @ W.T for one row, reading W row by row (the sums
    reassociated, so that they vectorise)."""
    for i in range(W.shape[0]):
        w = W[i]
        s = d[0] * w[0]
        for j in range(1, d.shape[0]):
            s += d[j] * w[j]
        out[i] = s
