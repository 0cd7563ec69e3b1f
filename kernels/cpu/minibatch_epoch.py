"""A whole minibatch epoch of a network with one hidden layer in one compiled call (the `fast` preset).

Per batch, the rows that `order` picks from a compressed copy of the input (which is never rebuilt) go
through the first layer's product one slice of units per task, so that slice of W1 stays in cache; each
row of the batch, in parallel, goes through the output layer, the loss and the backward pass down to dZ1;
the output layer is updated one class per task; and each task computes whole rows of the first
layer's weight gradient from the pixels (the batch regrouped by pixel) and applies the optimiser to them
at once, so the full gradient is never stored and no two tasks write the same element. Per-unit dropout
masks are drawn by the caller, batch by batch in the reference's order. Results equal the reference's
within rounding.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .activation import RELU, activate, derivative
from .loss import row_loss
from .optim import adam_range, sgd_range
from .simd import CACHE, VECTOR_BYTES, empty_rows, gather_columns, gather_planned, tile_plan

SGD, ADAM_LIKE, ADAM = 0, 1, 2
OPTIMIZER_CODES = {"sgd": SGD, "adam_like": ADAM_LIKE, "adam": ADAM}
REGROUP = 4         # tasks that regroup a batch's pixels
SLICE_TILES = 1     # first-layer units per task, in tiles of 4 vectors (32 float32 or 16 float64 units)


@njit(cache=CACHE)
def _update(p, g, v, s, j0, j1, kind, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2):
    """The optimiser step of p[j0:j1] from g[j0:j1] (1-D arrays), with cpu_optim's loops."""
    if kind == SGD:
        sgd_range(p, g, lr, j0, j1)
    else:
        adam_range(p, g, v, s, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2, j0, j1)


# Sums in any order (reassoc) so that the row's dot products vectorise: within rounding of the reference.
@njit(cache=CACHE, fastmath={"contract", "reassoc"}, error_model="numpy")
def _row(label, b1, has_b1, codes1, relu1, m1, W2T, b2, has_b2, codes2, m2, loss_kind, loss_eps, nd,
         H1, A1, dZ1, H2, A2, dZ2):
    """Forward from H1 = this row's X @ W1, loss, and backward down to dZ1 (= dL/dZ1 of this row); W2T is
    the output layer's weights transposed, relu1 whether every first-layer unit is a ReLU.
    Returns (loss, correct)."""
    classes, k = W2T.shape
    if has_b1:
        for j in range(k):
            H1[j] += b1[j]
    if relu1:
        for j in range(k):
            h = max(H1[j], 0) if not np.isnan(H1[j]) else H1[j]
            H1[j] = h
            A1[j] = h * m1[j]
    else:
        for j in range(k):
            h = activate(H1[j], codes1[j])
            H1[j] = h
            A1[j] = h * m1[j]
    for c in range(classes):
        w = W2T[c]
        z = A1[0] * w[0]
        for j in range(1, k):
            z += A1[j] * w[j]
        h = activate(z + b2[c] if has_b2 else z, codes2[c])
        H2[c] = h
        A2[c] = h * m2[c]
    total, correct = row_loss(A2, label, loss_kind, loss_eps, nd, dZ2, True)
    for c in range(classes):
        dZ2[c] = dZ2[c] * derivative(H2[c], codes2[c]) * m2[c]
    dZ1[:] = 0
    for c in range(classes):
        d = dZ2[c]
        w = W2T[c]
        for j in range(k):
            dZ1[j] += d * w[j]
    if relu1:
        for j in range(k):
            dZ1[j] = dZ1[j] * m1[j] if H1[j] > 0 else dZ1[j] * 0
    else:
        for j in range(k):
            dZ1[j] = dZ1[j] * derivative(H1[j], codes1[j]) * m1[j]
    return total, correct


@njit(cache=CACHE, parallel=True, fastmath={"contract"})
def minibatch_epoch(indptr, indices, values, order, labels, batch, W1, b1, has_b1, codes1, masks1, l2_1,
                    W2, b2, has_b2, codes2, masks2, l2_2, state1, state2, kind, lr, beta1, one_minus_beta1, beta2,
                    one_minus_beta2, eps, step0, loss_kind, loss_eps, slice_tiles=SLICE_TILES):
    """Trains on len(order) // batch batches, rows order[b * batch:(b + 1) * batch] of the compressed input
    (indptr, indices, values); returns (summed loss, number correct, batches).

    b1, b2: the biases, read and updated only when has_b1, has_b2. masks1/masks2: (batches, units) per-unit
    dropout scales, or (0, units) for none. l2_1/l2_2: per-unit L2 coefficients (dW += l2 * W), or empty.
    state1/state2: the optimiser moments (v_W, s_W, v_b, s_b) of each layer (any arrays of the right
    shapes for SGD, which reads none). Scalars have the weights' dtype, as cpu_optim's. slice_tiles: the
    first-layer units each task takes, in tiles of 4 vectors.
    """
    dtype = W1.dtype
    n_in, k = W1.shape
    classes = W2.shape[1]
    batches = order.shape[0] // batch
    nd = dtype.type(batch)
    H1 = empty_rows(batch, k, W1)
    A1 = empty_rows(batch, k, W1)            # rows read by the output layer's gradient
    dZ1 = empty_rows(batch, k, W1)           # rows read by the first layer's gradient
    H2 = np.empty((batch, classes), dtype)
    A2 = np.empty((batch, classes), dtype)
    dZ2 = np.empty((batch, classes), dtype)
    losses = np.empty(batch)
    corrects = np.empty(batch, np.int64)
    G2T = np.empty((classes, k), dtype)          # the output layer's gradient, transposed
    dZ2T = np.empty((classes, batch), dtype)
    batch_rows = np.arange(batch)
    W2T = np.empty((classes, k), dtype)
    relu1 = True
    for j in range(k):
        if codes1[j] != RELU:
            relu1 = False
    gb2 = np.empty(classes, dtype)
    ones1 = np.ones(k, dtype)
    ones2 = np.ones(classes, dtype)
    vW1, sW1, vb1, sb1 = state1
    vW2, sW2, vb2, sb2 = state2
    width = slice_tiles * 4 * (VECTOR_BYTES // W1.itemsize)
    slices = (k + width - 1) // width
    row_blocks = min(n_in, 16)
    g_rows = np.empty((row_blocks, k), dtype)    # each task's gradient row of W1
    gb1 = np.empty(k, dtype)
    colptr = np.empty(n_in + 1, np.int64)        # the batch's stored pixels by input column (CSC)
    fill = np.empty((REGROUP, n_in), np.int64)    # per task: counts, then next free slots
    csc_rows = np.empty(0, np.int64)             # grown to twice the largest batch seen
    csc_values = np.empty(0, dtype)
    total, correct = 0.0, 0
    for bi in range(batches):
        start = bi * batch
        m1 = masks1[bi] if masks1.shape[0] else ones1
        m2 = masks2[bi] if masks2.shape[0] else ones2
        step = step0 + bi + 1
        c1 = dtype.type(1 - beta1 ** step) if kind == ADAM else dtype.type(1)
        c2 = dtype.type(1 - beta2 ** step) if kind == ADAM else dtype.type(1)
        # the batch's stored pixels regrouped by pixel (a counting sort in REGROUP tasks over the rows,
        # each task's rows after the previous task's: rows stay in order within a pixel)
        for t in prange(REGROUP):
            fill[t] = 0
            for i in range(t * batch // REGROUP, (t + 1) * batch // REGROUP):
                r = order[start + i]
                for p in range(indptr[r], indptr[r + 1]):
                    fill[t, indices[p]] += 1
        nnz = 0
        for j in range(n_in):
            colptr[j] = nnz
            for t in range(REGROUP):
                count = fill[t, j]
                fill[t, j] = nnz
                nnz += count
        colptr[n_in] = nnz
        if csc_rows.shape[0] < nnz:
            csc_rows = np.empty(2 * nnz, np.int64)
            csc_values = np.empty(2 * nnz, dtype)
        for t in prange(REGROUP):
            for i in range(t * batch // REGROUP, (t + 1) * batch // REGROUP):
                r = order[start + i]
                for p in range(indptr[r], indptr[r + 1]):
                    q = fill[t, indices[p]]
                    csc_rows[q] = i
                    csc_values[q] = values[p]
                    fill[t, indices[p]] = q + 1
        # first layer's product, one slice of units per task: that slice of W1 stays in the L2 cache
        for t in prange(slices):
            j0 = t * width
            j1 = min(k, j0 + width)
            plan = tile_plan(j0, j1, W1.itemsize)
            for i in range(batch):
                r = order[start + i]
                gather_planned(plan, indices, values, indptr[r], indptr[r + 1], W1, H1[i], j0, j1)
        W2T[:] = W2.T
        for i in prange(batch):
            losses[i], corrects[i] = _row(labels[order[start + i]], b1, has_b1, codes1, relu1, m1, W2T, b2,
                                          has_b2, codes2, m2, loss_kind, loss_eps, nd, H1[i], A1[i], dZ1[i], H2[i],
                                          A2[i], dZ2[i])
        for i in range(batch):
            total += losses[i]
            correct += corrects[i]
        # output layer, one class per task: its column of the gradient (dZ2[:, c] gathered over A1's rows),
        # then the optimiser on that column of W2
        dZ2T[:, :] = dZ2.T
        for c in prange(classes):
            g = G2T[c]
            gather_columns(batch_rows, dZ2T[c], 0, batch, A1, g, 0, k)
            if l2_2.shape[0]:
                for j in range(k):
                    g[j] += W2[j, c] * l2_2[c]
            _update(W2[:, c], g, vW2[:, c], sW2[:, c], 0, k,
                    kind, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2)
        if has_b2:
            gb2[:] = dZ2[0]
            for i in range(1, batch):
                gb2 += dZ2[i]
            _update(b2, gb2, vb2, sb2, 0, classes,
                    kind, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2)
        if has_b1:
            for t in prange(slices):
                j0 = t * width
                j1 = min(k, j0 + width)
                for j in range(j0, j1):
                    gb1[j] = dZ1[0, j]
                for i in range(1, batch):
                    for j in range(j0, j1):
                        gb1[j] += dZ1[i, j]
                _update(b1, gb1, vb1, sb1, j0, j1,
                        kind, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2)
        # first layer: each task computes whole rows of the weight gradient from the pixels and updates
        # those rows of W1 and its moments at once, reading and writing them as contiguous streams
        for blk in prange(row_blocks):
            g = g_rows[blk]
            plan = tile_plan(0, k, dZ1.itemsize)
            for row in range(blk * n_in // row_blocks, (blk + 1) * n_in // row_blocks):
                gather_planned(plan, csc_rows, csc_values, colptr[row], colptr[row + 1], dZ1, g, 0, k)
                if l2_1.shape[0]:
                    w = W1[row]
                    for j in range(k):
                        g[j] += w[j] * l2_1[j]
                _update(W1[row], g, vW1[row], sW1[row], 0, k,
                        kind, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2)
    return total, correct, batches
