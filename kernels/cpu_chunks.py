"""How the CPU kernels split work between threads.

Each kernel is a plain compiled function over a range of rows (or elements) plus a parallel driver that
runs one range per thread. Small jobs call the range function directly: a parallel launch costs more than
it saves below PARALLEL_MIN elements, and on a busy machine it waits for every worker to be scheduled.
(A serial loop inside a parallel=True function is no substitute: it compiles to much slower code.)
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

PARALLEL_MIN = 1 << 18


def chunks_for(rows: int, size: int) -> int:
    """How many ranges to split `rows` rows (of `size` elements in all) into: 1 means run serially."""
    if size < PARALLEL_MIN or rows < 2:
        return 1
    return max(1, min(rows, numba.get_num_threads()))


@njit(cache=True)
def chunk_bounds(c, n, chunks):
    """[start, stop) of range c out of `chunks` near-equal ranges of n (c may be a prange's unsigned index)."""
    c = np.int64(c)
    return c * n // chunks, (c + 1) * n // chunks
