"""A network too large for this machine is refused in one line before anything is allocated."""

import os
import subprocess
import sys
import time
import tracemalloc

import pytest

import fastmnist
from fastmnist import data, memory
from fastmnist.errors import RecipeError
from fastmnist.training import make_recipe

CWD = os.path.dirname(os.path.abspath(__file__))


def test_a_hidden_layer_of_a_hundred_million_units_is_one_line_at_once():
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "fastmnist", "train", "--set", "hidden=100000000"],
                       capture_output=True, text=True, cwd=CWD, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stdout == "", r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "784 -> 100000000 -> 10, 79,500,000,010 parameters) needs at least" in r.stderr
    assert "this machine has" in r.stderr and time.monotonic() - start < 60


@pytest.mark.parametrize("call", [      # (no epochs: were the check missing, only the parameters would be made)
    lambda: fastmnist.train("fast", backend="numpy", iterations=0, hidden=200_000, progress=False),
    lambda: fastmnist.compare("fast", backends=["numpy"], seeds=(1,), iterations=0, units_1=200_000),
])
def test_train_and_compare_refuse_what_this_machine_cannot_hold_before_allocating(monkeypatch, call):
    monkeypatch.setattr(memory, "machine_bytes", lambda: 1 << 30)
    tracemalloc.start()
    try:
        with pytest.raises(RecipeError, match=r"needs at least [\d.,]+ GiB of memory .*; this machine has 1.0 GiB"):
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_the_estimate_is_below_what_training_really_takes():
    data.load_splits("first-1000")
    recipe = make_recipe("grokking-3layer", iterations=1, hidden=400)
    tracemalloc.start()
    try:
        fastmnist.train(recipe, backend="numpy", progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = memory.training_bytes(recipe, "float32")
    assert 0.5 * peak < estimate <= peak, (estimate, peak)


def test_the_machine_has_some_memory_and_every_preset_fits_it():
    assert memory.machine_bytes() > 1 << 30
    for name, recipe in fastmnist.PRESETS.items():
        assert memory.training_bytes(recipe, "float64") < 1 << 30, name
