"""cuBLAS matrix products that a CUDA graph can capture.

CuPy refuses every cuBLAS call while a stream is being captured (its setStream raises
NotImplementedError, see cupy_backends/cuda/libs/cublas.pyx), although cuBLAS itself supports capture.
So the captured step of cuda-hybrid calls cuBLAS through ctypes, on a handle of its own: its stream is
set before capture begins and it owns its workspace, so nothing is allocated while capturing and nothing
else shares what a replay writes.
"""

from __future__ import annotations

import ctypes

import numpy

N, T = 0, 1                         # cublasOperation_t
WORKSPACE = 32 << 20                # bytes; what cuBLAS asks for on Hopper
TF32_TENSOR_OP_MATH = 3             # cublasMath_t


def _cupy_uses_tf32() -> bool:
    from cupy._core import _routines_linalg as linalg

    return linalg.get_compute_type(numpy.dtype(numpy.float32)) == linalg.COMPUTE_TYPE_TF32


def _library_path() -> str:
    """The libcublas that CuPy loaded into this process."""
    import cupy

    cupy.cuda.device.get_cublas_handle()
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if "/libcublas.so" in path:
                return path
    return "libcublas.so"


class Blas:
    def __init__(self, stream):
        import cupy

        lib = self.lib = ctypes.CDLL(_library_path())
        self.handle = ctypes.c_void_p()
        self._check(lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self._check(lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream.ptr)), "cublasSetStream")
        self.workspace = cupy.empty(WORKSPACE, numpy.uint8)
        self._check(lib.cublasSetWorkspace_v2(self.handle, ctypes.c_void_p(self.workspace.data.ptr),
                                              ctypes.c_size_t(WORKSPACE)), "cublasSetWorkspace")
        if _cupy_uses_tf32():       # follow CuPy's setting (CUPY_TF32=1), so replayed and eager steps agree
            self._check(lib.cublasSetMathMode(self.handle, TF32_TENSOR_OP_MATH), "cublasSetMathMode")
        self._scalars = {numpy.dtype(numpy.float32): (ctypes.c_float, lib.cublasSgemm_v2),
                         numpy.dtype(numpy.float64): (ctypes.c_double, lib.cublasDgemm_v2)}

    @staticmethod
    def _check(status, what):
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")

    def gemm(self, A, B, C):
        """C = A @ B for 2-D arrays of one float dtype; C row-contiguous."""
        scalar, gemm = self._scalars[numpy.dtype(C.dtype)]
        op_b, op_a, n, m, k, (b, ld_b), (a, ld_a), ld_c = gemm_arguments(A, B, C)
        one, zero = scalar(1), scalar(0)
        self._check(gemm(self.handle, op_b, op_a, n, m, k, ctypes.byref(one), ctypes.c_void_p(b.data.ptr), ld_b,
                         ctypes.c_void_p(a.data.ptr), ld_a, ctypes.byref(zero), ctypes.c_void_p(C.data.ptr), ld_c),
                    "cublas gemm")


def _operand(M):
    """(M, leading dimension, operation) of a row-major logical operand in the column-major product."""
    s0, s1 = (s // M.itemsize for s in M.strides)
    if s1 == 1 or M.shape[1] == 1:
        return N, (M, max(s0, M.shape[1], 1))
    if s0 == 1 or M.shape[0] == 1:
        return T, (M, max(s1, M.shape[0], 1))
    raise ValueError(f"cuBLAS product needs a row- or column-contiguous operand, got strides {M.strides}")


def gemm_arguments(A, B, C):
    """The arguments (transa, transb, m, n, k, (A', lda), (B', ldb), ldc) of the column-major cuBLAS gemm that
    computes the row-major C = A @ B: a row-major matrix is its transpose in column-major order, so the call
    computes C.T = B.T @ A.T."""
    (m, k), n = A.shape, B.shape[1]
    if C.shape != (m, n) or B.shape[0] != k or not (C.strides[1] == C.itemsize or n == 1):
        raise ValueError(f"cuBLAS product shapes {A.shape} @ {B.shape} -> {C.shape}")
    op_a, a = _operand(A)
    op_b, b = _operand(B)
    return op_b, op_a, n, m, k, b, a, max(C.strides[0] // C.itemsize, n, 1)
