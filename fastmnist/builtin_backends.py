"""The built-in backends and how each is probed. Imports happen only when a backend is first asked for.

Priorities order `auto` (highest available wins): on a GPU, cuda-hybrid's fused step with cuBLAS products
beats numba-cuda's hand-written products, which beat CuPy's array code (docs/performance.md has the
measurements); on a CPU, numba-cpu beats numpy.
"""

from __future__ import annotations

from .dispatch import register
from .errors import BackendMisconfigured


def _numpy():
    from .kernels.reference import ReferenceBackend
    return ReferenceBackend()


def _numba_cpu():
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"numba is not installed: {exc}") from None
    # installed but refusing to start: a bad NUMBA_* setting (NUMBA_NUM_THREADS=0)
    except Exception as exc:  # noqa: BLE001
        raise BackendMisconfigured(f"numba failed to import ({type(exc).__name__}: {exc}); check the NUMBA_* "
                                   f"environment variables") from None
    from .kernels.interface import SettingError
    try:
        from .kernels.cpu.backend import NumbaCpuBackend
    except SettingError as exc:     # a bad FASTMNIST_VECTOR_BYTES: the user's setting, not the machine's want
        raise BackendMisconfigured(str(exc)) from None
    return NumbaCpuBackend()


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError(f"not installed (pip install 'fastmnist[cuda]'): {exc}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001  (any driver failure is the reason the backend cannot run)
        raise RuntimeError(f"no usable CUDA device: {exc}") from None
    if count == 0:
        raise RuntimeError("no CUDA device")
    from .kernels.reference import ReferenceBackend
    return ReferenceBackend(cupy, name="cupy")


register("numpy", _numpy, "reference array code on NumPy (the CPU baseline)", priority=10)
register("numba-cpu", _numba_cpu, "compiled Numba CPU kernels: fused layers, a sparse-input first layer, "
         "compiled batch-1 and minibatch epochs", priority=20)
register("cupy", _cupy, "reference array code on CuPy (the GPU baseline, as seed 004 ran)", device="gpu",
         priority=30)

# The backend every other one on its device is measured against (compare's and bench-report's speed-ups).
BASELINES = {"cpu": "numpy", "gpu": "cupy"}


def _cuda_kernels(module: str, cls: str):
    """A backend built on numba-cuda kernels, or the reason it cannot run here."""
    import importlib
    import os

    try:
        from numba import cuda
    except ImportError as exc:
        raise RuntimeError(f"not installed (pip install 'fastmnist[cuda]'): {exc}") from None
    except Exception as exc:  # noqa: BLE001  (a broken install is a reason too, not a crash)
        raise RuntimeError(f"numba-cuda failed to import: {type(exc).__name__}: {exc}") from None
    from .kernels.cuda.backend import simulator_enabled

    if simulator_enabled():
        # The simulator runs every GPU thread in Python: fine for tests, never a backend to pick.
        if os.environ.get("FASTMNIST_ALLOW_CUDASIM") != "1":
            raise RuntimeError("numba-cuda is in its CPU simulator (NUMBA_ENABLE_CUDASIM=1); "
                               "set FASTMNIST_ALLOW_CUDASIM=1 to use it anyway")
    else:
        try:
            cuda.current_context()
        except Exception as exc:  # noqa: BLE001  (any driver failure is the reason the backend cannot run)
            detail = " ".join(line.strip(" :") for line in str(exc).splitlines() if line.strip(" :"))
            raise RuntimeError(f"no usable CUDA device: {detail or type(exc).__name__}") from None
    return getattr(importlib.import_module(f".kernels.cuda.{module}", __package__), cls)()


register("numba-cuda", lambda: _cuda_kernels("backend", "NumbaCudaBackend"),
         "hand-written numba-cuda kernels with a fused training step", device="gpu", priority=40)
register("cuda-hybrid", lambda: _cuda_kernels("hybrid", "CudaHybridBackend"),
         "cuBLAS (through CuPy) for the matrix products, numba-cuda kernels and the fused step for the rest",
         device="gpu", priority=50)
