"""The elementwise kernels that surround a library matrix product (the cuda-hybrid backend): the forward
epilogue (bias, activation, dropout mask) applied to a product already in memory, the pre-activation
gradient dZ that the backward products read, and the L2 term added to a weight gradient.

Each thread handles whole elements of a row-major (rows, units) array, with a grid-stride loop."""

from __future__ import annotations

import functools

from numba import cuda

from .dense import mask_mode
from .tiles import elementwise


@functools.lru_cache(maxsize=None)
def epilogue_kernel(dtype):
    ew = elementwise(dtype)
    activate, mask_value = ew.activate, ew.mask_value

    @cuda.jit(cache=True)
    def kernel(H, b, has_bias, codes, mask, mode, A):
        """H = act(H + b) in place; A = H * mask when there is a mask."""
        m, n = H.shape
        for e in range(cuda.grid(1), m * n, cuda.gridsize(1)):
            i, j = e // n, e % n
            h = activate(H[i, j] + b[j] if has_bias else H[i, j], codes[j])
            H[i, j] = h
            if mode != 0:
                A[i, j] = h * mask_value(mask, mode, i, j)

    return kernel


@functools.lru_cache(maxsize=None)
def pre_activation_grad_kernel(dtype):
    dz = elementwise(dtype).pre_activation_grad

    @cuda.jit(cache=True)
    def kernel(dA, H, codes, mask, mode, dZ):
        m, n = dZ.shape
        for e in range(cuda.grid(1), m * n, cuda.gridsize(1)):
            i, j = e // n, e % n
            dZ[i, j] = dz(dA, H, codes, mask, mode, i, j)

    return kernel


@functools.lru_cache(maxsize=None)
def add_l2_kernel(dtype):
    @cuda.jit(cache=True)
    def kernel(W, l2, dW):
        n_in, n = dW.shape
        for e in range(cuda.grid(1), n_in * n, cuda.gridsize(1)):
            i, j = e // n, e % n
            dW[i, j] += W[i, j] * l2[j]

    return kernel


def _launch(elements: int, threads: int, most_blocks: int):
    return max(1, min(most_blocks, -(-elements // threads))), threads


def epilogue(H, b, codes, mask, A, threads=256, most_blocks=4096, stream=0):
    """H (holding X @ W) becomes act(X @ W + b); A = H * mask unless mask is None (A is then unused)."""
    kernel = epilogue_kernel(H.dtype)
    kernel[_launch(H.size, threads, most_blocks) + (stream,)](
        H, H[0] if b is None else b, b is not None, codes, H if mask is None else mask, mask_mode(mask), A)


def pre_activation_grad(dA, H, codes, mask, dZ, threads=256, most_blocks=4096, stream=0):
    """dZ = dA * act'(Z) * mask, with act' written in terms of H = act(Z)."""
    kernel = pre_activation_grad_kernel(dZ.dtype)
    kernel[_launch(dZ.size, threads, most_blocks) + (stream,)](
        dA, H, codes, H if mask is None else mask, mask_mode(mask), dZ)


def add_l2(W, l2, dW, threads=256, most_blocks=1024, stream=0):
    """dW += W * l2 (one coefficient per unit)."""
    add_l2_kernel(dW.dtype)[_launch(dW.size, threads, most_blocks) + (stream,)](W, l2, dW)
