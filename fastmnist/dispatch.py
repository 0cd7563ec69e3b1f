"""The backend registry: backends register by name; `auto` picks the fastest one available here."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from .errors import BackendUnavailable


@dataclass(frozen=True)
class BackendInfo:
    name: str
    available: bool
    reason: str          # why it is unavailable, or "" when it is available
    description: str
    device: str


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Callable[[], object]
    description: str
    device: str


_REGISTRY: dict[str, _Entry] = {}
# Fastest first: `auto` takes the first that is available. On the GPU, measured on an H100 (README,
# bench/results/h100-2026-11-23): cuda-hybrid's replayed branchnet step 1.2 ms, numba-cuda's 5.6 ms, cupy's 4.3-5.2 ms.
AUTO_ORDER = ("cuda-hybrid", "numba-cuda", "cupy", "numba-cpu", "numpy")


def register(name: str, factory: Callable[[], object], description: str, device: str = "cpu") -> None:
    """Add a backend. `factory` imports lazily and raises with a readable message if it cannot run."""
    _REGISTRY[name] = _Entry(name, factory, description, device)
    _load.cache_clear()


@functools.lru_cache(maxsize=None)
def _load(name: str):
    entry = _REGISTRY[name]
    try:
        return entry.factory(), ""
    except Exception as exc:  # any import or driver failure becomes the reason shown to the user
        text = str(exc).strip().splitlines()
        return None, (text[0] if text else type(exc).__name__)


def names() -> list[str]:
    return list(_REGISTRY)


def backends() -> list[BackendInfo]:
    """Every registered backend, whether it can run here and, if not, why."""
    out = []
    for name, entry in _REGISTRY.items():
        backend, reason = _load(name)
        out.append(BackendInfo(name, backend is not None, reason, entry.description, entry.device))
    return out


def get_backend(name: str = "auto"):
    """The backend object for `name`, or the fastest available one for "auto"."""
    if name == "auto":
        for candidate in AUTO_ORDER:
            if candidate in _REGISTRY and _load(candidate)[0] is not None:
                return _load(candidate)[0]
        raise BackendUnavailable("no backend is available")
    if name not in _REGISTRY:
        raise BackendUnavailable(f"unknown backend {name!r}; choose from auto, {', '.join(_REGISTRY)}")
    backend, reason = _load(name)
    if backend is None:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {reason}")
    return backend


def resolve_name(name: str) -> str:
    return get_backend(name).name
