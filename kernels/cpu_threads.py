"""Thread pools for the compiled CPU kernels.

Numba's default choice may fall back to the `workqueue` layer, which aborts the process when two Python
threads enter parallel kernels at once. Before the first parallel launch we ask for a thread-safe layer
(TBB or OpenMP), unless the user chose one with NUMBA_THREADING_LAYER. When the layer in use is still
workqueue (nothing thread-safe installed, or it was launched before this module was imported), parallel
kernels are serialised by a lock instead.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading

import numba

_SAFE_LAYERS = ("tbb", "omp")
_lock = threading.RLock()


def _importable(layer: str) -> bool:
    try:
        importlib.import_module(f"numba.np.ufunc.{layer}pool")
        return True
    except Exception:  # ImportError, or a library that fails to load
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
