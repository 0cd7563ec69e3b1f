"""The first layer's weight gradient over sparse images: dZ = dA * act'(H) * scale fused into dW = X.T @ dZ and
db = column sums of dZ, reading only the stored pixels (branchnet's step).

v1: sparse.sparse_weight_grad, in fastmnist.kernels (any rows, e.g. shuffled minibatches): every stored
    pixel scattered into a private dW per thread.
v2: sparse.blocked_weight_grad, in fastmnist.kernels (a batch of every row in order: the full batch): the
    input regrouped by pairs of adjacent columns in blocks of 128 rows (sparse.column_blocks, built once per
    dataset), two rows of dW gathered at once from one read of each dZ row.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import mnist_images, run_main, sparse_images

import fastmnist  # noqa: F401  (first: OpenBLAS's thread timeout)
import numba
from fastmnist.kernels.reference import ReferenceBackend

# (rows, inputs, units): batch 1, odd columns and units, more rows than a column block
CASES = {"1x5x3": (1, 5, 3), "7x13x5": (7, 13, 5), "131x31x17": (131, 31, 17), "300x30x90": (300, 30, 90)}
REAL = (50_000, 784, 160)


def segments(units):
    cut = (2 * units) // 3
    return ((0, cut, "relu"), (cut, units, "tanh"))


def inputs(shape, dtype, rng, real):
    rows, n_in, units = shape
    X = mnist_images(rows, dtype)[0] if real else sparse_images(rng, rows, n_in, dtype)
    seg = segments(units)
    H = rng.standard_normal((rows, units))
    H[:, :seg[0][1]] = np.maximum(H[:, :seg[0][1]], 0)
    H[:, seg[0][1]:] = np.tanh(H[:, seg[0][1]:])
    dA = rng.standard_normal((rows, units)) / rows
    scale = np.where(rng.random(units) < 0.8, 1 / 0.8, 1.0)
    return {"X": X, "H": H.astype(dtype), "dA": dA.astype(dtype), "scale": scale.astype(dtype)}


def reference(d):
    units = d["H"].shape[1]
    _, dW, db = ReferenceBackend().dense_backward(d["dA"], d["X"], np.zeros((d["X"].shape[1], units)), d["H"],
                                                  segments(units), d["scale"].reshape(1, -1), need_dx=False)
    return dW, db


def _prepared(d, k):
    X = d["X"]
    units = d["H"].shape[1]
    simd = k.cpu.simd
    return (k.cpu.sparse.compress_rows(X), simd.aligned_copy(d["dA"]), simd.aligned_copy(d["H"]),
            k.cpu.activation.layer_codes(segments(units), units), np.empty((X.shape[1], units), X.dtype),
            np.empty(units, X.dtype))


def v1(d, k):
    sparse = k.cpu.sparse
    c, dA, H, codes, dW, db = _prepared(d, k)
    rows = np.arange(d["X"].shape[0])

    def run():
        sparse.sparse_weight_grad(c.indptr, c.indices, c.values, rows, dA, H, codes, d["scale"], dW, db,
                                  numba.get_num_threads())
        return dW, db
    return run


def v2(d, k):
    sparse = k.cpu.sparse
    c, dA, H, codes, dW, db = _prepared(d, k)
    blocks = sparse.column_blocks(c)

    def run():
        sparse.blocked_weight_grad(blocks.colptr, blocks.rows, blocks.values, dA, H, codes, d["scale"], dW, db,
                                   numba.get_num_threads())
        return dW, db
    return run


VERSIONS = {"v1": v1, "v2": v2}


def WORK(d):
    nnz, (rows, units), item = np.count_nonzero(d["X"]), d["H"].shape, d["X"].itemsize
    return 2 * nnz * units, nnz * (4 + item) + 2 * rows * units * item + d["X"].shape[1] * units * item


if __name__ == "__main__":
    run_main(globals())
