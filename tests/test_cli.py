"""`python -m fastmnist`: real subprocesses, checked for exit status and what a user reads."""

import os
import subprocess
import sys

import pytest

CWD = os.path.dirname(os.path.abspath(__file__))  # not the repository root: test the installed package


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fastmnist", *args], capture_output=True, text=True, cwd=CWD,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_train_save_and_eval(tmp_path):
    out = tmp_path / "model.npz"
    r = run("train", "--preset", "grokking-3layer", "--backend", "numpy", "--iterations", "1",
            "--dtype", "float64", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "I:0 Train-Err:0.729 Train-Acc:0.527 Test-Err:0.593 Test-Acc:0.6493" in r.stdout
    assert "grokking-3layer on numpy (float64, reference operations): 1 epoch;" in r.stdout and out.exists()
    e = run("eval", str(out))
    assert e.returncode == 0 and "test accuracy 0.6493 (10000 images)" in e.stdout
    assert "trained on numpy (float64) for 1 epoch" in e.stdout and "I:0" not in e.stdout
    h = run("eval", str(out), "--history")
    assert h.returncode == 0 and "I:0 Train-Err:0.729 Train-Acc:0.527 Test-Err:0.593 Test-Acc:0.6493" in h.stdout


def test_backends_lists_each_backend_and_the_path_it_takes_per_preset():
    r = run("backends")
    assert r.returncode == 0 and "numpy" in r.stdout and "available" in r.stdout and "auto -> " in r.stdout
    lines = r.stdout.splitlines()
    cpu = lines.index(next(line for line in lines if line.startswith("numba-cpu")))
    paths = {line.split()[0]: " ".join(line.split()[1:]) for line in lines[cpu + 2:cpu + 7]}
    assert paths["grokking-3layer"] == "batch-1 epoch" and paths["branchnet"] == "sparse full-batch step"
    assert paths["fast"] == "minibatch epoch"


@pytest.mark.parametrize("args, words", [
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--backend", "nope"], "unknown backend 'nope'"),
    (["train", "--iterations", "-5"], "must be >= 0"),
    (["train", "--keep-prob", "1.5"], "keep probability must be in (0, 1]"),
    (["train", "--keep-prob", "0"], "keep probability must be in (0, 1]"),
    (["train", "--lr", "-0.1"], "learning rate must be positive"),
    (["train", "--set", "bogus=1"], "unknown setting 'bogus'"),
    (["train", "--dtype", "float16"], "invalid choice"),
    (["eval", "missing.npz"], "no such model file"),
])
def test_bad_arguments_give_one_line_and_status_2(args, words):
    r = run(*args)
    assert r.returncode == 2
    assert words in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_missing_data_gives_one_line_and_status_2(tmp_path):
    r = run("train", "--iterations", "1", env={"FASTMNIST_DATA": str(tmp_path), "FASTMNIST_CACHE": str(tmp_path)})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "FASTMNIST_DATA" in r.stderr


def test_divergence_stops_with_the_iteration():
    r = run("train", "--preset", "grokking-3layer", "--backend", "numpy", "--lr", "1e6", "--iterations", "2")
    assert r.returncode == 1 and "loss became" in r.stderr and "at iteration 0" in r.stderr
    assert "Traceback" not in r.stderr and "RuntimeWarning" not in r.stderr


def test_train_defaults_to_the_fast_preset_and_speaks_of_epochs():
    from fastmnist.cli import build_parser
    assert build_parser().parse_args(["train"]).preset == "fast"
    assert build_parser().parse_args(["compare"]).preset == "fast"
    r = run("train", "--backend", "numpy", "--iterations", "2", "--set", "hidden=32", "--set", "batch_size=2000")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Epoch 1 Train-Err:") and lines[0].endswith(" s)")
    assert lines[1].startswith("Epoch 2 Train-Err:")
    assert lines[2].startswith("fast on numpy (float32, reference operations): 2 epochs;")
    assert "per epoch after the first" in lines[2] and "iteration" not in lines[2]


def test_the_notebooks_names_on_the_command_line():
    r = run("train", "--preset", "grokking-3layer", "--backend", "numpy", "--dtype", "float64",
            "--set", "alpha=0.005", "--set", "hidden_size=40", "--set", "iterations=1")
    assert r.returncode == 0, r.stderr
    assert "I:0 Train-Err:0.729 Train-Acc:0.527 Test-Err:0.593 Test-Acc:0.6493" in r.stdout
    assert "grokking-3layer on numpy (float64, reference operations): 1 epoch;" in r.stdout
    r = run("train", "--preset", "branchnet", "--backend", "numpy", "--set", "iter=1", "--set", "learn_rate=0.002",
            "--set", "epsilon=1e-8", "--set", "keep_prob_2=0.9")
    assert r.returncode == 0, r.stderr
    assert "I:0 " in r.stdout and "branchnet on numpy (float32, reference operations): 1 iteration;" in r.stdout
