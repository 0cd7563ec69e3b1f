"""A whole minibatch epoch of any stack of dense layers after a sparse first layer, in compiled code on T threads:
the general minibatch epoch (every network with at least two layers whose batches the other compiled paths
do not take).

Each of T Python threads runs `_worker` (compiled, without the GIL) for the whole epoch. Per batch:
  A. thread t computes its slice bounds[t]:bounds[t + 1] of the first layer's units for every row of the batch
     (a gather of W's rows at the stored pixels, as the `fast` epoch does) and regroups its share of the rows
     by pairs of adjacent pixels for the weight gradient; the threads meet (barrier.wait);
  B. thread t takes its share of the batch's rows through every dense layer (cpu/dense_rows.py: four rows at a
     time, register-tiled), the loss, and back down to dZ of the first layer: rows need no other thread's rows,
     so the whole stack runs without meeting; the threads meet again;
  C. thread t computes and applies (with the optimiser) the gradient of the first layer's columns it owns
     (pixel pairs, as the `fast` epoch), of its share of every dense layer's weight rows (A.T @ dZ read in
     place) and of its share of every bias; each dense layer's transposed copy (for phase B's dA = dZ @ W.T)
     is updated with its rows.
No element is written by two threads between two meetings, and phase C reads only what phase A and B of the
same batch wrote: the next batch's phase A writes only the first layer's columns that the same thread owns
(dense layer 1's weight rows are split as the first layer's units), and phase B starts after the next meeting.

The dense layers come as one group of flat arrays (weights, their transposes, biases, optimiser moments, L2
factors, dropout scales and masks) and a table `meta` of each layer's sizes and offsets into them, so one
compiled worker serves every depth and width in each dtype (a tuple of per-layer arrays would be a new type,
and a new compilation, for every depth). Dropout masks (per unit or per element) are drawn by the caller batch
by batch, layer by layer, in the reference's order, and passed as 0/1 bytes with one forward and one backward
scale per unit. Results equal the reference's within rounding.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import barrier
from ..codes import RELU
from .activation import activate, code_runs, times_derivative_runs
from .dense_rows import forward_rows, forward_rows_narrow, input_grad_rows, weight_grad_block, weight_grad_block_narrow
from .loss import row_loss
from .epoch_parts import MB_WIDTH, gather_pair_add, regroup_pairs, unit_slices, update_row
from . import simd
from .simd import CACHE, MAX_TILE, gather_planned, tile_plan
from .threads import run_workers

NONE, UNIT, ELEMENT = 0, 1, 2
DROPOUT_CODES = {"unit": UNIT, "element": ELEMENT}
# columns of `meta`, one row per dense layer: inputs, units, offset of W (and WT, V, S) in the flat weights,
# offset of its units in the flat per-unit vectors (bias, L2, scales), whether it has a bias, its rows of the
# code-runs table, whether it has L2, its dropout kind, offset of its masks in the flat bytes, offset of its
# activations in the flat (rows x units) buffers, whether it is narrower than a vector (dense_rows: its products
# and its optimiser step then work on WT, and its optimiser moments are kept transposed too)
K, N, W_AT, U_AT, HAS_B, RUNS_LO, RUNS_HI, HAS_L2, DROP, KEPT_AT, ACT_AT, NARROW = range(12)


@njit(cache=CACHE, fastmath={"contract"}, error_model="numpy", inline="always")
def _first_forward(data, first, bi, j0, j1, H0, A0):
    """Units j0:j1 of the first layer for every row of batch bi (H0: after the activation, A0: after dropout)."""
    indptr, indices, values, order, labels, batch = data[:6]
    W0, bias0, has_b0, codes0, runs0, relu0, kept0, drop0, fscale0 = first[:9]
    start = bi * batch
    plan = tile_plan(j0, j1, W0.itemsize, MAX_TILE, MB_WIDTH)
    bs, cs, fs = bias0[0][0, j0:j1], codes0[j0:j1], fscale0[j0:j1]
    for i in range(batch):
        r = order[start + i]
        gather_planned(plan, indices, values, indptr[r], indptr[r + 1], W0, H0[i], j0, j1, MB_WIDTH)
        h0, a0 = H0[i, j0:j1], A0[i, j0:j1]
        if has_b0:
            for j in range(h0.shape[0]):
                h0[j] += bs[j]
        if relu0:
            for j in range(h0.shape[0]):
                h0[j] = h0[j] if h0[j] > 0 or np.isnan(h0[j]) else h0[j] * 0      # NaN stays NaN
        else:
            for j in range(h0.shape[0]):
                h0[j] = activate(h0[j], cs[j])
        if drop0 == NONE:
            for j in range(h0.shape[0]):
                a0[j] = h0[j]
        else:
            ks = kept0[bi if drop0 == UNIT else start + i, j0:j1]
            for j in range(h0.shape[0]):
                a0[j] = h0[j] * (ks[j] * fs[j])


@njit(cache=CACHE, error_model="numpy")
def _kept(keptf, meta, d, batches, batch):
    """Dense layer d's 0/1 dropout masks as (batches, units) per unit or (batches * batch, units) per element
    ((0, units) without dropout)."""
    n, drop = meta[d, N], meta[d, DROP]
    rows = 0 if drop == NONE else (batches if drop == UNIT else batches * batch)
    at = meta[d, KEPT_AT]
    return keptf[at:at + rows * n].reshape((rows, n))


@njit(cache=CACHE, fastmath={"contract"}, error_model="numpy")
def _times_mask(D, i, kept, krow, scale):
    """D[i] *= kept[krow] * scale (the backward dropout mask)."""
    d, ks = D[i], kept[krow]
    for j in range(d.shape[0]):
        d[j] = d[j] * (ks[j] * scale[j])


@njit(cache=CACHE, fastmath={"contract"}, error_model="numpy", inline="always")
def _rows_phase(data, first, dense, bufs, bi, i0, i1):
    """Rows i0:i1 of batch bi through the dense layers, the loss and back to dZ of the first layer; returns
    (summed loss, number correct)."""
    indptr, indices, values, order, labels, batch, loss_kind, loss_eps = data
    runs0, kept0, drop0, bscale0 = first[4], first[6], first[7], first[9]
    Wf, WTf, Bf, fscalef, bscalef, keptf, runs, meta = dense[0], dense[1], dense[4], dense[8], dense[9], dense[10], \
        dense[11], dense[12]
    H0, A0, dZ0, Hf, Af, Df = bufs[:6]
    layers = meta.shape[0]
    start = bi * batch
    nd = Wf.dtype.type(batch)
    Ain = A0
    for d in range(layers):
        k, n, wa, ua, ha = meta[d, K], meta[d, N], meta[d, W_AT], meta[d, U_AT], meta[d, ACT_AT]
        H = Hf[ha:ha + batch * n].reshape((batch, n))
        if meta[d, NARROW]:
            forward_rows_narrow(Ain, WTf[wa:wa + k * n].reshape((n, k)), Bf[ua:ua + n], meta[d, HAS_B] != 0,
                                runs[meta[d, RUNS_LO]:meta[d, RUNS_HI]], H, i0, i1)
        else:
            forward_rows(Ain, Wf[wa:wa + k * n].reshape((k, n)), Bf[ua:ua + n], meta[d, HAS_B] != 0,
                         runs[meta[d, RUNS_LO]:meta[d, RUNS_HI]], H, i0, i1)
        drop = meta[d, DROP]
        if drop == NONE:
            Ain = H
        else:
            A = Af[ha:ha + batch * n].reshape((batch, n))
            kept = _kept(keptf, meta, d, order.shape[0] // batch, batch)
            fs = fscalef[ua:ua + n]
            for i in range(i0, i1):
                ks = kept[bi if drop == UNIT else start + i]
                for j in range(n):
                    A[i, j] = H[i, j] * (ks[j] * fs[j])
            Ain = A
    last = layers - 1
    n, ha = meta[last, N], meta[last, ACT_AT]
    out = Hf[ha:ha + batch * n].reshape((batch, n))
    D = Df[ha:ha + batch * n].reshape((batch, n))
    last_runs = runs[meta[last, RUNS_LO]:meta[last, RUNS_HI]]
    total, correct = 0.0, 0
    for i in range(i0, i1):
        loss, ok = row_loss(out[i], labels[order[start + i]], loss_kind, loss_eps, nd, D[i], True)
        total += loss
        correct += ok
        times_derivative_runs(D[i], out[i], last_runs)
    for d in range(last, -1, -1):
        k, n, wa, ha = meta[d, K], meta[d, N], meta[d, W_AT], meta[d, ACT_AT]
        D = Df[ha:ha + batch * n].reshape((batch, n))
        WT = WTf[wa:wa + k * n].reshape((n, k))
        if d > 0:
            p = d - 1
            pa, pu = meta[p, ACT_AT], meta[p, U_AT]
            Dp = Df[pa:pa + batch * k].reshape((batch, k))
            Hp = Hf[pa:pa + batch * k].reshape((batch, k))
            input_grad_rows(D, WT, Dp, i0, i1)
            p_runs = runs[meta[p, RUNS_LO]:meta[p, RUNS_HI]]
            drop = meta[p, DROP]
            kept = _kept(keptf, meta, p, order.shape[0] // batch, batch)
            for i in range(i0, i1):
                times_derivative_runs(Dp[i], Hp[i], p_runs)
                if drop != NONE:
                    _times_mask(Dp, i, kept, bi if drop == UNIT else start + i, bscalef[pu:pu + k])
        else:
            input_grad_rows(D, WT, dZ0, i0, i1)
            for i in range(i0, i1):
                times_derivative_runs(dZ0[i], H0[i], runs0)
                if drop0 != NONE:
                    _times_mask(dZ0, i, kept0, bi if drop0 == UNIT else start + i, bscale0)
    return total, correct


@njit(cache=CACHE, fastmath={"contract"}, error_model="numpy", inline="always")
def _first_update(t, T, first, opt, bufs, parity, bi, j0, j1):
    """Thread t's columns j0:j1 of the first layer: its bias's and weights' gradients and optimiser steps."""
    W0, bias0, has_b0 = first[0], first[1], first[2]
    l2_0, state0 = first[10], first[11]
    kind, lr, beta1, omb1, beta2, omb2, eps, corrections = opt
    step = (kind, lr, beta1, omb1, beta2, omb2, eps, corrections[bi, 0], corrections[bi, 1])     # update_row's
    dZ0, g_rows, g_pairs, colptr, pair_rows, pair_values = bufs[2], bufs[6], bufs[7], bufs[8], bufs[9], bufs[10]
    batch = dZ0.shape[0]
    n_in = W0.shape[0]
    zero = W0.dtype.type(0)
    vW0, sW0 = state0
    B0, VB0, SB0 = bias0
    r0 = t - t                                      # row 0, not a literal (see minibatch_epoch's docstring)
    plan = tile_plan(j0, j1, W0.itemsize, MAX_TILE, MB_WIDTH)
    if has_b0:
        gb = g_rows[t, j0:j1]
        for j in range(gb.shape[0]):
            gb[j] = zero
        for i in range(batch):
            d0 = dZ0[i, j0:j1]
            for j in range(gb.shape[0]):
                gb[j] += d0[j]
        update_row(B0, r0, g_rows, t, VB0, SB0, j0, j1, step)
    cp, pr, pv = colptr[parity], pair_rows[parity], pair_values[parity]
    for q in range(cp.shape[1] - 1):                # W0's columns j0:j1, two of its rows (pixels) at a time
        for u in range(T):
            gather_pair_add(plan, pr[u], pv[u], cp[u, q], cp[u, q + 1], dZ0, g_pairs, 2 * t, 2 * t + 1, j0, j1,
                             u > 0)
        for m in range(2):
            row = 2 * q + m
            if row >= n_in:
                break
            if l2_0.shape[0]:
                gs, w, ls = g_pairs[2 * t + m, j0:j1], W0[row, j0:j1], l2_0[j0:j1]
                for j in range(gs.shape[0]):
                    gs[j] += w[j] * ls[j]
            update_row(W0, row, g_pairs, 2 * t + m, vW0, sW0, j0, j1, step)


@njit(cache=CACHE, fastmath={"contract"}, error_model="numpy", inline="always")
def _dense_update(t, T, dense, opt, bufs, bounds, bi):
    """Thread t's share of every dense layer: rows of its weights (those of the first layer's units it owns for
    the first dense layer, an equal share of the others') and columns of its bias; gradients, L2, optimiser."""
    Wf, WTf, vWf, sWf, Bf, vBf, sBf, l2f = dense[:8]
    meta = dense[12]
    kind, lr, beta1, omb1, beta2, omb2, eps, corrections = opt
    step = (kind, lr, beta1, omb1, beta2, omb2, eps, corrections[bi, 0], corrections[bi, 1])     # update_row's
    A0, Hf, Af, Df, g_dense, g_bias = bufs[1], bufs[3], bufs[4], bufs[5], bufs[11], bufs[12]
    batch = A0.shape[0]
    r0 = t - t
    B2, VB2, SB2 = Bf.reshape((1, -1)), vBf.reshape((1, -1)), sBf.reshape((1, -1))
    Ain = A0
    for d in range(meta.shape[0]):
        k, n, wa, ua, ha = meta[d, K], meta[d, N], meta[d, W_AT], meta[d, U_AT], meta[d, ACT_AT]
        W = Wf[wa:wa + k * n].reshape((k, n))
        V, S = vWf[wa:wa + k * n].reshape((k, n)), sWf[wa:wa + k * n].reshape((k, n))
        WT = WTf[wa:wa + k * n].reshape((n, k))
        D = Df[ha:ha + batch * n].reshape((batch, n))
        p0, p1 = (bounds[t], bounds[t + 1]) if d == 0 else (t * k // T, (t + 1) * k // T)
        ga = 4 * t                                  # thread t's rows of g_dense: 4t:4t + 4
        if meta[d, NARROW]:
            VT, ST = vWf[wa:wa + k * n].reshape((n, k)), sWf[wa:wa + k * n].reshape((n, k))
            for c in range(0, n, 4):
                e = min(c + 4, n)
                weight_grad_block_narrow(Ain, D, g_dense, c, e, ga, p0, p1, batch)
                for m in range(e - c):
                    unit, g = c + m, ga + m
                    if meta[d, HAS_L2]:
                        f = l2f[ua + unit]
                        for p in range(p0, p1):
                            g_dense[g, p] += WT[unit, p] * f
                    update_row(WT, unit, g_dense, g, VT, ST, p0, p1, step)
            for p in range(p0, p1):
                for c in range(n):
                    W[p, c] = WT[c, p]
        for p in range(p0 if not meta[d, NARROW] else p1, p1, 4):
            e = min(p + 4, p1)
            weight_grad_block(Ain, D, g_dense, p, e, ga, batch)
            for m in range(e - p):
                row, g = p + m, ga + m
                if meta[d, HAS_L2]:
                    for j in range(n):
                        g_dense[g, j] += W[row, j] * l2f[ua + j]
                update_row(W, row, g_dense, g, V, S, r0, n, step)
                for j in range(n):
                    WT[j, row] = W[row, j]
        if meta[d, HAS_B]:
            c0, c1_ = t * n // T, (t + 1) * n // T
            for c in range(c0, c1_):
                s = D[0, c]
                for i in range(1, batch):
                    s += D[i, c]
                g_bias[t, ua + c] = s
            update_row(B2, r0, g_bias, t, VB2, SB2, ua + c0, ua + c1_, step)
        H = Hf[ha:ha + batch * n].reshape((batch, n))
        Ain = H if meta[d, DROP] == NONE else Af[ha:ha + batch * n].reshape((batch, n))


@njit(cache=CACHE, nogil=True, fastmath={"contract"}, error_model="numpy")
def _worker(t, T, sync, data, first, dense, opt, bufs, results):
    """Thread t of T for the whole epoch; writes (summed loss, number correct) of its rows into results[t]."""
    state, bounds = sync
    indptr, indices, values, order, labels, batch = data[:6]
    H0, A0 = bufs[0], bufs[1]
    colptr, pair_rows, pair_values = bufs[8], bufs[9], bufs[10]
    batches = order.shape[0] // batch
    j0, j1 = bounds[t], bounds[t + 1]
    i0, i1 = t * batch // T, (t + 1) * batch // T
    total, correct = 0.0, 0
    for bi in range(batches):
        parity = bi & 1
        _first_forward(data, first, bi, j0, j1, H0, A0)
        regroup_pairs(indptr, indices, values, order, bi * batch, i0, i1, colptr[parity, t], pair_rows[parity, t],
                       pair_values[parity, t])
        barrier.wait(state, T)
        loss, ok = _rows_phase(data, first, dense, bufs, bi, i0, i1)
        total += loss
        correct += ok
        barrier.wait(state, T)
        _first_update(t, T, first, opt, bufs, parity, bi, j0, j1)
        _dense_update(t, T, dense, opt, bufs, bounds, bi)
    results[t, 0] = total
    results[t, 1] = correct


def run(compressed, order, labels, batch, first, dense, opt, loss_kind, loss_eps, threads):
    """Trains on len(order) // batch batches on `threads` threads; returns (summed loss, number correct).

    compressed: (indptr, indices, values) of the input rows. first: the first layer, (W0, (b0, v_b0, s_b0) each
    as one row, has_b0, codes0, kept0, drop0, fscale0, bscale0, l2_0, (v_W0, s_W0)). dense: (W, WT, vW, sW, b,
    vb, sb, l2, fscale, bscale, kept, runs, meta) as `DenseStack.pack` makes it. opt: (kind, lr, beta1,
    1 - beta1, beta2, 1 - beta2, eps, corrections). Scalars in the weights' dtype, arrays C-contiguous.
    """
    indptr, indices, values = compressed
    W0, bias0, has_b0, codes0, kept0, drop0, fscale0, bscale0, l2_0, state0 = first
    dtype = W0.dtype
    n_in, k0 = W0.shape
    meta = dense[12]
    bounds = unit_slices(k0, W0.itemsize, threads, batch)
    T = bounds.shape[0] - 1
    pairs = (n_in + 1) // 2
    cap = (batch // T + 1) * pairs
    acts = int(meta[-1, ACT_AT] + batch * meta[-1, N])
    widest = int(np.where(meta[:, NARROW] != 0, meta[:, K], meta[:, N]).max())
    units = dense[4].shape[0]
    buf = simd.aligned_empty    # through the module, so that the tests' poisoned allocator reaches these too
    bufs = (buf((batch, k0), dtype), buf((batch, k0), dtype), buf((batch, k0), dtype),
            buf(acts, dtype), buf(acts, dtype), buf(acts, dtype),                              # Hf Af Df
            buf((T, k0), dtype), buf((2 * T, k0), dtype),                                      # g_rows g_pairs
            np.empty((2, T, pairs + 1), np.int64), np.empty((2, T, cap), np.int32),            # colptr pair_rows
            buf((2, T, 2 * cap), dtype),                                                       # pair_values
            buf((4 * T, widest), dtype), buf((T, max(units, 1)), dtype))                       # g_dense g_bias
    runs0 = code_runs(codes0)
    relu0 = bool(np.all(codes0 == RELU))
    first_k = (W0, bias0, has_b0, codes0, runs0, relu0, kept0, drop0, fscale0, bscale0, l2_0, state0)
    data = (indptr, indices, values, order, labels, batch, loss_kind, loss_eps)
    results = np.zeros((T, 2))
    run_workers(_worker, T, ((barrier.new_state(), bounds), data, first_k, dense, opt, bufs, results))
    return float(results[:, 0].sum()), int(results[:, 1].sum())
