"""The first layer's forward product over sparse images: H = act(X @ W + b), A = H * scale, reading only the
stored pixels (branchnet's step and every numba-cpu evaluation).

v1: sparse.sparse_dense_forward, in fastmnist.kernels: blocks of 64 rows, each block's stored pixels
    gathered against tiles of at most sparse.FORWARD_TILE vectors of W (explicit SIMD, simd.py).
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import mnist_images, run_main, sparse_images

import fastmnist  # noqa: F401  (first: OpenBLAS's thread timeout)
from fastmnist.kernels.reference import ReferenceBackend

# (rows, inputs, units): batch 1, units that are no whole vector, more rows than a block of 64
CASES = {"1x5x3": (1, 5, 3), "7x13x5": (7, 13, 5), "33x17x19": (33, 17, 19), "70x31x40": (70, 31, 40)}
REAL = (50_000, 784, 160)          # branchnet's full batch and its kept first-layer units (192 at keep 0.8, padded)


def segments(units):
    cut = (2 * units) // 3          # relu then tanh, as branchnet's first layer
    return ((0, cut, "relu"), (cut, units, "tanh"))


def inputs(shape, dtype, rng, real):
    rows, n_in, units = shape
    X = mnist_images(rows, dtype)[0] if real else sparse_images(rng, rows, n_in, dtype)
    W = (rng.standard_normal((n_in, units)) * np.sqrt(2 / n_in)).astype(dtype)
    b = (0.1 * rng.standard_normal(units)).astype(dtype)
    scale = np.where(rng.random(units) < 0.8, 1 / 0.8, 1.0).astype(dtype)
    return {"X": X, "W": W, "b": b, "scale": scale}


def reference(d):
    A, H = ReferenceBackend().dense_forward(d["X"], d["W"], d["b"], segments(d["W"].shape[1]),
                                            d["scale"].reshape(1, -1))
    return H, A


def v1(d, k):
    simd, sparse = k.cpu.simd, k.cpu.sparse
    X, W = d["X"], simd.aligned_copy(d["W"])
    c = sparse.compress_rows(X)
    rows = np.arange(X.shape[0])
    codes = k.cpu.activation.layer_codes(segments(W.shape[1]), W.shape[1])
    H, A = simd.aligned_empty((X.shape[0], W.shape[1]), X.dtype), simd.aligned_empty((X.shape[0], W.shape[1]), X.dtype)

    def run():
        sparse.sparse_dense_forward(c.indptr, c.indices, c.values, rows, W, d["b"], codes, d["scale"], H, A)
        return H, A
    return run


VERSIONS = {"v1": v1}


def WORK(d):
    nnz, (rows, units), item = np.count_nonzero(d["X"]), (d["X"].shape[0], d["W"].shape[1]), d["X"].itemsize
    return 2 * nnz * units, nnz * (4 + item) + 2 * rows * units * item + d["W"].nbytes


if __name__ == "__main__":
    run_main(globals())
