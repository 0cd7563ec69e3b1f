"""fastmnist against PyTorch and JAX: the same recipes (read from the presets when the benchmark runs) written
as a PyTorch user and a JAX user would write them (bench/peers.py), in float32 on the CPU, one group per
workload with a row per implementation: fastmnist's numba-cpu and numpy backends, torch, jax.

    peers/fast_epoch             one epoch of the `fast` recipe (minibatches over all 60,000 images, shuffled)
    peers/branchnet_step         one iteration of `branchnet`: a full-batch step on 50,000 images
    peers/seed000_epoch          one epoch of `grokking-3layer`: per-sample SGD over 1,000 images
    peers/mlp_epoch              one epoch of 784 -> ReLU 256 -> ReLU 128 -> softmax 10, Adam lr 0.006, batch 128
                                 (fastmnist.mlp on `fast`: 60,000 images, shuffled), a network that is no preset
    peers/fast_time_to_target    `fast` from the call to the epoch reaching its target, seeds 1, 2, 3 (slow)

A peer that is not installed is skipped with the reason (pip install 'fastmnist[peers]'); the fastmnist rows
always run. Timed only when asked, being long: `pytest bench/bench_peers.py --benchmark-only -m peers`
(add `-m "peers and not slow"` to leave out time to target). Untimed (the test command) each body runs
once on a few rows (peers.SMOKE_ROWS) and checks its loss against fastmnist numpy's on the same rows.
FASTMNIST_PEERS_THREADS=N gives every implementation N threads (peers.limit_threads; XLA: 1 or every CPU).
extra_info: the implementation (`backend`, so reports group it as one), peer and version, threads, the
epoch's mean loss and running accuracy; the dense matrix products' GFMA/s and share of the machine's FMA
peak on the threads used (peaks.record; the same work counted for every implementation, though fastmnist's
sparse first layer skips the zero pixels' share of it); for time to target, each seed's time, epoch reaching
the target and test accuracy.
`python bench/peers.py` times the same workloads with the implementations alternating round by round.
"""

from __future__ import annotations

import functools
import os
import re

import numpy as np
import pytest

import peaks
import peers

pytestmark = pytest.mark.peers
SEEDS = (1, 2, 3)


def _asked(config) -> bool:
    return bool(re.search(r"(?<!not )\bpeers\b", config.getoption("markexpr") or ""))


IMPLEMENTATIONS = [pytest.param(n, id=f"{n}-float32") for n in peers.IMPLEMENTATIONS]


@pytest.fixture(autouse=True)
def _threads():
    """FASTMNIST_PEERS_THREADS=N gives every implementation N threads in these benchmarks (XLA only 1 or all)."""
    if not os.environ.get("FASTMNIST_PEERS_THREADS"):
        yield
        return
    restore = peers.limit_threads(peers.threads())
    yield
    restore()


def _ready(benchmark, config, name):
    """Skips (inside the test, where pytest-benchmark sees the skip) what should not run here."""
    if benchmark.enabled and not _asked(config):
        pytest.skip("fastmnist against PyTorch and JAX is timed only when asked: -m peers")
    why = peers.unavailable(name)
    if why:
        pytest.skip(why)
    chosen = os.environ.get("FASTMNIST_BENCH_BACKENDS")
    if chosen and name not in peers.PEERS and name not in {n.strip() for n in chosen.split(",")}:
        pytest.skip(f"{name} is not in FASTMNIST_BENCH_BACKENDS")


@functools.lru_cache(maxsize=None)
def _reference_loss(workload, rows):
    """fastmnist numpy's mean loss over the first epoch of `workload` on `rows` rows."""
    recipe, X, y = peers.workload(workload, rows)
    total, _ = peers.runner("numpy", recipe, X, y).epoch()
    return total / _rows_used(recipe, len(y))


def _rows_used(recipe, rows):
    batch, steps = peers.batches(recipe, rows)
    return batch * steps


def _run(benchmark, config, workload, name):
    """Times one call of `workload`'s epoch (after an untimed first one that compiles and is checked), or,
    untimed, runs it once on a few rows; the first epoch's loss must be near fastmnist numpy's."""
    _ready(benchmark, config, name)
    rows = None if benchmark.enabled else peers.SMOKE_ROWS[workload]
    recipe, X, y = peers.workload(workload, rows)
    run = peers.runner(name, recipe, X, y)
    epoch = functools.partial(run.epoch, decay=False)     # the same work every round
    benchmark.group = f"peers/{workload}"
    benchmark.extra_info.update(peers.describe(name), backend=name, device="cpu", dtype="float32",
                                preset=recipe.name, rows=len(y), batch=recipe.batch_size or len(y))
    first = epoch() if benchmark.enabled else benchmark(epoch)
    mean_loss, accuracy = first[0] / _rows_used(recipe, len(y)), first[1] / _rows_used(recipe, len(y))
    reference = _reference_loss(workload, rows)
    assert np.isfinite(mean_loss) and 0.5 * reference < mean_loss < 2 * reference, \
        f"{name}: first-epoch mean loss {mean_loss:.4g}, fastmnist numpy's {reference:.4g}"
    benchmark.extra_info.update(first_loss=mean_loss, first_accuracy=accuracy, reference_loss=reference)
    if benchmark.enabled:
        benchmark(epoch)
        peaks.record(benchmark, flop=peers.matmul_flop(recipe, len(y)), cores=benchmark.extra_info["threads"])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_fast_epoch(benchmark, request, impl):
    _run(benchmark, request.config, "fast_epoch", impl)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_branchnet_step(benchmark, request, impl):
    _run(benchmark, request.config, "branchnet_step", impl)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_seed000_epoch(benchmark, request, impl):
    _run(benchmark, request.config, "seed000_epoch", impl)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_mlp_epoch(benchmark, request, impl):
    _run(benchmark, request.config, "mlp_epoch", impl)


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_fast_time_to_target(benchmark, request, impl):
    """`fast` trained to its target accuracy from the call, one round per seed; every run must reach it."""
    _ready(benchmark, request.config, impl)
    seeds, runs = iter(SEEDS), []

    def one_run():
        runs.append(peers.train_to_target(impl, next(seeds)))

    benchmark.group = "peers/fast_time_to_target"
    benchmark.extra_info.update(peers.describe(impl), backend=impl, device="cpu", dtype="float32", preset="fast")
    benchmark.pedantic(one_run, rounds=len(SEEDS) if benchmark.enabled else 1, iterations=1, warmup_rounds=0)
    for seed, r in zip(SEEDS, runs):
        assert r["time_to_target_s"] is not None, f"{impl}, seed {seed}: target not reached ({r['test_acc']})"
    times = [r["time_to_target_s"] for r in runs]
    benchmark.extra_info.update(seeds=list(SEEDS)[:len(runs)], time_to_target_s=times,
                                median_time_to_target_s=float(np.median(times)),
                                epochs=[r["epochs"] for r in runs], test_acc=[r["test_acc"] for r in runs],
                                curves=[r["curve"] for r in runs])
