"""The backend registry: backends register by name; `auto` picks the available one of highest priority."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Callable

from .errors import BackendMisconfigured, BackendUnavailable
from .kernels.interface import Backend


@dataclass(frozen=True)
class BackendInfo:
    name: str
    available: bool
    reason: str          # why it is unavailable, or "" when it is available
    description: str
    device: str
    priority: int


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: Callable[[], Backend]
    description: str
    device: str
    priority: int


_REGISTRY: dict[str, _Entry] = {}
_lock = threading.Lock()
_MISCONFIGURED: set[str] = set()     # backends whose factory raised BackendMisconfigured when last loaded


def register(name: str, factory: Callable[[], Backend], description: str, device: str = "cpu",
             priority: int = 0) -> None:
    """Add (or replace) a backend.

    `factory()` builds the backend object (see fastmnist.kernels.interface.Backend); it is called on first
    use and should import lazily and raise with a readable message if the backend cannot run here. `auto`
    takes the available backend of highest `priority` (the built-in ones use 10 for numpy up to 50 for
    cuda-hybrid); ties go to the one registered first.
    """
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"a backend needs a name other than 'auto', got {name!r}")
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    with _lock:
        _REGISTRY[name] = _Entry(name, factory, description, device, int(priority))
    _load.cache_clear()


def unregister(name: str) -> None:
    """Remove a backend added with register (unknown names are ignored)."""
    with _lock:
        _REGISTRY.pop(name, None)
    _load.cache_clear()


@functools.lru_cache(maxsize=None)
def _load(name: str):
    entry = _REGISTRY[name]
    _MISCONFIGURED.discard(name)
    try:
        backend = entry.factory()
    except Exception as exc:  # noqa: BLE001  (any import or driver failure becomes the reason shown to the user
        if isinstance(exc, BackendMisconfigured):
            _MISCONFIGURED.add(name)
        text = str(exc).strip().splitlines()
        return None, (text[0] if text else type(exc).__name__)
    missing = [m for m in _contract() if not hasattr(backend, m)]
    if missing:
        return None, f"the backend object lacks {', '.join(missing)} (see fastmnist.kernels.interface.Backend)"
    return backend, ""


def _contract():
    from .kernels.interface import CONTRACT
    return CONTRACT


def names() -> list[str]:
    """The registered backends' names in registration order, without loading any (bench/conftest.py takes
    them before tests register backends of their own)."""
    return list(_REGISTRY)


def _by_priority() -> list[_Entry]:
    entries = list(_REGISTRY.values())
    return sorted(entries, key=lambda e: -e.priority)        # stable: ties keep their registration order


def backends() -> list[BackendInfo]:
    """Every registered backend, highest priority first: whether it can run here and, if not, why."""
    out = []
    for entry in _by_priority():
        backend, reason = _load(entry.name)
        out.append(BackendInfo(entry.name, backend is not None, reason, entry.description, entry.device,
                               entry.priority))
    return out


def get_backend(name: str = "auto") -> Backend:
    """The backend object for `name`, or the available one of highest priority for "auto".

    `auto` does not pass over a backend that a user's setting stops (BackendMisconfigured, such as a bad
    FASTMNIST_VECTOR_BYTES for numba-cpu) to train silently on a slower one: it raises, naming the setting."""
    if name == "auto":
        for entry in _by_priority():
            backend, reason = _load(entry.name)
            if backend is not None:
                return backend
            if entry.name in _MISCONFIGURED:
                raise BackendMisconfigured(f"auto: backend {entry.name!r} would be chosen but cannot run: {reason}; "
                                           f"correct that setting, or name a backend")
        raise BackendUnavailable("no backend is available")
    check_known(name)
    backend, reason = _load(name)
    if backend is None:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {reason}")
    return backend


def check_known(name: str) -> None:
    """Raises BackendUnavailable unless `name` is "auto" or a registered backend (available here or not)."""
    if name != "auto" and name not in _REGISTRY:
        raise BackendUnavailable(f"unknown backend {name!r}; choose from auto, {', '.join(_REGISTRY)}")


def resolve_name(name: str) -> str:
    return get_backend(name).name
