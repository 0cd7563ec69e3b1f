"""Whole training runs on numba-cpu: the seed's printed numbers, and equality with the numpy backend."""

import numpy as np
import pytest

import fastmnist


def run(preset, backend, dtype="float64", **kw):
    return fastmnist.train(preset, backend=backend, dtype=dtype, progress=False, **kw)


def test_numba_cpu_is_registered_and_available():
    info = {b.name: b for b in fastmnist.backends()}
    assert info["numba-cpu"].available, info["numba-cpu"].reason
    assert fastmnist.get_backend("numba-cpu").name == "numba-cpu"


def printed(row, *keys):
    """The values as seed 000 prints them: str(value)[0:5]."""
    return tuple(str(row[k])[0:5] for k in keys)


def test_grokking_3layer_reproduces_the_seed_numbers():
    result = run("grokking-3layer", "numba-cpu")
    first, last = result.history[0], result.history[-1]
    keys = ("train_err", "train_acc", "test_err", "test_acc")
    assert printed(first, *keys) == ("0.729", "0.527", "0.593", "0.649")
    assert first["test_acc"] == 0.6493
    assert last["iteration"] == 349
    assert printed(last, "train_acc", "test_acc") == ("0.999", "0.829")


def assert_runs_agree(preset, dtype, rel, **kw):
    ref, got = run(preset, "numpy", dtype, **kw), run(preset, "numba-cpu", dtype, **kw)
    assert len(ref.history) == len(got.history)
    for a, b in zip(ref.history, got.history):
        for key, value in a.items():
            if key.endswith("_acc"):
                assert b[key] == pytest.approx(value, abs=2.5e-4 if dtype == "float32" else 0), key
            elif key.endswith(("_err", "loss")):
                assert b[key] == pytest.approx(value, rel=rel), key
    for w, v in zip(got.model.weights, ref.model.weights):
        assert np.linalg.norm(w - v) / np.linalg.norm(v) < rel


def test_grokking_dropout_matches_numpy():
    assert_runs_agree("grokking-dropout", "float64", 1e-12, iterations=3, eval_every=1)


def test_grokking_batch_matches_numpy():
    assert_runs_agree("grokking-batch", "float64", 1e-12, iterations=1)


def test_branchnet_matches_numpy_on_a_small_split_in_float64():
    assert_runs_agree("branchnet", "float64", 1e-11, iterations=3, eval_every=1, split="first-1000")


def test_branchnet_full_batch_matches_numpy_in_float32():
    assert_runs_agree("branchnet", "float32", 1e-4, iterations=2)
