"""The numba-cpu backend: the backend contract on compiled CPU kernels.

Layer operations: matrix products go to numpy's BLAS; everything around them (bias, activation, dropout
mask, derivative, bias gradient, losses, optimiser updates) runs in compiled kernels, one pass each.

Whole epochs take one of three compiled paths where the reference would spend its time in Python or on zero
pixels (`epoch_path` names the one taken; kernels/README.md maps them to the presets):
- "batch-1 epoch" (batch1_epoch.py): batch size 1, two layers without biases, SGD (seed 000): the whole
  epoch in one compiled call;
- "minibatch epoch" (minibatch_epoch.py): one hidden layer, minibatches (the `fast` preset): the whole epoch
  in one compiled call; every other network with a hidden layer and batches smaller than the data takes the
  general minibatch epoch (stack_path.py, stack_epoch.py), also one compiled call, also "minibatch epoch";
- "sparse full-batch step" / "sparse minibatch steps" (sparse_step.py, head.py): per-unit dropout or none
  (seed 004): a step whose first layer reads a compressed copy of the input (built once per dataset) and
  computes only the units the dropout mask keeps.
Anything else runs the reference's operations on these kernels, and epoch_path says why. Each path is a small
object (`_Path`: refusal and run) and `_route` takes the first of PATH_ORDER that does not refuse the net.
forward() and evaluate() read the same compressed copies of the input.
Inputs of any layout are accepted: kernels receive C-contiguous copies where needed. Arguments of the
wrong rank or shape raise ValueError; non-float inputs raise TypeError.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict

import numba
import numpy as np

from . import (batch1_epoch, dense, epoch_parts, loss, minibatch_epoch, optim, repeat_epoch, simd, sparse, stack_path,
               threads)
from .activation import layer_codes
from ..codes import LOSS_CODES, OPTIMIZER_CODES
from ..reference import ReferenceBackend

threads.choose_threading_layer()

SPARSE_MAX_DENSITY = 0.5      # above this share of non-zero inputs, forward() uses BLAS for the first layer
_EMPTY_MASK = {np.dtype(t): np.zeros((0, 0), t) for t in (np.float32, np.float64)}
_EMPTY_VECTOR = {np.dtype(t): np.zeros(0, t) for t in (np.float32, np.float64)}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@functools.lru_cache(maxsize=256)
def _cached_codes(segments, units) -> np.ndarray:
    return layer_codes(segments, units)


def _codes(segments, units) -> np.ndarray:
    """layer_codes, made once per (segments, units): the kernels only read them."""
    try:
        return _cached_codes(segments, units)
    except TypeError:       # segments given as lists: not hashable
        return layer_codes(segments, units)


def _plain(*arrays):
    """The dtype of arrays that are all numpy arrays of one float dtype (nothing to convert), else None."""
    first = getattr(arrays[0], "dtype", None)
    if first is not _FLOATS[0] and first is not _FLOATS[1]:
        return None
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype is not first:
            return None
    return first


def _float_dtype(*arrays) -> np.dtype:
    dtype = np.result_type(*arrays)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"numba-cpu works on float32 or float64 arrays, got {dtype}")
    return dtype


def _matrix(a, dtype, name) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=dtype)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {a.shape}")
    return a


def _vector(a, dtype, length, name) -> np.ndarray:
    if type(a) is np.ndarray and a.dtype is dtype and a.shape == (length,) and a.flags.c_contiguous:
        return a
    a = np.ascontiguousarray(a, dtype=dtype)
    if a.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {a.shape}")
    return a


def _mask(mask, rows, units, dtype) -> np.ndarray:
    """A (1, units) or (rows, units) C-contiguous mask, or an empty one for None."""
    if mask is None:
        return _EMPTY_MASK[dtype]
    m = np.asarray(mask, dtype=dtype)
    if m.ndim < 2:
        m = m.reshape(1, -1) if m.ndim == 1 else m.reshape(1, 1)
    if m.ndim != 2 or m.shape[0] not in (1, rows) or m.shape[1] not in (1, units):
        raise ValueError(f"mask of shape {np.shape(mask)} does not broadcast to ({rows}, {units})")
    if m.shape[1] != units:
        m = np.broadcast_to(m, (m.shape[0], units))
    return np.ascontiguousarray(m)


def _inputs_fit(net, X) -> bool:
    """Whether X is what the compiled paths read: a 2-D host array (or CompressedImages) of the network's dtype."""
    return isinstance(X, (np.ndarray, sparse.CompressedImages)) and X.ndim == 2 and X.dtype == net.dtype


def _labels(labels, rows, classes) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    if labels.shape != (rows,):
        raise ValueError(f"labels must have shape ({rows},), got {labels.shape}")
    if rows and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must lie in [0, {classes})")
    return np.ascontiguousarray(labels, dtype=np.int64)


class _CompressedInputs:
    """Compressed-row copies of the last few input matrices, keyed by the array object itself.

    The array is held (so its id cannot be reused) and must not be modified in place while cached.
    """

    def __init__(self, size=4):
        self._size = size
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(X):
        return id(X), X.shape, X.strides, X.dtype.str, X.__array_interface__["data"][0]

    def get(self, X) -> sparse.CompressedRows:
        if isinstance(X, sparse.CompressedImages):
            return X.compressed
        return self._entry(X)[1]

    def blocks(self, X) -> sparse.ColumnBlocks:
        """X's pixels regrouped by pairs of columns block by block, built on first use (for full-batch steps)."""
        if isinstance(X, sparse.CompressedImages):
            if X.blocks is None:
                X.blocks = sparse.column_blocks(X.compressed)
            return X.blocks
        entry = self._entry(X)
        if entry[2] is None:
            entry[2] = sparse.column_blocks(entry[1])
        return entry[2]

    def _entry(self, X) -> list:
        key = self._key(X)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] is X:
                self._entries.move_to_end(key)
                return hit
        return self.put(X, sparse.compress_rows(X))

    def put(self, X, compressed: sparse.CompressedRows) -> list:
        entry = [X, compressed, None]
        with self._lock:
            self._entries[self._key(X)] = entry
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return entry


class NumbaCpuBackend(ReferenceBackend):
    name = "numba-cpu"
    device = "cpu"

    def __init__(self):
        super().__init__(np, name="numba-cpu")
        self._inputs = _CompressedInputs()

    def parameter(self, a, dtype):
        """Parameters start on a cache line: the kernels' vector loads of their rows then never straddle two."""
        out = simd.aligned_empty(np.shape(a), dtype)
        out[...] = a
        return out

    def to_float(self, images, dtype):
        """The images' non-zero pixels scaled to [0, 1] as CompressedImages, which every compiled path reads
        directly: no dense float copy is made (X[rows] and np.asarray(X) make dense rows on demand)."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 2:
            return super().to_float(images, dtype)
        try:
            resolved = np.dtype(dtype)
        except TypeError:
            resolved = None
        if resolved not in (np.float32, np.float64):
            raise ValueError(f"to_float: dtype {dtype!r} is not float32 or float64")
        return sparse.CompressedImages(sparse.compress_images(images, resolved))

    def to_numpy(self, a):
        return np.asarray(a)

    # -- dense layers -----------------------------------------------------------------------------
    def dense_forward(self, X, W, b, segments, mask=None):
        dtype = _plain(X, W)            # the common case checked first: small layers feel every conversion
        if dtype is None:
            dtype = _float_dtype(X, W)
            X, W = np.asarray(X, dtype), np.asarray(W, dtype)
        if X.ndim != 2 or W.ndim != 2 or X.shape[1] != W.shape[0]:
            raise ValueError(f"dense_forward: X {X.shape} and W {W.shape} do not multiply")
        rows, units = X.shape[0], W.shape[1]
        bias = _EMPTY_VECTOR[dtype] if b is None else _vector(b, dtype, units, "b")
        m = _EMPTY_MASK[dtype] if mask is None else _mask(mask, rows, units, dtype)
        codes = _codes(segments, units)
        if dense.takes_small_path(rows, X.shape[1], units, dtype.itemsize):
            Z = simd.scratch((rows, units), dtype)
            A = simd.scratch(Z.shape, Z.dtype) if m.shape[0] else _EMPTY_MASK[dtype]
            dense.forward_small(np.ascontiguousarray(X), np.ascontiguousarray(W), bias, codes, m, Z, A)
        else:
            Z = np.ascontiguousarray(X @ W)
            A = simd.scratch(Z.shape, Z.dtype) if m.shape[0] else _EMPTY_MASK[dtype]
            dense.bias_activate_mask(Z, bias, codes, m, A)
        return (A if m.shape[0] else Z), Z

    def dense_backward(self, dA, X, W, H, segments, mask=None, l2=None, need_dx=True):
        dtype = _plain(dA, X, W, H)
        if dtype is None or not (dA.flags.c_contiguous and H.flags.c_contiguous):
            dtype = _float_dtype(dA, X, W, H)
            dA, H = _matrix(dA, dtype, "dA"), _matrix(H, dtype, "H")
            X, W = np.asarray(X, dtype), np.asarray(W, dtype)
        elif dA.ndim != 2 or H.ndim != 2:
            raise ValueError(f"dA and H must be 2-D, got shapes {dA.shape} and {H.shape}")
        rows, units = dA.shape
        if H.shape != dA.shape or X.ndim != 2 or W.shape != (X.shape[1], units) or X.shape[0] != rows:
            raise ValueError(f"dense_backward: shapes dA {dA.shape}, X {X.shape}, W {W.shape}, H {H.shape} "
                             "do not fit one layer")
        codes = _codes(segments, units)
        m = _EMPTY_MASK[dtype] if mask is None else _mask(mask, rows, units, dtype)
        factors = _EMPTY_VECTOR[dtype] if l2 is None else _vector(l2, dtype, units, "l2")
        dZ = simd.scratch(dA.shape, dA.dtype)
        db = simd.scratch(units, dtype)
        if dense.takes_small_path(rows, X.shape[1], units, dtype.itemsize):
            X, W = np.ascontiguousarray(X), np.ascontiguousarray(W)
            dW = simd.scratch(W.shape, dtype)
            dX = simd.scratch(X.shape, dtype) if need_dx else _EMPTY_MASK[dtype]
            dense.backward_small(dA, X, W, H, codes, m, factors, dZ, db, dW, dX, need_dx)
            return (dX if need_dx else None), dW, db
        dense.activation_grad(dA, H, codes, m, dZ, db)
        dW = np.ascontiguousarray(X.T @ dZ)
        if l2 is not None:
            dense.add_column_scaled(dW, np.ascontiguousarray(W), factors)
        dX = dZ @ W.T if need_dx else None
        return dX, dW, db

    # -- losses -----------------------------------------------------------------------------------
    def loss(self, kind, out, labels, eps=0.0, need_grad=True):
        if kind not in LOSS_CODES:
            raise ValueError(f"unknown loss {kind!r}")
        dtype = _float_dtype(out)
        out = _matrix(out, dtype, "out")
        labels = _labels(labels, out.shape[0], out.shape[1])
        with threads.parallel_section():
            return loss.loss_with_grad(out, labels, LOSS_CODES[kind], eps, need_grad)

    # -- optimisers -------------------------------------------------------------------------------
    def update(self, kind, params, grads, state, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, step=1):
        if kind not in ("sgd", "adam_like", "adam"):
            raise ValueError(f"unknown optimizer {kind!r}")
        params, grads = list(params), list(grads)
        if not params:
            return
        dtype = _float_dtype(*params)
        if any(p.dtype != dtype for p in params):
            raise TypeError("update: all parameters must share one dtype")
        if len(grads) != len(params):
            raise ValueError(f"update: {len(params)} parameters but {len(grads)} gradients")
        inplace = [params] if kind == "sgd" else [params, [v for v, _ in state], [s for _, s in state]]
        flat = [[_flat_inplace(a, p.shape, dtype) for a, p in zip(arrays, params)] for arrays in inplace]
        g = tuple(_flat_grad(gr, p.shape, dtype) for gr, p in zip(grads, params))
        P, V, S = (tuple(f for f, _ in arrays) for arrays in (flat + [[], []])[:3])
        with threads.parallel_section():
            optim.step(kind, P, g, V, S, lr, beta1, beta2, eps, step, dtype)
        for arrays, originals in zip(flat, inplace):
            for (f, copied), original in zip(arrays, originals):
                if copied:
                    original[...] = f.reshape(original.shape)

    # -- whole steps ------------------------------------------------------------------------------
    def forward(self, net, X, chunk=8192):
        """As the reference's, with the first layer reading a cached compressed copy of a sparse X."""
        if not _inputs_fit(net, X):
            return super().forward(net, X, chunk)
        compressed = self._inputs.get(X)
        if compressed.density > SPARSE_MAX_DENSITY:
            return super().forward(net, X, chunk)
        W, b, seg = net.weights[0], net.biases[0], net.segments[0]
        if compressed.shape[1] != W.shape[0]:
            raise ValueError(f"inputs have {compressed.shape[1]} columns, the first layer {W.shape[0]} inputs")
        dtype = W.dtype
        n, units = X.shape[0], W.shape[1]
        W, bias, codes, ones = np.ascontiguousarray(W), _EMPTY_VECTOR[dtype] if b is None else b, _codes(seg, units), \
            np.ones(units, dtype)
        chunk = max(1, int(chunk))
        H, A = simd.scratch((min(n, chunk), units), dtype), simd.scratch((min(n, chunk), units), dtype)
        outs = []
        for start in range(0, n, chunk):                # chunks of rows: the first layer's outputs stay small
            rows = np.arange(start, min(n, start + chunk))
            h, a = H[:rows.shape[0]], A[:rows.shape[0]]
            with threads.parallel_section():
                sparse.sparse_dense_forward(compressed.indptr, compressed.indices, compressed.values, rows, W, bias,
                                            codes, ones, h, a)
            out = a
            for W2, b2, seg2 in zip(net.weights[1:], net.biases[1:], net.segments[1:]):
                out, _ = self.dense_forward(out, W2, b2, seg2)
            outs.append(out if len(net.weights) > 1 else out.copy())
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def evaluate(self, net, X, labels, chunk=8192):
        if len(net.weights) == 2 and _inputs_fit(net, X) and net.loss in LOSS_CODES:
            # a one-hidden-layer network: the minibatch epoch's own compiled layers, on every thread
            compressed = self._inputs.get(X)
            if compressed.shape[1] != net.weights[0].shape[0]:
                raise ValueError(f"inputs have {compressed.shape[1]} columns, the first layer "
                                 f"{net.weights[0].shape[0]} inputs")
            (W1, W2), (b1, b2) = net.weights, net.biases
            dtype = W1.dtype
            return minibatch_epoch.evaluate(
                compressed.indptr, compressed.indices, compressed.values, _labels(labels, X.shape[0], W2.shape[1]),
                np.ascontiguousarray(W1), _EMPTY_VECTOR[dtype] if b1 is None else b1, b1 is not None,
                _codes(net.segments[0], W1.shape[1]), np.ascontiguousarray(W2),
                _EMPTY_VECTOR[dtype] if b2 is None else b2, b2 is not None, _codes(net.segments[1], W2.shape[1]),
                LOSS_CODES[net.loss], dtype.type(net.loss_eps), numba.get_num_threads())
        with threads.serial_blas():
            out = self.forward(net, X, chunk)
        total, correct, _ = self.loss(net.loss, out, labels, net.loss_eps, need_grad=False)
        return total, correct

    def train_step(self, net, X, labels, rng):
        if not (_inputs_fit(net, X) and self._sparse_step_refusal(net) is None):
            return super().train_step(net, X, labels, rng)
        compressed = X.compressed if isinstance(X, sparse.CompressedImages) else sparse.compress_rows(X)
        return self._sparse_step(net, compressed, np.arange(X.shape[0]), labels, rng)

    def epoch_path(self, net, rows, batch_size, shuffled):
        path, why = self._route(net, rows, batch_size)
        if path is _SPARSE:
            return "sparse full-batch step" if batch_size in (None, rows) and not shuffled else "sparse minibatch steps"
        return path.name + (f": {why}" if why else "")

    def train_epoch(self, net, X, labels, batch_size, rng, order=None):
        n = X.shape[0]
        path = self._route(net, n, batch_size)[0] if _inputs_fit(net, X) else _REFERENCE
        return path.run(self, net, X, labels, n if batch_size is None else batch_size, rng, order)

    def _route(self, net, rows, batch_size):
        """(the first of PATH_ORDER that takes this net, why the reference operations run or ""): the compiled
        path that serves an epoch."""
        batch = rows if batch_size is None else batch_size
        for path in PATH_ORDER:
            if path.refusal(net, rows, batch) is None:
                return path, ""
        return _REFERENCE, _SPARSE.refusal(net, rows, batch)

    def _sparse_epoch(self, net, X, labels, batch_size, rng, order):
        n = X.shape[0]
        compressed = self._inputs.get(X)
        blocks = self._inputs.blocks(X) if batch_size == n and order is None else None
        labels = np.asarray(labels)
        total, correct = 0.0, 0
        for start in range(0, n - batch_size + 1, batch_size):
            stop = start + batch_size
            rows = np.arange(start, stop) if order is None else np.asarray(order[start:stop])
            t, c = self._sparse_step(net, compressed, rows, labels[rows], rng, blocks)
            total, correct = total + t, correct + c
        return total, correct

    # -- the batch-1 epoch --------------------------------------------------------------------------
    @staticmethod
    def _batch1_epoch_fits(net) -> bool:
        return (len(net.weights) == 2 and all(b is None for b in net.biases) and net.optimizer == "sgd"
                and net.loss in LOSS_CODES and not any(f is not None and np.any(f) for f in net.l2)
                and not (net.keep and net.keep[1] is not None))

    def _batch1_epoch(self, net, X, labels, rng, order):
        n = X.shape[0]
        W1, W2 = net.weights
        dtype = W1.dtype
        if not (W1.flags.c_contiguous and W2.flags.c_contiguous):
            raise ValueError("numba-cpu: the network's weights must be C-contiguous")
        if X.shape[1] != W1.shape[0]:
            raise ValueError(f"inputs have {X.shape[1]} columns, the first layer {W1.shape[0]} inputs")
        rows = np.arange(n) if order is None else np.ascontiguousarray(order, dtype=np.int64)
        if rows.shape != (n,):
            raise ValueError(f"order must have shape ({n},)")
        labels = _labels(labels, n, W2.shape[1])
        keep = net.keep[0] if net.keep else None
        fwd, bwd = _EMPTY_MASK[dtype], _EMPTY_MASK[dtype]
        if keep is not None:
            fwd, bwd = self.per_sample_masks(rng, n, keep, net.dropout, dtype)
        compressed = self._inputs.get(X)
        total, correct = batch1_epoch.sgd_epoch_batch1(
            compressed.indptr, compressed.indices, compressed.values, rows, labels, W1, W2,
            _codes(net.segments[0], W1.shape[1]), _codes(net.segments[1], W2.shape[1]), fwd, bwd,
            dtype.type(net.lr), LOSS_CODES[net.loss], dtype.type(net.loss_eps))
        net.step += n
        return total, correct

    def per_sample_masks(self, rng, n, keep, kind, dtype):
        """(n, units) forward and backward masks: the numbers n calls of dropout_mask(rng, 1, ...) draw.

        A legacy RandomState draws the same stream for one (n, units) request as for n (1, units) ones.
        """
        if kind == "element":
            return self.dropout_mask(rng, n, keep, kind, dtype)
        if kind != "unit":
            raise ValueError(f"unknown dropout kind {kind!r}")
        keep = np.asarray(keep, dtype=np.float64)
        fwd = np.ascontiguousarray((rng.random_sample((n, keep.shape[0])) < keep) / keep, dtype=dtype)
        return fwd, fwd

    # -- seed 000's batch loop: each batch's update repeated -------------------------------------------------
    @classmethod
    def _repeat_epoch_fits(cls, net) -> bool:
        """The batch-1 epoch's networks (two layers, no biases, SGD, no L2, no dropout on the output layer)."""
        return cls._batch1_epoch_fits(net)

    def _repeat_epoch(self, net, X, labels, batch_size, rng, order):
        n = X.shape[0]
        W1, W2 = net.weights
        dtype = W1.dtype
        if not (W1.flags.c_contiguous and W2.flags.c_contiguous):
            raise ValueError("numba-cpu: the network's weights must be C-contiguous")
        if X.shape[1] != W1.shape[0]:
            raise ValueError(f"inputs have {X.shape[1]} columns, the first layer {W1.shape[0]} inputs")
        rows = np.arange(n) if order is None else np.ascontiguousarray(order, dtype=np.int64)
        if rows.shape != (n,):
            raise ValueError(f"order must have shape ({n},)")
        labels = _labels(labels, n, W2.shape[1])
        batches = n // batch_size
        keep = net.keep[0] if net.keep else None
        fwd, bwd = _EMPTY_MASK[dtype], _EMPTY_MASK[dtype]
        if keep is not None and batches:
            # batch by batch, as the reference's train_step draws them
            drawn = [self.dropout_mask(rng, batch_size, keep, net.dropout, dtype) for _ in range(batches)]
            fwd, bwd = (np.ascontiguousarray(np.concatenate([np.broadcast_to(m[k], (batch_size, W1.shape[1]))
                                                             for m in drawn]), dtype=dtype) for k in (0, 1))
        compressed = self._inputs.get(X)
        total, correct = repeat_epoch.repeated_sgd_epoch(
            compressed.indptr, compressed.indices, compressed.values, rows, labels, batch_size, batch_size, W1, W2,
            _codes(net.segments[0], W1.shape[1]), _codes(net.segments[1], W2.shape[1]), fwd, bwd,
            dtype.type(net.lr), LOSS_CODES[net.loss], dtype.type(net.loss_eps))
        net.step += batches * batch_size
        return total, correct

    # -- the minibatch epoch of a one-hidden-layer network ---------------------------------------------
    @staticmethod
    def _minibatch_fits(net, rows, batch_size) -> bool:
        return (len(net.weights) == 2 and 1 < batch_size < rows and not net.repeat_update
                and (net.dropout == "unit" or not net.has_dropout()) and net.loss in LOSS_CODES
                and net.optimizer in OPTIMIZER_CODES)

    def _minibatch_epoch(self, net, X, labels, batch_size, rng, order):
        n = X.shape[0]
        dtype = net.dtype
        params = net.params()
        if not all(p.flags.c_contiguous and p.flags.writeable for p in params):
            raise ValueError("numba-cpu: the network's parameters must be writeable and C-contiguous")
        if X.shape[1] != net.weights[0].shape[0]:
            raise ValueError(f"inputs have {X.shape[1]} columns, the first layer {net.weights[0].shape[0]} inputs")
        rows = np.arange(n) if order is None else np.ascontiguousarray(order, dtype=np.int64)
        if rows.shape != (n,):
            raise ValueError(f"order must have shape ({n},)")
        labels = _labels(labels, n, net.weights[1].shape[1])
        batches = n // batch_size
        masks = self._batch_unit_masks(net, rng, batches, batch_size)
        l2 = [np.zeros(0, dtype) if c is None else np.asarray(c, dtype)
              for c in (net.l2_coefficients(li, batch_size) for li in range(2))]
        layers = []
        state = iter(net.state)
        for W, b in zip(net.weights, net.biases):
            vW, sW = next(state)
            vb, sb = next(state) if b is not None else (None, None)
            bias = np.zeros(W.shape[1], dtype) if b is None else b
            moments = (W, W, bias, bias) if net.optimizer == "sgd" else (vW, sW, bias if vb is None else vb,
                                                                         bias if sb is None else sb)
            if not all(m.flags.c_contiguous and m.flags.writeable and m.dtype == dtype for m in moments):
                raise ValueError("numba-cpu: optimiser state must be writeable, C-contiguous and of the weights' dtype")
            layers.append((W, bias, b is not None, moments))
        (W1, b1, has_b1, state1), (W2, b2, has_b2, state2) = layers
        compressed = self._inputs.get(X)
        t = dtype.type
        kind = OPTIMIZER_CODES[net.optimizer]
        with threads.parallel_section():
            total, correct, done = minibatch_epoch.minibatch_epoch(
                compressed.indptr, compressed.indices, compressed.values, rows, labels, batch_size,
                W1, b1, has_b1, _codes(net.segments[0], W1.shape[1]), masks[0], l2[0],
                W2, b2, has_b2, _codes(net.segments[1], W2.shape[1]), masks[1], l2[1], state1, state2,
                kind, t(net.lr), t(net.beta1), t(1 - net.beta1),
                t(net.beta2), t(1 - net.beta2), t(net.eps),
                epoch_parts.adam_corrections(kind, net.beta1, net.beta2, net.step, batches, dtype),
                LOSS_CODES[net.loss],
                t(net.loss_eps), numba.get_num_threads())
        net.step += done
        return total, correct

    def _batch_unit_masks(self, net, rng, batches, batch_size):
        """Per layer, (batches, units) per-unit dropout scales drawn batch by batch and layer by layer, as
        the reference's train_step draws them; (0, units) for a layer without dropout."""
        dtype = net.dtype
        drawn = [[] for _ in net.weights]
        if net.has_dropout():
            for _ in range(batches):
                for li, keep in enumerate(net.keep):
                    if keep is not None:
                        drawn[li].append(self.dropout_mask(rng, batch_size, keep, "unit", dtype)[0].reshape(-1))
        return [np.stack(d).astype(dtype, copy=False) if d else np.zeros((0, W.shape[1]), dtype)
                for d, W in zip(drawn, net.weights)]

    # -- the sparse-input step ----------------------------------------------------------------------
    @staticmethod
    def _sparse_step_refusal(net) -> str | None:
        """Why the sparse step cannot train this net, or None when it can."""
        if net.repeat_update:
            return "no compiled path repeats a batch's update (seed 000's batch loop)"
        if net.dropout != "unit" and net.has_dropout():
            return "no compiled path for element-wise dropout on batches of more than one sample"
        return None

    def _sparse_step(self, net, compressed, rows, labels, rng, blocks=None):
        from .sparse_step import sparse_train_step
        labels = _labels(labels, rows.shape[0], net.weights[-1].shape[1])
        with threads.parallel_section():
            return sparse_train_step(net, compressed, rows, labels, rng, blocks)


def _flat_inplace(a, shape, dtype):
    """(flat view or copy, whether it is a copy that must be written back) of an array updated in place."""
    if a.shape != shape or a.dtype != dtype:
        raise ValueError(f"update: state of shape {a.shape} and dtype {a.dtype} for a parameter {shape} {dtype}")
    if a.flags.c_contiguous and a.flags.writeable:
        return a.reshape(-1), False
    if not a.flags.writeable:
        raise ValueError("update: parameters and optimiser state must be writeable")
    return np.ascontiguousarray(a).reshape(-1), True


def _flat_grad(g, shape, dtype):
    g = np.asarray(g)
    if g.shape != shape:
        raise ValueError(f"update: gradient of shape {g.shape} for a parameter of shape {shape}")
    return np.ascontiguousarray(g, dtype=dtype).reshape(-1)


class _Path:
    """One way numba-cpu trains an epoch: `refusal(net, rows, batch)` says why it cannot take a net (None when
    it can) and `run(backend, net, X, labels, batch, rng, order)` trains one epoch; each owns the translation
    of the Net into its kernels' arguments (in the backend's methods, or stack_path's for the general epoch)."""

    def __init__(self, name, refusal, run):
        self.name, self.refusal, self.run = name, refusal, run


def _unless(fits, why):
    return lambda net, rows, batch: None if fits(net, rows, batch) else why


_BATCH1 = _Path("batch-1 epoch",
                _unless(lambda net, rows, batch: batch == 1 and NumbaCpuBackend._batch1_epoch_fits(net), "not batch 1"),
                lambda be, net, X, labels, batch, rng, order: be._batch1_epoch(net, X, labels, rng, order))
_REPEAT = _Path("repeated-update minibatch epoch",
                _unless(lambda net, rows, batch: (net.repeat_update and batch > 1
                                                  and NumbaCpuBackend._repeat_epoch_fits(net)), "no repeated update"),
                lambda be, net, X, labels, batch, rng, order: be._repeat_epoch(net, X, labels, batch, rng, order))
_MINIBATCH = _Path("minibatch epoch", _unless(NumbaCpuBackend._minibatch_fits, "not one hidden layer"),
                   lambda be, net, X, labels, batch, rng, order: be._minibatch_epoch(net, X, labels, batch, rng, order))
_STACK = _Path(stack_path.NAME, stack_path.refusal,
               lambda be, net, X, labels, batch, rng, order: stack_path.run(
                   be, net, be._inputs.get(X), _labels(labels, X.shape[0], net.weights[-1].shape[1]), batch, rng,
                   order))
_SPARSE = _Path("sparse step", lambda net, rows, batch: NumbaCpuBackend._sparse_step_refusal(net),
                lambda be, net, X, labels, batch, rng, order: be._sparse_epoch(net, X, labels, batch, rng, order))
_REFERENCE = _Path("reference operations", lambda net, rows, batch: None,
                   lambda be, net, X, labels, batch, rng, order: ReferenceBackend.train_epoch(be, net, X, labels, batch,
                                                                                              rng, order))
# The order _route tries them in: the special paths for the presets' shapes first (the `fast` epoch measured faster
# on its network than the general minibatch epoch, bench/lab/README.md; the batch-1 epoch was not measured against
# it; the general one does not repeat updates), then the general one, then the per-step one.
PATH_ORDER = (_BATCH1, _REPEAT, _MINIBATCH, _STACK, _SPARSE)
