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
# Likewise the other termination signals fastmnist handles: `nohup` starts the tests with SIGHUP ignored, and
# fastmnist rightly leaves an ignored signal ignored, so the tests of SIGHUP would test nothing and fail.
for _name in ("SIGHUP", "SIGTERM", "SIGXCPU"):
    if signal.getsignal(getattr(signal, _name)) is signal.SIG_IGN:
        signal.signal(getattr(signal, _name), signal.SIG_DFL)

# Under pytest-xdist (the test command's `-n auto`) the workers compile into one Numba cache at once, which
# fastmnist.kernels.cache_lock makes safe (Numba alone could hand one worker another's machine code); so a kernel
# that one worker compiled, the other loads. With a worker per core, numpy's BLAS gets one thread in each: its
# idle threads spin, and beside the other worker's kernels a numpy epoch's benchmark body took 18-21 s instead of
# under 2. Set before anything imports numpy; the CLI subprocesses a test starts inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

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


# -- the default run and the exhaustive one ------------------------------------------------------------------
# The test command checks every code path once; the full matrices are marked `exhaustive` and run only when
# asked for (`--exhaustive`, or a -m expression that names the marker: `pytest -m exhaustive` runs just them).
# A test marked `pairwise` keeps, in the default run, only parametrisations in which every value of each of its
# parameters meets every value of each other parameter at least once (all pairs; `pairwise(strength=1)`: each
# value once), separately for each value of the parameters named in `per` (e.g. each backend); the rest of its
# product is marked exhaustive.

import pytest


def pytest_addoption(parser):
    parser.addoption("--exhaustive", action="store_true",
                     help="fastmnist: run the exhaustive matrices too (every parametrisation, every forced "
                          "vector width x kernel test file, every lab version), not only the default run's cover")


def _exhaustive_selected(config) -> bool:
    return config.getoption("exhaustive") or "exhaustive" in (config.option.markexpr or "")


def _pairs(key, strength):
    from itertools import combinations

    return {tuple((i, key[i]) for i in chosen) for chosen in combinations(range(len(key)), strength)}


def _cover(keys, strength) -> set:
    """Indices of `keys` (equal-length tuples of parameter values) that together hold every combination of
    `strength` values that any key holds, chosen greedily (deterministic): the key that covers most of what is
    still uncovered, among those the one whose values were kept least so far (spreading them), then the first."""
    from collections import Counter

    strength = min(strength, len(keys[0]))
    if strength == 0:
        return {0}
    sets = [_pairs(k, strength) for k in keys]
    uncovered = set().union(*sets)
    keep, used = set(), Counter()
    while uncovered:
        best = max(range(len(keys)), key=lambda i: (len(sets[i] & uncovered),
                                                     -sum(used[v] for v in enumerate(keys[i])), -i))
        keep.add(best)
        used.update(enumerate(keys[best]))
        uncovered -= sets[best]
    return keep


def _mark_beyond_the_cover(items):
    groups = {}
    for item in items:
        marker = item.get_closest_marker("pairwise")
        if marker is None or not hasattr(item, "callspec"):
            continue
        per = marker.kwargs.get("per", ())
        params = item.callspec.params
        names = sorted(n for n in params if n not in per)
        group = (item.nodeid.split("[")[0], tuple(repr(params[n]) for n in per if n in params))
        groups.setdefault(group, []).append((item, tuple(repr(params[n]) for n in names),
                                             marker.kwargs.get("strength", 2)))
    for members in groups.values():
        keep = _cover([key for _, key, _ in members], members[0][2])
        for i, (item, _, _) in enumerate(members):
            if i not in keep:
                item.add_marker(pytest.mark.exhaustive)


# -- sharing the tests between pytest-xdist workers ------------------------------------------------------------
# Most of the run is Numba compiling, and each worker compiles into a cache of its own (above), so tests that
# compile the same kernels go to one worker: `--dist loadgroup` keeps each group on one worker, a group being a
# test file, or one backend's tests in the conformance suite (which spans every backend). The long tests that run
# in a subprocess of their own (the forced vector widths) form no group and come first, one per worker.

def pytest_configure(config):
    """`-n N` without `--dist`: pytest-xdist's `load` becomes `loadgroup`, in collection order (the lone tests
    first) rather than the biggest group first."""
    option, args = config.option, config.invocation_params.args
    if getattr(option, "dist", "no") == "load" and not any(a == "-d" or a.startswith("--dist") for a in args):
        option.dist, option.loadscopereorder = "loadgroup", False


LONE_FIRST = ("test_each_kernel_passes_its_tests_at_a_forced_width",)


def _xdist_group(item) -> str | None:
    if getattr(item, "originalname", item.name) in LONE_FIRST:
        return None
    path = item.nodeid.split("::")[0]
    params = getattr(item, "callspec", None) and item.callspec.params or {}
    backend = params.get("backend_name", params.get("host_backend"))
    return f"{path}:{backend}" if path.endswith("test_conformance.py") and backend else path


def _share_between_workers(items):
    for item in items:
        group = _xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: _xdist_group(item) is not None)     # stable: the lone tests first, in order


@pytest.hookimpl(tryfirst=True)      # before -m deselects, and before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    _mark_beyond_the_cover(items)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _share_between_workers(items)
    if _exhaustive_selected(config):
        return
    keep, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("exhaustive") else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
