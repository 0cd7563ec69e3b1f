"""`fastmnist.compare()` and `python -m fastmnist compare`: the table's rows and columns, unavailable and failing
backends, first runs kept apart from warm ones, the JSON and PNG files, and the command's exit statuses."""

import json
import math
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

import fastmnist
from fastmnist import dispatch
from fastmnist.errors import BackendUnavailable, FastMnistError
from fastmnist.kernels.reference import ReferenceBackend

CWD = os.path.dirname(os.path.abspath(__file__))
# A small, quick version of the `fast` preset: one epoch of 30 batches, a target it reaches in that epoch.
QUICK = dict(iterations=1, hidden=32, batch_size=2000, target_accuracy=0.5)
COLUMNS = ["backend", "device", "path", "per epoch", "time to 50%", "reached", "test accuracy", "speed-up",
           "first run (compiling)"]


class Twin(ReferenceBackend):
    """The reference code under another name: a second CPU backend to compare with numpy."""

    def __init__(self, name):
        super().__init__(name=name)


class Diverging(Twin):
    def train_epoch(self, net, X, labels, batch_size, rng, order=None):
        total, correct = super().train_epoch(net, X, labels, batch_size, rng, order)
        return total * np.nan, correct


@pytest.fixture
def registered():
    """register(kind or exception) -> a fresh backend name, unregistered after the test."""
    names = []

    def register(make):
        name = f"test-{uuid.uuid4().hex[:8]}"
        if isinstance(make, Exception):
            dispatch.register(name, lambda: (_ for _ in ()).throw(make), "a test backend")
        else:
            dispatch.register(name, lambda: make(name), "a test backend")
        names.append(name)
        return name

    yield register
    for name in names:
        dispatch.unregister(name)


def markdown_rows(text):
    """(header cells, {backend: cells}) of the table in `text`."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    split = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return split[0], {cells[0]: cells for cells in split[1:]}


def test_rows_columns_first_runs_and_an_unavailable_backend(registered):
    twin = registered(Twin)
    broken = registered(RuntimeError("no such device here"))
    lines = []
    rows = fastmnist.compare("fast", backends=[twin, broken], seeds=(1, 2), status=lines.append, **QUICK)

    assert [r.backend for r in rows] == ["numpy", twin, broken]     # numpy joins as the CPU baseline
    numpy_row, twin_row, broken_row = rows
    assert not broken_row.available and broken_row.reason == "no such device here" and broken_row.runs == []
    for row in (numpy_row, twin_row):
        assert row.available and row.path == "reference operations" and row.device == "cpu"
        assert [r.seed for r in row.runs] == [1, 2] and row.reached == 2
        assert all(r.reached and r.steps == 1 and 0.5 <= r.test_acc <= 1 for r in row.runs)
        assert row.time_s == row.runs[1].time_s         # the warm median: the run after the first
        assert row.baseline == "numpy"
    assert [r.first for r in twin_row.runs] == [True, False]
    assert twin_row.speedup == pytest.approx(numpy_row.time_s / twin_row.time_s)
    assert numpy_row.speedup == 1.0
    assert f"{twin}, seed 1: 1 epoch" in lines[2] and "first run in this process" in lines[2]

    header, table = markdown_rows(rows.table())
    assert header == COLUMNS
    assert set(table) == {"numpy", twin, broken}
    assert table[twin][2] == "reference operations" and table[twin][5] == "2/2" and table[twin][7].endswith("x")
    assert table["numpy"][7] == "1.00x"
    assert table[broken][2] == "unavailable: no such device here" and set(table[broken][3:]) == {"–"}


def test_a_later_comparison_finds_the_backend_warm(registered):
    twin = registered(Twin)
    fastmnist.compare("fast", backends=[twin], seeds=(1,), **QUICK)
    again = fastmnist.compare("fast", backends=[twin], seeds=(1,), **QUICK)
    row = next(r for r in again if r.backend == twin)
    assert [r.first for r in row.runs] == [False] and row.time_s is not None
    assert markdown_rows(again.table())[1][twin][8] == "– (kernels already loaded)"


def test_one_seed_gives_no_warm_time_and_says_so(registered):
    twin = registered(Twin)
    rows = fastmnist.compare("fast", backends=[twin], seeds=(7,), **QUICK)
    row = next(r for r in rows if r.backend == twin)
    assert row.time_s is None and row.speedup is None and row.first_run.seed == 7
    cells = markdown_rows(rows.table())[1][twin]
    assert cells[4] == "–" and cells[8] != "–" and "no warm run" in rows.table()


def test_a_backend_whose_training_fails_is_reported_and_the_others_go_on(registered):
    bad = registered(Diverging)
    rows = fastmnist.compare("fast", backends=[bad], seeds=(1, 2), **QUICK)
    row = next(r for r in rows if r.backend == bad)
    assert row.available and row.runs == [] and row.reason.startswith("failed on seed 1: training diverged")
    assert next(r for r in rows if r.backend == "numpy").time_s is not None


class DivergingLater(Twin):
    """Trains seed 1 as the reference does, and diverges from its second training on."""

    def __init__(self, name):
        super().__init__(name)
        self.trainings = 0

    def train_epoch(self, net, X, labels, batch_size, rng, order=None):
        total, correct = super().train_epoch(net, X, labels, batch_size, rng, order)
        self.trainings += 1
        return (total * np.nan if self.trainings > 1 else total), correct


def test_a_backend_failing_on_a_later_seed_keeps_its_runs_and_says_why(registered):
    bad = registered(DivergingLater)
    rows = fastmnist.compare("fast", backends=[bad], seeds=(1, 2), **QUICK)
    row = next(r for r in rows if r.backend == bad)
    assert [r.seed for r in row.runs] == [1] and row.reason.startswith("failed on seed 2")
    assert "failed on seed 2" in markdown_rows(rows.table())[1][bad][2]


def test_json_and_png_are_written(registered, tmp_path):
    twin = registered(Twin)
    rows = fastmnist.compare("fast", backends=[twin], seeds=(1, 2), **QUICK)
    doc = json.loads(rows.write_json(tmp_path / "out" / "compare.json").read_text())
    assert doc["preset"] == "fast" and doc["dtype"] == "float32" and doc["seeds"] == [1, 2]
    assert doc["recipe"]["batch_size"] == 2000 and doc["machine"]
    by_name = {r["backend"]: r for r in doc["rows"]}
    assert [run["first"] for run in by_name[twin]["runs"]] == [True, False]
    assert all(len(run["curve"]) == 1 for run in by_name[twin]["runs"])
    png = rows.write_png(tmp_path / "compare.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_target_never_reached_is_null_in_json_and_a_dash_in_the_table(registered, tmp_path):
    twin = registered(Twin)
    rows = fastmnist.compare("fast", backends=[twin], seeds=(1, 2), **{**QUICK, "target_accuracy": 0.999})
    row = next(r for r in rows if r.backend == twin)
    assert row.reached == 0 and row.time_s is None and all(math.isinf(r.time_s) for r in row.runs)
    assert markdown_rows(rows.table())[1][twin][4] == "–"
    doc = json.loads(rows.write_json(tmp_path / "c.json").read_text())
    assert all(run["time_s"] is None for r in doc["rows"] for run in r["runs"])


def test_bad_arguments_raise_before_any_training():
    with pytest.raises(BackendUnavailable, match="unknown backend 'nope'"):
        fastmnist.compare(backends=["nope"])
    with pytest.raises(FastMnistError, match="seeds must be"):
        fastmnist.compare(seeds=())
    with pytest.raises(FastMnistError, match="unknown setting 'bogus'"):
        fastmnist.compare(bogus=1)


class Compiling(Twin):
    """Calls a Numba function of its own, compiled on the backend's first epoch (never cached)."""

    def __init__(self, name):
        super().__init__(name)
        from numba import njit

        self._kernel = njit(cache=False)(lambda x: x * 2.0 + 1.0)

    def train_epoch(self, net, X, labels, batch_size, rng, order=None):
        self._kernel(1.0)
        return super().train_epoch(net, X, labels, batch_size, rng, order)


def test_compilation_is_announced_timed_and_kept_apart(registered):
    name = registered(Compiling)
    lines = []
    result = fastmnist.train("fast", backend=name, progress=False, status=lines.append, **{**QUICK, "iterations": 2})
    assert result.timings["compile_s"] > 0
    assert result.timings["compile_s"] <= result.timings["first_iteration_s"]
    assert lines[0].startswith(f"{name}: compiling kernels") and lines[1].startswith(f"{name}: kernels compiled in")
    assert "compiling kernels" in result.summary()
    again = fastmnist.train("fast", backend=name, progress=False, status=lines.append, **QUICK)
    assert again.timings["compile_s"] == 0 and len(lines) == 2 and "compiling" not in again.summary()


def test_the_reference_backend_compiles_nothing():
    result = fastmnist.train("fast", backend="numpy", progress=False, **QUICK)
    assert result.timings["compile_s"] == 0


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fastmnist", *args], capture_output=True, text=True, cwd=CWD,
                          env={**os.environ, **(env or {})}, timeout=300)


QUICK_ARGS = ["--iterations", "1", "--set", "hidden=32", "--set", "batch_size=2000", "--set", "target_accuracy=0.5"]


def test_cli_prints_one_table_and_writes_json_and_png(tmp_path):
    r = run("compare", "--backends", "numpy", "--seeds", "1,2", *QUICK_ARGS, "--json", str(tmp_path / "c.json"),
            "--png", str(tmp_path / "c.png"))
    assert r.returncode == 0, r.stderr
    header, table = markdown_rows(r.stdout)
    assert header == COLUMNS and list(table) == ["numpy"] and table["numpy"][5] == "2/2"
    assert "numpy, seed 1: 1 epoch" in r.stderr and "numpy, seed 2" in r.stderr
    assert json.loads((tmp_path / "c.json").read_text())["rows"][0]["backend"] == "numpy"
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, words", [
    (["compare", "--seeds", "1,x"], "expected seeds like 1,2,3"),
    (["compare", "--seeds", "-1"], "seeds must be >= 0"),
    (["compare", "--backends", "nope"], "unknown backend 'nope'"),
    (["compare", "--backends", "numpy,"], "expected backend names"),
    (["compare", "--preset", "nope"], "unknown preset 'nope'"),
    (["compare", "--set", "alpha=0.1"], "unknown setting 'alpha' for recipe 'fast'"),
    (["compare", "--set", "dtype=float64"], "--set dtype: not a recipe setting"),
    (["train", "--set", "backend=numpy"], "--set backend: not a recipe setting"),
])
def test_cli_bad_arguments_give_one_line_and_status_2(args, words):
    r = run(*args)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_iterations_may_come_as_a_setting():
    r = run("compare", "--backends", "numpy", "--seeds", "1", "--set", "iterations=1", *QUICK_ARGS[2:])
    assert r.returncode == 0, r.stderr
    assert markdown_rows(r.stdout)[1]["numpy"][5] == "1/1"


def test_cli_png_without_matplotlib_fails_at_once(tmp_path):
    blocker = tmp_path / "site" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is blocked in this test')\n")
    r = run("compare", "--backends", "numpy", *QUICK_ARGS, "--png", str(tmp_path / "c.png"),
            env={"PYTHONPATH": str(tmp_path / "site")})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "fastmnist: error: --png needs matplotlib: pip install 'fastmnist[plots]'"
    assert r.stdout == "" and not (tmp_path / "c.png").exists()


# -- every output checked before training, and kept after it ------------------------------------------

@pytest.mark.parametrize("option, where, words", [
    ("--json", "adir", "it is a directory"),
    ("--json", "afile/x.json", "cannot write"),
    ("--png", "/proc/x.png", "cannot write /proc/x.png"),
    ("--png", "adir", "it is a directory"),
    ("--png", "x.nochart", "matplotlib draws no .nochart charts"),
])
def test_cli_outputs_are_checked_before_any_training(tmp_path, monkeypatch, capsys, option, where, words):
    from fastmnist import cli
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("a file, not a folder")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fastmnist.comparison, "train", lambda *a, **k: pytest.fail("trained before the check"))
    assert cli.main(["compare", "--backends", "numpy", *QUICK_ARGS, option, where]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and words in err, err


def test_cli_seeds_are_checked_whole_before_any_training(monkeypatch, capsys):
    from fastmnist import cli
    monkeypatch.setattr(fastmnist.comparison, "train", lambda *a, **k: pytest.fail("trained before the check"))
    assert cli.main(["compare", "--backends", "numpy", "--seeds", "1,4294967296", *QUICK_ARGS]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "seed" in err and "4294967296" in err, err


def test_cli_says_the_path_it_wrote_and_keeps_an_output_that_fails_after_training(tmp_path, monkeypatch, capsys):
    from fastmnist import cli
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "rescue"))
    (tmp_path / "rescue").mkdir()
    target = tmp_path / "c.json"
    real = fastmnist.Comparison.write_json

    def write_json(self, path):
        if os.fspath(path) == os.fspath(target):
            raise fastmnist.OutputError(f"cannot write {target}: No space left on device")
        return real(self, path)
    monkeypatch.setattr(fastmnist.Comparison, "write_json", write_json)
    status = cli.main(["compare", "--backends", "numpy", "--seeds", "1", "--quiet", *QUICK_ARGS,
                       "--json", str(target), "--png", str(tmp_path / "chart")])
    out, err = capsys.readouterr()
    assert status == 2 and "| numpy |" in out, err
    assert f"chart written to {tmp_path / 'chart.png'}\n" in out and (tmp_path / "chart.png").is_file()
    kept = list((tmp_path / "rescue").glob("fastmnist-compare-*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["rows"][0]["backend"] == "numpy"
    assert err == f"fastmnist: error: cannot write {target}: No space left on device; the rows were saved to " \
                  f"{kept[0]} instead\n"
