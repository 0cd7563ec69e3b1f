"""The seeds' printed numbers, reproduced on the reference backend in float64 with the seeds' own seeding."""

import pytest

import fastmnist


def first_row(preset, **kw):
    return fastmnist.train(preset, backend="numpy", dtype="float64", iterations=1, progress=False, **kw).history[0]


# The notebooks' I:0 lines. Errors are printed as str(err)[0:5], accuracies in full.
SEED_000_ITERATION_0 = {
    "grokking-3layer": {"train_err": 0.729, "train_acc": 0.527, "test_err": 0.593, "test_acc": 0.6493},
    "grokking-dropout": {"train_err": 0.902, "train_acc": 0.395, "test_err": 0.638, "test_acc": 0.6325},
    # the notebook's loop applies each batch's update batch_size times (repeat_update=True)
    "grokking-batch": {"train_err": 1.286, "train_acc": 0.151, "test_err": 0.824, "test_acc": 0.3752},
}


@pytest.mark.parametrize("preset", SEED_000_ITERATION_0)
def test_seed_000_iteration_0(preset):
    row = first_row(preset)
    for key, printed in SEED_000_ITERATION_0[preset].items():
        if key.endswith("_acc"):
            assert row[key] == printed, key
        else:
            assert str(row[key])[0:5] == str(printed), key


def test_grokking_batch_corrected_update_differs():
    row = first_row("grokking-batch", repeat_update=False)
    assert row["test_acc"] != 0.3752 and 0 < row["test_acc"] < 1


@pytest.mark.exhaustive      # 51 full-batch iterations on 50,000 images: CI runs it after the test command
def test_branchnet_after_51_iterations_matches_the_notebook_log():
    result = fastmnist.train("branchnet", backend="numpy", dtype="float64", iterations=51, progress=False)
    rows = {r["iteration"]: r for r in result.history}
    assert set(rows) == {0, 50}, "branchnet reports every 50 iterations, as the notebook prints"
    r = rows[50]
    assert r["train_acc"] == pytest.approx(0.911, abs=0.02)
    assert r["val_acc"] == pytest.approx(0.920, abs=0.02)
    assert r["test_acc"] == pytest.approx(0.915, abs=0.02)


@pytest.mark.slow
def test_grokking_3layer_350_iterations_on_the_reference_backend():
    result = fastmnist.train("grokking-3layer", backend="numpy", dtype="float64", progress=False)
    last = result.history[-1]
    assert last["iteration"] == 349
    assert last["train_acc"] == 0.999 and last["test_acc"] == 0.829


@pytest.mark.slow
def test_branchnet_full_run_reaches_the_notebooks_plateau():
    """The notebook's 98.43% was logged with keep probability 0.9 and CuPy's random draws, which cannot be
    replayed; with the printed training cell's 0.8 the last report is one draw from a plateau (docs/presets.md),
    so the run must end on it and stay on it: final test accuracy and the mean of the last 20 reports (the
    last 1,000 iterations) both at least 0.981."""
    result = fastmnist.train("branchnet", backend="auto", dtype="float32", progress=False)
    history = result.history
    assert history[-1]["iteration"] == 9999 and len(history) >= 20
    last_20 = [row["test_acc"] for row in history[-20:]]
    assert history[-1]["test_acc"] >= 0.981, result.summary()
    assert sum(last_20) / len(last_20) >= 0.981, last_20
