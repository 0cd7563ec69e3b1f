"""A whole minibatch epoch of a network with one hidden layer, and its evaluation, in compiled code on T threads
(the `fast` preset).

Each of T Python threads runs `_epoch_worker` (compiled, without the GIL) for the whole epoch and owns one
slice of the hidden units: for every batch it computes its slice of the hidden layer and its share of the
output layer's sums, regroups its share of the batch's rows by pairs of adjacent pixels, meets the others
(barrier.wait), computes the loss and dZ2 of its share of the rows, meets them again, then computes its
slice of dZ1, of W2's rows and of W1's columns (the weight gradient gathered pixel pair by pixel pair, two
rows of it per read of a dZ1 row) and applies the optimiser to them. No element is written by two threads;
the regrouped rows alternate between two buffers so that one thread may regroup batch b + 1 while another
still reads batch b's. Two meeting points per batch replace the fork and join of a parallel loop per phase.
An evaluation runs the same worker without its training steps: one compiled function serves both, since
compiling is most of a new install's first run.

Per-unit dropout masks are drawn by the caller, batch by batch in the reference's order. Results equal the
reference's within rounding. The compiled helpers loop over views indexed from 0: an index from a run-time
start would get a wraparound check per element, which stops LLVM from vectorising. Calls between compiled
functions pass no constant arguments: a constant is typed as its literal value, and every new literal
compiles the callee once more (what a new install spends its first seconds on).
"""

from __future__ import annotations


import numpy as np
from numba import njit

from . import barrier, simd
from .threads import run_workers
from .activation import activate, derivative
from .loss import row_loss
from .epoch_parts import MB_WIDTH, dot, gather_pair_add, one_row, regroup_pairs, unit_slices, update_row
from .simd import CACHE, MAX_TILE, gather_planned, tile_plan
from ..codes import RELU, SGD

EVAL_ROWS = 256         # rows per batch of an evaluation


@njit(cache=CACHE, fastmath={"contract"}, error_model="numpy")
def _forward_slice(indptr, indices, values, rows, start, count, W1, b1, has_b1, codes1, relu1, m1, W2T, j0, j1,
                   H1, A1, part):
    """Units j0:j1 of the hidden layer for the input rows rows[start:start + count] (H1, A1 rows 0:count), and
    their share of the output layer's sums (part[i, c])."""
    zero = W1.dtype.type(0)
    plan = tile_plan(j0, j1, W1.itemsize, MAX_TILE, MB_WIDTH)
    classes = W2T.shape[0]
    bs, cs, ms = b1[j0:j1], codes1[j0:j1], m1[j0:j1]
    for i in range(count):
        r = rows[start + i]
        gather_planned(plan, indices, values, indptr[r], indptr[r + 1], W1, H1[i], j0, j1, MB_WIDTH)
        h1, a1 = H1[i, j0:j1], A1[i, j0:j1]
        if has_b1:
            for j in range(h1.shape[0]):
                h1[j] += bs[j]
        if relu1:
            for j in range(h1.shape[0]):
                h = h1[j] if h1[j] > 0 or np.isnan(h1[j]) else h1[j] * 0      # NaN stays NaN
                h1[j] = h
                a1[j] = h * ms[j]
        else:
            for j in range(h1.shape[0]):
                h = activate(h1[j], cs[j])
                h1[j] = h
                a1[j] = h * ms[j]
        for c in range(classes):
            part[i, c] = dot(a1, W2T[c, j0:j1], zero)


@njit(cache=CACHE, error_model="numpy")
def _output_rows(part, rows, start, labels, i0, i1, b2, has_b2, codes2, m2, loss_kind, loss_eps, nd, H2, A2, dZ2,
                 dZ2T, need_grad):
    """Rows i0:i1 of a batch's outputs, from the threads' partial sums, their loss and (need_grad) dZ2 and its
    transpose; returns (summed loss, number correct)."""
    T, _, classes = part.shape
    total, correct = 0.0, 0
    for i in range(i0, i1):
        for c in range(classes):
            z = part[0, i, c]
            for u in range(1, T):
                z += part[u, i, c]
            h = activate(z + b2[c] if has_b2 else z, codes2[c])
            H2[i, c] = h
            A2[i, c] = h * m2[c]
        loss, ok = row_loss(A2[i], labels[rows[start + i]], loss_kind, loss_eps, nd, dZ2[i], need_grad)
        total += loss
        correct += ok
        if need_grad:
            for c in range(classes):
                dZ2[i, c] = dZ2[i, c] * derivative(H2[i, c], codes2[c]) * m2[c]
                dZ2T[c, i] = dZ2[i, c]
    return total, correct


# Inlined into the worker by Numba (its only caller): compiled once there, not also as a function of its own
# that LLVM would optimise and emit a second time. The optimiser's settings come as one tuple, `step` (as
# update_row takes them): a call of more than 30 arguments reaches Numba as *args, which its inliner does not take.
@njit(cache=CACHE, fastmath={"contract"}, error_model="numpy", inline="always")
def _backward_slice(t, j0, j1, H1, A1, dZ1, dZ2, dZ2T, codes1, relu1, m1, W1, b1, has_b1, W2, W2T, G2T, G2, g_rows,
                    g_pairs, colptr, pair_rows, pair_values, l2_1, l2_2, state1, bias1, rows2, step):
    """Thread t's units j0:j1: dZ1, the gradient and the optimiser step of W2's rows and W1's columns j0:j1
    (and of b1's). W2's rows are updated after dZ1 has read them. state1: (v_W1, s_W1); bias1: (b1, v_b1, s_b1)
    and rows2: (W2, G2, v_W2, s_W2), each viewed as one row; step: this batch's optimiser step (update_row's)."""
    batch, classes = dZ2.shape
    n_in = W1.shape[0]
    T = colptr.shape[0]
    zero = W1.dtype.type(0)
    vW1, sW1 = state1
    B1, VB1, SB1 = bias1
    plan = tile_plan(j0, j1, W1.itemsize, MAX_TILE, MB_WIDTH)
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
    for c in range(classes):                        # W2's rows j0:j1: the gradient A1.T @ dZ2, by class
        gather_planned(plan, None, dZ2T[c], batch - batch, batch, A1, G2T[c], j0, j1, MB_WIDTH)
    for j in range(j0, j1):                         # ... laid out as W2's rows, one flat range of W2
        for c in range(classes):
            G2[j, c] = G2T[c, j] + W2[j, c] * l2_2[c] if l2_2.shape[0] else G2T[c, j]
    r0 = t - t                                      # row 0, not a literal (see the module's docstring)
    update_row(rows2[0], r0, rows2[1], r0, rows2[2], rows2[3], j0 * classes, j1 * classes, step)
    for j in range(j0, j1):
        for c in range(classes):
            W2T[c, j] = W2[j, c]
    if has_b1:
        gb1 = g_rows[t, j0:j1]
        for j in range(gb1.shape[0]):           # loops, not slice assignment, which compiles a shape check and
            gb1[j] = zero                       # its error message's string formatting (compile time only)
        for i in range(batch):
            d1 = dZ1[i, j0:j1]
            for j in range(gb1.shape[0]):
                gb1[j] += d1[j]
        update_row(B1, r0, g_rows, t, VB1, SB1, j0, j1, step)
    for q in range(colptr.shape[1] - 1):            # W1's columns j0:j1, two of its rows (pixels) at a time
        for u in range(T):
            gather_pair_add(plan, pair_rows[u], pair_values[u], colptr[u, q], colptr[u, q + 1], dZ1, g_pairs, 2 * t,
                             2 * t + 1, j0, j1, u > 0)
        for m in range(2):
            row = 2 * q + m
            if row >= n_in:
                break
            if l2_1.shape[0]:
                gs, w, ls = g_pairs[2 * t + m, j0:j1], W1[row, j0:j1], l2_1[j0:j1]
                for j in range(gs.shape[0]):
                    gs[j] += w[j] * ls[j]
            update_row(W1, row, g_pairs, 2 * t + m, vW1, sW1, j0, j1, step)


@njit(cache=CACHE, nogil=True, fastmath={"contract"}, error_model="numpy")
def _epoch_worker(t, T, state, bounds, indptr, indices, values, order, labels, batch, W1, b1, has_b1, codes1, relu1,
                  masks1, l2_1, W2, b2, has_b2, codes2, masks2, l2_2, state1, bias1, bias2, kind, lr, beta1, omb1,
                  beta2, omb2, eps, corrections, loss_kind, loss_eps, H1, A1, dZ1, part, H2, A2, dZ2, dZ2T, W2T, G2T,
                  G2, g_rows, g_pairs, colptr, pair_rows, pair_values, ones1, ones2, gb2, rows2, need_grad, results):
    """Thread t of T: units bounds[t]:bounds[t + 1] of every batch, and the batch's rows t*batch//T:(t+1)*batch//T
    for the regrouping and the loss. Writes (summed loss, number correct) of its rows into results[t].

    Without need_grad (an evaluation) thread t instead takes whole batches t, t + T, ... (the last may be
    short) through every unit, in its own rows of H1, A1, part, H2, A2 and dZ2 (T times a batch's, for the
    loss's scratch), with no meeting points; the parameters are not touched and the training-only arguments
    are not read."""
    dtype = W1.dtype
    n = order.shape[0]
    total, correct = 0.0, 0
    if not need_grad:
        k0, k1 = bounds[0], bounds[T]
        r0, r1 = t * batch, (t + 1) * batch
        for bi in range(t, (n + batch - 1) // batch, T):
            start = bi * batch
            count = min(batch, n - start)
            _forward_slice(indptr, indices, values, order, start, count, W1, b1, has_b1, codes1, relu1, ones1, W2T, k0,
                           k1, H1[r0:r1], A1[r0:r1], part[t])
            loss_sum, ok = _output_rows(part[t:t + 1], order, start, labels, count - count, count, b2, has_b2, codes2,
                                        ones2, loss_kind, loss_eps, dtype.type(1), H2[r0:r1], A2[r0:r1], dZ2[r0:r1],
                                        dZ2T, need_grad)
            total += loss_sum
            correct += ok
        results[t, 0] = total
        results[t, 1] = correct
        return
    batches = n // batch
    nd = dtype.type(batch)
    j0, j1 = bounds[t], bounds[t + 1]
    i0, i1 = t * batch // T, (t + 1) * batch // T
    for bi in range(batches):
        start = bi * batch
        parity = bi & 1
        m1 = masks1[bi] if masks1.shape[0] else ones1
        m2 = masks2[bi] if masks2.shape[0] else ones2
        _forward_slice(indptr, indices, values, order, start, batch, W1, b1, has_b1, codes1, relu1, m1, W2T, j0, j1,
                       H1, A1, part[t])
        regroup_pairs(indptr, indices, values, order, start, i0, i1, colptr[parity, t], pair_rows[parity, t],
                       pair_values[parity, t])
        barrier.wait(state, T)
        loss_sum, ok = _output_rows(part, order, start, labels, i0, i1, b2, has_b2, codes2, m2, loss_kind, loss_eps,
                                    nd, H2, A2, dZ2, dZ2T, need_grad)
        total += loss_sum
        correct += ok
        barrier.wait(state, T)
        step = (kind, lr, beta1, omb1, beta2, omb2, eps, corrections[bi, 0], corrections[bi, 1])
        _backward_slice(t, j0, j1, H1, A1, dZ1, dZ2, dZ2T, codes1, relu1, m1, W1, b1, has_b1, W2, W2T, G2T, G2,
                        g_rows, g_pairs, colptr[parity], pair_rows[parity], pair_values[parity], l2_1, l2_2, state1,
                        bias1, rows2, step)
        if t == 0 and has_b2:
            classes = gb2.shape[1]
            for c in range(classes):
                gb2[0, c] = dZ2[0, c]
            for i in range(1, batch):
                for c in range(classes):
                    gb2[0, c] += dZ2[i, c]
            r0 = t - t                              # not a literal 0 (see the module's docstring)
            update_row(bias2[0], r0, gb2, r0, bias2[1], bias2[2], r0, classes, step)
    results[t, 0] = total
    results[t, 1] = correct


def minibatch_epoch(indptr, indices, values, order, labels, batch, W1, b1, has_b1, codes1, masks1, l2_1,
                    W2, b2, has_b2, codes2, masks2, l2_2, state1, state2, kind, lr, beta1, one_minus_beta1, beta2,
                    one_minus_beta2, eps, corrections, loss_kind, loss_eps, threads):
    """Trains on len(order) // batch batches, rows order[b * batch:(b + 1) * batch] of the compressed input
    (indptr, indices, values), on `threads` threads; returns (summed loss, number correct, batches).

    b1, b2: the biases, read and updated only when has_b1, has_b2. masks1/masks2: (batches, units) per-unit
    dropout scales, or (0, units) for none. l2_1/l2_2: per-unit L2 coefficients (dW += l2 * W), or empty.
    corrections: (batches, 2) Adam's bias corrections of each batch's step (`adam_corrections`).
    state1/state2: the optimiser moments (v_W, s_W, v_b, s_b) of each layer (any arrays of the right
    shapes for SGD, which reads none). Scalars have the weights' dtype, as optim's. All arrays C-contiguous.
    """
    total, correct = _run_epoch_worker(indptr, indices, values, order, labels, batch, W1, b1, has_b1, codes1,
                                       masks1, l2_1, W2, b2, has_b2, codes2, masks2, l2_2, state1, state2, kind, lr,
                                       beta1, one_minus_beta1, beta2, one_minus_beta2, eps, corrections, loss_kind,
                                       loss_eps, threads, True)
    return total, correct, order.shape[0] // batch


def evaluate(indptr, indices, values, labels, W1, b1, has_b1, codes1, W2, b2, has_b2, codes2, loss_kind, loss_eps,
             threads):
    """(summed loss, number correct) of a one-hidden-layer network on every row of a compressed input, without
    dropout: the epoch's own worker without its training steps (one compiled function for both), EVAL_ROWS
    rows at a time, each thread taking whole batches."""
    n = indptr.shape[0] - 1
    k, classes = W2.shape
    dtype = W1.dtype
    batch = min(EVAL_ROWS, max(1, n))
    zero = dtype.type(0)
    none = np.zeros(0, dtype)
    b1, b2 = np.ascontiguousarray(b1), np.ascontiguousarray(b2)        # viewed as rows below; no copy if they are
    return _run_epoch_worker(indptr, indices, values, np.arange(n), labels, batch, W1, b1, has_b1, codes1,
                             np.empty((0, k), dtype), none, W2, b2, has_b2, codes2, np.empty((0, classes), dtype), none,
                             (W1, W1, b1, b1), (W2, W2, b2, b2), SGD, zero, zero, zero, zero, zero, zero,
                             np.ones(((n + batch - 1) // batch, 2), dtype), loss_kind, loss_eps, threads, False)


def _run_epoch_worker(indptr, indices, values, order, labels, batch, W1, b1, has_b1, codes1, masks1, l2_1, W2, b2,
                      has_b2, codes2, masks2, l2_2, state1, state2, kind, lr, beta1, one_minus_beta1, beta2,
                      one_minus_beta2, eps, corrections, loss_kind, loss_eps, threads, need_grad):
    """_epoch_worker on T threads with its buffers; (summed loss, number correct)."""
    dtype = W1.dtype
    n_in, k = W1.shape
    classes = W2.shape[1]
    if need_grad:
        bounds = unit_slices(k, W1.itemsize, threads, batch)
        T = bounds.shape[0] - 1
        m, pairs = batch, (n_in + 1) // 2               # rows of the per-row buffers; pixel pairs
        cap = (batch // T + 1) * pairs                  # regrouped entries per thread
    else:                                               # an evaluation: whole batches per thread, all units
        T = max(1, min(threads, -(-order.shape[0] // batch)))
        bounds = np.array([0] * T + [k], np.int64)
        m, pairs, cap = T * batch, 1, 1
    rows = lambda n: simd.aligned_empty((n, k), dtype)  # noqa: E731
    small = lambda *shape: simd.aligned_empty(shape, dtype)  # noqa: E731
    buffers = (rows(m), rows(m), rows(batch if need_grad else 1), small(T, batch, classes),    # H1 A1 dZ1 part
               small(m, classes), small(m, classes),                                            # H2 A2
               small(m, classes), small(classes, batch),                                        # dZ2 dZ2T
               np.ascontiguousarray(W2.T), rows(classes), small(k, classes),                    # W2T G2T G2
               rows(T), rows(2 * T),                                                            # g_rows g_pairs
               np.empty((2, T, pairs + 1), np.int64), np.empty((2, T, cap), np.int32),          # colptr pair_rows
               small(2, T, 2 * cap),                                                            # pair_values
               np.ones(k, dtype), np.ones(classes, dtype), small(1, classes))                   # ones1 ones2 gb2
    rows2 = one_row(W2, buffers[10], state2[0], state2[1])
    bias1, bias2 = one_row(b1, state1[2], state1[3]), one_row(b2, state2[2], state2[3])
    results = np.zeros((T, 2))
    relu1 = bool(np.all(codes1 == RELU))
    run_workers(_epoch_worker, T, (barrier.new_state(), bounds, indptr, indices, values, order, labels, batch, W1, b1,
                            has_b1, codes1, relu1, masks1, l2_1, W2, b2, has_b2, codes2, masks2, l2_2, state1[:2],
                            bias1, bias2, kind, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, corrections,
                            loss_kind, loss_eps) + buffers + (rows2, need_grad, results))
    return float(results[:, 0].sum()), int(results[:, 1].sum())
