"""A timed benchmark run is sized for a person: the default slice, the whole grid behind --bench-grid, a JSON
file without every round's time, and no backend that a test registered for itself."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pytest(*args, timeout=300):
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def benchmark_ids(*args):
    out = pytest("--benchmark-only", "--collect-only", "-q", *args)
    return [line for line in out.splitlines() if line.startswith("bench/")]


def test_the_default_timed_run_is_the_headline_slice_and_the_grid_is_behind_an_option():
    default = benchmark_ids()
    kernels = [i for i in default if i.startswith("bench/bench_kernels.py")]
    assert kernels and all("-float32-" in i for i in kernels)
    assert any("test_dense_forward" in i and "-b50000-" in i for i in kernels)       # branchnet's batch
    assert not any("test_dense_forward" in i and "-b100-" in i for i in kernels)     # no preset trains at 100
    steps = [i for i in default if i.startswith("bench/bench_steps.py")]
    assert any("-float64-" in i for i in steps)                                      # whole steps: both dtypes
    assert not any(i.startswith(("bench/bench_compile.py", "bench/bench_time_to_target.py")) for i in default)
    assert not any("toy-einsum" in i for i in default)     # the conformance suite's own backend is not timed
    grid = benchmark_ids("--bench-grid")
    assert set(default) < set(grid)
    assert any(i.startswith("bench/bench_compile.py") for i in grid)
    assert any(i.startswith("bench/bench_kernels.py") and "-float64-" in i for i in grid)
    slow = benchmark_ids("-m", "slow")
    slow_files = ("bench/bench_compile.py", "bench/bench_time_to_target.py", "bench/bench_peers.py")
    assert slow and all(i.startswith(slow_files) for i in slow)
    assert all("time_to_target" in i for i in slow if i.startswith("bench/bench_peers.py"))


def test_the_json_keeps_statistics_not_every_round(tmp_path):
    out = tmp_path / "results.json"
    pytest("bench/bench_kernels.py", "--benchmark-only", "-q", "-k", "test_update and numpy-float32 and sgd",
           f"--benchmark-json={out}")
    doc = json.loads(out.read_text())
    (bench,) = doc["benchmarks"]
    assert bench["stats"]["median"] > 0 and bench["stats"]["rounds"] >= 5 and "data" not in bench["stats"]
    assert bench["options"]["max_time"] == 0.3
