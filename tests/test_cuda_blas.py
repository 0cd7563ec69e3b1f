"""cuda-hybrid's own cuBLAS call (used while a step is captured into a CUDA graph): the arguments it passes
compute the row-major product, checked against an emulation of column-major gemm on the raw memory of
each operand (the call itself runs on the GPU, in tests/test_numba_cuda.py's replay test)."""

from __future__ import annotations

import numpy as np
import pytest

from fastmnist.kernels.cuda.blas import N, gemm_arguments


def memory(M):
    """The memory from M's first element on, as a flat array (what a device pointer to M sees)."""
    span = 1 + sum((d - 1) * s // M.itemsize for d, s in zip(M.shape, M.strides))
    return np.lib.stride_tricks.as_strided(M, shape=(span,), strides=(M.itemsize,))


def column_major_gemm(transa, transb, m, n, k, a, lda, b, ldb, c, ldc):
    """What cublas<t>gemm computes, C[:m, :n] = op(A) @ op(B) with every matrix column-major in memory."""
    def matrix(flat, ld, rows, cols, op):
        r, c_ = (rows, cols) if op == N else (cols, rows)
        stored = np.array([[flat[i + j * ld] for j in range(c_)] for i in range(r)])
        return stored if op == N else stored.T
    assert lda >= (m if transa == N else k) and ldb >= (k if transb == N else n) and ldc >= m
    product = matrix(a, lda, m, k, transa) @ matrix(b, ldb, k, n, transb)
    for i in range(m):
        for j in range(n):
            c[i + j * ldc] = product[i, j]


def layouts(rng, rows, cols):
    """The same matrix as a C-contiguous array, the transpose of an F-ordered one, and a row-padded view."""
    M = rng.standard_normal((rows, cols))
    padded = np.zeros((rows, cols + 3))
    padded[:, :cols] = M
    return {"C": M.copy(), "F": np.asfortranarray(M), "padded": padded[:, :cols]}


@pytest.mark.parametrize("m,k,n", [(5, 7, 3), (1, 6, 4), (6, 5, 1), (4, 1, 3)])
@pytest.mark.parametrize("layout_a", ["C", "F", "padded"])
@pytest.mark.parametrize("layout_b", ["C", "F", "padded"])
def test_gemm_arguments_compute_the_row_major_product(m, k, n, layout_a, layout_b):
    rng = np.random.RandomState(m * 100 + k * 10 + n)
    A, B = layouts(rng, m, k)[layout_a], layouts(rng, k, n)[layout_b]
    C = np.full((m, n), np.nan)
    transa, transb, mm, nn, kk, (a, lda), (b, ldb), ldc = gemm_arguments(A, B, C)
    column_major_gemm(transa, transb, mm, nn, kk, memory(a), lda, memory(b), ldb, memory(C), ldc)
    np.testing.assert_allclose(C, A @ B, rtol=1e-12, atol=1e-12)


def test_gemm_arguments_reject_what_cublas_cannot_read():
    A = np.ones((4, 6))[:, ::2]          # neither rows nor columns contiguous
    with pytest.raises(ValueError, match="contiguous operand"):
        gemm_arguments(A, np.ones((3, 2)), np.empty((4, 2)))
    with pytest.raises(ValueError, match="shapes"):
        gemm_arguments(np.ones((4, 3)), np.ones((2, 2)), np.empty((4, 2)))
