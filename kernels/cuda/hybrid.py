"""The cuda-hybrid backend: the numba-cuda backend with its matrix products handed to the vendor library
(cuBLAS: through CuPy's matmul, or through cuda_blas while a step is captured into a CUDA graph), and
numba-cuda kernels for everything around them: the forward epilogue
(bias, activation, dropout), the pre-activation gradient, the L2 term, losses, dropout masks and the
one-launch optimiser update. The fused step, its buffers and its packed parameters are numba-cuda's; only
the two layer operations differ.

Under the simulator the products are NumPy's, so the same code is tested without a GPU.
"""

from __future__ import annotations

from . import elementwise
from .backend import NumbaCudaBackend


class CudaHybridBackend(NumbaCudaBackend):
    name = "cuda-hybrid"
    captures_blas = True

    def __init__(self):
        super().__init__()
        self.name = "cuda-hybrid"

    def _scratch(self, batch, W):
        """dZ (written once, read by all three backward products) and a row of ones: the bias gradient as a
        product, ones @ dZ, is much faster in cuBLAS than CuPy's column sum (bench/gpu_profile.py times both)."""
        return self._pair(self.xp.empty((batch, W.shape[1]), W.dtype)), self.xp.ones((1, batch), W.dtype)

    def _matmul(self, A, B, out):
        """out = A @ B by cuBLAS: through CuPy, or through our own handle while a step is being captured."""
        replayer = self.replayer
        if replayer is not None and replayer.capturing:
            replayer.blas.gemm(A, B, out)
        else:
            self.xp.matmul(A, B, out=out)

    def _forward(self, X, W, b, codes, mask, H, A):
        self._matmul(X.a, W.a, H.a)
        elementwise.epilogue(H.v, b and b.v, codes, mask and mask.v, A.v, self.threads, stream=self.stream)

    def _backward(self, dA, X, W, H, codes, mask, l2, dX, dW, db, scratch):
        dZ, ones = scratch
        elementwise.pre_activation_grad(dA.v, H.v, codes, mask and mask.v, dZ.v, self.threads,
                                             stream=self.stream)
        if dX is not None:
            self._matmul(dZ.a, W.a.T, dX.a)
        self._matmul(X.a.T, dZ.a, dW.a)
        if l2 is not None:
            elementwise.add_l2(W.v, l2, dW.v, self.threads, stream=self.stream)
        self._matmul(ones, dZ.a, db.a.reshape(1, -1))

