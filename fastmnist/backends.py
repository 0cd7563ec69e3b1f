"""The built-in backends and how each is probed. Imports happen only when a backend is first asked for."""

from __future__ import annotations

from .dispatch import register


def _numpy():
    from .kernels.reference import ReferenceBackend
    return ReferenceBackend()


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
register("cupy", _cupy, "reference array code on CuPy (the GPU baseline, as seed 004 ran)", device="gpu")
