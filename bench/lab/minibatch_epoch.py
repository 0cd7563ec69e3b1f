"""The `fast` preset's epoch (784 -> ReLU 320 -> softmax 10, Adam, minibatches of 128 in shuffled order) as one
compiled call.

v1: minibatch_epoch.minibatch_epoch through numba-cpu's train_epoch, in fastmnist.kernels: per batch, the
    batch's stored pixels regrouped, the first layer's forward and weight gradient by slices of units across
    threads, each row's output layer and loss fused, the Adam update fused with the gradient (six parallel
    sections per batch).
v2: two parallel sections per batch, each thread owning one slice of the hidden units for the whole batch:
    (1) the slice's forward product, activation and its share of the output layer's sums, and the regrouping
    of its share of the batch's rows by pixel; then, serially, the output layer's loss and gradient (small);
    (2) the slice's dZ1, its rows of W2 and of W1 (the gradient gathered per pixel from every thread's
    regrouped rows) and the optimiser on them. No element is written by two threads.
"""

from __future__ import annotations

import os
import sys

import numba
import numpy as np
from numba import njit, prange

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import mnist_images, preset_net, run_main, sparse_images  # noqa: E402

import fastmnist  # noqa: E402,F401  (first: OpenBLAS's thread timeout)
from fastmnist.kernels.reference import ReferenceBackend  # noqa: E402

# (rows, inputs, hidden, batch): a remainder batch, widths that are no whole vector
CASES = {"10x13x5b3": (10, 13, 5, 3), "103x30x17b10": (103, 30, 17, 10), "300x784x40b128": (300, 784, 40, 128)}
REAL = (60_000, 784, 320, 128)     # the `fast` preset: all 60,000 training images


def inputs(shape, dtype, rng, real):
    rows, n_in, units, batch = shape
    X, y = mnist_images(rows, dtype, "full") if real else (sparse_images(rng, rows, n_in, dtype),
                                                            rng.integers(0, 10, rows))
    return {"X": X, "y": y, "hidden": units, "batch": batch, "order": rng.permutation(rows),
            "seed": int(rng.integers(1 << 31))}


def _run_on(backend, d, dtype):
    _, net = preset_net(backend, "fast", dtype, seed=d["seed"], hidden=d["hidden"], inputs=d["X"].shape[1],
                        batch_size=d["batch"])
    X = backend.asarray(d["X"].astype(dtype))

    def run():
        total, _ = backend.train_epoch(net, X, d["y"], d["batch"], np.random.RandomState(0), d["order"])
        return np.array([float(total)]), *net.params()
    return run


def reference(d):
    return _run_on(ReferenceBackend(), d, np.float64)()


def v1(d, k):
    return _run_on(k.cpu.backend.NumbaCpuBackend(), d, d["X"].dtype)


# -- v2 ----------------------------------------------------------------------------------------------

from fastmnist.kernels.cpu.activation import RELU, activate, derivative  # noqa: E402
from fastmnist.kernels.cpu.loss import row_loss  # noqa: E402
from fastmnist.kernels.cpu.minibatch_epoch import ADAM, SGD  # noqa: E402
from fastmnist.kernels.cpu.optim import adam_range, sgd_range  # noqa: E402
from fastmnist.kernels.cpu.simd import (VECTOR_BYTES, empty_rows, gather_pair_tile, gather_planned,  # noqa: E402
                                        gather_row_tile, tile_plan)


@njit(fastmath={"contract"})
def _update(p, g, v, s, j0, j1, kind, lr, beta1, omb1, beta2, omb2, eps, c1, c2):
    if kind == SGD:
        sgd_range(p, g, lr, j0, j1)
    else:
        adam_range(p, g, v, s, lr, beta1, omb1, beta2, omb2, eps, c1, c2, j0, j1)


@njit(fastmath={"contract"}, inline="always")
def _gather_add(plan, indices, values, lo, hi, M, Out, row, j0, j1, accumulate):
    """Out[row, j0:j1] (+)= values[lo:hi] @ M[indices[lo:hi], j0:j1]."""
    lanes = VECTOR_BYTES // M.itemsize
    nv, wide, narrow = plan
    gather_row_tile(nv + 1, indices, values, lo, hi, M, Out, row, j0, wide, accumulate)
    k = j0 + wide * (nv + 1) * lanes
    gather_row_tile(nv, indices, values, lo, hi, M, Out, row, k, narrow, accumulate)
    for j in range(k + narrow * nv * lanes, j1):
        s = Out[row, j] if accumulate else Out[row, j] * 0
        for p in range(lo, hi):
            s += values[p] * M[indices[p], j]
        Out[row, j] = s


@njit(fastmath={"contract", "reassoc"})
def _dot(a, w, zero):
    """a @ w in whatever order vectorises (its own function: inlined, it would take the caller's fastmath flags,
    without reassoc, and not vectorise)."""
    z = zero
    for j in range(a.shape[0]):
        z += a[j] * w[j]
    return z


@njit(fastmath={"contract"})
def _forward_slice(indptr, indices, values, order, start, batch, W1, b1, has_b1, codes1, relu1, m1, W2T, j0, j1,
                   H1, A1, part):
    """The slice j0:j1 of the hidden layer for the batch's rows, and its share of the output layer's sums.
    Loops run over views indexed from 0: an index from a run-time start would get a wraparound check per
    element, which stops LLVM from vectorising."""
    zero = W1.dtype.type(0)
    plan = tile_plan(j0, j1, W1.itemsize)
    classes = W2T.shape[0]
    bs, cs, ms = b1[j0:j1], codes1[j0:j1], m1[j0:j1]
    for i in range(batch):
        r = order[start + i]
        gather_planned(plan, indices, values, indptr[r], indptr[r + 1], W1, H1[i], j0, j1)
        h1, a1 = H1[i, j0:j1], A1[i, j0:j1]
        if has_b1:
            for j in range(h1.shape[0]):
                h1[j] += bs[j]
        if relu1:
            for j in range(h1.shape[0]):
                h = h1[j] if h1[j] > 0 or np.isnan(h1[j]) else h1[j] * 0
                h1[j] = h
                a1[j] = h * ms[j]
        else:
            for j in range(h1.shape[0]):
                h = activate(h1[j], cs[j])
                h1[j] = h
                a1[j] = h * ms[j]
        for c in range(classes):
            part[i, c] = _dot(a1, W2T[c, j0:j1], zero)


@njit
def _regroup(indptr, indices, values, order, start, i0, i1, cp, csc_rows, csc_vals):
    """Rows i0:i1 of the batch regrouped by pixel (a counting sort): cp[j]:cp[j + 1] are pixel j's entries."""
    cp[:] = 0
    for i in range(i0, i1):
        r = order[start + i]
        for p in range(indptr[r], indptr[r + 1]):
            cp[indices[p] + 1] += 1
    n_in = cp.shape[0] - 1
    for j in range(n_in):
        cp[j + 1] += cp[j]
    for i in range(i0, i1):
        r = order[start + i]
        for p in range(indptr[r], indptr[r + 1]):
            q = cp[indices[p]]
            csc_rows[q] = i
            csc_vals[q] = values[p]
            cp[indices[p]] = q + 1
    for j in range(n_in, 0, -1):                       # back to starts: cp[j] is now pixel j's end
        cp[j] = cp[j - 1]
    cp[0] = 0


@njit
def _regroup_pairs(indptr, indices, values, order, start, i0, i1, cp, csc_rows, csc_vals):
    """Rows i0:i1 of the batch regrouped by pairs of adjacent pixels (2q, 2q + 1): one entry per row that has
    either, with both values (0 for a missing one), so that one read of a dZ1 row serves two rows of the
    weight gradient. cp[q]:cp[q + 1] are pair q's entries; csc_vals holds two values per entry."""
    cp[:] = 0
    for i in range(i0, i1):
        r = order[start + i]
        p, hi = indptr[r], indptr[r + 1]
        while p < hi:
            q = indices[p] >> 1
            p += 2 if p + 1 < hi and indices[p + 1] == indices[p] + 1 and indices[p] % 2 == 0 else 1
            cp[q + 1] += 1
    pairs = cp.shape[0] - 1
    for q in range(pairs):
        cp[q + 1] += cp[q]
    for i in range(i0, i1):
        r = order[start + i]
        p, hi = indptr[r], indptr[r + 1]
        while p < hi:
            c = indices[p]
            q = c >> 1
            e = cp[q]
            csc_rows[e] = i
            if c % 2 == 0:
                csc_vals[2 * e] = values[p]
                if p + 1 < hi and indices[p + 1] == c + 1:
                    csc_vals[2 * e + 1] = values[p + 1]
                    p += 2
                else:
                    csc_vals[2 * e + 1] = 0
                    p += 1
            else:
                csc_vals[2 * e] = 0
                csc_vals[2 * e + 1] = values[p]
                p += 1
            cp[q] = e + 1
    for q in range(pairs, 0, -1):
        cp[q] = cp[q - 1]
    cp[0] = 0


@njit(fastmath={"contract"}, inline="always")
def _gather_pair_add(plan, rows, vals, lo, hi, M, Out, ra, rb, j0, j1, accumulate):
    """Out[ra, j0:j1] (+)= sum of vals[2e] M[rows[e], j0:j1] and Out[rb] likewise with vals[2e + 1], e in lo:hi."""
    lanes = VECTOR_BYTES // M.itemsize
    nv, wide, narrow = plan
    gather_pair_tile(nv + 1, rows, vals, lo, hi, M, Out, ra, rb, j0, wide, accumulate)
    k = j0 + wide * (nv + 1) * lanes
    gather_pair_tile(nv, rows, vals, lo, hi, M, Out, ra, rb, k, narrow, accumulate)
    for j in range(k + narrow * nv * lanes, j1):
        sa = Out[ra, j] if accumulate else Out[ra, j] * 0
        sb = Out[rb, j] if accumulate else Out[rb, j] * 0
        for e in range(lo, hi):
            m = M[rows[e], j]
            sa += vals[2 * e] * m
            sb += vals[2 * e + 1] * m
        Out[ra, j] = sa
        Out[rb, j] = sb


@njit
def _output_layer(part, order, start, labels, b2, has_b2, codes2, m2, loss_kind, loss_eps, nd, H2, A2, dZ2, dZ2T):
    """The batch's outputs from the threads' partial sums, the loss of each row and dZ2 (and its transpose);
    returns (summed loss, number correct)."""
    T, batch, classes = part.shape
    total, correct = 0.0, 0
    for i in range(batch):
        for c in range(classes):
            z = part[0, i, c]
            for t in range(1, T):
                z += part[t, i, c]
            h = activate(z + b2[c] if has_b2 else z, codes2[c])
            H2[i, c] = h
            A2[i, c] = h * m2[c]
        loss, ok = row_loss(A2[i], labels[order[start + i]], loss_kind, loss_eps, nd, dZ2[i], True)
        total += loss
        correct += ok
        for c in range(classes):
            dZ2[i, c] = dZ2[i, c] * derivative(H2[i, c], codes2[c]) * m2[c]
            dZ2T[c, i] = dZ2[i, c]
    return total, correct


@njit(fastmath={"contract"})
def _backward_slice(t, j0, j1, H1, A1, dZ1, dZ2, dZ2T, codes1, relu1, m1, W1, b1, has_b1, W2, W2T, G2T, G2, g_rows,
                    colptr, csc_rows, csc_vals, l2_1, l2_2, state1, state2, kind, lr, beta1, omb1, beta2, omb2, eps,
                    c1, c2):
    """The slice j0:j1 of dZ1, of W2's rows and of W1's columns: gradients and the optimiser step."""
    batch, classes = dZ2.shape
    n_in = W1.shape[0]
    T = colptr.shape[0]
    zero = W1.dtype.type(0)
    vW1, sW1, vb1, sb1 = state1
    vW2, sW2 = state2[0], state2[1]
    plan = tile_plan(j0, j1, W1.itemsize)
    cs, ms = codes1[j0:j1], m1[j0:j1]
    for i in range(batch):
        h1, d1 = H1[i, j0:j1], dZ1[i, j0:j1]
        d1[:] = zero
        for c in range(classes):
            dc = dZ2[i, c]
            w = W2T[c, j0:j1]
            for j in range(d1.shape[0]):
                d1[j] += dc * w[j]
        if relu1:
            for j in range(d1.shape[0]):
                d1[j] = d1[j] * ms[j] if h1[j] > 0 else d1[j] * 0
        else:
            for j in range(d1.shape[0]):
                d1[j] = d1[j] * derivative(h1[j], cs[j]) * ms[j]
    for c in range(classes):                            # this slice's rows of W2: gradient, L2, update
        gather_planned(plan, None, dZ2T[c], 0, batch, A1, G2T[c], j0, j1)
    for j in range(j0, j1):                             # W2's rows j0:j1 are one flat range of W2
        for c in range(classes):
            G2[j, c] = G2T[c, j] + W2[j, c] * l2_2[c] if l2_2.shape[0] else G2T[c, j]
    _update(W2.reshape(-1), G2.reshape(-1), vW2.reshape(-1), sW2.reshape(-1), j0 * classes, j1 * classes, kind, lr,
            beta1, omb1, beta2, omb2, eps, c1, c2)
    for j in range(j0, j1):
        for c in range(classes):
            W2T[c, j] = W2[j, c]
    if has_b1:
        gb1 = g_rows[t, j0:j1]
        gb1[:] = dZ1[0, j0:j1]
        for i in range(1, batch):
            d1 = dZ1[i, j0:j1]
            for j in range(gb1.shape[0]):
                gb1[j] += d1[j]
        _update(b1, g_rows[t], vb1, sb1, j0, j1, kind, lr, beta1, omb1, beta2, omb2, eps, c1, c2)
    g = g_rows[t]
    gs = g[j0:j1]
    for row in range(n_in):
        for u in range(T):
            _gather_add(plan, csc_rows[u], csc_vals[u], colptr[u, row], colptr[u, row + 1], dZ1, g_rows, t, j0, j1,
                        u > 0)
        if l2_1.shape[0]:
            w = W1[row, j0:j1]
            ls = l2_1[j0:j1]
            for j in range(gs.shape[0]):
                gs[j] += w[j] * ls[j]
        _update(W1[row], g, vW1[row], sW1[row], j0, j1, kind, lr, beta1, omb1, beta2, omb2, eps, c1, c2)


@njit(fastmath={"contract"})
def _backward_slice_pairs(t, j0, j1, H1, A1, dZ1, dZ2, dZ2T, codes1, relu1, m1, W1, b1, has_b1, W2, W2T, G2T, G2, g_rows,
                    g_pairs, colptr, csc_rows, csc_vals, l2_1, l2_2, state1, state2, kind, lr, beta1, omb1, beta2, omb2, eps,
                    c1, c2):
    """The slice j0:j1 of dZ1, of W2's rows and of W1's columns: gradients and the optimiser step."""
    batch, classes = dZ2.shape
    n_in = W1.shape[0]
    T = colptr.shape[0]
    zero = W1.dtype.type(0)
    vW1, sW1, vb1, sb1 = state1
    vW2, sW2 = state2[0], state2[1]
    plan = tile_plan(j0, j1, W1.itemsize)
    cs, ms = codes1[j0:j1], m1[j0:j1]
    for i in range(batch):
        h1, d1 = H1[i, j0:j1], dZ1[i, j0:j1]
        d1[:] = zero
        for c in range(classes):
            dc = dZ2[i, c]
            w = W2T[c, j0:j1]
            for j in range(d1.shape[0]):
                d1[j] += dc * w[j]
        if relu1:
            for j in range(d1.shape[0]):
                d1[j] = d1[j] * ms[j] if h1[j] > 0 else d1[j] * 0
        else:
            for j in range(d1.shape[0]):
                d1[j] = d1[j] * derivative(h1[j], cs[j]) * ms[j]
    for c in range(classes):                            # this slice's rows of W2: gradient, L2, update
        gather_planned(plan, None, dZ2T[c], 0, batch, A1, G2T[c], j0, j1)
    for j in range(j0, j1):                             # W2's rows j0:j1 are one flat range of W2
        for c in range(classes):
            G2[j, c] = G2T[c, j] + W2[j, c] * l2_2[c] if l2_2.shape[0] else G2T[c, j]
    _update(W2.reshape(-1), G2.reshape(-1), vW2.reshape(-1), sW2.reshape(-1), j0 * classes, j1 * classes, kind, lr,
            beta1, omb1, beta2, omb2, eps, c1, c2)
    for j in range(j0, j1):
        for c in range(classes):
            W2T[c, j] = W2[j, c]
    if has_b1:
        gb1 = g_rows[t, j0:j1]
        gb1[:] = dZ1[0, j0:j1]
        for i in range(1, batch):
            d1 = dZ1[i, j0:j1]
            for j in range(gb1.shape[0]):
                gb1[j] += d1[j]
        _update(b1, g_rows[t], vb1, sb1, j0, j1, kind, lr, beta1, omb1, beta2, omb2, eps, c1, c2)
    n_pairs = colptr.shape[1] - 1
    for q in range(n_pairs):
        for u in range(T):
            _gather_pair_add(plan, csc_rows[u], csc_vals[u], colptr[u, q], colptr[u, q + 1], dZ1, g_pairs, 2 * t,
                             2 * t + 1, j0, j1, u > 0)
        for m in range(2):
            row = 2 * q + m
            if row >= n_in:
                break
            g = g_pairs[2 * t + m]
            if l2_1.shape[0]:
                gs, w, ls = g[j0:j1], W1[row, j0:j1], l2_1[j0:j1]
                for j in range(gs.shape[0]):
                    gs[j] += w[j] * ls[j]
            _update(W1[row], g, vW1[row], sW1[row], j0, j1, kind, lr, beta1, omb1, beta2, omb2, eps, c1, c2)


@njit(parallel=True)
def minibatch_epoch_v2(indptr, indices, values, order, labels, batch, W1, b1, has_b1, codes1, masks1, l2_1,
                       W2, b2, has_b2, codes2, masks2, l2_2, state1, state2, kind, lr, beta1, omb1, beta2,
                       omb2, eps, step0, loss_kind, loss_eps, threads):
    dtype = W1.dtype
    n_in, k = W1.shape
    classes = W2.shape[1]
    batches = order.shape[0] // batch
    nd = dtype.type(batch)
    lanes = VECTOR_BYTES // W1.itemsize
    vectors = k // lanes
    T = max(1, min(threads, vectors, batch))
    bounds = np.empty(T + 1, np.int64)
    for t in range(T):
        bounds[t] = lanes * (t * vectors // T)
    bounds[T] = k
    H1 = empty_rows(batch, k, W1)
    A1 = empty_rows(batch, k, W1)
    dZ1 = empty_rows(batch, k, W1)
    part = np.empty((T, batch, classes), dtype)
    H2 = np.empty((batch, classes), dtype)
    A2 = np.empty((batch, classes), dtype)
    dZ2 = np.empty((batch, classes), dtype)
    dZ2T = np.empty((classes, batch), dtype)
    W2T = np.ascontiguousarray(W2.T)
    G2T = empty_rows(classes, k, W1)
    G2 = np.empty((k, classes), dtype)
    relu1 = True
    for j in range(k):
        if codes1[j] != RELU:
            relu1 = False
    ones1 = np.ones(k, dtype)
    ones2 = np.ones(classes, dtype)
    gb2 = np.empty(classes, dtype)
    g_rows = empty_rows(T, k, W1)                       # each thread's gradient row of W1 (its slice)
    cap = (batch // T + 1) * n_in
    colptr = np.empty((T, n_in + 1), np.int64)          # each thread's rows regrouped by pixel
    csc_rows = np.empty((T, cap), np.int64)
    csc_vals = np.empty((T, cap), dtype)
    total, correct = 0.0, 0
    for bi in range(batches):
        start = bi * batch
        m1 = masks1[bi] if masks1.shape[0] else ones1
        m2 = masks2[bi] if masks2.shape[0] else ones2
        step = step0 + bi + 1
        c1 = dtype.type(1 - beta1 ** step) if kind == ADAM else dtype.type(1)
        c2 = dtype.type(1 - beta2 ** step) if kind == ADAM else dtype.type(1)
        for t in prange(T):
            _forward_slice(indptr, indices, values, order, start, batch, W1, b1, has_b1, codes1, relu1, m1, W2T,
                           bounds[t], bounds[t + 1], H1, A1, part[t])
            _regroup(indptr, indices, values, order, start, t * batch // T, (t + 1) * batch // T, colptr[t],
                     csc_rows[t], csc_vals[t])
        loss_sum, ok = _output_layer(part, order, start, labels, b2, has_b2, codes2, m2, loss_kind, loss_eps, nd,
                                     H2, A2, dZ2, dZ2T)
        total += loss_sum
        correct += ok
        for t in prange(T):
            _backward_slice(t, bounds[t], bounds[t + 1], H1, A1, dZ1, dZ2, dZ2T, codes1, relu1, m1, W1, b1, has_b1,
                            W2, W2T, G2T, G2, g_rows, colptr, csc_rows, csc_vals, l2_1, l2_2, state1, state2, kind, lr,
                            beta1, omb1, beta2, omb2, eps, c1, c2)
        if has_b2:
            vb2, sb2 = state2[2], state2[3]
            gb2[:] = dZ2[0]
            for i in range(1, batch):
                gb2 += dZ2[i]
            _update(b2, gb2, vb2, sb2, 0, classes, kind, lr, beta1, omb1, beta2, omb2, eps, c1, c2)
    return total, correct, batches


@njit(parallel=True)
def minibatch_epoch_v3(indptr, indices, values, order, labels, batch, W1, b1, has_b1, codes1, masks1, l2_1,
                       W2, b2, has_b2, codes2, masks2, l2_2, state1, state2, kind, lr, beta1, omb1, beta2,
                       omb2, eps, step0, loss_kind, loss_eps, threads):
    dtype = W1.dtype
    n_in, k = W1.shape
    classes = W2.shape[1]
    batches = order.shape[0] // batch
    nd = dtype.type(batch)
    lanes = VECTOR_BYTES // W1.itemsize
    vectors = k // lanes
    T = max(1, min(threads, vectors, batch))
    bounds = np.empty(T + 1, np.int64)
    for t in range(T):
        bounds[t] = lanes * (t * vectors // T)
    bounds[T] = k
    H1 = empty_rows(batch, k, W1)
    A1 = empty_rows(batch, k, W1)
    dZ1 = empty_rows(batch, k, W1)
    part = np.empty((T, batch, classes), dtype)
    H2 = np.empty((batch, classes), dtype)
    A2 = np.empty((batch, classes), dtype)
    dZ2 = np.empty((batch, classes), dtype)
    dZ2T = np.empty((classes, batch), dtype)
    W2T = np.ascontiguousarray(W2.T)
    G2T = empty_rows(classes, k, W1)
    G2 = np.empty((k, classes), dtype)
    relu1 = True
    for j in range(k):
        if codes1[j] != RELU:
            relu1 = False
    ones1 = np.ones(k, dtype)
    ones2 = np.ones(classes, dtype)
    gb2 = np.empty(classes, dtype)
    g_rows = empty_rows(T, k, W1)                       # each thread's gradient row of W1 (its slice)
    pairs = (n_in + 1) // 2
    cap = (batch // T + 1) * pairs
    colptr = np.empty((T, pairs + 1), np.int64)         # each thread's rows regrouped by pairs of pixels
    csc_rows = np.empty((T, cap), np.int32)
    csc_vals = np.empty((T, 2 * cap), dtype)
    g_pairs = empty_rows(2 * T, k, W1)
    total, correct = 0.0, 0
    for bi in range(batches):
        start = bi * batch
        m1 = masks1[bi] if masks1.shape[0] else ones1
        m2 = masks2[bi] if masks2.shape[0] else ones2
        step = step0 + bi + 1
        c1 = dtype.type(1 - beta1 ** step) if kind == ADAM else dtype.type(1)
        c2 = dtype.type(1 - beta2 ** step) if kind == ADAM else dtype.type(1)
        for t in prange(T):
            _forward_slice(indptr, indices, values, order, start, batch, W1, b1, has_b1, codes1, relu1, m1, W2T,
                           bounds[t], bounds[t + 1], H1, A1, part[t])
            _regroup_pairs(indptr, indices, values, order, start, t * batch // T, (t + 1) * batch // T, colptr[t],
                     csc_rows[t], csc_vals[t])
        loss_sum, ok = _output_layer(part, order, start, labels, b2, has_b2, codes2, m2, loss_kind, loss_eps, nd,
                                     H2, A2, dZ2, dZ2T)
        total += loss_sum
        correct += ok
        for t in prange(T):
            _backward_slice_pairs(t, bounds[t], bounds[t + 1], H1, A1, dZ1, dZ2, dZ2T, codes1, relu1, m1, W1, b1,
                                  has_b1, W2, W2T, G2T, G2, g_rows, g_pairs, colptr, csc_rows, csc_vals, l2_1, l2_2, state1, state2, kind, lr,
                            beta1, omb1, beta2, omb2, eps, c1, c2)
        if has_b2:
            vb2, sb2 = state2[2], state2[3]
            gb2[:] = dZ2[0]
            for i in range(1, batch):
                gb2 += dZ2[i]
            _update(b2, gb2, vb2, sb2, 0, classes, kind, lr, beta1, omb1, beta2, omb2, eps, c1, c2)
    return total, correct, batches


def v2(d, k):
    """v1's backend path with the kernel swapped for v2 (the backend prepares its arguments)."""
    backend = k.cpu.backend.NumbaCpuBackend()
    module = k.cpu.minibatch_epoch
    original = module.minibatch_epoch
    run = _run_on(backend, d, d["X"].dtype)

    def swapped():
        module.minibatch_epoch = lambda *args: minibatch_epoch_v2(*args, numba.get_num_threads())
        try:
            return run()
        finally:
            module.minibatch_epoch = original
    return swapped


def v3(d, k):
    """v2 with the weight gradient gathered by pairs of adjacent pixels."""
    backend = k.cpu.backend.NumbaCpuBackend()
    module = k.cpu.minibatch_epoch
    original = module.minibatch_epoch
    run = _run_on(backend, d, d["X"].dtype)

    def swapped():
        module.minibatch_epoch = lambda *args: minibatch_epoch_v3(*args, numba.get_num_threads())
        try:
            return run()
        finally:
            module.minibatch_epoch = original
    return swapped



# -- v4 ----------------------------------------------------------------------------------------------

import threading  # noqa: E402

from fastmnist.kernels.cpu import barrier  # noqa: E402


@njit(error_model="numpy")
def _output_rows(part, order, start, labels, i0, i1, b2, has_b2, codes2, m2, loss_kind, loss_eps, nd, H2, A2, dZ2,
                 dZ2T):
    """Rows i0:i1 of the batch's outputs from the threads' partial sums, their loss and dZ2 (and dZ2's
    transpose); returns (summed loss, number correct)."""
    T, batch, classes = part.shape
    total, correct = 0.0, 0
    for i in range(i0, i1):
        for c in range(classes):
            z = part[0, i, c]
            for u in range(1, T):
                z += part[u, i, c]
            h = activate(z + b2[c] if has_b2 else z, codes2[c])
            H2[i, c] = h
            A2[i, c] = h * m2[c]
        loss, ok = row_loss(A2[i], labels[order[start + i]], loss_kind, loss_eps, nd, dZ2[i], True)
        total += loss
        correct += ok
        for c in range(classes):
            dZ2[i, c] = dZ2[i, c] * derivative(H2[i, c], codes2[c]) * m2[c]
            dZ2T[c, i] = dZ2[i, c]
    return total, correct


@njit(nogil=True, fastmath={"contract"}, error_model="numpy")
def _epoch_worker(t, T, state, bounds, indptr, indices, values, order, labels, batch, W1, b1, has_b1, codes1, relu1,
                  masks1, l2_1, W2, b2, has_b2, codes2, masks2, l2_2, state1, state2, kind, lr, beta1, omb1, beta2,
                  omb2, eps, step0, loss_kind, loss_eps, H1, A1, dZ1, part, H2, A2, dZ2, dZ2T, W2T, G2T, G2, g_rows,
                  g_pairs, colptr, csc_rows, csc_vals, ones1, ones2, gb2, results):
    """Thread t's share of a minibatch epoch: the hidden units bounds[t]:bounds[t + 1] of every batch, and its
    share of the batch's rows for the regrouping and the loss. The T threads meet twice per batch."""
    dtype = W1.dtype
    batches = order.shape[0] // batch
    nd = dtype.type(batch)
    j0, j1 = bounds[t], bounds[t + 1]
    i0, i1 = t * batch // T, (t + 1) * batch // T
    total, correct = 0.0, 0
    for bi in range(batches):
        start = bi * batch
        parity = bi & 1                      # the regrouped rows alternate between two buffers
        m1 = masks1[bi] if masks1.shape[0] else ones1
        m2 = masks2[bi] if masks2.shape[0] else ones2
        step = step0 + bi + 1
        c1 = dtype.type(1 - beta1 ** step) if kind == ADAM else dtype.type(1)
        c2 = dtype.type(1 - beta2 ** step) if kind == ADAM else dtype.type(1)
        _forward_slice(indptr, indices, values, order, start, batch, W1, b1, has_b1, codes1, relu1, m1, W2T, j0, j1,
                       H1, A1, part[t])
        _regroup_pairs(indptr, indices, values, order, start, i0, i1, colptr[parity, t], csc_rows[parity, t],
                       csc_vals[parity, t])
        barrier.wait(state, T)
        loss_sum, ok = _output_rows(part, order, start, labels, i0, i1, b2, has_b2, codes2, m2, loss_kind, loss_eps,
                                    nd, H2, A2, dZ2, dZ2T)
        total += loss_sum
        correct += ok
        barrier.wait(state, T)
        _backward_slice_pairs(t, j0, j1, H1, A1, dZ1, dZ2, dZ2T, codes1, relu1, m1, W1, b1, has_b1, W2, W2T, G2T, G2,
                              g_rows, g_pairs, colptr[parity], csc_rows[parity], csc_vals[parity], l2_1, l2_2, state1,
                              state2, kind, lr, beta1, omb1, beta2, omb2, eps, c1, c2)
        if t == 0 and has_b2:
            gb2[:] = dZ2[0]
            for i in range(1, batch):
                gb2 += dZ2[i]
            _update(b2, gb2, state2[2], state2[3], 0, gb2.shape[0], kind, lr, beta1, omb1, beta2, omb2, eps, c1, c2)
    results[t, 0] = total
    results[t, 1] = correct


def minibatch_epoch_v4(indptr, indices, values, order, labels, batch, W1, b1, has_b1, codes1, masks1, l2_1,
                       W2, b2, has_b2, codes2, masks2, l2_2, state1, state2, kind, lr, beta1, omb1, beta2,
                       omb2, eps, step0, loss_kind, loss_eps, threads):
    dtype = W1.dtype
    n_in, k = W1.shape
    classes = W2.shape[1]
    lanes = VECTOR_BYTES // W1.itemsize
    vectors = k // lanes
    T = max(1, min(threads, vectors, batch))
    bounds = np.array([lanes * (t * vectors // T) for t in range(T)] + [k], np.int64)
    empty = lambda *shape: empty_rows(shape[0], shape[1], W1) if len(shape) == 2 else np.empty(shape, dtype)  # noqa
    pairs = (n_in + 1) // 2
    cap = (batch // T + 1) * pairs
    buffers = dict(
        H1=empty(batch, k), A1=empty(batch, k), dZ1=empty(batch, k), part=np.empty((T, batch, classes), dtype),
        H2=np.empty((batch, classes), dtype), A2=np.empty((batch, classes), dtype),
        dZ2=np.empty((batch, classes), dtype), dZ2T=np.empty((classes, batch), dtype),
        W2T=np.ascontiguousarray(W2.T), G2T=empty(classes, k), G2=np.empty((k, classes), dtype),
        g_rows=empty(T, k), g_pairs=empty(2 * T, k), colptr=np.empty((2, T, pairs + 1), np.int64),
        csc_rows=np.empty((2, T, cap), np.int32), csc_vals=np.empty((2, T, 2 * cap), dtype),
        ones1=np.ones(k, dtype), ones2=np.ones(classes, dtype), gb2=np.empty(classes, dtype),
        results=np.zeros((T, 2)))
    relu1 = bool(np.all(codes1 == RELU))
    state = barrier.new_state()
    args = (state, bounds, indptr, indices, values, order, labels, batch, W1, b1, has_b1, codes1, relu1, masks1, l2_1,
            W2, b2, has_b2, codes2, masks2, l2_2, state1, state2, kind, lr, beta1, omb1, beta2, omb2, eps, step0,
            loss_kind, loss_eps, *buffers.values())
    others = [threading.Thread(target=_epoch_worker, args=(t, T) + args, daemon=True) for t in range(1, T)]
    for th in others:
        th.start()
    _epoch_worker(0, T, *args)
    for th in others:
        th.join()
    results = buffers["results"]
    return float(results[:, 0].sum()), int(results[:, 1].sum()), order.shape[0] // batch


def v4(d, k):
    """v3's design on T Python threads, each running its share of the whole epoch in one compiled call, meeting
    at a spin barrier twice per batch (no parallel loops: no fork and join per section)."""
    backend = k.cpu.backend.NumbaCpuBackend()
    module = k.cpu.minibatch_epoch
    original = module.minibatch_epoch
    run = _run_on(backend, d, d["X"].dtype)

    def swapped():
        module.minibatch_epoch = lambda *args: minibatch_epoch_v4(*args, numba.get_num_threads())
        try:
            return run()
        finally:
            module.minibatch_epoch = original
    return swapped

VERSIONS = {"v1": v1, "v2": v2, "v3": v3, "v4": v4}
TOL = {np.float64: 1e-11, np.float32: 1e-4}      # Adam's division by sqrt(s) amplifies float32 rounding


def WORK(d):
    nnz, units, item = np.count_nonzero(d["X"]), d["hidden"], d["X"].itemsize
    rows = d["X"].shape[0]
    return 4 * nnz * units + 6 * rows * units * 10, (rows // d["batch"]) * 7 * 784 * units * item


if __name__ == "__main__":
    run_main(globals())
