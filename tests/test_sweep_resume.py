"""Sweeps: every configuration checked before a cluster starts, --resume continuing only the same sweep and
surviving a half-written last line, and Ctrl-C keeping the finished runs with one line said."""

import errno
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from fastmnist.errors import FastMnistError, RecipeError, SweepError
from fastmnist.sweeps import read_results, sweep

from dask.distributed import Client, LocalCluster

SMALL = {"preset": "grokking-dropout", "backend": "numpy", "iterations": 1}


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as c:
            yield c


@pytest.fixture
def no_cluster(monkeypatch):
    """Fails the test if the sweep starts a local cluster or connects to a scheduler."""
    import dask.distributed

    def refuse(*args, **kwargs):
        raise AssertionError("a cluster was started before the settings were checked")
    monkeypatch.setattr(dask.distributed, "LocalCluster", refuse)
    monkeypatch.setattr(dask.distributed, "Client", refuse)


@pytest.fixture(scope="module")
def finished(client, tmp_path_factory):
    """A results file of a finished two-run grokking-dropout sweep."""
    out = tmp_path_factory.mktemp("finished") / "s.jsonl"
    sweep(grid={"hidden": [16, 24]}, client=client, out=out, progress=False, **SMALL)
    return out


def copy(path, tmp_path):
    target = tmp_path / path.name
    target.write_bytes(path.read_bytes())
    return target


@pytest.mark.parametrize("change, words", [
    (dict(preset="grokking-3layer"), "its preset is 'grokking-dropout', this sweep's is 'grokking-3layer'"),
    (dict(iterations=2), "its iterations is 1, this sweep's is 2"),
    (dict(seed=9), "its seed is 1, this sweep's is 9"),
    (dict(dtype="float64"), "its dtype is 'float32', this sweep's is 'float64'"),
    (dict(backend="auto"), "its backend is 'numpy', this sweep's is 'auto'"),
    (dict(dataset="fashion-mnist"), "its dataset is 'mnist', this sweep's is 'fashion-mnist'"),
])
def test_resume_refuses_a_file_of_another_sweep_before_running_anything(finished, tmp_path, no_cluster, change,
                                                                        words):
    out = copy(finished, tmp_path)
    with pytest.raises(FastMnistError) as info:
        sweep(grid={"hidden": [16, 24]}, out=out, resume=True, progress=False, **{**SMALL, **change})
    assert words in str(info.value) and "--resume continues only the same sweep" in str(info.value)
    assert out.read_bytes() == finished.read_bytes()


def test_resume_matches_runs_by_what_they_train_not_how_the_grid_spells_it(finished, tmp_path, no_cluster):
    out = copy(finished, tmp_path)
    assert sweep(grid={"hidden": np.array([24, 16])}, out=out, resume=True, progress=False, **SMALL) == []
    assert sweep(grid=[{"units_1": np.int64(16)}], out=out, resume=True, progress=False, **SMALL) == []


def test_records_say_which_sweep_and_which_run_they_are(finished):
    records = read_results(finished)
    assert {r["sweep"]["preset"] for r in records} == {"grokking-dropout"}
    assert sorted(r["recipe"]["layers"][0]["branches"][0]["units"] for r in records) == [16, 24]
    assert len({r["run"] for r in records}) == 2


@pytest.mark.parametrize("grid, settings, words", [
    ({"lr": [0.01, -1.0]}, {}, "learning rate must be positive, got -1.0"),
    ({"hidden": [16, "wide"]}, {}, "units must be an integer, got 'wide'"),
    ({"iterations": [1, 2]}, {"iterations": 1}, "iterations is set twice: by iterations= and by the grid"),
    ({"seed": [1, 2]}, {"seed": 3}, "seed is set twice: by seed= and by the grid"),
    ({"bogus": [1]}, {}, "unknown setting 'bogus'"),
])
def test_every_configuration_is_checked_before_a_cluster_starts(tmp_path, no_cluster, grid, settings, words):
    with pytest.raises(RecipeError, match=re.escape(words)):
        sweep(grid=grid, out=tmp_path / "x.jsonl", progress=False, **{**SMALL, **settings})
    assert not (tmp_path / "x.jsonl").exists()


def test_other_sweep_settings_are_checked_before_a_cluster_starts(tmp_path, no_cluster):
    with pytest.raises(FastMnistError, match="unknown backend 'tpu'"):
        sweep(grid={"hidden": [16]}, out=tmp_path / "x.jsonl", progress=False, **{**SMALL, "backend": "tpu"})
    with pytest.raises(FastMnistError, match="unsupported dtype 'float16'"):
        sweep(grid={"hidden": [16]}, out=tmp_path / "x.jsonl", progress=False, dtype="float16", **SMALL)
    blocker = tmp_path / "afile"
    blocker.write_text("")
    with pytest.raises(FastMnistError, match="cannot write"):
        sweep(grid={"hidden": [16]}, out=blocker / "x.jsonl", progress=False, **SMALL)


def test_seeds_and_iterations_can_be_swept(client, tmp_path):
    records = sweep(grid={"seed": [1, 2]}, client=client, out=tmp_path / "s.jsonl", progress=False,
                    preset="grokking-dropout", backend="numpy", iterations=1)
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert len({r["metrics"]["train_err"] for r in records}) == 2
    records = sweep(grid={"iterations": [1, 2]}, client=client, out=tmp_path / "i.jsonl", progress=False,
                    preset="grokking-dropout", backend="numpy")
    assert sorted(r["metrics"]["iteration"] for r in records) == [0, 1]


# -- the results file ------------------------------------------------------------------------------------

def test_a_half_written_last_line_is_dropped_and_its_run_done_again(finished, client, tmp_path):
    out = copy(finished, tmp_path)
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])       # the power went off mid-write
    assert len(read_results(out)) == 1
    rest = sweep(grid={"hidden": [16, 24]}, client=client, out=out, resume=True, progress=False, **SMALL)
    assert len(rest) == 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["config"]["hidden"] for r in records) == [16, 24]


class DiskFillsUp(io.FileIO):
    """A results file on a disk with `room` bytes left: a write takes what fits, then fails as a full disk does."""

    room = 0

    def write(self, data):
        if DiskFillsUp.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        taken = super().write(bytes(data[:DiskFillsUp.room]))
        DiskFillsUp.room -= taken
        return taken


def test_a_full_disk_keeps_every_whole_record_and_says_how_many_in_one_line(finished, client, tmp_path,
                                                                             monkeypatch):
    import fastmnist.sweeps

    out = tmp_path / "full.jsonl"
    first = finished.read_bytes().splitlines(keepends=True)[0]
    DiskFillsUp.room = len(first) + 40        # room for one record and a part of the next

    def on_a_full_disk(path, mode, buffering=-1):
        assert mode == "ab" and buffering == 0, "records are written unbuffered: nothing is left to flush later"
        return DiskFillsUp(path, "ab")
    monkeypatch.setattr(fastmnist.sweeps, "open", on_a_full_disk, raising=False)
    with pytest.raises(SweepError) as info:
        sweep(grid={"hidden": [16, 24, 32]}, client=client, out=out, progress=False, **SMALL)
    message = str(info.value)
    assert message == (f"cannot write {out}: No space left on device; the 1 finished runs are kept in it: make "
                       f"room and run the same command with --resume to run the rest")
    assert out.read_bytes().endswith(b"\n") and len(read_results(out)) == 1, "no part-written line is left"
    monkeypatch.undo()
    rest = sweep(grid={"hidden": [16, 24, 32]}, client=client, out=out, resume=True, progress=False, **SMALL)
    assert len(rest) == 2 and len(read_results(out)) == 3


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a sweep results file (not text)"),
    (b"[1, 2, 3]\n", "line 1 is not a sweep record"),
    (b'{"status": "ok"}\n', "line 1 is not a sweep record"),
    (b'{"key": "{}", "status": "ok"}\nnot json\n{"key": "{}", "status": "ok"}\n', "line 2 is not JSON"),
])
def test_a_file_that_is_not_sweep_results_is_one_line_error(tmp_path, content, words):
    path = tmp_path / "r.jsonl"
    path.write_bytes(content)
    with pytest.raises(FastMnistError, match=re.escape(words)):
        read_results(path)


# -- the CLI -------------------------------------------------------------------------------------------

def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fastmnist", "sweep", *args], capture_output=True, text=True,
                          cwd=cwd, env=os.environ, timeout=300)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address, words", [("not a url", "cannot reach the Dask scheduler at 'not a url'"),
                                            (None, "cannot reach the Dask scheduler at 'tcp://127.0.0.1:")])
def test_a_scheduler_that_cannot_be_reached_is_one_line_error(tmp_path, address, words):
    address = address or f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    r = cli("--preset", "grokking-dropout", "--backend", "numpy", "--iterations", "1", "--grid", "hidden=16",
            "--scheduler", address, "--out", str(tmp_path / "s.jsonl"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert time.monotonic() - start < 25
    assert not (tmp_path / "s.jsonl").exists()


def test_a_sweep_whose_every_run_failed_exits_1(client, tmp_path):
    address = client.scheduler.address
    r = cli("--preset", "grokking-3layer", "--backend", "numpy", "--iterations", "2", "--grid", "lr=1e6,1e7",
            "--scheduler", address, "--out", str(tmp_path / "s.jsonl"), cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "2 runs this time, 2 failed" in r.stdout
    ok = cli("--preset", "grokking-3layer", "--backend", "numpy", "--iterations", "2", "--grid", "lr=1e6,0.005",
             "--scheduler", address, "--out", str(tmp_path / "t.jsonl"), cwd=tmp_path)
    assert ok.returncode == 0 and "2 runs this time, 1 failed" in ok.stdout


def test_ctrl_c_keeps_the_finished_runs_says_so_in_one_line_and_resume_does_the_rest(tmp_path):
    out = tmp_path / "c.jsonl"
    args = [sys.executable, "-m", "fastmnist", "sweep", "--preset", "grokking-dropout", "--backend", "numpy",
            "--iterations", "3", "--grid", "hidden=8,9,10,11,12,13", "--out", str(out)]
    # its own session, as a terminal's Ctrl-C reaches every process of the foreground group (the workers too)
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (out.exists() and out.read_text().count("\n") >= 1):
            assert time.monotonic() < deadline and p.poll() is None, p.communicate()
            time.sleep(0.1)
        os.killpg(p.pid, signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    kept = read_results(out)
    assert p.returncode == 130 and "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert f"{len(kept)} finished runs are kept in {out}" in stderr and "--resume" in stderr
    assert 1 <= len(kept) < 6
    r = subprocess.run(args + ["--resume"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(rec["config"]["hidden"] for rec in read_results(out)) == [8, 9, 10, 11, 12, 13]


@pytest.mark.parametrize("args, words", [
    (["--grid", "hidden=8", "--grid", "hidden=9"], "the grid axis hidden is given twice (--grid)"),
    (["--grid", "seed=1,2", "--seed", "3"], "seed is set twice: by seed= and by the grid"),
    (["--grid", "lr=0.1,nan"], "learning rate must be positive, got nan"),
])
def test_the_cli_refuses_a_bad_grid_with_one_line_before_starting_a_cluster(tmp_path, args, words):
    r = cli("--preset", "grokking-dropout", "--backend", "numpy", "--iterations", "1", *args,
            "--out", str(tmp_path / "s.jsonl"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "s.jsonl").exists()
