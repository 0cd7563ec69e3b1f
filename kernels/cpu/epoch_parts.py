"""The pieces both compiled minibatch epochs share (minibatch_epoch.py for one hidden layer, stack_epoch.py for
any stack): the optimiser's step on a row range, the first layer's pixel-pair regrouping and the pair gathers of
its weight gradient, its unit slices per thread, Adam's bias corrections per batch, and a dot product.

Calls between compiled functions pass no constant arguments: a constant is typed as its literal value, and every
new literal compiles the callee once more.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..codes import ADAM, SGD
from .optim import adam_row, sgd_row
from .simd import CACHE, gather_pair_tile, width

MB_WIDTH = width("minibatch_epoch")     # bytes per SIMD vector in the first layer's gathers of both epochs


@njit(cache=CACHE, fastmath={"contract"})
def update_row(P, row, G, grow, V, S, j0, j1, step):
    """The optimiser step of P[row, j0:j1] from G[grow, j0:j1] (2-D arrays), making no views (optim's row forms);
    step: (kind, lr, beta1, 1 - beta1, beta2, 1 - beta2, eps, c1, c2), c1 and c2 this step's bias corrections.
    Every update of an epoch goes through this one form (W2 and the biases as 2-D views of one row), so that
    no other form of the optimiser is compiled into the epoch."""
    kind, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2 = step
    if kind == SGD:
        sgd_row(P, row, G, grow, lr, j0, j1)
    else:
        adam_row(P, row, G, grow, V, S, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2, j0, j1)


@njit(cache=CACHE, fastmath={"contract", "reassoc"})
def dot(a, w, zero):
    """a @ w in whatever order vectorises (its own function: inlined, it would take its caller's fastmath
    flags, without reassoc, and not vectorise)."""
    z = zero
    for j in range(a.shape[0]):
        z += a[j] * w[j]
    return z


@njit(cache=CACHE, error_model="numpy")
def regroup_pairs(indptr, indices, values, rows, start, i0, i1, cp, pair_rows, pair_values):
    """Batch rows i0:i1 (input rows rows[start + i]) regrouped by pairs of adjacent pixels (2q, 2q + 1): one
    entry per row that has either, holding the batch row and both values (0 for a missing one), so that one
    read of a dZ1 row serves two rows of the weight gradient. cp[q]:cp[q + 1] are pair q's entries."""
    cp[:] = 0
    for i in range(i0, i1):
        r = rows[start + i]
        p, hi = indptr[r], indptr[r + 1]
        while p < hi:
            c = indices[p]
            p += 2 if c % 2 == 0 and p + 1 < hi and indices[p + 1] == c + 1 else 1
            cp[(c >> 1) + 1] += 1
    pairs = cp.shape[0] - 1
    for q in range(pairs):
        cp[q + 1] += cp[q]
    for i in range(i0, i1):
        r = rows[start + i]
        p, hi = indptr[r], indptr[r + 1]
        while p < hi:
            c = indices[p]
            e = cp[c >> 1]
            pair_rows[e] = i
            if c % 2 == 0:
                pair_values[2 * e] = values[p]
                if p + 1 < hi and indices[p + 1] == c + 1:
                    pair_values[2 * e + 1] = values[p + 1]
                    p += 2
                else:
                    pair_values[2 * e + 1] = 0
                    p += 1
            else:
                pair_values[2 * e] = 0
                pair_values[2 * e + 1] = values[p]
                p += 1
            cp[c >> 1] = e + 1
    for q in range(pairs, 0, -1):                   # back to starts: cp[q] is now pair q's end
        cp[q] = cp[q - 1]
    cp[0] = 0


@njit(cache=CACHE, fastmath={"contract"}, inline="always")
def gather_pair_add(plan, rows, vals, lo, hi, M, Out, ra, rb, j0, j1, accumulate):
    """Out[ra, j0:j1] (+)= sum over e in lo:hi of vals[2e] M[rows[e], j0:j1], Out[rb] likewise with vals[2e + 1]."""
    lanes = MB_WIDTH // M.itemsize
    zero = Out.dtype.type(0)
    nv, wide, narrow = plan
    gather_pair_tile(nv + 1, rows, vals, lo, hi, M, Out, ra, rb, j0, wide, accumulate, MB_WIDTH)
    k = j0 + wide * (nv + 1) * lanes
    gather_pair_tile(nv, rows, vals, lo, hi, M, Out, ra, rb, k, narrow, accumulate, MB_WIDTH)
    for j in range(k + narrow * nv * lanes, j1):
        sa = Out[ra, j] if accumulate else zero      # not Out * 0: Out may hold NaN from before
        sb = Out[rb, j] if accumulate else zero
        for e in range(lo, hi):
            m = M[rows[e], j]
            sa += vals[2 * e] * m
            sb += vals[2 * e + 1] * m
        Out[ra, j] = sa
        Out[rb, j] = sb


def adam_corrections(kind, beta1, beta2, step0, batches, dtype) -> np.ndarray:
    """(batches, 2): 1 - beta1**step and 1 - beta2**step for steps step0 + 1 ... step0 + batches (ones for the
    other optimisers), from the betas as Python floats, as the reference computes them: from the betas
    rounded to float32, 1 - beta2**step would be off by 1e-5 relative in the first steps."""
    steps = step0 + 1 + np.arange(batches, dtype=np.float64)
    if kind != ADAM:
        return np.ones((batches, 2), dtype)
    return np.stack([1 - float(beta1) ** steps, 1 - float(beta2) ** steps], axis=1).astype(dtype)


def unit_slices(k: int, itemsize: int, threads: int, rows: int) -> np.ndarray:
    """Bounds of T near-equal slices of k units, each starting on a whole vector."""
    lanes = MB_WIDTH // itemsize
    vectors = k // lanes
    T = max(1, min(threads, vectors, rows))
    return np.array([lanes * (t * vectors // T) for t in range(T)] + [k], np.int64)


def one_row(*arrays):
    """Each array viewed as one row (1, size) of a 2-D array, for the optimiser's row form; never a copy."""
    if not all(a.flags.c_contiguous for a in arrays):
        raise ValueError("minibatch_epoch: the parameters and their optimiser state must be C-contiguous")
    return tuple(a.reshape(1, -1) for a in arrays)
