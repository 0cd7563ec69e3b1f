"""JIT compile time: a new Python process builds the backend and trains one batch of every preset
(test_first_call), or calls fastmnist.train on one preset for one iteration (test_first_train).

cold: an empty NUMBA_CACHE_DIR, so every kernel is compiled; warm: the on-disk cache filled by an earlier
process. The timed round is the whole process (start-up to result); extra_info holds the parts it
measured itself: `compile_s` is backend creation plus the first workload minus the same workload repeated;
`extra_s` is what the first train() in the process takes beyond a second identical one (kernel loading,
Numba's own start-up and reading the data files), with `scipy_loaded` saying whether Numba imported SciPy
on the way (it does when SciPy is installed). Marked slow: a cold compile takes tens of
seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastmnist

pytestmark = pytest.mark.slow

WORKLOAD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import fastmnist
from fastmnist.training import build_net, init_params, make_recipe
t1 = time.perf_counter()
name, dtype = sys.argv[1:3]
be = fastmnist.get_backend(name)
t2 = time.perf_counter()

def workload():
    rng = np.random.RandomState(0)
    for preset in fastmnist.PRESETS:
        recipe = make_recipe(preset)
        net = build_net(be, recipe, *init_params(recipe, np.random.RandomState(recipe.seed)), dtype)
        rows = recipe.batch_size or 64
        pixels = rng.random_sample((rows, recipe.inputs)) * (rng.random_sample((rows, recipe.inputs)) < 0.2)
        X, y = be.asarray(pixels, dtype), be.asarray(rng.randint(recipe.classes, size=rows), np.int64)
        be.train_epoch(net, X, y, recipe.batch_size, rng, None)
        be.evaluate(net, X, y)
    be.synchronize()

workload()
t3 = time.perf_counter()
workload()
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "backend_s": t2 - t1, "first_s": t3 - t2, "repeat_s": t4 - t3,
                  "compile_s": (t2 - t1) + (t3 - t2) - (t4 - t3)}))
"""


TRAIN_TWICE = r"""
import json, sys, time
t0 = time.perf_counter()
import fastmnist
t1 = time.perf_counter()
name, dtype, preset = sys.argv[1:4]
times = []
for _ in range(2):
    t = time.perf_counter()
    fastmnist.train(preset, backend=name, dtype=dtype, iterations=1, progress=False)
    times.append(time.perf_counter() - t)
print(json.dumps({"import_s": t1 - t0, "first_s": times[0], "repeat_s": times[1],
                  "extra_s": times[0] - times[1], "scipy_loaded": "scipy" in sys.modules}))
"""


def _run(script, cache_dir, *args):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    root = str(Path(fastmnist.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"benchmark process failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _first_call(backend_name, dtype, cache_dir):
    return _run(WORKLOAD, cache_dir, backend_name, dtype)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("numba-cache")


@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_first_call(benchmark, jit_backend, dtype, cache, tmp_path, shared_cache):
    device = fastmnist.get_backend(jit_backend).device
    cache_dir = tmp_path / "numba-cache" if cache == "cold" else shared_cache
    if cache == "warm":
        _first_call(jit_backend, dtype, cache_dir)
    benchmark.group = f"compile/{device}"
    times = benchmark.pedantic(_first_call, args=(jit_backend, dtype, cache_dir), rounds=1, iterations=1)
    benchmark.extra_info.update(backend=jit_backend, device=device, dtype=dtype, cache=cache, **times)
    assert times["repeat_s"] > 0 and times["first_s"] > 0


@pytest.mark.parametrize("preset", ["grokking-3layer", "branchnet", "fast"])
def test_first_train(benchmark, jit_backend, dtype, preset, shared_cache):
    """What the first fastmnist.train() in a new process adds with a warm on-disk cache."""
    device = fastmnist.get_backend(jit_backend).device
    _run(TRAIN_TWICE, shared_cache, jit_backend, dtype, preset)             # fills the cache
    benchmark.group = f"compile/first-train/{device}"
    times = benchmark.pedantic(_run, args=(TRAIN_TWICE, shared_cache, jit_backend, dtype, preset), rounds=1,
                               iterations=1)
    benchmark.extra_info.update(backend=jit_backend, device=device, dtype=dtype, preset=preset, cache="warm",
                                **times)
    assert times["repeat_s"] > 0 and times["first_s"] > 0
