"""Seed 000's batch loop in one compiled call: minibatches whose SGD update is applied `repeats` times from
the same forward pass (the notebook's update sits inside `for k in range(batch_size)`).

The repeated updates have a closed form. The forward pass, the loss gradient and the masks are computed once
per batch, so with dZ2 = dL/dZ2 (fixed), the output layer's gradient dW2 = A1.T @ dZ2 is the same in every
repeat and W2 after r repeats is W2 - r lr dW2. The first layer's gradient in repeat r is then
X.T @ ((P - r lr Q) * M) with P = dZ2 @ W2.T, Q = dZ2 @ dW2.T and M = act1'(Z1) * mask, all fixed, so the
sum over r = 0 .. R-1 is X.T @ ((R P - lr R(R-1)/2 Q) * M): one product over the batch's stored pixels
instead of R, equal to the repeated loop within rounding. Networks: two layers without biases, SGD, no L2.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .activation import activate, derivative
from .batch1_epoch import B1_WIDTH, padded_hidden, unpad_hidden
from .loss import row_loss
from .simd import CACHE, MAX_TILE, gather_planned, listed_plans, scatter_nonzero, tile_plan


@njit(cache=CACHE, fastmath={"contract"})
def repeated_sgd_epoch(indptr, indices, values, order, labels, batch, repeats, W1, W2, codes1, codes2, fwd, bwd, lr,
                       loss_kind, eps):
    """Trains on len(order) // batch batches (rows order[b * batch:(b + 1) * batch] of the compressed input),
    each batch's update applied `repeats` times; updates W1 (inputs, hidden) and W2 (hidden, outputs) in
    place and returns (summed loss, number correct). fwd / bwd: (batches * batch, hidden) forward and backward
    dropout masks of the first layer, or empty (0, 0) arrays for none. lr and eps have the weights' dtype."""
    n_hidden, n_out = W2.shape
    dtype = W1.dtype
    W1p, W2T = padded_hidden(W1, W2)                  # hidden units padded to whole vectors (batch1_epoch)
    kp = W1p.shape[1]
    vbytes = B1_WIDTH(W1)
    nd = dtype.type(batch)
    zero = dtype.type(0)
    R = dtype.type(repeats)
    first = R * lr                                    # the factor of P and of dW2's update
    second = lr * lr * dtype.type(repeats * (repeats - 1) / 2)
    H1 = np.zeros((batch, kp), dtype)
    A1 = np.zeros((batch, kp), dtype)
    dZ2 = np.empty((batch, n_out), dtype)
    out = np.empty(n_out, dtype)
    dW2T = np.empty((n_out, kp), dtype)
    step = np.zeros(kp, dtype)
    plan = tile_plan(0, kp, W1.itemsize, MAX_TILE, vbytes)
    plans = listed_plans(0, kp, W1.itemsize, vbytes)
    live = np.empty(plans.shape[0], np.int64)
    total = 0.0
    correct = 0
    for b in range(order.shape[0] // batch):
        base = b * batch
        for i in range(batch):
            r = order[base + i]
            h = H1[i]
            gather_planned(plan, indices, values, indptr[r], indptr[r + 1], W1p, h, 0, kp, vbytes)
            for j in range(n_hidden):
                h[j] = activate(h[j], codes1[j])
                A1[i, j] = h[j] * fwd[base + i, j] if fwd.shape[0] else h[j]
            for c in range(n_out):
                z = zero
                for j in range(n_hidden):
                    z += A1[i, j] * W2T[c, j]
                out[c] = activate(z, codes2[c])
            loss, ok = row_loss(out, labels[r], loss_kind, eps, nd, dZ2[i], True)
            total += loss
            correct += ok
            for c in range(n_out):
                dZ2[i, c] = dZ2[i, c] * derivative(out[c], codes2[c])
        dW2T[:] = zero                                # (A1.T @ dZ2).T, the same in every repeat
        for i in range(batch):
            for c in range(n_out):
                d = dZ2[i, c]
                for j in range(n_hidden):
                    dW2T[c, j] += A1[i, j] * d
        for i in range(batch):                        # W1 -= lr X.T @ ((R P - lr R(R-1)/2 Q) * M), row by row
            r = order[base + i]
            for j in range(n_hidden):
                p = zero
                q = zero
                for c in range(n_out):
                    p += dZ2[i, c] * W2T[c, j]
                    q += dZ2[i, c] * dW2T[c, j]
                d = (first * p - second * q) * derivative(H1[i, j], codes1[j])
                step[j] = -(d * bwd[base + i, j] if bwd.shape[0] else d)
            scatter_nonzero(plans, live, indices, values, indptr[r], indptr[r + 1], step, W1p, 0, kp, vbytes)
        for c in range(n_out):
            for j in range(n_hidden):
                W2T[c, j] -= first * dW2T[c, j]
    unpad_hidden(W1, W2, W1p, W2T)
    return total, correct
