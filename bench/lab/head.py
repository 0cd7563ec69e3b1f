"""The fused layers after the first (branchnet's step): forward through W2 (relu/tanh branches, per-unit dropout
scales) and W3, the loss of every row, and the backward pass down to dA1, with dW2, db2, dW3, db3.

v1: head.head_step, in fastmnist.kernels: blocks of 64 rows taken phase by phase (all their products with
    W2, the per-row work, all their products with W2T, then dW2) so that W2 and W2T stay in the L1 cache;
    the three big products two rows at a time (simd.gather_two_rows_planned).
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import run_main

import fastmnist  # noqa: F401  (first: OpenBLAS's thread timeout)
import numba
from fastmnist.kernels.reference import ReferenceBackend

# (rows, k1, m2, classes): batch 1, widths that are no whole vector, more rows than a block
CASES = {"1x21x13x10": (1, 21, 13, 10), "3x16x8x10": (3, 16, 8, 10), "130x21x13x10": (130, 21, 13, 10)}
REAL = (50_000, 160, 48, 10)       # branchnet: 50,000 rows, its kept first-layer units, 48 hidden, 10 classes
EPS = 1e-7


def hidden(m2):
    return ((0, m2, "relu"),)


def inputs(shape, dtype, rng, real):
    rows, k1, m2, classes = shape
    return {"A1": np.maximum(rng.standard_normal((rows, k1)), 0).astype(dtype),
            "W2": (rng.standard_normal((k1, m2)) * np.sqrt(1 / k1)).astype(dtype),
            "b2": (0.1 * rng.standard_normal(m2)).astype(dtype),
            "scale2": np.where(rng.random(m2) < 0.8, 1 / 0.8, 0).astype(dtype),
            "W3": (rng.standard_normal((m2, classes)) * np.sqrt(2 / m2)).astype(dtype),
            "b3": (0.1 * rng.standard_normal(classes)).astype(dtype),
            "labels": rng.integers(0, classes, rows)}


def reference(d):
    ref = ReferenceBackend()
    m2, classes = d["W3"].shape
    out_seg = ((0, classes, "identity"),)
    mask = d["scale2"].reshape(1, -1)
    A2, H2 = ref.dense_forward(d["A1"], d["W2"], d["b2"], hidden(m2), mask)
    out, _ = ref.dense_forward(A2, d["W3"], d["b3"], out_seg)
    total, _, dout = ref.loss("softmax_ce", out, d["labels"], EPS)
    dA2, dW3, db3 = ref.dense_backward(dout, A2, d["W3"], out, out_seg)
    dA1, dW2, db2 = ref.dense_backward(dA2, d["A1"], d["W2"], H2, hidden(m2), mask)
    return np.array([total]), dA1, dW2, db2, dW3, db3


def v1(d, k):
    head, layer_codes = k.cpu.head, k.cpu.activation.layer_codes
    A1, W2, W3 = (k.cpu.simd.aligned_copy(d[name]) for name in ("A1", "W2", "W3"))
    m2, classes = W3.shape
    dtype = A1.dtype
    out = [np.empty_like(A1), np.empty_like(W2), np.empty(m2, dtype), np.empty_like(W3), np.empty(classes, dtype)]
    codes2, codes3 = layer_codes(hidden(m2), m2), layer_codes(((0, classes, "identity"),), classes)

    def run():
        total, _ = head.head_step(A1, W2, d["b2"], codes2, d["scale2"], W3, d["b3"], codes3, d["labels"],
                                  k.codes.SOFTMAX_CE, dtype.type(EPS), numba.get_num_threads(), *out)
        return (np.array([total]), *out)
    return run


VERSIONS = {"v1": v1}


def WORK(d):
    (rows, k1), (m2, classes) = d["A1"].shape, d["W3"].shape
    return 2 * rows * (3 * k1 * m2 + 3 * m2 * classes), 2 * rows * k1 * d["A1"].itemsize


if __name__ == "__main__":
    run_main(globals())
