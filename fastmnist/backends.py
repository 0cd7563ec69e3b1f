"""The built-in backends and how each is probed. Imports happen only when a backend is first asked for."""

from __future__ import annotations

from .dispatch import register


def _numpy():
    from .kernels.reference import ReferenceBackend
    return ReferenceBackend()


def _numba_cpu():
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"numba is not installed: {exc}") from None
    from .kernels.numba_cpu import NumbaCpuBackend
    return NumbaCpuBackend()


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError(f"not installed (pip install 'fastmnist[cuda]'): {exc}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise RuntimeError(f"no usable CUDA device: {exc}") from None
    if count == 0:
        raise RuntimeError("no CUDA device")
    from .kernels.reference import ReferenceBackend
    return ReferenceBackend(cupy, name="cupy")


register("numpy", _numpy, "reference array code on NumPy (the CPU baseline)")
register("numba-cpu", _numba_cpu, "compiled Numba CPU kernels: fused layers, a sparse-input first layer, "
         "a compiled batch-1 epoch")
register("cupy", _cupy, "reference array code on CuPy (the GPU baseline, as seed 004 ran)", device="gpu")


def _cuda_kernels(module: str, cls: str):
    """A backend built on numba-cuda kernels, or the reason it cannot run here."""
    import importlib
    import os

    try:
        from numba import cuda
    except ImportError as exc:
        raise RuntimeError(f"not installed (pip install 'fastmnist[cuda]'): {exc}") from None
    except Exception as exc:
        raise RuntimeError(f"numba-cuda failed to import: {type(exc).__name__}: {exc}") from None
    from .kernels.numba_cuda import simulator_enabled

    if simulator_enabled():
        # The simulator runs every GPU thread in Python: fine for tests, never a backend to pick.
        if os.environ.get("FASTMNIST_ALLOW_CUDASIM") != "1":
            raise RuntimeError("numba-cuda is in its CPU simulator (NUMBA_ENABLE_CUDASIM=1); "
                               "set FASTMNIST_ALLOW_CUDASIM=1 to use it anyway")
    else:
        try:
            cuda.current_context()
        except Exception as exc:
            detail = " ".join(line.strip(" :") for line in str(exc).splitlines() if line.strip(" :"))
            raise RuntimeError(f"no usable CUDA device: {detail or type(exc).__name__}") from None
    return getattr(importlib.import_module(f".kernels.{module}", __package__), cls)()


register("numba-cuda", lambda: _cuda_kernels("numba_cuda", "NumbaCudaBackend"),
         "hand-written numba-cuda kernels with a fused training step", device="gpu")
register("cuda-hybrid", lambda: _cuda_kernels("cuda_hybrid", "CudaHybridBackend"),
         "cuBLAS (through CuPy) for the matrix products, numba-cuda kernels and the fused step for the rest",
         device="gpu")
