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
from fastmnist import dispatch
from fastmnist.errors import TrainingInterrupted
from fastmnist.kernels.reference import ReferenceBackend


class CtrlCBackend(ReferenceBackend):
    """The reference backend, which presses Ctrl-C (SIGINT to this process) inside some of its epochs."""

    def __init__(self, name, press_in_epochs):
        super().__init__(name=name)
        self.press_in_epochs, self.epochs = press_in_epochs, 0

    def train_epoch(self, net, X, labels, batch_size, rng, order=None):
        pressed = self.press_in_epochs.count(self.epochs)
        self.epochs += 1
        half = X.shape[0] // 2
        first = super().train_epoch(net, X[:half], labels[:half], batch_size, rng)
        for _ in range(pressed):
            signal.raise_signal(signal.SIGINT)     # handled here, in the middle of the epoch
        second = super().train_epoch(net, X[half:], labels[half:], batch_size, rng)
        return first[0] + second[0], first[1] + second[1]


@pytest.fixture
def ctrl_c_backend():
    made = []

    def use(press_in_epochs):
        name = f"ctrl-c-test-{len(made)}"
        dispatch.register(name, lambda: CtrlCBackend(name, press_in_epochs), "test")
        made.append(name)
        return name
    yield use
    for name in made:
        dispatch.unregister(name)


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
