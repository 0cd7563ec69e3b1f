"""Time to 98% MNIST test accuracy: `fastmnist.train(preset="fast")` on each available backend,
measured as train() reports it, from the call (data read from disk inside it: the in-process memo of the
parsed files is cleared before each run) to the evaluation that reaches the target. One round per seed
(1, 2, 3) in this process, so the first round of a JIT backend also pays loading its kernels from the
on-disk cache (or compiling them when the cache is cold). Every run must reach the target. extra_info:
each seed's time to target, its epoch, and its (elapsed s, test accuracy) curve, which
`python bench/plot_time_to_target.py results.json` draws. Marked slow: seconds to minutes per run on a CPU.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastmnist
from fastmnist import data

pytestmark = pytest.mark.slow
SEEDS = (1, 2, 3)


def test_time_to_98(benchmark, backend_name, dtype):
    if dtype != "float32":
        pytest.skip("the fast preset is timed in float32, the dtype it is meant for")
    seeds = itertools.cycle(SEEDS)
    runs = []

    def one_run():
        data._parse.cache_clear()       # every run reads the files, as a new process would
        result = fastmnist.train("fast", backend=backend_name, dtype=dtype, seed=next(seeds), progress=False)
        runs.append(result)
        return result

    benchmark.group = "time_to_98/fast"
    benchmark.pedantic(one_run, rounds=len(SEEDS), iterations=1, warmup_rounds=0)
    assert len(runs) >= 1
    for result in runs:
        assert result.target_iteration is not None, f"{backend_name}: {result.summary()}"
    times = [r.timings["time_to_target_s"] for r in runs]
    benchmark.extra_info.update(
        backend=backend_name, dtype=dtype, seeds=list(SEEDS)[:len(runs)], time_to_target_s=times,
        median_time_to_target_s=float(np.median(times)), epochs=[r.target_iteration + 1 for r in runs],
        curves=[[(row["elapsed_s"], row["test_acc"]) for row in r.history] for r in runs])
