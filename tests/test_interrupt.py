"""Ctrl-C keeps the work: training stops after the iteration it is in and hands back (and the CLI saves) the
model trained so far; a second Ctrl-C stops at once."""

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastmnist
from fastmnist.errors import TrainingInterrupted


@pytest.fixture
def ctrl_c_backend(signal_backend):
    """A backend that presses Ctrl-C (SIGINT to this process) in the middle of each epoch listed, once per
    listing."""
    return lambda press_in_epochs: signal_backend({e: [signal.SIGINT] * press_in_epochs.count(e)
                                                   for e in set(press_in_epochs)})


RUN = dict(preset="grokking-3layer", iterations=30, eval_every=10, hidden=8, progress=False)


def test_ctrl_c_finishes_the_iteration_and_hands_back_the_model_trained_so_far(ctrl_c_backend):
    with pytest.raises(TrainingInterrupted) as info:
        fastmnist.train(backend=ctrl_c_backend([2]), **RUN)
    result = info.value.result
    assert [row["iteration"] for row in result.history] == [0, 2], "a report for the iteration it stopped after"
    assert result.model.recipe.iterations == 3 and result.model.meta["iterations_done"] == 3
    assert result.model.meta["interrupted"] is True and result.stopped_early
    whole = fastmnist.train(backend=ctrl_c_backend([]), **dict(RUN, iterations=3))
    for a, b in zip(result.model.weights, whole.model.weights):
        assert np.array_equal(a, b), "the model is the one three whole iterations make"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_stops_at_once(ctrl_c_backend):
    with pytest.raises(KeyboardInterrupt) as info:
        fastmnist.train(backend=ctrl_c_backend([1, 1]), **RUN)
    assert not isinstance(info.value, TrainingInterrupted)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_training_in_another_thread_leaves_ctrl_c_alone():
    results = []
    thread = threading.Thread(target=lambda: results.append(
        fastmnist.train("grokking-3layer", backend="numpy", iterations=1, hidden=8, progress=False)))
    thread.start()
    thread.join()
    assert len(results) == 1 and results[0].history[-1]["iteration"] == 0


def test_ctrl_c_on_the_cli_saves_the_model_trained_so_far_and_exits_130(tmp_path):
    out = tmp_path / "m.npz"
    p = subprocess.Popen([sys.executable, "-m", "fastmnist", "train", "--preset", "grokking-3layer", "--backend",
                          "numpy", "--iterations", "350", "--out", str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        first = p.stdout.readline()
        assert first.startswith("I:0 "), first + p.stderr.read()
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted after iteration" in stderr
    model = fastmnist.load(out)
    done = model.meta["iterations_done"]
    assert model.meta["interrupted"] is True and 1 <= done < 350 and model.recipe.iterations == done
    assert model.meta["history"][-1]["iteration"] == done - 1
    assert f"saved {out}" in stdout
