"""A whole minibatch epoch of a network with one hidden layer in one compiled call (the `fast` preset).

Per batch, the rows that `order` picks from a compressed copy of the input are regrouped by input pixel
(the compressed copy itself is never rebuilt). The first layer's product then reads each row of W1 once
per batch, adding it into the rows of the batch that hold that pixel, one slice of units per task; each
row of the batch, in parallel, goes through the output layer, the loss and the backward pass down to dZ1;
the output layer is updated in parallel over its inputs; and each task computes its slice of every row of
the first layer's weight gradient from the pixels and applies the optimiser to it at once, so the full
gradient is never stored and no two tasks write the same element. Per-unit dropout masks are drawn by the
caller, batch by batch in the reference's order. Results equal the reference's within rounding.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .cpu_activation import activate, derivative
from .cpu_loss import row_loss
from .cpu_simd import VECTOR_BYTES, gather_tiles, scatter_tiles

SGD, ADAM_LIKE, ADAM = 0, 1, 2
OPTIMIZER_CODES = {"sgd": SGD, "adam_like": ADAM_LIKE, "adam": ADAM}
SLICE_TILES = 2     # first-layer units per update task, in tiles of 4 vectors (64 float32 or 32 float64 units)
_GATHER4, _GATHER1 = gather_tiles(4), gather_tiles(1)
_SCATTER4, _SCATTER1 = scatter_tiles(4), scatter_tiles(1)


@njit(cache=True, fastmath={"contract"})
def _gather(indices, values, lo, hi, M, h, j0, j1):
    """h[j0:j1] = sum over p in [lo, hi) of values[p] * M[indices[p], j0:j1]; j0 starts a tile."""
    lanes = VECTOR_BYTES // M.itemsize
    k4 = j0 + (j1 - j0) // (4 * lanes) * 4 * lanes
    k1 = k4 + (j1 - k4) // lanes * lanes
    _GATHER4(indices, values, lo, hi, M, h, j0, (k4 - j0) // (4 * lanes))
    _GATHER1(indices, values, lo, hi, M, h, k4, (k1 - k4) // lanes)
    for j in range(k1, j1):
        h[j] = 0
    for p in range(lo, hi):
        x = values[p]
        m = M[indices[p]]
        for j in range(k1, j1):
            h[j] += x * m[j]


@njit(cache=True, fastmath={"contract"})
def _scatter(indices, values, lo, hi, d, G, j0, j1):
    """G[indices[p], j0:j1] += values[p] * d[j0:j1] for p in [lo, hi); j0 starts a tile."""
    lanes = VECTOR_BYTES // G.itemsize
    k4 = j0 + (j1 - j0) // (4 * lanes) * 4 * lanes
    k1 = k4 + (j1 - k4) // lanes * lanes
    _SCATTER4(indices, values, lo, hi, d, G, j0, (k4 - j0) // (4 * lanes))
    _SCATTER1(indices, values, lo, hi, d, G, k4, (k1 - k4) // lanes)
    for p in range(lo, hi):
        x = values[p]
        g = G[indices[p]]
        for j in range(k1, j1):
            g[j] += x * d[j]


@njit(cache=True, error_model="numpy")   # numpy's division (no zero check per element) lets the loop vectorise
def _update(p, g, v, s, j0, j1, kind, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2):
    """The optimiser step of p[j0:j1] from g[j0:j1] (1-D arrays), with cpu_optim's arithmetic."""
    if kind == SGD:
        for j in range(j0, j1):
            p[j] -= lr * g[j]
        return
    for j in range(j0, j1):
        gj = g[j]
        vj = v[j] * beta1 + one_minus_beta1 * gj
        sj = s[j] * beta2 + one_minus_beta2 * (gj * gj)
        v[j] = vj
        s[j] = sj
        p[j] -= lr * (vj / c1) / (np.sqrt(sj / c2) + eps)


@njit(cache=True, fastmath={"contract"})
def _row(label, W1, b1, has_b1, codes1, m1, W2, b2, has_b2, codes2, m2, loss_kind,
         loss_eps, nd, H1, A1, dZ1, H2, A2, dZ2):
    """Forward from H1 = this row's X @ W1, loss, and backward down to dZ1 (= dL/dZ1 of this row).
    Returns (loss, correct)."""
    k, classes = W1.shape[1], W2.shape[1]
    for j in range(k):
        h = activate(H1[j] + b1[j] if has_b1 else H1[j], codes1[j])
        H1[j] = h
        A1[j] = h * m1[j]
    for c in range(classes):
        H2[c] = b2[c] if has_b2 else 0
    for j in range(k):
        a = A1[j]
        w = W2[j]
        for c in range(classes):
            H2[c] += a * w[c]
    for c in range(classes):
        h = activate(H2[c], codes2[c])
        H2[c] = h
        A2[c] = h * m2[c]
    total, correct = row_loss(A2, label, loss_kind, loss_eps, nd, dZ2, True)
    for c in range(classes):
        dZ2[c] = dZ2[c] * derivative(H2[c], codes2[c]) * m2[c]
    for j in range(k):
        d = dZ2[0] * W2[j, 0]
        for c in range(1, classes):
            d += dZ2[c] * W2[j, c]
        dZ1[j] = d * derivative(H1[j], codes1[j]) * m1[j]
    return total, correct


@njit(cache=True, parallel=True, fastmath={"contract"})
def minibatch_epoch(indptr, indices, values, order, labels, batch, W1, b1, has_b1, codes1, masks1, l2_1,
                    W2, b2, has_b2, codes2, masks2, l2_2, state1, state2, kind, lr, beta1, one_minus_beta1, beta2,
                    one_minus_beta2, eps, step0, loss_kind, loss_eps):
    """Trains on len(order) // batch batches, rows order[b * batch:(b + 1) * batch] of the compressed input
    (indptr, indices, values); returns (summed loss, number correct, batches).

    b1, b2: the biases, read and updated only when has_b1, has_b2. masks1/masks2: (batches, units) per-unit
    dropout scales, or (0, units) for none. l2_1/l2_2: per-unit L2 coefficients (dW += l2 * W), or empty.
    state1/state2: the optimiser moments (v_W, s_W, v_b, s_b) of each layer (any arrays of the right
    shapes for SGD, which reads none). Scalars have the weights' dtype, as cpu_optim's.
    """
    dtype = W1.dtype
    n_in, k = W1.shape
    classes = W2.shape[1]
    batches = order.shape[0] // batch
    nd = dtype.type(batch)
    H1 = np.empty((batch, k), dtype)
    A1 = np.empty((batch, k), dtype)
    dZ1 = np.empty((batch, k), dtype)
    H2 = np.empty((batch, classes), dtype)
    A2 = np.empty((batch, classes), dtype)
    dZ2 = np.empty((batch, classes), dtype)
    losses = np.empty(batch)
    corrects = np.empty(batch, np.int64)
    G2 = np.empty((k, classes), dtype)
    gb2 = np.empty(classes, dtype)
    ones1 = np.ones(k, dtype)
    ones2 = np.ones(classes, dtype)
    vW1, sW1, vb1, sb1 = state1
    vW2, sW2, vb2, sb2 = state2
    width = SLICE_TILES * 4 * (VECTOR_BYTES // W1.itemsize)
    slices = (k + width - 1) // width
    g_rows = np.empty((slices, k), dtype)        # each task's gradient row of W1 (its own columns only)
    gb1 = np.empty(k, dtype)
    colptr = np.empty(n_in + 1, np.int64)        # the batch's stored pixels by input column (CSC)
    fill = np.empty(n_in, np.int64)
    csc_rows = np.empty(indices.shape[0] if batch >= order.shape[0] else 1, np.int64)
    csc_values = np.empty(csc_rows.shape[0], dtype)
    total, correct = 0.0, 0
    for bi in range(batches):
        start = bi * batch
        m1 = masks1[bi] if masks1.shape[0] else ones1
        m2 = masks2[bi] if masks2.shape[0] else ones2
        step = step0 + bi + 1
        c1 = dtype.type(1 - beta1 ** step) if kind == ADAM else dtype.type(1)
        c2 = dtype.type(1 - beta2 ** step) if kind == ADAM else dtype.type(1)
        hyper = (kind, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2)
        # the batch's rows regrouped by input pixel: each row of W1 is then read once per batch
        nnz = 0
        fill[:] = 0
        for i in range(batch):
            r = order[start + i]
            nnz += indptr[r + 1] - indptr[r]
            for p in range(indptr[r], indptr[r + 1]):
                fill[indices[p]] += 1
        if csc_rows.shape[0] < nnz:
            csc_rows = np.empty(2 * nnz, np.int64)
            csc_values = np.empty(2 * nnz, dtype)
        colptr[0] = 0
        for j in range(n_in):
            colptr[j + 1] = colptr[j] + fill[j]
            fill[j] = colptr[j]
        for i in range(batch):
            r = order[start + i]
            for p in range(indptr[r], indptr[r + 1]):
                q = fill[indices[p]]
                csc_rows[q] = i
                csc_values[q] = values[p]
                fill[indices[p]] = q + 1
        # first layer's product, one slice of units per task
        for t in prange(slices):
            j0 = t * width
            j1 = min(k, j0 + width)
            H1[:, j0:j1] = 0
            for j in range(n_in):
                if colptr[j + 1] > colptr[j]:
                    _scatter(csc_rows, csc_values, colptr[j], colptr[j + 1], W1[j], H1, j0, j1)
        for i in prange(batch):
            losses[i], corrects[i] = _row(labels[order[start + i]], W1, b1, has_b1, codes1, m1, W2, b2, has_b2,
                                          codes2, m2, loss_kind, loss_eps, nd, H1[i], A1[i], dZ1[i], H2[i], A2[i],
                                          dZ2[i])
        for i in range(batch):
            total += losses[i]
            correct += corrects[i]
        # output layer: gradient and update, in parallel over slices of its inputs
        for t in prange(slices):
            j0 = t * width
            j1 = min(k, j0 + width)
            G2[j0:j1] = 0
            for i in range(batch):
                a = A1[i]
                d = dZ2[i]
                for j in range(j0, j1):
                    g = G2[j]
                    for c in range(classes):
                        g[c] += a[j] * d[c]
            for j in range(j0, j1):
                g = G2[j]
                if l2_2.shape[0]:
                    for c in range(classes):
                        g[c] += W2[j, c] * l2_2[c]
                _update(W2[j], g, vW2[j], sW2[j], 0, classes, *hyper)
        if has_b2:
            gb2[:] = dZ2[0]
            for i in range(1, batch):
                gb2 += dZ2[i]
            _update(b2, gb2, vb2, sb2, 0, classes, *hyper)
        # first layer: each task computes its slice of every gradient row from the pixels and updates it
        for t in prange(slices):
            j0 = t * width
            j1 = min(k, j0 + width)
            if has_b1:
                for j in range(j0, j1):
                    gb1[j] = dZ1[0, j]
                for i in range(1, batch):
                    for j in range(j0, j1):
                        gb1[j] += dZ1[i, j]
                _update(b1, gb1, vb1, sb1, j0, j1, *hyper)
            g = g_rows[t]
            for row in range(n_in):
                _gather(csc_rows, csc_values, colptr[row], colptr[row + 1], dZ1, g, j0, j1)
                if l2_1.shape[0]:
                    w = W1[row]
                    for j in range(j0, j1):
                        g[j] += w[j] * l2_1[j]
                _update(W1[row], g, vW1[row], sW1[row], j0, j1, *hyper)
    return total, correct, batches
