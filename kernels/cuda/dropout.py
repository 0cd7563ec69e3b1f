"""Dropout masks drawn on the GPU from Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy
as 1, 2, 3", SC 2011), a counter-based generator: the numbers are a pure function of (counter, key), so
a mask is reproducible from its 64-bit key whatever the launch shape.

Element e of a mask takes word e % 4 of philox(counter=(e // 4, 0, 0, 0), key), as a uniform in [0, 1).
"""

from __future__ import annotations

import functools

import numba
import numpy
from numba import cuda

# 32-bit words are held in uint64 so that products and sums never overflow, in CUDA and in the
# simulator alike (numpy would warn on uint32 overflow); LOW32 keeps the low word.
M0, M1 = numba.uint64(0xD2511F53), numba.uint64(0xCD9E8D57)
W0, W1 = numba.uint64(0x9E3779B9), numba.uint64(0xBB67AE85)
LOW32, SHIFT32, ZERO64 = numba.uint64(0xFFFFFFFF), numba.uint64(32), numba.uint64(0)
TO_UNIT = 2.0 ** -32
ROUNDS = 10


@cuda.jit(device=True)
def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox-4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1): four 32-bit words."""
    for _ in range(ROUNDS):
        p0 = M0 * c0
        p1 = M1 * c2
        c0, c1, c2, c3 = (p1 >> SHIFT32) ^ c1 ^ k0, p1 & LOW32, (p0 >> SHIFT32) ^ c3 ^ k1, p0 & LOW32
        k0 = (k0 + W0) & LOW32
        k1 = (k1 + W1) & LOW32
    return c0, c1, c2, c3


@cuda.jit(cache=True)
def philox_kernel(counters, keys, out):
    """out[i] = philox4x32(counters[i], keys[i]): for checking the generator against known answers."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        words = philox4x32(numba.uint64(counters[i, 0]), numba.uint64(counters[i, 1]),
                           numba.uint64(counters[i, 2]), numba.uint64(counters[i, 3]),
                           numba.uint64(keys[i, 0]), numba.uint64(keys[i, 1]))
        for w in range(4):
            out[i, w] = words[w]


@functools.lru_cache(maxsize=None)
def dropout_kernel(dtype):
    zero = dtype.type(0)
    one = dtype.type(1)

    @cuda.jit(device=True)
    def write(e, word, keep, fwd, bwd, scale_bwd):
        units = fwd.shape[1]
        if e < fwd.shape[0] * units:
            i, j = e // units, e % units
            kept = numba.float64(word) * TO_UNIT < keep[j]
            fwd[i, j] = 1.0 / keep[j] if kept else zero
            if scale_bwd:
                bwd[i, j] = fwd[i, j]
            else:
                bwd[i, j] = one if kept else zero

    @cuda.jit(cache=True)
    def kernel(keys, slot, keep, fwd, bwd, scale_bwd):
        g = cuda.grid(1)
        if 4 * g < fwd.shape[0] * fwd.shape[1]:
            w0, w1, w2, w3 = philox4x32(numba.uint64(g), ZERO64, ZERO64, ZERO64, keys[slot, 0], keys[slot, 1])
            write(4 * g, w0, keep, fwd, bwd, scale_bwd)
            write(4 * g + 1, w1, keep, fwd, bwd, scale_bwd)
            write(4 * g + 2, w2, keep, fwd, bwd, scale_bwd)
            write(4 * g + 3, w3, keep, fwd, bwd, scale_bwd)

    return kernel


def draw_key(rng: numpy.random.RandomState) -> numpy.ndarray:
    """A 64-bit key from the host generator, as two 32-bit words in a uint64 pair."""
    return rng.randint(0, 2 ** 32, size=2, dtype=numpy.uint64)


def dropout(keys, slot: int, keep, fwd, bwd, scale_bwd: bool, threads=128, stream=0):
    """Fills fwd with kept / keep[unit] and bwd with the same (scale_bwd) or with kept (0/1), where
    kept = uniform < keep[unit] under the key in row `slot` of the device array `keys` (uint64, (n, 2)):
    the key is read on the device, so a captured step replays with new keys. `keep` is a float64 device
    vector, one probability per unit. fwd and bwd may be the same array."""
    groups = -(-fwd.shape[0] * fwd.shape[1] // 4)
    dropout_kernel(fwd.dtype)[-(-groups // threads), threads, stream](keys, slot, keep, fwd, bwd, scale_bwd)
