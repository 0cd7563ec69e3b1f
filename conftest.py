"""Settings every test and benchmark needs, made before any of them imports numba or reads data."""

import os
from pathlib import Path

# The real MNIST files beside the repository unless FASTMNIST_DATA says otherwise (made absolute, since some
# tests run subprocesses elsewhere); a missing file makes the tests that need it fail, never skip.
_default = Path(__file__).resolve().parent.parent / "shared" / "data" / "mnist"
os.environ["FASTMNIST_DATA"] = str(Path(os.environ.get("FASTMNIST_DATA", _default)).resolve())

# Ctrl-C as a terminal delivers it: a shell that starts the tests in the background (`cmd &`, nohup) hands them
# SIGINT ignored, which Python and every subprocess would inherit, and the interrupt tests would then test
# nothing. Python's own handler is put back (subprocesses then start with the default disposition).
import signal

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# numba-cuda kernels run in numba-cuda's CPU simulator unless a real GPU is asked for (FASTMNIST_REAL_GPU=1).
# numba.cuda reads the variable when it is first imported, so it is set here, before anything imports it.
if os.environ.get("FASTMNIST_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


def _lock_simulated_shared_array_allocation():
    """numba-cuda's simulator (0.30.4) gives a block's threads one array per `cuda.shared.array` call site
    through a dict that it fills without a lock, so two threads that ask at the same moment can each get an
    array of their own; the block then computes with memory the other threads never wrote. CI saw it twice,
    on a loaded machine: one tile of a backward product wrong, and a wrong loss sum. This is the
    simulator's allocation (keyed by the calling line, as there) made under a lock."""
    import sys
    import threading

    import numpy as np
    from numba.cuda.simulator import kernelapi

    shared = kernelapi.FakeCUDAShared
    if not hasattr(shared(0), "_allocations"):      # a simulator whose internals differ: leave it alone
        return
    original, lock = shared.array, threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:     # refused, or dynamic shared memory (one buffer, no dict)
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        site = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            found = self._allocations.get(site)
            if found is None:
                found = self._allocations[site] = np.empty(shape, dtype)
        return found

    shared.array = array


def pytest_collection_finish(session):
    # after collection, so that importing the simulator here does not load numpy before the benchmarks'
    # conftest imports fastmnist (which sets OpenBLAS's thread timeout)
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        _lock_simulated_shared_array_allocation()
