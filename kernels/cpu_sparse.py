"""Sparse inputs: a compressed-row copy of a dense input matrix and the first layer's products over it.

About 81% of MNIST pixels are exactly 0, so a first layer that reads only the stored (non-zero) pixels does
a fifth of the dense work. `rows` picks and orders the samples of a batch; the first layer's units are
compacted to those a per-unit dropout mask keeps (`scale` holds their 1/keep factors), so dropped units
cost nothing. The weight gradient sums each thread's rows into a private buffer and then adds the buffers:
race-free under parallel=True. The inner products may fuse multiply and add (fastmath "contract"), so
results equal the reference's within rounding, not bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .cpu_activation import activate, derivative
from .cpu_dense import column_sums


class CompressedRows(NamedTuple):
    indptr: np.ndarray     # (rows + 1,) int64: row i's entries are indptr[i]:indptr[i + 1]
    indices: np.ndarray    # (nnz,) int32 column of each stored entry
    values: np.ndarray     # (nnz,) the entries, in the input's dtype
    shape: tuple

    @property
    def density(self) -> float:
        return self.values.shape[0] / max(1, self.shape[0] * self.shape[1])


@njit(cache=True, parallel=True)
def _count_nonzeros(X, counts):
    for i in prange(X.shape[0]):
        c = 0
        for j in range(X.shape[1]):
            if X[i, j] != 0:
                c += 1
        counts[i] = c


@njit(cache=True, parallel=True)
def _fill(X, indptr, indices, values):
    for i in prange(X.shape[0]):
        p = indptr[i]
        for j in range(X.shape[1]):
            if X[i, j] != 0:
                indices[p] = j
                values[p] = X[i, j]
                p += 1


def compress_rows(X: np.ndarray) -> CompressedRows:
    """The non-zero entries of a 2-D float array, row by row (NaN counts as non-zero)."""
    X = np.ascontiguousarray(X)
    if X.ndim != 2 or X.dtype not in (np.float32, np.float64):
        raise ValueError(f"compress_rows needs a 2-D float32/float64 array, got {X.dtype} {X.shape}")
    if X.shape[1] >= 2 ** 31:
        raise ValueError("compress_rows: too many columns for int32 indices")
    counts = np.empty(X.shape[0], dtype=np.int64)
    _count_nonzeros(X, counts)
    indptr = np.zeros(X.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(indptr[-1], dtype=np.int32)
    values = np.empty(indptr[-1], dtype=X.dtype)
    _fill(X, indptr, indices, values)
    return CompressedRows(indptr, indices, values, X.shape)


@njit(cache=True, fastmath={"contract"})
def _forward_row(indptr, indices, values, r, W, b, codes, scale, H, A, i):
    k = W.shape[1]
    h = H[i]
    h[:] = 0
    p, end = indptr[r], indptr[r + 1]
    while p + 4 <= end:          # four stored pixels per pass over h: a quarter of the loads and stores of h
        x0, x1, x2, x3 = values[p], values[p + 1], values[p + 2], values[p + 3]
        r0, r1, r2, r3 = indices[p], indices[p + 1], indices[p + 2], indices[p + 3]
        for j in range(k):
            h[j] += x0 * W[r0, j] + x1 * W[r1, j] + x2 * W[r2, j] + x3 * W[r3, j]
        p += 4
    while p < end:
        x0, r0 = values[p], indices[p]
        for j in range(k):
            h[j] += x0 * W[r0, j]
        p += 1
    for j in range(k):
        z = h[j]
        if b.shape[0]:
            z += b[j]
        v = activate(z, codes[j])
        h[j] = v
        A[i, j] = v * scale[j]


@njit(cache=True, parallel=True)
def sparse_dense_forward(indptr, indices, values, rows, W, b, codes, scale, H, A):
    """H = act(X[rows] @ W + b) and A = H * scale for a compressed X; b may be empty (no bias)."""
    for i in prange(rows.shape[0]):
        _forward_row(indptr, indices, values, rows[i], W, b, codes, scale, H, A, i)


@njit(cache=True, fastmath={"contract"})
def _grad_rows(indptr, indices, values, rows, dA, H, codes, scale, acc, db, dz, start, stop):
    k = dA.shape[1]
    db[:] = 0
    for i in range(start, stop):
        for j in range(k):
            d = dA[i, j] * derivative(H[i, j], codes[j]) * scale[j]
            dz[j] = d
            db[j] += d
        r = rows[i]
        for p in range(indptr[r], indptr[r + 1]):
            x = values[p]
            row = indices[p]
            for j in range(k):
                acc[row, j] += x * dz[j]


@njit(cache=True, parallel=True)
def sparse_weight_grad(indptr, indices, values, rows, dA, H, codes, scale, dW, db, threads):
    """dZ = dA * act'(H) * scale fused into dW = X[rows].T @ dZ and db = dZ summed over rows,
    with one private dW per thread (`threads`: numba.get_num_threads())."""
    n, k = dA.shape
    threads = max(1, min(threads, n))
    acc = np.zeros((threads,) + dW.shape, dtype=dW.dtype)
    dbs = np.empty((threads, k))
    for t in prange(threads):
        dz = np.empty(k, dtype=dW.dtype)
        start, stop = np.int64(t) * n // threads, (np.int64(t) + 1) * n // threads
        _grad_rows(indptr, indices, values, rows, dA, H, codes, scale, acc[t], dbs[t], dz, start, stop)
    for r in prange(dW.shape[0]):
        for j in range(k):
            s = acc[0, r, j]
            for t in range(1, threads):
                s += acc[t, r, j]
            dW[r, j] = s
    column_sums(dbs, db)
