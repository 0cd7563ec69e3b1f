"""One compiled epoch of per-sample SGD for a two-layer network without biases (seed 000's loop).

For each sample: forward over the sample's non-zero pixels only, loss and accuracy count, backward, and
the update of both weight matrices, in which the first layer's rows of zero pixels are skipped (their
gradient is exactly 0). Masks hold one row per sample (empty arrays when there is no dropout).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .activation import IDENTITY, RELU, activate, derivative
from .loss import row_loss
from .simd import gather_planned, listed_plans, scatter_nonzero, tile_plan


@njit(cache=True)
def _all_equal(codes, code):
    for c in codes:
        if c != code:
            return False
    return True


@njit(cache=True, fastmath={"contract", "reassoc"})
def _dot(a, w, zero):
    """The sum of a[j] * w[j] in whatever order vectorises: the output layer's forward product, the epoch's only
    reduction (as a plain loop, one chain of dependent additions per class)."""
    total = zero
    for j in range(a.shape[0]):
        total += a[j] * w[j]
    return total


@njit(cache=True, fastmath={"contract"})
def sgd_epoch_batch1(indptr, indices, values, rows, labels, W1, W2, codes1, codes2, fwd, bwd, lr, kind, eps):
    """Updates W1 (inputs, hidden) and W2 (hidden, outputs) in place; returns (summed loss, number correct).

    The second layer works on a transposed copy of W2, so that its three small products (forward, the
    gradient to the hidden units, the update) run over contiguous hidden units."""
    n_hidden, n_out = W2.shape
    dtype = W1.dtype
    W2T = np.ascontiguousarray(W2.T)
    h = np.empty(n_hidden, dtype)
    a = np.empty(n_hidden, dtype)
    s = np.empty(n_hidden, dtype)
    step = np.empty(n_hidden, dtype)          # -lr * dz: the first layer's update is W1[k] += x * step
    out = np.empty(n_out, dtype)
    g = np.empty(n_out, dtype)
    relu = _all_equal(codes1, RELU)
    identity_out = _all_equal(codes2, IDENTITY)
    one = lr / lr
    zero = one - one
    total = 0.0
    correct = 0
    plan = tile_plan(0, n_hidden, W1.itemsize)
    plans = listed_plans(0, n_hidden, W1.itemsize)
    live = np.empty(plans.shape[0], np.int64)
    for t in range(rows.shape[0]):
        r = rows[t]
        lo, hi = indptr[r], indptr[r + 1]
        gather_planned(plan, indices, values, lo, hi, W1, h, 0, n_hidden)
        if relu:
            for j in range(n_hidden):
                h[j] = zero if h[j] < zero else h[j]          # NaN stays NaN
        else:
            for j in range(n_hidden):
                h[j] = activate(h[j], codes1[j])
        if fwd.shape[0]:
            for j in range(n_hidden):
                a[j] = h[j] * fwd[t, j]
        else:
            a[:] = h
        for c in range(n_out):
            o = _dot(a, W2T[c], zero)
            out[c] = o if identity_out else activate(o, codes2[c])
        loss, ok = row_loss(out, labels[r], kind, eps, one, g, True)
        total += loss
        correct += ok
        if not identity_out:
            for c in range(n_out):
                g[c] = g[c] * derivative(out[c], codes2[c])
        s[:] = zero
        for c in range(n_out):
            gc = g[c]
            for j in range(n_hidden):
                s[j] += gc * W2T[c, j]
        if relu:
            for j in range(n_hidden):
                s[j] = s[j] if h[j] > zero else zero
        else:
            for j in range(n_hidden):
                s[j] = s[j] * derivative(h[j], codes1[j])
        if bwd.shape[0]:
            for j in range(n_hidden):
                s[j] = s[j] * bwd[t, j]
        for c in range(n_out):
            gc = g[c]
            for j in range(n_hidden):
                W2T[c, j] -= lr * (a[j] * gc)
        for j in range(n_hidden):
            step[j] = -lr * s[j]
        scatter_nonzero(plans, live, indices, values, lo, hi, step, W1, 0, n_hidden)
    W2[:] = W2T.T
    return total, correct
