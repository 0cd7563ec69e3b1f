"""A dense hidden-to-hidden layer of a minibatch, forward and backward: Z = act(A @ W + b), then from dZ the
input gradient dA = dZ @ W.T and the weight gradient dW = A.T @ dZ (the general minibatch epoch's layers after
the sparse first one, e.g. 128 rows x 256 inputs x 128 units per batch).

v1: numpy's BLAS, one call per product per batch (what sparse_step.py does for these layers), with the bias and
    activation in numpy.
v2: compiled, one row at a time: each output row a sum of W's rows (simd.gather_planned, a tile of up to
    MAX_TILE vectors in registers), dA from a transposed copy of W, dW by scattering each row of dZ.
v3: compiled, two rows at a time (simd.gather_two_rows_planned: a 2 x nv register tile, each vector of W
    loaded once for two rows), dW as A.T @ dZ read in place (`transposed`), two of its rows at a time.
v5: four rows at a time (simd.gather_four_rows_planned: a 4 x nv register tile, up to 6 vectors with AVX-512's
    32 registers), the last one to three rows by v3's two-row tiles; all three products; in kernels
    (`cpu/dense_rows.py`). (v4, v3 with the sums in L1-sized blocks, is retired: bench/lab/README.md.)
"""

from __future__ import annotations

import functools
import importlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import run_main

import fastmnist  # noqa: F401  (first: OpenBLAS's thread timeout)
from numba import njit
from fastmnist.kernels.cpu.simd import MAX_TILE, gather_planned, gather_two_rows_planned, tile_plan, width

VB = width("head")      # v2 compiles for float32's width in both dtypes (the same, 64 bytes, with AVX-512)

# (rows, inputs, units): one row, odd rows and widths that are no whole vector, one unit, wide rows (many tiles)
CASES = {"1x7x33": (1, 7, 33), "5x33x7": (5, 33, 7), "13x40x1": (13, 40, 1), "64x70x37": (64, 70, 37),
         "9x601x40": (9, 601, 40), "41x30x301": (41, 30, 301)}
REAL = (128, 256, 128)     # a batch of 128 through 784 -> 256 -> 128 -> 10's middle layer


def inputs(shape, dtype, rng, real):
    rows, k, n = shape
    return {"A": np.maximum(rng.standard_normal((rows, k)), 0).astype(dtype),
            "W": (rng.standard_normal((k, n)) * np.sqrt(2 / k)).astype(dtype),
            "b": (0.1 * rng.standard_normal(n)).astype(dtype),
            "G": rng.standard_normal((rows, n)).astype(dtype)}      # dL/dZ's upstream: the gradient of the output H


def reference(d):
    A, W, b, G = d["A"], d["W"], d["b"], d["G"]
    H = np.maximum(A @ W + b, 0)
    dZ = G * (H > 0)
    return H, dZ @ W.T, A.T @ dZ


def v1(d, k):
    A, W, b, G = d["A"], d["W"], d["b"], d["G"]

    def run():
        Z = A @ W
        Z += b
        np.maximum(Z, 0, out=Z)
        dZ = G * (Z > 0)
        return Z, dZ @ W.T, A.T @ dZ
    return run


def _buffers(d, k):
    A, W = (k.cpu.simd.aligned_copy(d[name]) for name in ("A", "W"))
    rows, n = A.shape[0], W.shape[1]
    empty = k.cpu.simd.aligned_empty
    return A, W, empty((rows, n), A.dtype), empty((rows, A.shape[1]), A.dtype), empty(W.shape, A.dtype), \
        empty((n, A.shape[1]), A.dtype), empty((rows, n), A.dtype)


def v2(d, k):
    A, W, H, dA, dW, WT, dZ = _buffers(d, k)
    b, G = d["b"], d["G"]
    kernel = _one_row_kernel

    def run():
        kernel(A, W, b, G, H, dZ, WT, dA, dW)
        return H, dA, dW
    return run


def v3(d, k):
    activation = k.cpu.activation
    A, W, H, dA, dW, WT, dZ = _buffers(d, k)
    b, G = d["b"], d["G"]
    runs = activation.code_runs(np.ones(W.shape[1], np.int8))      # ReLU
    kernel = _two_row_kernel(activation)

    def run():
        kernel(A, W, b, runs, G, H, dZ, WT, dA, dW)
        return H, dA, dW
    return run


@njit(fastmath={"contract"})
def _two_rows(U, M, Out, rows, transposed):
    """Out[:rows] = U[:rows] @ M (U.T's rows if transposed), two rows at a time."""
    k, n = M.shape
    plan = tile_plan(0, n, M.itemsize, MAX_TILE, VB)
    for i in range(0, rows, 2):
        ib = i + 1 if i + 1 < rows else i
        gather_two_rows_planned(plan, U, i, ib, 0, k, M, Out, i, ib, 0, n, False, transposed, VB)


@functools.lru_cache(maxsize=None)
def _two_row_kernel(activation):
    activate_runs, times_derivative_runs = activation.activate_runs, activation.times_derivative_runs

    @njit(fastmath={"contract"})
    def kernel(A, W, b, runs, G, H, dZ, WT, dA, dW):
        rows, k = A.shape
        n = W.shape[1]
        for p in range(k):
            for j in range(n):
                WT[j, p] = W[p, j]
        _two_rows(A, W, H, rows, False)
        for i in range(rows):
            h = H[i]
            for j in range(n):
                h[j] += b[j]
            activate_runs(h, runs)
            dZ[i] = G[i]
            times_derivative_runs(dZ[i], H[i], runs)
        _two_rows(dZ, WT, dA, rows, False)
        _two_rows(A, dZ, dW, k, True)
    return kernel


@njit(fastmath={"contract"})
def _one_row_kernel(A, W, b, G, H, dZ, WT, dA, dW):
    rows, k = A.shape
    n = W.shape[1]
    to_n = tile_plan(0, n, W.itemsize, MAX_TILE, VB)
    to_k = tile_plan(0, k, W.itemsize, MAX_TILE, VB)
    for p in range(k):
        for j in range(n):
            WT[j, p] = W[p, j]
    for i in range(rows):
        gather_planned(to_n, None, A[i], 0, k, W, H[i], 0, n, VB)
        for j in range(n):
            z = H[i, j] + b[j]
            H[i, j] = z if z >= 0 else z * 0
            dZ[i, j] = G[i, j] if H[i, j] > 0 else G[i, j] * 0
        gather_planned(to_k, None, dZ[i], 0, n, WT, dA[i], 0, k, VB)
    col = np.empty(rows, A.dtype)
    for p in range(k):                          # dW's rows: sums of dZ's rows weighted by A's column p
        for i in range(rows):
            col[i] = A[i, p]
        gather_planned(to_n, None, col, 0, rows, dZ, dW[p], 0, n, VB)


def v5(d, k):
    dense_rows = importlib.import_module(k.__name__ + ".cpu.dense_rows")
    activation = k.cpu.activation
    A, W, H, dA, dW, WT, dZ = _buffers(d, k)
    b, G = d["b"], d["G"]
    rows = A.shape[0]
    runs = activation.code_runs(np.ones(W.shape[1], np.int8))      # ReLU
    kernel = _kernel_rows(dense_rows, activation)

    def run():
        kernel(A, W, b, runs, G, H, dZ, WT, dA, dW, rows)
        return H, dA, dW
    return run


@functools.lru_cache(maxsize=None)
def _kernel_rows(dense_rows, activation):
    forward_rows, input_grad_rows, weight_grad_rows = (dense_rows.forward_rows, dense_rows.input_grad_rows,
                                                       dense_rows.weight_grad_rows)
    times_derivative_runs = activation.times_derivative_runs

    @njit(fastmath={"contract"})
    def kernel(A, W, b, runs, G, H, dZ, WT, dA, dW, rows):
        for p in range(W.shape[0]):                 # the epoch keeps WT beside W, updated with it
            for j in range(W.shape[1]):
                WT[j, p] = W[p, j]
        forward_rows(A, W, b, True, runs, H, 0, rows)
        for i in range(rows):
            dZ[i] = G[i]
            times_derivative_runs(dZ[i], H[i], runs)
        input_grad_rows(dZ, WT, dA, 0, rows)
        weight_grad_rows(A, dZ, dW, 0, W.shape[0], rows)
    return kernel


VERSIONS = {"v1": v1, "v2": v2, "v3": v3, "v5": v5}


def WORK(d):
    rows, k = d["A"].shape
    n = d["W"].shape[1]
    return 3 * 2 * rows * k * n, 0


if __name__ == "__main__":
    run_main(globals())
