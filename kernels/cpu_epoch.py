"""One compiled epoch of per-sample SGD for a two-layer network without biases (seed 000's loop).

For each sample: forward over the sample's non-zero pixels only, loss and accuracy count, backward, and
the update of both weight matrices, in which the first layer's rows of zero pixels are skipped (their
gradient is exactly 0). Masks hold one row per sample (empty arrays when there is no dropout).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .cpu_activation import activate, derivative
from .cpu_loss import row_loss
from .cpu_simd import gather_columns, scatter_columns


@njit(cache=True, fastmath={"contract"})
def sgd_epoch_batch1(indptr, indices, values, rows, labels, W1, W2, codes1, codes2, fwd, bwd, lr, kind, eps):
    """Updates W1 (inputs, hidden) and W2 (hidden, outputs) in place; returns (summed loss, number correct)."""
    n_hidden, n_out = W2.shape
    dtype = W1.dtype
    h = np.empty(n_hidden, dtype)
    a = np.empty(n_hidden, dtype)
    dz = np.empty(n_hidden, dtype)
    step = np.empty(n_hidden, dtype)          # -lr * dz: the first layer's update is W1[k] += x * step
    out = np.empty(n_out, dtype)
    g = np.empty(n_out, dtype)
    one = lr / lr
    total = 0.0
    correct = 0
    for t in range(rows.shape[0]):
        r = rows[t]
        lo, hi = indptr[r], indptr[r + 1]
        gather_columns(indices, values, lo, hi, W1, h, 0, n_hidden)
        for j in range(n_hidden):
            h[j] = activate(h[j], codes1[j])
            a[j] = h[j] * fwd[t, j] if fwd.shape[0] else h[j]
        out[:] = 0
        for j in range(n_hidden):
            for c in range(n_out):
                out[c] += a[j] * W2[j, c]
        for c in range(n_out):
            out[c] = activate(out[c], codes2[c])
        loss, ok = row_loss(out, labels[r], kind, eps, one, g, True)
        total += loss
        correct += ok
        for c in range(n_out):
            g[c] = g[c] * derivative(out[c], codes2[c])
        for j in range(n_hidden):
            s = one - one
            for c in range(n_out):
                s += g[c] * W2[j, c]
            d = s * derivative(h[j], codes1[j])
            dz[j] = d * bwd[t, j] if bwd.shape[0] else d
        for j in range(n_hidden):
            for c in range(n_out):
                W2[j, c] -= lr * (a[j] * g[c])
        for j in range(n_hidden):
            step[j] = -lr * dz[j]
        scatter_columns(indices, values, lo, hi, step, W1, 0, n_hidden)
    return total, correct
