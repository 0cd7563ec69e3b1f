"""A training step on compressed input rows that computes only the units a per-unit dropout mask keeps.

Each layer works on the compacted weights W[kept inputs][:, kept units]; the first layer's forward product
and weight gradient read only the non-zero input pixels (cpu_sparse), the other products go to BLAS.
Full-size gradients are assembled at the end: a dropped unit's weights get exactly the reference's
gradient (0 plus the L2 term), so the optimiser (momentum, second moments) sees what it would there.
Masks are drawn from `rng` layer by layer, as the reference backend's train_step draws them.
"""

from __future__ import annotations

import numba
import numpy as np

from . import dense, head, loss, optim, simd, sparse, threads
from .activation import layer_codes
from ..codes import LOSS_CODES
from ..reference import draw_dropout_mask


def _kept_units(net, rng, rows):
    """Per layer: (indices of the kept units, their scales), or (None, None) without dropout."""
    out = []
    for li, W in enumerate(net.weights):
        keep = net.keep[li] if net.keep else None
        if keep is None:
            out.append((None, None))
            continue
        fwd, _ = draw_dropout_mask(rng, rows, keep, net.dropout)
        scale = fwd.astype(W.dtype).reshape(-1)
        kept = np.flatnonzero(scale)
        out.append((kept, np.ascontiguousarray(scale[kept])))
    return out


def _compact(W, rows, cols):
    if rows is None and cols is None:
        return W
    if rows is None:
        return np.ascontiguousarray(W[:, cols])
    if cols is None:
        return np.ascontiguousarray(W[rows])
    return W[np.ix_(rows, cols)]


def _take(v, idx):
    return v if idx is None or v is None else v[idx]


def _full_weight_grad(dWc, W, rows, cols, l2):
    if rows is None and cols is None:
        dW = np.ascontiguousarray(dWc)
    else:
        dW = np.zeros_like(W)
        dW[np.ix_(np.arange(W.shape[0]) if rows is None else rows,
                  np.arange(W.shape[1]) if cols is None else cols)] = dWc
    if l2 is not None:
        dense.add_column_scaled(dW, W, np.asarray(l2, dtype=W.dtype))
    return dW


def _full_bias_grad(dbc, units, cols):
    if cols is None:
        return dbc
    db = np.zeros(units, dtype=dbc.dtype)
    db[cols] = dbc
    return db


def _pad_units(layers, li, dtype):
    """Layer li widened with zero units to a whole number of vectors, so that the sparse and fused kernels
    need no scalar tail (layer li + 1 gets zero weights for them): the padded units compute act(0) * 0 = 0
    and get no gradient. The output layer keeps its width."""
    if li + 1 >= len(layers):
        return layers
    W0, codes, scale, b = layers[li]
    k = W0.shape[1]
    tile = simd.lanes(np.dtype(dtype))
    kp = -(-k // tile) * tile
    scale = np.ones(k, dtype) if scale is None else scale
    if kp != k:
        pad = kp - k
        padded = simd.aligned_empty((W0.shape[0], kp), dtype)
        padded[:, :k] = W0
        padded[:, k:] = 0
        W0 = padded
        codes = np.concatenate([codes, np.zeros(pad, codes.dtype)])
        scale = np.concatenate([scale, np.zeros(pad, dtype)])
        b = None if b is None else np.concatenate([b, np.zeros(pad, dtype)])
        W1, codes1, scale1, b1 = layers[li + 1]
        layers = layers[:li + 1] + [(np.concatenate([W1, np.zeros((pad, W1.shape[1]), dtype)]), codes1, scale1,
                                     b1)] + layers[li + 2:]
    layers = list(layers)
    layers[li] = (simd.aligned_copy(W0), codes, scale, b)        # no copy when padded above
    return layers


def _scratch(net, role, shape, dtype):
    """An uninitialised (rows, units) array starting on a cache line, kept on the net for the next step:
    new pages for the three batch-sized arrays of a full-batch step cost a fifth of the step on this VM.
    The buffer grows to the widest shape asked for (dropout changes the compact width from step to step)."""
    size = int(np.prod(shape))
    buf = net.workspace.get(role)
    if buf is None or buf.dtype != dtype or buf.shape[0] < size:
        buf = net.workspace[role] = simd.aligned_empty(size, dtype)
    return buf[:size].reshape(shape)


def _fused_head_fits(layers) -> bool:
    """Two dense layers after the first, the last without dropout: head.head_step does them in one pass."""
    return len(layers) == 3 and layers[2][2] is None


def sparse_train_step(net, compressed, rows, labels, rng, blocks=None):
    """Forward, loss, backward and update on the samples `rows` of a compressed input.
    `blocks`: the input's sparse.ColumnBlocks when `rows` is every row in order (the first layer's weight
    gradient then gathers instead of scattering), else None. Returns (summed loss, number correct)."""
    dtype = net.dtype
    n = rows.shape[0]
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if compressed.shape[1] != net.weights[0].shape[0]:
        raise ValueError(f"inputs have {compressed.shape[1]} columns, the first layer {net.weights[0].shape[0]} inputs")
    if n == 0 or rows.min() < 0 or rows.max() >= compressed.shape[0]:
        raise ValueError("sparse_train_step: rows must be a non-empty selection of the input's rows")
    if blocks is not None and (blocks.shape != compressed.shape or n != compressed.shape[0]
                               or not np.array_equal(rows, np.arange(n))):
        raise ValueError("sparse_train_step: column blocks serve only a batch of every row of their input")
    kept = _kept_units(net, rng, n)
    empty_mask = np.zeros((0, 0), dtype)
    empty = np.zeros(0, dtype)
    layers = []                                   # per layer: (compact W, codes, scale or None, compact b)
    prev = None
    for li, (W, b, seg) in enumerate(zip(net.weights, net.biases, net.segments)):
        cols, scale = kept[li]
        codes = layer_codes(seg, W.shape[1])
        layers.append((_compact(W, prev, cols), _take(codes, cols), scale, _take(b, cols)))
        prev = cols
    widths = [W.shape[1] for W, _, _, _ in layers]            # compact widths, before any padding
    fused = _fused_head_fits(layers)
    layers = _pad_units(layers, 0, dtype)
    if fused:
        layers = _pad_units(layers, 1, dtype)

    Wc, codes, scale, b = layers[0]
    H = _scratch(net, "H1", (n, Wc.shape[1]), dtype)
    A = _scratch(net, "A1", (n, Wc.shape[1]), dtype)
    first_scale = scale
    sparse.sparse_dense_forward(compressed.indptr, compressed.indices, compressed.values, rows, Wc,
                                    empty if b is None else b, codes, first_scale, H, A)
    dWs, dbs = [None] * len(layers), [None] * len(layers)
    if fused:
        (W2, codes2, scale2, b2), (W3, codes3, _, b3) = layers[1:]
        dA = _scratch(net, "dA1", A.shape, dtype)
        dWs[1], dbs[1] = simd.scratch(W2.shape, W2.dtype), simd.scratch(W2.shape[1], dtype)
        dWs[2], dbs[2] = simd.scratch(W3.shape, W3.dtype), simd.scratch(W3.shape[1], dtype)
        total, correct = head.head_step(
            A, W2, empty if b2 is None else b2, codes2, scale2, np.ascontiguousarray(W3),
            empty if b3 is None else b3, codes3, labels, LOSS_CODES[net.loss], dtype.type(net.loss_eps),
            numba.get_num_threads(), dA, dWs[1], dbs[1], dWs[2], dbs[2])
    else:
        acts, hs = [A], [H]
        for Wc, codes, scale, b in layers[1:]:
            Z = np.ascontiguousarray(acts[-1] @ Wc)
            mask = empty_mask if scale is None else scale.reshape(1, -1)
            A = simd.scratch(Z.shape, Z.dtype) if scale is not None else empty_mask
            dense.bias_activate_mask(Z, empty if b is None else b, codes, mask, A)
            acts.append(Z if scale is None else A)
            hs.append(Z)
        with threads.parallel_section():
            total, correct, dA = loss.loss_with_grad(acts[-1], labels, LOSS_CODES[net.loss], net.loss_eps)
        for li in range(len(layers) - 1, 0, -1):
            Wc, codes, scale, b = layers[li]
            dbs[li] = simd.scratch(Wc.shape[1], dtype)
            dZ = simd.scratch(dA.shape, dA.dtype)
            mask = empty_mask if scale is None else scale.reshape(1, -1)
            dense.activation_grad(dA, hs[li], codes, mask, dZ, dbs[li])
            dWs[li] = acts[li - 1].T @ dZ
            dA = dZ @ Wc.T
    Wc, codes, _, _ = layers[0]
    dWs[0], dbs[0] = simd.scratch(Wc.shape, Wc.dtype), simd.scratch(Wc.shape[1], dtype)
    if blocks is not None:
        sparse.blocked_weight_grad(blocks.colptr, blocks.rows, blocks.values, dA, H, codes, first_scale,
                                       dWs[0], dbs[0], numba.get_num_threads())
    else:
        sparse.sparse_weight_grad(compressed.indptr, compressed.indices, compressed.values, rows, dA, H,
                                      codes, first_scale, dWs[0], dbs[0], numba.get_num_threads())

    grads = []
    for li, W in enumerate(net.weights):
        cols, prev = kept[li][0], (kept[li - 1][0] if li else None)
        rows_in = W.shape[0] if li == 0 else widths[li - 1]
        dWc, dbc = dWs[li][:rows_in, :widths[li]], dbs[li][:widths[li]]
        grads.append(_full_weight_grad(dWc, W, prev, cols, net.l2_coefficients(li, n)))
        if net.biases[li] is not None:
            grads.append(_full_bias_grad(dbc, W.shape[1], cols))
    net.step += 1
    _update(net, grads)
    return total, correct


def _update(net, grads):
    """The optimiser's step on every parameter (all C-contiguous, as the backend keeps them)."""
    P = tuple(p.reshape(-1) for p in net.params())
    G = tuple(np.ascontiguousarray(g, dtype=net.dtype).reshape(-1) for g in grads)
    moments = () if net.optimizer == "sgd" else net.state
    V, S = tuple(v.reshape(-1) for v, _ in moments), tuple(s.reshape(-1) for _, s in moments)
    with threads.parallel_section():
        optim.step(net.optimizer, P, G, V, S, net.lr, net.beta1, net.beta2, net.eps, net.step, net.dtype)
