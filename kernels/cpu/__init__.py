"""The numba-cpu backend (backend.py) and the compiled kernels it is built from, one module per computation."""

from ..cache_lock import install as _lock_numba_cache

_lock_numba_cache()     # before any kernel here compiles: processes that share a cache folder then share it safely
