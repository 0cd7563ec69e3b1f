"""What the tiled matrix-product kernels share: the tile shape, the device functions of the activations
(whose codes are in kernels/codes.py), and the register-blocked product of two shared-memory tiles.

A block of threads_y x threads_x threads computes a tile_m x tile_n tile of the output; thread (ty, tx)
holds rows ty + r * threads_y (r < rows) and columns tx + c * threads_x (c < cols) in registers, so
neighbouring threads write neighbouring columns. The depth loop walks the shared dimension `depth`
elements at a time through shared memory, stored depth-major: a_tile[k, i], b_tile[k, j].
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numba
from numba import cuda

from ..codes import RELU, TANH



@dataclass(frozen=True)
class Tiling:
    threads_y: int
    threads_x: int
    rows: int       # output rows per thread
    cols: int       # output columns per thread
    depth: int      # shared-dimension elements per step

    @property
    def tile_m(self) -> int:
        return self.threads_y * self.rows

    @property
    def tile_n(self) -> int:
        return self.threads_x * self.cols

    @property
    def threads(self) -> int:
        return self.threads_y * self.threads_x

    def grid(self, m: int, n: int, splits: int = 1) -> tuple:
        return (-(-n // self.tile_n), -(-m // self.tile_m), splits)

    def block(self) -> tuple:
        return (self.threads_x, self.threads_y)


# 64 x 64 tiles of 4 x 4 registers per thread: the shape for a real GPU.
GPU_TILING = Tiling(threads_y=16, threads_x=16, rows=4, cols=4, depth=16)
# The simulator runs every thread in Python: small, non-square tiles keep it fast and make every
# boundary case (partial tiles in all three dimensions) appear on tiny matrices.
SIM_TILING = Tiling(threads_y=2, threads_x=3, rows=2, cols=2, depth=4)


@functools.lru_cache(maxsize=None)
def elementwise(dtype):
    """The per-element device functions for one float type (a numpy dtype). Their constants share
    that type, or float32 kernels would silently compute in float64."""
    zero, one = dtype.type(0), dtype.type(1)

    @cuda.jit(device=True)
    def activate(z, code):
        if code == RELU:
            return zero if z <= zero else z      # NaN passes through, as numpy.maximum(z, 0) does
        if code == TANH:
            return math.tanh(z)
        return z

    @cuda.jit(device=True)
    def times_derivative(d, h, code):
        """d * act'(z), with the derivative written in terms of h = act(z)."""
        if code == RELU:
            return d * (one if h > zero else zero)
        if code == TANH:
            return d * (one - h * h)
        return d

    @cuda.jit(device=True)
    def mask_value(mask, mask_mode, i, j):
        """The dropout scale of element (i, j): mode 0 no mask, 1 one row for all rows, 2 full."""
        if mask_mode == 0:
            return one
        if mask_mode == 1:
            return mask[0, j]
        return mask[i, j]

    @cuda.jit(device=True)
    def pre_activation_grad(dA, H, codes, mask, mask_mode, i, j):
        """dZ[i, j] = dA * act'(Z) * mask: what the backward products read instead of a stored dZ."""
        return times_derivative(dA[i, j], H[i, j], codes[j]) * mask_value(mask, mask_mode, i, j)

    return SimpleNamespace(zero=zero, one=one, activate=activate, mask_value=mask_value,
                           pre_activation_grad=pre_activation_grad)


@functools.lru_cache(maxsize=None)
def tile_product(tiling: Tiling, dtype):
    """Device function acc += a_tile.T @ b_tile over one depth step, for the calling thread's registers."""
    TY, TX, RM, RN, TK = tiling.threads_y, tiling.threads_x, tiling.rows, tiling.cols, tiling.depth
    ntype = numba.from_dtype(dtype)

    @cuda.jit(device=True)
    def product(a_tile, b_tile, acc):
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        a = cuda.local.array(RM, ntype)
        b = cuda.local.array(RN, ntype)
        for k in range(TK):
            for r in range(RM):
                a[r] = a_tile[k, ty + r * TY]
            for c in range(RN):
                b[c] = b_tile[k, tx + c * TX]
            for r in range(RM):
                for c in range(RN):
                    acc[r, c] += a[r] * b[c]

    return product
