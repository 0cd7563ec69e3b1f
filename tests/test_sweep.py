"""Sweeps on a real local Dask cluster with two workers."""

import json
import os
import subprocess
import sys

import pytest

import fastmnist
from fastmnist.errors import FastMnistError, RecipeError
from fastmnist.sweeps import expand_grid, read_results, sweep

from dask.distributed import Client, LocalCluster

SMALL = {"preset": "grokking-dropout", "backend": "numpy", "iterations": 1}
GRID = {"hidden": [16, 24], "lr": [0.005, 0.01]}


@pytest.fixture(scope="module")
def client():
    # every server on the loopback only: the scheduler, the workers and the scheduler's HTTP server
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"}) as cluster:
        with Client(cluster) as c:
            yield c


def test_expand_grid():
    assert expand_grid({"a": [1, 2], "b": 3}) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]
    assert expand_grid([{"a": 1}]) == [{"a": 1}]
    with pytest.raises(RecipeError):
        expand_grid(3)


def test_results_match_train_one_by_one_and_are_written_as_they_finish(client, tmp_path):
    out = tmp_path / "s.jsonl"
    records = sweep(grid=GRID, client=client, out=out, progress=False, **SMALL)
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    assert len(read_results(out)) == 4
    assert {r["pid"] for r in records} <= set(client.run(os.getpid).values()), "runs happen on the workers"
    for r in records:
        alone = fastmnist.train(SMALL["preset"], backend="numpy", iterations=1, progress=False, **r["config"])
        assert r["metrics"]["test_acc"] == alone.final["test_acc"]
        assert r["metrics"]["train_err"] == alone.final["train_err"]


def test_a_failing_configuration_is_recorded_and_the_rest_go_on(client, tmp_path):
    records = sweep(grid=[{"lr": 1e6}, {"lr": 0.005}], client=client, out=tmp_path / "f.jsonl", progress=False,
                    **SMALL)
    by_lr = {r["config"]["lr"]: r for r in records}
    assert by_lr[1e6]["status"] == "error" and "TrainingDiverged" in by_lr[1e6]["error"]
    assert by_lr[0.005]["status"] == "ok"


def test_resume_runs_only_the_missing_configurations(client, tmp_path):
    out = tmp_path / "r.jsonl"
    first = sweep(grid=expand_grid(GRID)[:1], client=client, out=out, progress=False, **SMALL)
    with open(out, "a") as f:
        f.write("")  # an interrupted sweep leaves the finished records behind
    with pytest.raises(FastMnistError, match="exists"):
        sweep(grid=GRID, client=client, out=out, progress=False, **SMALL)
    rest = sweep(grid=GRID, client=client, out=out, resume=True, progress=False, **SMALL)
    assert len(first) == 1 and len(rest) == 3
    keys = [r["key"] for r in read_results(out)]
    assert len(keys) == len(set(keys)) == 4


def test_unknown_setting_fails_before_any_run(tmp_path):
    with pytest.raises(RecipeError, match="unknown setting 'bogus'"):
        sweep(grid={"bogus": [1]}, out=tmp_path / "x.jsonl", **SMALL)


def test_cli_sweep_with_its_own_local_cluster(tmp_path):
    out = tmp_path / "c.jsonl"
    r = subprocess.run([sys.executable, "-m", "fastmnist", "sweep", "--preset", "grokking-dropout", "--backend",
                        "numpy", "--iterations", "1", "--grid", "hidden=16,24", "--out", str(out)],
                       capture_output=True, text=True, cwd=tmp_path, env=os.environ, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["val_acc", "test_acc"] and len(read_results(out)) == 2
    assert json.loads(out.read_text().splitlines()[0])["status"] == "ok"


def test_local_cluster_workers_are_single_threaded(tmp_path):
    records = sweep(grid=[{}], out=tmp_path / "t.jsonl", progress=False, **SMALL)
    assert records[0]["status"] == "ok" and records[0]["threads"] == {"numba": 1, "blas": 1}
