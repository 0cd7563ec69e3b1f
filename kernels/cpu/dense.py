"""Compiled element-wise halves of a dense layer; the matrix products stay with numpy's BLAS.

forward:  H = act(Z + b) in place of Z, A = H * mask
backward: dZ = dA * act'(H) * mask and db = column sums of dZ, in one pass
Masks are (1, units) (one scale per unit) or (rows, units); an absent bias or mask is an empty array.
The public functions take C-contiguous arrays of one dtype and choose serial or parallel (cpu_chunks).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .activation import activate, derivative
from .threads import chunk_bounds, chunks_for


@njit(cache=True)
def _forward_rows(Z, b, codes, mask, A, start, stop):
    k = Z.shape[1]
    for i in range(start, stop):
        mrow = 0 if mask.shape[0] == 1 else i
        for j in range(k):
            z = Z[i, j]
            if b.shape[0]:
                z += b[j]
            h = activate(z, codes[j])
            Z[i, j] = h
            if mask.shape[0]:
                A[i, j] = h * mask[mrow, j]


@njit(cache=True, parallel=True)
def _forward_parallel(Z, b, codes, mask, A, chunks):
    for c in prange(chunks):
        start, stop = chunk_bounds(c, Z.shape[0], chunks)
        _forward_rows(Z, b, codes, mask, A, start, stop)


def bias_activate_mask(Z, b, codes, mask, A):
    """Z <- act(Z + b); A <- Z * mask when the mask is not empty."""
    chunks = chunks_for(Z.shape[0], Z.size)
    if chunks == 1:
        _forward_rows(Z, b, codes, mask, A, 0, Z.shape[0])
    else:
        _forward_parallel(Z, b, codes, mask, A, chunks)


@njit(cache=True)
def _backward_rows(dA, H, codes, mask, dZ, db, start, stop):
    """dZ rows start:stop; their column sums go to db (float64)."""
    k = dA.shape[1]
    db[:] = 0
    for i in range(start, stop):
        mrow = 0 if mask.shape[0] == 1 else i
        for j in range(k):
            d = dA[i, j] * derivative(H[i, j], codes[j])
            if mask.shape[0]:
                d *= mask[mrow, j]
            dZ[i, j] = d
            db[j] += d


@njit(cache=True, parallel=True)
def _backward_parallel(dA, H, codes, mask, dZ, partial):
    chunks = partial.shape[0]
    for c in prange(chunks):
        start, stop = chunk_bounds(c, dA.shape[0], chunks)
        _backward_rows(dA, H, codes, mask, dZ, partial[c], start, stop)


@njit(cache=True)
def column_sums(partial, out):
    """out[j] = sum of partial[:, j], in a plain loop."""
    for j in range(out.shape[0]):
        s = partial[0, j]
        for c in range(1, partial.shape[0]):
            s += partial[c, j]
        out[j] = s


def activation_grad(dA, H, codes, mask, dZ, db):
    """dZ <- dA * act'(H) * mask; db <- dZ summed over rows (accumulated in float64)."""
    chunks = chunks_for(dA.shape[0], dA.size)
    partial = np.empty((chunks, dA.shape[1]))
    if chunks == 1:
        _backward_rows(dA, H, codes, mask, dZ, partial[0], 0, dA.shape[0])
    else:
        _backward_parallel(dA, H, codes, mask, dZ, partial)
    column_sums(partial, db)


@njit(cache=True)
def _add_scaled_rows(dW, W, c, start, stop):
    for i in range(start, stop):
        for j in range(dW.shape[1]):
            dW[i, j] += W[i, j] * c[j]


@njit(cache=True, parallel=True)
def _add_scaled_parallel(dW, W, c, chunks):
    for t in prange(chunks):
        start, stop = chunk_bounds(t, dW.shape[0], chunks)
        _add_scaled_rows(dW, W, c, start, stop)


def add_column_scaled(dW, W, c):
    """dW += W * c with one factor per column (the L2 term)."""
    chunks = chunks_for(dW.shape[0], dW.size)
    if chunks == 1:
        _add_scaled_rows(dW, W, c, 0, dW.shape[0])
    else:
        _add_scaled_parallel(dW, W, c, chunks)
