"""One compiled epoch of per-sample SGD for a two-layer network without biases (seed 000's loop).

For each sample: forward over the sample's non-zero pixels only, loss and accuracy count, backward, and
the update of both weight matrices, in which the first layer's rows of zero pixels are skipped (their
gradient is exactly 0). Masks hold one row per sample (empty arrays when there is no dropout).
The hidden layer runs padded with zero units to a whole number of vectors (`padded_hidden`), so the SIMD
loops have no scalar tail; the padding's weights stay 0 and never reach the result.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .activation import activate, derivative
from .loss import row_loss
from .simd import CACHE, MAX_TILE, empty_rows, gather_planned, listed_plans, scatter_nonzero, tile_plan, width_for
from ..codes import IDENTITY, RELU

B1_WIDTH = width_for("batch1_epoch")   # B1_WIDTH(W1): bytes per SIMD vector of the batch-1 and repeated-update epochs


@njit(cache=CACHE)
def padded_hidden(W1, W2):
    """(W1 with its columns padded by zeros to whole vectors, W2.T padded the same way): the kernels' working
    copies of a two-layer network's weights (W1 itself when it needs no padding). Element loops here and in
    unpad_hidden: slice assignment between arrays compiles a shape check with its error message."""
    n_in, k = W1.shape
    lanes = B1_WIDTH(W1) // W1.itemsize
    kp = -(-k // lanes) * lanes
    W2T = np.zeros((W2.shape[1], kp), W1.dtype)
    for c in range(W2.shape[1]):
        for j in range(k):
            W2T[c, j] = W2[j, c]
    if kp == k:
        return W1, W2T
    Wp = empty_rows(n_in, kp, W1)
    for i in range(n_in):
        for j in range(k):
            Wp[i, j] = W1[i, j]
        for j in range(k, kp):
            Wp[i, j] = 0
    return Wp, W2T


@njit(cache=CACHE)
def unpad_hidden(W1, W2, Wp, W2T):
    """Writes the working copies back into the network's weights."""
    n_in, k = W1.shape
    if Wp.shape[1] != k:
        for i in range(n_in):
            for j in range(k):
                W1[i, j] = Wp[i, j]
    for j in range(k):
        for c in range(W2.shape[1]):
            W2[j, c] = W2T[c, j]


@njit(cache=CACHE)
def _all_equal(codes, code):
    for c in codes:
        if c != code:
            return False
    return True


@njit(cache=CACHE, fastmath={"contract", "reassoc"})
def _dot(a, w, zero):
    """The sum of a[j] * w[j] in whatever order vectorises: the output layer's forward product, the epoch's only
    reduction (as a plain loop, one chain of dependent additions per class)."""
    total = zero
    for j in range(a.shape[0]):
        total += a[j] * w[j]
    return total


@njit(cache=CACHE, fastmath={"contract"})
def sgd_epoch_batch1(indptr, indices, values, rows, labels, W1, W2, codes1, codes2, fwd, bwd, lr, kind, eps):
    """Updates W1 (inputs, hidden) and W2 (hidden, outputs) in place; returns (summed loss, number correct).

    The second layer works on a transposed copy of W2, so that its three small products (forward, the
    gradient to the hidden units, the update) run over contiguous hidden units."""
    n_hidden, n_out = W2.shape
    dtype = W1.dtype
    W1p, W2T = padded_hidden(W1, W2)
    kp = W1p.shape[1]
    vbytes = B1_WIDTH(W1)
    h = np.zeros(kp, dtype)
    a = np.zeros(kp, dtype)
    s = np.zeros(kp, dtype)
    step = np.zeros(kp, dtype)                # -lr * dz: the first layer's update is W1[k] += x * step
    out = np.empty(n_out, dtype)
    g = np.empty(n_out, dtype)
    relu = _all_equal(codes1, RELU)
    identity_out = _all_equal(codes2, IDENTITY)
    one = lr / lr
    zero = one - one
    total = 0.0
    correct = 0
    plan = tile_plan(0, kp, W1.itemsize, MAX_TILE, vbytes)
    plans = listed_plans(0, kp, W1.itemsize, vbytes)
    live = np.empty(plans.shape[0], np.int64)
    for t in range(rows.shape[0]):
        r = rows[t]
        lo, hi = indptr[r], indptr[r + 1]
        gather_planned(plan, indices, values, lo, hi, W1p, h, 0, kp, vbytes)
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
            for j in range(n_hidden):
                a[j] = h[j]
        for c in range(n_out):
            o = _dot(a, W2T[c], zero)
            out[c] = o if identity_out else activate(o, codes2[c])
        loss, ok = row_loss(out, labels[r], kind, eps, one, g, True)
        total += loss
        correct += ok
        if not identity_out:
            for c in range(n_out):
                g[c] = g[c] * derivative(out[c], codes2[c])
        s[:n_hidden] = zero
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
        scatter_nonzero(plans, live, indices, values, lo, hi, step, W1p, 0, kp, vbytes)
    unpad_hidden(W1, W2, W1p, W2T)
    return total, correct
