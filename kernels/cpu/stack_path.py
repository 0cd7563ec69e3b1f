"""The general minibatch epoch as one of numba-cpu's compiled paths: which networks it takes (`refusal`) and the
translation of a Net into stack_epoch's grouped arguments (`run`).

The dense layers' arrays are copied into flat buffers for the epoch and back after it (a few hundred kilobytes
beside an epoch's work); the first layer's, the big one, are passed as they are.
"""

from __future__ import annotations

import numba
import numpy as np

from . import epoch_parts, stack_epoch, threads
from ..codes import LOSS_CODES, OPTIMIZER_CODES
from .activation import code_runs, layer_codes
from . import simd
from .simd import width

NAME = "minibatch epoch"


def refusal(net, rows, batch) -> str | None:
    """Why the general minibatch epoch cannot train this net with batches of `batch` of `rows` rows, or None."""
    if len(net.weights) < 2:
        return "the general minibatch epoch needs a hidden layer"
    if net.repeat_update:
        return "the general minibatch epoch does not repeat a batch's update"
    if not 1 <= batch < rows:
        return "the general minibatch epoch takes batches smaller than the data"
    if net.loss not in LOSS_CODES or net.optimizer not in OPTIMIZER_CODES:
        return f"no compiled loss {net.loss!r} or optimiser {net.optimizer!r}"
    if net.keep and net.keep[-1] is not None:
        return "dropout on the output layer"
    if net.has_dropout() and net.dropout not in stack_epoch.DROPOUT_CODES:
        return f"unknown dropout kind {net.dropout!r}"
    return None


def _keep(net, li):
    return net.keep[li] if net.keep else None


def _draw_masks(backend, net, rng, batches, batch):
    """Per layer, 0/1 bytes of the kept units (batches, units) or elements (batches * batch, units), drawn batch
    by batch and layer by layer through the backend's dropout_mask, as the reference's train_step draws them;
    (0, units) for a layer without dropout."""
    dtype = net.dtype
    per_element = net.dropout == "element"
    kept = []
    for li, W in enumerate(net.weights):
        rows = 0 if _keep(net, li) is None else (batches * batch if per_element else batches)
        kept.append(np.zeros((rows, W.shape[1]), np.uint8))
    if net.has_dropout():
        for bi in range(batches):
            for li, K in enumerate(kept):
                keep = _keep(net, li)
                if keep is None:
                    continue
                _, bwd = backend.dropout_mask(rng, batch, keep, net.dropout, dtype)
                if per_element:
                    K[bi * batch:(bi + 1) * batch] = np.asarray(bwd) != 0
                else:
                    K[bi] = np.asarray(bwd).reshape(-1) != 0
    return kept


def _scales(net, li, units, dtype):
    """(forward, backward) per-unit dropout scales: 1/keep both ways per unit; 1/keep forwards and 1 backwards
    per element (seed 000's mask); ones without dropout."""
    keep = _keep(net, li)
    ones = np.ones(units, dtype)
    if keep is None:
        return ones, ones
    fwd = (1.0 / np.asarray(keep, np.float64)).astype(dtype)
    return fwd, (fwd if net.dropout == "unit" else ones)


def _moments(net):
    """Per layer: ((v_W, s_W), (v_b, s_b) or None) from net.state, which follows net.params()."""
    state = iter(net.state)
    out = []
    for W, b in zip(net.weights, net.biases):
        mw = next(state) if net.optimizer != "sgd" else (W, W)
        mb = (next(state) if net.optimizer != "sgd" else (b, b)) if b is not None else None
        out.append((mw, mb))
    return out


def _check(net):
    dtype = net.dtype
    arrays = list(net.params())
    if net.optimizer != "sgd":
        arrays += [a for pair in net.state for a in pair]
    if not all(a.flags.c_contiguous and a.flags.writeable and a.dtype == dtype for a in arrays):
        raise ValueError("numba-cpu: the network's parameters and optimiser state must be writeable, C-contiguous "
                         "and of one dtype")


def _pack_dense(net, kept, batch, moments):
    """The dense layers (all but the first) as stack_epoch's flat group, and the write-back pairs
    (flat view, the net's array)."""
    dtype = net.dtype
    layers = range(1, len(net.weights))
    meta = np.zeros((len(layers), 12), np.int64)
    lanes = width("head", dtype) // dtype.itemsize
    w_at = u_at = k_at = a_at = r_at = 0
    runs = []
    for d, li in enumerate(layers):
        k, n = net.weights[li].shape
        codes = layer_codes(net.segments[li], n)
        r = code_runs(codes)
        runs.append(r)
        l2 = net.l2_coefficients(li, batch)
        drop = stack_epoch.NONE if _keep(net, li) is None else stack_epoch.DROPOUT_CODES[net.dropout]
        meta[d] = (k, n, w_at, u_at, net.biases[li] is not None, r_at, r_at + r.shape[0], l2 is not None, drop, k_at,
                   a_at, n < lanes)
        w_at += k * n
        u_at += n
        k_at += kept[li].size
        r_at += r.shape[0]
        a_at += batch * n
    flat = {name: simd.aligned_empty(w_at, dtype) for name in ("W", "WT", "vW", "sW")}
    per_unit = {name: np.zeros(u_at, dtype) for name in ("b", "vb", "sb", "l2")}
    fscale, bscale = np.ones(u_at, dtype), np.ones(u_at, dtype)
    keptf = np.zeros(max(k_at, 1), np.uint8)
    back = []
    for d, li in enumerate(layers):
        k, n, w, u, ka = (int(x) for x in meta[d, [stack_epoch.K, stack_epoch.N, stack_epoch.W_AT, stack_epoch.U_AT,
                                                  stack_epoch.KEPT_AT]])
        W, b = net.weights[li], net.biases[li]
        (vW, sW), mb = moments[li]
        narrow = meta[d, stack_epoch.NARROW] != 0       # optimiser moments kept transposed, as the kernel steps WT
        views = {name: (flat[name][w:w + k * n].reshape(n, k).T if narrow and name != "W" else
                        flat[name][w:w + k * n].reshape(k, n)) for name in ("W", "vW", "sW")}
        views["W"][...] = W
        flat["WT"][w:w + k * n].reshape(n, k)[...] = W.T
        back.append((views["W"], W))
        if net.optimizer != "sgd":
            views["vW"][...], views["sW"][...] = vW, sW
            back += [(views["vW"], vW), (views["sW"], sW)]
        if b is not None:
            per_unit["b"][u:u + n] = b
            back.append((per_unit["b"][u:u + n], b))
            if net.optimizer != "sgd":
                per_unit["vb"][u:u + n], per_unit["sb"][u:u + n] = mb
                back += [(per_unit["vb"][u:u + n], mb[0]), (per_unit["sb"][u:u + n], mb[1])]
        l2 = net.l2_coefficients(li, batch)
        if l2 is not None:
            per_unit["l2"][u:u + n] = np.asarray(l2, dtype)
        fscale[u:u + n], bscale[u:u + n] = _scales(net, li, n, dtype)
        keptf[ka:ka + kept[li].size] = kept[li].reshape(-1)
    sgd = net.optimizer == "sgd"
    dense = (flat["W"], flat["WT"], flat["W"] if sgd else flat["vW"], flat["W"] if sgd else flat["sW"],
             per_unit["b"], per_unit["b"] if sgd else per_unit["vb"], per_unit["b"] if sgd else per_unit["sb"],
             per_unit["l2"], fscale, bscale, keptf, np.ascontiguousarray(np.concatenate(runs)), meta)
    return dense, back


def run(backend, net, compressed, labels, batch, rng, order):
    """One epoch of `net` on the general minibatch epoch; returns (summed loss, number correct)."""
    _check(net)
    n = compressed.shape[0]
    dtype = net.dtype
    t = dtype.type
    W0, b0 = net.weights[0], net.biases[0]
    if compressed.shape[1] != W0.shape[0]:
        raise ValueError(f"inputs have {compressed.shape[1]} columns, the first layer {W0.shape[0]} inputs")
    rows = np.arange(n) if order is None else np.ascontiguousarray(order, dtype=np.int64)
    if rows.shape != (n,):
        raise ValueError(f"order must have shape ({n},)")
    batches = n // batch
    kept = _draw_masks(backend, net, rng, batches, batch)
    moments = _moments(net)
    k0 = W0.shape[1]
    (vW0, sW0), mb0 = moments[0]
    bias = np.zeros(k0, dtype) if b0 is None else b0
    vb0, sb0 = (bias, bias) if mb0 is None else mb0
    bias0 = epoch_parts.one_row(bias, vb0, sb0)
    l2_0 = net.l2_coefficients(0, batch)
    fscale0, bscale0 = _scales(net, 0, k0, dtype)
    drop0 = stack_epoch.NONE if _keep(net, 0) is None else stack_epoch.DROPOUT_CODES[net.dropout]
    first = (W0, bias0, b0 is not None, layer_codes(net.segments[0], k0), kept[0], drop0, fscale0, bscale0,
             np.zeros(0, dtype) if l2_0 is None else np.asarray(l2_0, dtype), (vW0, sW0))
    dense, back = _pack_dense(net, kept, batch, moments)
    kind = OPTIMIZER_CODES[net.optimizer]
    opt = (kind, t(net.lr), t(net.beta1), t(1 - net.beta1), t(net.beta2), t(1 - net.beta2), t(net.eps),
           epoch_parts.adam_corrections(kind, net.beta1, net.beta2, net.step, batches, dtype))
    with threads.parallel_section():
        total, correct = stack_epoch.run((compressed.indptr, compressed.indices, compressed.values), rows, labels,
                                         batch, first, dense, opt, LOSS_CODES[net.loss], t(net.loss_eps),
                                         numba.get_num_threads())
    for flat, original in back:
        original[...] = flat
    net.step += batches
    return total, correct
