"""What every benchmark shares: the backends and dtypes it runs on, real MNIST inputs, the timer, and the
size of a timed run.

Benchmarks take the fixtures `backend_name` and `dtype`; `pytest_generate_tests` parametrises them over
every backend `fastmnist.backends()` reports available (optionally narrowed with
FASTMNIST_BENCH_BACKENDS=numpy,numba-cpu) and both dtypes, so ids start `numpy-float32-...` and the suite
grows by itself as backends land. Benchmarks that take `jit_backend` run on the available backends that
compile kernels (every backend that is not the plain reference array code).

A timed run is sized for a person by default: the whole steps (bench_steps.py) and, in float32, each kernel
at the batch its preset trains with; every round of at most DEFAULT_MAX_TIME seconds per benchmark unless
--benchmark-max-time is given; no slow benchmark unless -m selects it. `--bench-grid` times everything (both
dtypes, every batch, the slow benchmarks). With --benchmark-disable (the test command) every body runs once,
whatever the options. The JSON keeps each benchmark's statistics, not the time of every round.
"""

from __future__ import annotations

import os

import fastmnist  # first: it sets OpenBLAS's thread timeout, read when numpy loads OpenBLAS
import numpy as np
import pytest

from fastmnist import data
from fastmnist.builtin_backends import BASELINES
from fastmnist.kernels.reference import ReferenceBackend
from fastmnist.recipes import PRESETS
from fastmnist.training import DTYPES, build_net, init_params, make_recipe

DEFAULT_MAX_TIME = 0.3
# The batch each preset trains with (its full training set when it trains full-batch).
TRAINING_BATCH = {name: r.batch_size or data.TRAIN_ROWS[r.split] for name, r in PRESETS.items()}


def pytest_addoption(parser):
    parser.addoption("--bench-grid", action="store_true",
                     help="fastmnist: time the whole benchmark grid (both dtypes, every batch, the slow benchmarks) "
                          "instead of the default slice")


def pytest_configure(config):
    if config.pluginmanager.hasplugin("benchmark") and not any(
            a.startswith("--benchmark-max-time") for a in config.invocation_params.args):
        config.option.benchmark_max_time = DEFAULT_MAX_TIME
        session = getattr(config, "_benchmarksession", None)   # made by pytest-benchmark's own configure
        if session is not None:
            session.options["max_time"] = DEFAULT_MAX_TIME


def _timing(config) -> bool:
    return (config.pluginmanager.hasplugin("benchmark") and not config.getoption("benchmark_disable")
            and not config.getoption("benchmark_skip"))


def _in_default_slice(item) -> bool:
    """Whole steps always; a kernel in float32 at the batch its preset trains with (any preset's batch for
    the losses)."""
    if item.path.name != "bench_kernels.py":
        return True
    params = item.callspec.params if hasattr(item, "callspec") else {}
    if params.get("dtype") not in (None, "float32"):
        return False
    batch = params.get("batch")
    if batch is None:
        return True
    preset = params.get("preset")
    return batch == TRAINING_BATCH[preset] if preset in TRAINING_BATCH else batch in TRAINING_BATCH.values()


def pytest_collection_modifyitems(config, items):
    if not _timing(config) or config.getoption("bench_grid"):
        return
    slow_unselected = not config.option.markexpr
    keep, dropped = [], []
    for item in items:
        if "benchmark" not in getattr(item, "fixturenames", ()):     # a test, not a benchmark
            keep.append(item)
        elif (slow_unselected and item.get_closest_marker("slow")) or not _in_default_slice(item):
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
        config._bench_grid_left = len(dropped)


def pytest_terminal_summary(terminalreporter, config):
    left = getattr(config, "_bench_grid_left", 0)
    if left:
        terminalreporter.write_line(f"fastmnist benchmarks: {left} cases of the full grid were not timed "
                                    "(float64 kernels, other batches, slow benchmarks); --bench-grid times them all")


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Keeps each benchmark's statistics and drops the time of every round: tens of thousands of rounds of a
    microsecond kernel made the file hundreds of megabytes."""
    for bench in output_json.get("benchmarks", []):
        (bench.get("stats") or {}).pop("data", None)


def _wanted(names):
    chosen = os.environ.get("FASTMNIST_BENCH_BACKENDS")
    if not chosen:
        return names
    keep = {n.strip() for n in chosen.split(",") if n.strip()}
    return [n for n in names if n in keep]


# The backends registered when the benchmarks' conftest loads, before pytest imports any test module: a
# backend a test registers for itself (the conformance suite's toy) is no backend to time.
_REGISTERED = set(fastmnist.dispatch.names())


def available_backends() -> list[str]:
    return _wanted([info.name for info in fastmnist.backends() if info.available and info.name in _REGISTERED])


def jit_backends() -> list[str]:
    return [n for n in available_backends() if type(fastmnist.get_backend(n)) is not ReferenceBackend]


def _no_jit_reason() -> str:
    others = [f"{i.name}: {i.reason}" for i in fastmnist.backends()
              if not i.available and i.name not in BASELINES.values()]
    selected = " and selected by FASTMNIST_BENCH_BACKENDS" if os.environ.get("FASTMNIST_BENCH_BACKENDS") else ""
    return (f"no numba backend is registered, available{selected} here"
            + (f" ({'; '.join(others)})" if others else ""))


@pytest.hookimpl(tryfirst=True)  # before the parametrize markers, so ids read backend-dtype-case
def pytest_generate_tests(metafunc):
    for fixture, names in (("backend_name", available_backends), ("jit_backend", jit_backends)):
        if fixture not in metafunc.fixturenames:
            continue
        combos = [pytest.param(b, d, id=f"{b}-{d}") for b in names() for d in DTYPES]
        if not combos and fixture == "jit_backend":
            combos = [pytest.param(None, None, id="none", marks=pytest.mark.skip(reason=_no_jit_reason()))]
        metafunc.parametrize((fixture, "dtype"), combos)


@pytest.fixture
def be(backend_name):
    return fastmnist.get_backend(backend_name)


class Mnist:
    """The real training images (the first rows of the seeds' splits) as floats, cached per dtype."""

    def __init__(self):
        self._splits = {}
        self._floats = {}

    def split(self, name="50k-10k-10k"):
        if name not in self._splits:
            self._splits[name] = data.load_splits(name).train
        return self._splits[name]

    def images(self, rows, dtype, split="50k-10k-10k"):
        """The first `rows` training images as a host (rows, 784) array in [0, 1]."""
        key = (split, np.dtype(dtype).name)
        if key not in self._floats:
            self._floats[key] = ReferenceBackend(np).to_float(self.split(split).images, dtype)
        assert rows <= self._floats[key].shape[0], f"only {self._floats[key].shape[0]} images in {split}"
        return self._floats[key][:rows]

    def labels(self, rows, split="50k-10k-10k"):
        return self.split(split).labels[:rows].astype(np.int64)


@pytest.fixture(scope="session")
def mnist():
    return Mnist()


def fresh_net(backend, preset, dtype, **overrides):
    """(recipe, a newly initialised Net for `preset`), built exactly as fastmnist.train builds them."""
    recipe = make_recipe(preset, **overrides)
    return recipe, build_net(backend, recipe, *init_params(recipe, np.random.RandomState(recipe.seed)), dtype)


@pytest.fixture
def new_net(be, dtype):
    """new_net(preset, **overrides) -> (recipe, Net) on the benchmark's backend and dtype."""
    return lambda preset, **overrides: fresh_net(be, preset, dtype, **overrides)


@pytest.fixture(scope="session")
def layer_inputs(mnist):
    """layer_inputs(preset, layer, rows, dtype): realistic host inputs to a layer of an initialised `preset`:
    real images for the first layer, the activations of the layers before it (no dropout) for the others."""
    host = ReferenceBackend()
    cache = {}

    def get(preset, layer, rows, dtype):
        dtype = np.dtype(dtype).name
        key = (preset, layer, dtype)
        if key not in cache or cache[key].shape[0] < rows:
            if layer == 0:
                cache[key] = mnist.images(rows, dtype)
            else:
                _, net = fresh_net(host, preset, dtype)
                X = get(preset, layer - 1, rows, dtype)
                cache[key], _ = host.dense_forward(X, net.weights[layer - 1], net.biases[layer - 1],
                                                   net.segments[layer - 1])
        return cache[key][:rows]

    return get


class Timer:
    """Times `fn(*args)` on a backend with pytest-benchmark and records what was measured.

    The device is synchronised inside the timed region; a first untimed call (only when timing is on)
    keeps JIT compilation and first-touch costs out of the rounds. With the work in floating-point
    operations and bytes moved, the achieved GFLOP/s and GB/s (at the median time) go into extra_info, and on
    the CPU their shares of this machine's peaks (bench/peaks.py) on `cores` cores (default: every core the
    process may use, as the backends do).
    """

    def __init__(self, benchmark, backend, dtype):
        self.benchmark, self.backend, self.dtype = benchmark, backend, np.dtype(dtype).name

    def __call__(self, group, fn, *args, flop=0.0, nbytes=0.0, cores=None, **info):
        bm, be = self.benchmark, self.backend
        bm.group = f"{group}/{be.device}"

        def body():
            out = fn(*args)
            be.synchronize()
            return out

        bm.extra_info.update(backend=be.name, device=be.device, dtype=self.dtype, **info)
        if flop:
            bm.extra_info["flop"] = float(flop)
        if nbytes:
            bm.extra_info["bytes"] = float(nbytes)
        if bm.enabled:
            body()
        out = bm(body)
        if bm.stats is not None and bm.stats.stats.data:
            median = bm.stats.stats.median
            if flop:
                bm.extra_info["gflops"] = flop / median / 1e9
            if nbytes:
                bm.extra_info["gbps"] = nbytes / median / 1e9
            if be.device == "cpu" and (flop or nbytes):
                import peaks
                peaks.record(bm, flop=flop, nbytes=nbytes, cores=cores or peaks.cores(), dtype=self.dtype)
        return out


@pytest.fixture
def timed(benchmark, be, dtype):
    return Timer(benchmark, be, dtype)


@pytest.fixture
def timer_for(benchmark):
    """timer_for(backend_name, dtype): the Timer of a benchmark that names its backend itself."""
    return lambda name, dtype: Timer(benchmark, fastmnist.get_backend(name), dtype)


@pytest.fixture
def check(be):
    """check(array, shape, name): a broken kernel must not be timed silently: right shape, finite values."""
    def check_array(a, shape, name="result"):
        assert a is not None, f"{name} is missing"
        assert tuple(a.shape) == tuple(shape), f"{name} has shape {tuple(a.shape)}, expected {tuple(shape)}"
        assert np.all(np.isfinite(be.to_numpy(a))), f"{name} holds NaN or infinity"
    return check_array


# -- this machine's peaks (bench/peaks.py), measured once per run --------------------------------------------
# Stored in the JSON's machine_info["peaks"] when results are saved; benchmarks that take `machine_peaks`, or
# call peaks.record(benchmark, flop=..., nbytes=..., cores=...) once timed, share the same measurement.

def pytest_benchmark_update_machine_info(config, machine_info):
    import peaks        # bench/ is on sys.path while pytest imports this conftest
    machine_info["peaks"] = peaks.session_peaks()


@pytest.fixture(scope="session")
def machine_peaks():
    import peaks
    return peaks.session_peaks()
