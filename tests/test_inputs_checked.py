"""Settings and labels are taken as given or refused in one line: never silently read as something else."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastmnist
from fastmnist import cli, data, dispatch
from fastmnist.errors import BackendMisconfigured, FastMnistError, RecipeError
from fastmnist.training import make_recipe

CWD = os.path.dirname(os.path.abspath(__file__))


def settings(*argv):
    return cli.recipe_settings(cli.build_parser().parse_args(list(argv)))


# -- values are parsed by the setting's kind: words stay words -------------------------------------------

@pytest.mark.parametrize("word", ["full", "none", "true", "1", "50k-10k-10k"])
def test_a_split_is_the_word_written(word):
    assert settings("train", "--set", f"split={word}")["split"] == word


def test_set_split_full_trains_on_the_full_split():
    assert make_recipe("grokking-3layer", **settings("train", "--set", "split=full")).split == "full"


@pytest.mark.parametrize("key", ["loss", "init", "dropout", "l2_schedule", "train_metrics", "optimizer_kind"])
def test_every_word_setting_keeps_its_word(key):
    assert settings("train", "--set", f"{key}=None")[key] == "None"
    assert cli.parse_value("3", key) == "3"


def test_other_settings_still_take_numbers_flags_and_none():
    got = settings("train", "--set", "batch_size=none", "--set", "shuffle=false", "--set", "lr_decay=0.5",
                   "--set", "eval_every=3")
    assert got == {"batch_size": None, "shuffle": False, "lr_decay": 0.5, "eval_every": 3}
    assert cli._grid_axis("split=full,first-1000") == ("split", ["full", "first-1000"])


# -- one setting given twice under any of its names is refused ---------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["--lr", "0.1", "--set", "learning_rate=0.2"], "lr is given twice (--lr and --set as learning_rate)"),
    (["--set", "learning_rate=0.1", "--set", "lr=0.2"], "learning_rate is given twice (--set and --set as lr)"),
    (["--set", "hidden=30", "--set", "units_1=40"], "hidden is given twice (--set and --set as units_1)"),
    (["--preset", "branchnet", "--keep-prob", "0.9", "--set", "keep_prob_11=0.5"],
     "keep_prob is given twice (--keep-prob and --set as keep_prob_11)"),
    (["--preset", "branchnet", "--iterations", "3", "--set", "iter=5"],
     "iterations is given twice (--iterations and --set as iter)"),
    (["--preset", "branchnet", "--set", "epsilon=1e-7", "--set", "eps=1e-6"],
     "epsilon is given twice (--set and --set as eps)"),
    (["--preset", "grokking-3layer", "--set", "hidden_size=30", "--set", "units_1=40"],
     "hidden_size is given twice (--set and --set as units_1)"),
])
def test_an_option_and_a_set_for_the_same_setting_are_refused(argv, words):
    with pytest.raises(RecipeError) as info:
        settings("train", *argv)
    assert words in str(info.value)


def test_settings_of_different_parts_go_together():
    assert settings("train", "--preset", "branchnet", "--set", "keep_prob_11=0.5", "--set", "keep_prob_12=0.6",
                    "--lr", "0.01") == {"lr": 0.01, "keep_prob_11": 0.5, "keep_prob_12": 0.6}


def test_compare_refuses_a_seed_it_would_ignore(capsys):
    assert cli.main(["compare", "--backends", "numpy", "--seeds", "1", "--iterations", "1", "--set", "hidden=8",
                     "--set", "batch_size=6000", "--set", "seed=5"]) == 2
    err = capsys.readouterr().err
    assert "--set seed: compare sets seed itself; use its --seeds option" in err and len(err.splitlines()) == 1
    with pytest.raises(RecipeError, match=r"seeds=\(5,\)"):
        fastmnist.compare("fast", backends=["numpy"], seeds=(1,), iterations=1, hidden=8, batch_size=6000, seed=5)


# -- a backend stopped by the user's own setting is not passed over by auto ---------------------------------

def test_auto_does_not_pass_over_a_misconfigured_backend(monkeypatch):
    def broken():
        raise BackendMisconfigured("FASTMNIST_TEST_SETTING must be 1, got 2")

    dispatch.register("test-misconfigured", broken, "a backend stopped by a bad setting", priority=10_000)
    try:
        with pytest.raises(BackendMisconfigured, match="'test-misconfigured' would be chosen but cannot run: "
                                                       "FASTMNIST_TEST_SETTING must be 1, got 2"):
            dispatch.get_backend("auto")
        assert dispatch.get_backend("numpy").name == "numpy"        # naming a backend still works
    finally:
        dispatch.unregister("test-misconfigured")
    assert dispatch.get_backend("auto").name != "test-misconfigured"


@pytest.mark.parametrize("setting, words", [
    ({"FASTMNIST_VECTOR_BYTES": "7"}, "FASTMNIST_VECTOR_BYTES must be one of 16, 32, 64, got '7'"),
    ({"NUMBA_NUM_THREADS": "0"}, "numba failed to import (ValueError: Number of threads specified must be > 0.)"),
])
def test_a_bad_setting_of_numba_cpu_is_one_line_before_training_not_a_silent_numpy_run(setting, words):
    r = subprocess.run([sys.executable, "-m", "fastmnist", "train", "--iterations", "1", "--quiet"],
                       capture_output=True, text=True, cwd=CWD, timeout=120, env={**os.environ, **setting})
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert words in r.stderr and "'numba-cpu' would be chosen but cannot run" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# -- labels are checked as images are ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scored():
    model = fastmnist.train("grokking-3layer", backend="numpy", iterations=1, hidden=8, progress=False).model
    test = data.load_splits("first-1000").test
    return model, test.images[:500], test.labels[:500]


def test_accuracy_takes_labels_of_any_integer_type(scored):
    model, images, labels = scored
    expected = float((model.predict(images) == labels).mean())
    assert 0.3 < expected < 1
    for kind in (np.uint8, np.int32, np.int64):
        assert model.accuracy(images, labels.astype(kind)) == expected
    assert model.accuracy(images, labels.tolist()) == expected


@pytest.mark.parametrize("change, words", [
    (lambda y: y.reshape(-1, 1), "labels must have shape (500,), one per image, got (500, 1)"),
    (lambda y: y[:-1], "labels must have shape (500,), one per image, got (499,)"),
    (lambda y: y.astype(str), "labels must be integers 0..9, got dtype <U"),
    (lambda y: y.astype(np.float64), "labels must be integers 0..9, got dtype float64"),
    (lambda y: y.astype(bool), "labels must be integers 0..9, got dtype bool"),
    (lambda y: y.astype(np.int64) + 1, "labels must lie in 0..9, got values in [1, 10]"),
    (lambda y: y.astype(np.int64) - 1, "labels must lie in 0..9, got values in [-1, 8]"),
])
def test_accuracy_refuses_labels_that_do_not_fit(scored, change, words):
    model, images, labels = scored
    with pytest.raises(FastMnistError) as info:
        model.accuracy(images, change(labels))
    assert words in str(info.value)


def test_accuracy_of_no_images_is_an_error_not_nan(scored, recwarn):
    model, images, labels = scored
    with pytest.raises(FastMnistError, match="no images to score"):
        model.accuracy(images[:0], labels[:0])
    assert len(recwarn) == 0


# -- the same in the Python API and in sweeps' grids ----------------------------------------------------------

@pytest.mark.parametrize("preset, overrides, words", [
    ("fast", dict(lr=0.1, learning_rate=0.2), "lr and learning_rate set the same setting of recipe 'fast'"),
    ("fast", dict(hidden=30, units_1=40), "hidden and units_1 set the same setting"),
    ("branchnet", dict(keep_prob=0.9, keep_prob_12=0.5), "keep_prob and keep_prob_12 set the same setting"),
    ("grokking-3layer", dict(alpha=0.1, lr=0.2), "alpha and lr set the same setting"),
])
def test_the_api_refuses_two_names_for_one_setting(preset, overrides, words):
    with pytest.raises(RecipeError, match=words):
        make_recipe(preset, **overrides)
    with pytest.raises(RecipeError, match=words):
        fastmnist.train(preset, backend="numpy", progress=False, **overrides)


def test_a_sweep_grid_that_sets_iterations_under_another_name_is_refused(tmp_path):
    from fastmnist.sweeps import sweep
    with pytest.raises(RecipeError, match="iterations is set twice: by iterations= and by the grid as iter"):
        sweep("branchnet", {"iter": [1, 2]}, iterations=3, out=tmp_path / "s.jsonl")
    with pytest.raises(RecipeError, match="lr and learning_rate set the same setting"):
        sweep("fast", {"lr": [0.1], "learning_rate": [0.2]}, out=tmp_path / "s.jsonl")
    assert not (tmp_path / "s.jsonl").exists()
