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

from . import cpu_dense, cpu_simd, cpu_sparse
from .cpu_activation import layer_codes


def _kept_units(backend, net, rng, rows):
    """Per layer: (indices of the kept units, their scales), or (None, None) without dropout."""
    out = []
    for li, W in enumerate(net.weights):
        keep = net.keep[li] if net.keep else None
        if keep is None:
            out.append((None, None))
            continue
        fwd, _ = backend.dropout_mask(rng, rows, keep, net.dropout, W.dtype)
        scale = np.asarray(fwd).reshape(-1)
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
        cpu_dense.add_column_scaled(dW, W, np.asarray(l2, dtype=W.dtype))
    return dW


def _full_bias_grad(dbc, units, cols):
    if cols is None:
        return dbc
    db = np.zeros(units, dtype=dbc.dtype)
    db[cols] = dbc
    return db


def _pad_first_layer(layers, dtype):
    """The first layer widened with zero units to a whole number of vectors, so that the sparse kernels need
    no scalar tail (the next layer gets zero weights for them): the padded units compute act(0) * 0 = 0 and
    get no gradient."""
    (W0, codes, scale, b), *rest = layers
    k = W0.shape[1]
    tile = cpu_simd.lanes(np.dtype(dtype))
    kp = -(-k // tile) * tile
    scale = np.ones(k, dtype) if scale is None else scale
    if kp == k or not rest:                       # the output layer keeps its width
        return [(W0, codes, scale, b)] + rest
    pad = kp - k
    W0 = np.concatenate([W0, np.zeros((W0.shape[0], pad), dtype)], axis=1)
    codes = np.concatenate([codes, np.zeros(pad, codes.dtype)])
    scale = np.concatenate([scale, np.zeros(pad, dtype)])
    b = None if b is None else np.concatenate([b, np.zeros(pad, dtype)])
    W1, codes1, scale1, b1 = rest[0]
    rest = [(np.concatenate([W1, np.zeros((pad, W1.shape[1]), dtype)]), codes1, scale1, b1)]
    return [(W0, codes, scale, b)] + rest


def sparse_train_step(backend, net, compressed, rows, labels, rng):
    """Forward, loss, backward and update on the samples `rows` of a compressed input.
    Returns (summed loss, number correct)."""
    dtype = net.dtype
    n = rows.shape[0]
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if compressed.shape[1] != net.weights[0].shape[0]:
        raise ValueError(f"inputs have {compressed.shape[1]} columns, the first layer {net.weights[0].shape[0]} inputs")
    if n == 0 or rows.min() < 0 or rows.max() >= compressed.shape[0]:
        raise ValueError("sparse_train_step: rows must be a non-empty selection of the input's rows")
    kept = _kept_units(backend, net, rng, n)
    empty_mask = np.zeros((0, 0), dtype)
    layers = []                                   # per layer: (compact W, codes, scale or None)
    prev = None
    for li, (W, b, seg) in enumerate(zip(net.weights, net.biases, net.segments)):
        cols, scale = kept[li]
        codes = layer_codes(seg, W.shape[1])
        layers.append((_compact(W, prev, cols), _take(codes, cols), scale, _take(b, cols)))
        prev = cols
    k0 = layers[0][0].shape[1]
    layers[:2] = _pad_first_layer(layers[:2], dtype)

    Wc, codes, scale, b = layers[0]
    H = np.empty((n, Wc.shape[1]), dtype)
    A = np.empty_like(H)
    ones = scale
    cpu_sparse.sparse_dense_forward(compressed.indptr, compressed.indices, compressed.values, rows, Wc,
                                    np.zeros(0, dtype) if b is None else b, codes, ones, H, A)
    acts, hs = [A], [H]
    for Wc, codes, scale, b in layers[1:]:
        Z = np.ascontiguousarray(acts[-1] @ Wc)
        mask = empty_mask if scale is None else scale.reshape(1, -1)
        A = np.empty_like(Z) if scale is not None else empty_mask
        cpu_dense.bias_activate_mask(Z, np.zeros(0, dtype) if b is None else b, codes, mask, A)
        acts.append(Z if scale is None else A)
        hs.append(Z)

    total, correct, dA = backend.loss(net.loss, acts[-1], labels, net.loss_eps)

    grads = []
    for li in reversed(range(len(layers))):
        Wc, codes, scale, b = layers[li]
        W = net.weights[li]
        cols, prev = kept[li][0], (kept[li - 1][0] if li else None)
        dbc = np.empty(Wc.shape[1], dtype)
        if li:
            dZ = np.empty_like(dA)
            mask = empty_mask if scale is None else scale.reshape(1, -1)
            cpu_dense.activation_grad(dA, hs[li], codes, mask, dZ, dbc)
            dWc = acts[li - 1].T @ dZ
            dA = dZ @ Wc.T
            if li == 1:
                dWc = dWc[:k0]
        else:
            dWc = np.empty_like(Wc)
            cpu_sparse.sparse_weight_grad(compressed.indptr, compressed.indices, compressed.values, rows, dA,
                                          hs[0], codes, ones, dWc, dbc, numba.get_num_threads())
            dWc, dbc = dWc[:, :k0], dbc[:k0]
        layer_grads = [_full_weight_grad(dWc, W, prev, cols, net.l2_coefficients(li, n))]
        if net.biases[li] is not None:
            layer_grads.append(_full_bias_grad(dbc, W.shape[1], cols))
        grads[:0] = layer_grads
    net.step += 1
    backend.update(net.optimizer, net.params(), grads, net.state, lr=net.lr, beta1=net.beta1,
                   beta2=net.beta2, eps=net.eps, step=net.step)
    return total, correct
