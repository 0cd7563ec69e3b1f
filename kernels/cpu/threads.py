"""Thread pools for the compiled CPU kernels.

Numba's default choice may fall back to the `workqueue` layer, which aborts the process when two Python
threads enter parallel kernels at once. Before the first parallel launch we ask for a thread-safe layer
(TBB or OpenMP), unless the user chose one with NUMBA_THREADING_LAYER. When the layer in use is still
workqueue (nothing thread-safe installed, or it was launched before this module was imported), parallel
kernels are serialised by a lock instead.

How kernels split work: each is a plain compiled function over a range of rows (or elements) plus a
parallel driver that runs one range per thread. Small jobs call the range function directly: a parallel
launch costs more than it saves below PARALLEL_MIN elements, and on a busy machine it waits for every worker
to be scheduled. (A serial loop inside a parallel=True function is no substitute: it compiles to much slower
code.)
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading

import numba
import numpy as np
from numba import njit

_SAFE_LAYERS = ("tbb", "omp")
_lock = threading.RLock()


def _importable(layer: str) -> bool:
    try:
        importlib.import_module(f"numba.np.ufunc.{layer}pool")
        return True
    except Exception:  # noqa: BLE001  (ImportError, or a library that fails to load)
        return False


def launched_layer() -> str | None:
    """The threading layer Numba has started, or None before the first parallel launch."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def choose_threading_layer() -> None:
    if "NUMBA_THREADING_LAYER" in os.environ or launched_layer() is not None:
        return
    if numba.config.THREADING_LAYER == "default" and any(_importable(layer) for layer in _SAFE_LAYERS):
        numba.config.THREADING_LAYER = "threadsafe"


def _needs_lock() -> bool:
    layer = launched_layer()
    if layer is not None:
        return layer == "workqueue"
    return numba.config.THREADING_LAYER in ("default", "workqueue")


def parallel_section():
    """A context for code that launches parallel kernels: a process-wide lock only under workqueue."""
    return _lock if _needs_lock() else contextlib.nullcontext()


@functools.lru_cache(maxsize=1)
def _blas_pools():
    try:
        from threadpoolctl import ThreadpoolController
        pools = ThreadpoolController().select(user_api="blas")
    except Exception:  # noqa: BLE001  (threadpoolctl missing or unable to inspect the loaded libraries)
        return None
    return pools if pools.lib_controllers else None


_blas_lock = threading.Lock()
_blas_users = 0
_blas_restore = None


@contextlib.contextmanager
def serial_blas():
    """numpy's BLAS on the calling thread only, for the small products between parallel kernels: waking
    BLAS's workers costs more than they save there, and they keep spinning afterwards, taking a core from
    the next kernel. Nested and concurrent uses share one limit, lifted when the last one ends."""
    global _blas_users, _blas_restore
    pools = _blas_pools()
    if pools is None:
        yield
        return
    with _blas_lock:
        if _blas_users == 0:
            _blas_restore = pools.limit(limits=1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_restore.restore_original_limits()
                _blas_restore = None


# -- splitting work between threads --------------------------------------------------------------------

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


def run_workers(worker, T, args):
    """worker(t, T, *args) on T threads: T - 1 new Python threads and this one. The worker is compiled with
    nogil (and the numpy error model: an exception in one thread would leave the others' results half made).
    This thread compiles it first, if need be, so that the compilation happens in, and is seen by, the caller's
    thread. Unlike a parallel=True loop, nothing of the worker is compiled twice."""
    if T > 1:
        worker.compile(tuple(numba.typeof(a) for a in (0, T) + args))
    others = [threading.Thread(target=worker, args=(t, T) + args, daemon=True) for t in range(1, T)]
    for th in others:
        th.start()
    worker(0, T, *args)
    for th in others:
        th.join()
