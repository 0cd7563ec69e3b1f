"""The layers after the first of a training step, fused row by row: hidden layer, output layer, loss, and
the backward pass down to the gradient of the first layer's activations.

For a network X -> [first layer] -> A1 -> W2 (+ b2, act2, per-unit scale2) -> W3 (+ b3, act3) -> loss, each
block of rows of A1 goes through both products, the activations, the loss and its gradient, the two weight
gradients and dA1 = dZ2 @ W2.T without leaving the cache, phase by phase (all the block's products with W2,
then the per-row work, then all its products with W2T); each thread sums its rows' weight gradients
into private buffers, added at the end (race-free under parallel=True). The products are cpu_simd's
gathers and scatters in their dense form (no indices: value p goes with row p), so the weights' tiles stay
in registers; the three big ones (with W2, W2T, and dW2's, which reads the block's columns of A1 in place)
take two rows at a time, each tile of the weights loaded once for both. Results equal the composed
operations (BLAS products, the element-wise passes, the loss) within rounding.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .activation import activate, activate_runs, code_runs, derivative, times_derivative_runs
from .dense import column_sums
from .loss import row_loss
from .simd import CACHE, MAX_TILE, gather_planned, gather_two_rows_planned, scatter_planned, tile_plan, width

HEAD_WIDTH = width("head")          # bytes per SIMD vector in the head's products


BLOCK = 64      # rows taken phase by phase (their hidden layer's outputs and gradients buffered), so that each
                # product's weights stay in the L1 cache and dW2 is summed in registers


@njit(cache=CACHE, fastmath={"contract"})
def _rows(A1, W2, b2, codes2, scale2, W3, b3, codes3, W2T, W3T, labels, loss_kind, eps, nd, start, stop,
          dA1, dW2, db2, dW3, db3):
    """Rows start:stop; W3, W3T and dW3 have the output layer's columns padded with zeros to whole vectors
    (the loss reads the first `classes`)."""
    k1, m2 = W2.shape
    classes = db3.shape[0]
    padded = W3.shape[1]
    dtype = A1.dtype
    H2 = np.empty((BLOCK, m2), dtype)          # the block's hidden-layer pre-activations, then activations
    a2 = np.empty(m2, dtype)
    out = np.empty(padded, dtype)
    g = np.zeros(padded, dtype)
    D2 = np.empty((BLOCK, m2), dtype)          # the block's hidden-layer gradients dZ2
    row = np.empty((1, m2), dtype)
    runs2 = code_runs(codes2)
    to_m2 = tile_plan(0, m2, A1.itemsize, MAX_TILE, HEAD_WIDTH)
    to_padded = tile_plan(0, padded, A1.itemsize, MAX_TILE, HEAD_WIDTH)
    to_k1 = tile_plan(0, k1, A1.itemsize, MAX_TILE, HEAD_WIDTH)
    dW2[:] = 0
    dW3[:] = 0
    db2[:] = 0
    db3[:] = 0
    total = 0.0
    correct = 0
    for s0 in range(start, stop, BLOCK):
        nb = min(stop, s0 + BLOCK) - s0
        # phase by phase, so that W2 and then W2T stay in the L1 cache; the products two rows at a time, so that
        # each tile of the weights loaded serves both
        for b in range(0, nb - 1, 2):
            gather_two_rows_planned(to_m2, A1, s0 + b, s0 + b + 1, 0, k1, W2, H2, b, b + 1, 0, m2, False, False,
                                    HEAD_WIDTH)
        if nb % 2:
            gather_planned(to_m2, None, A1[s0 + nb - 1], 0, k1, W2, H2[nb - 1], 0, m2, HEAD_WIDTH)
        for b in range(nb):
            i = s0 + b
            h2 = H2[b]
            if b2.shape[0]:
                for j in range(m2):
                    h2[j] += b2[j]
            activate_runs(h2, runs2)
            for j in range(m2):
                a2[j] = h2[j] * scale2[j]
            gather_planned(to_padded, None, a2, 0, m2, W3, out, 0, padded, HEAD_WIDTH)
            for c in range(classes):
                z = out[c] + b3[c] if b3.shape[0] else out[c]
                out[c] = activate(z, codes3[c])
            loss, ok = row_loss(out[:classes], labels[i], loss_kind, eps, nd, g, True)
            total += loss
            correct += ok
            for c in range(classes):
                g[c] = g[c] * derivative(out[c], codes3[c])
                db3[c] += g[c]
            scatter_planned(to_padded, None, a2, 0, m2, g, dW3, 0, padded, HEAD_WIDTH)
            d2 = D2[b]
            gather_planned(to_m2, None, g, 0, classes, W3T, d2, 0, m2, HEAD_WIDTH)
            times_derivative_runs(d2, h2, runs2)
            for j in range(m2):
                d2[j] = d2[j] * scale2[j]
                db2[j] += d2[j]
        for b in range(0, nb - 1, 2):
            gather_two_rows_planned(to_k1, D2, b, b + 1, 0, m2, W2T, dA1, s0 + b, s0 + b + 1, 0, k1, False,
                                    False, HEAD_WIDTH)
        if nb % 2:
            gather_planned(to_k1, None, D2[nb - 1], 0, m2, W2T, dA1[s0 + nb - 1], 0, k1, HEAD_WIDTH)
        block = A1[s0:s0 + nb]
        for j in range(0, k1 - 1, 2):          # dW2 += block.T @ D2, reading the block's columns in place
            gather_two_rows_planned(to_m2, block, j, j + 1, 0, nb, D2, dW2, j, j + 1, 0, m2, True, True, HEAD_WIDTH)
        if k1 % 2:
            gather_two_rows_planned(to_m2, block, k1 - 1, k1 - 1, 0, nb, D2, row, 0, 0, 0, m2, False, True,
                                    HEAD_WIDTH)
            for u in range(m2):
                dW2[k1 - 1, u] += row[0, u]
    return total, correct


@njit(cache=CACHE, parallel=True)
def head_step(A1, W2, b2, codes2, scale2, W3, b3, codes3, labels, loss_kind, eps, threads, dA1, dW2, db2, dW3,
              db3):
    """Forward from A1 (rows, k1) through W2 (k1, m2) and W3 (m2, classes), the loss of each row against
    `labels`, and the backward pass: fills dA1, dW2, db2, dW3, db3 (gradients of the mean loss) and returns
    (summed loss, number correct). b2, b3 may be empty (no bias); scale2 holds the hidden layer's per-unit
    dropout scales (ones without dropout); `threads`: numba.get_num_threads(). All arrays C-contiguous, of
    one float dtype; eps in that dtype."""
    n = A1.shape[0]
    k1, m2 = W2.shape
    classes = W3.shape[1]
    dtype = A1.dtype
    nd = dtype.type(n)
    threads = max(1, min(threads, n))
    lanes = HEAD_WIDTH // W3.itemsize
    padded = -(-classes // lanes) * lanes
    W3p = np.zeros((m2, padded), dtype)
    for u in range(m2):                 # a loop: slice assignment would compile a shape check and its message
        for c in range(classes):
            W3p[u, c] = W3[u, c]
    W2T = np.ascontiguousarray(W2.T)
    W3T = np.ascontiguousarray(W3.T)
    acc2 = np.empty((threads, k1, m2), dtype)
    acc3 = np.empty((threads, m2, padded), dtype)
    accb2 = np.empty((threads, m2), dtype)
    accb3 = np.empty((threads, classes), dtype)
    totals = np.zeros(threads)
    corrects = np.zeros(threads, np.int64)
    for t in prange(threads):
        start, stop = np.int64(t) * n // threads, (np.int64(t) + 1) * n // threads
        totals[t], corrects[t] = _rows(A1, W2, b2, codes2, scale2, W3p, b3, codes3, W2T, W3T, labels, loss_kind,
                                       eps, nd, start, stop, dA1, acc2[t], accb2[t], acc3[t], accb3[t])
    column_sums(acc2.reshape(threads, k1 * m2), dW2.reshape(k1 * m2))
    column_sums(acc3[:, :, :classes].copy().reshape(threads, m2 * classes), dW3.reshape(m2 * classes))
    column_sums(accb2, db2)
    column_sums(accb3, db3)
    return totals.sum(), corrects.sum()
