"""Whole training steps as fastmnist.train runs them: one iteration's `train_epoch` call on one batch of
every preset, the batch-1 epoch (1,000 samples) of grokking-3layer, and that preset's whole run on the
compiled backends."""

from __future__ import annotations

import numpy as np
import pytest

from fastmnist.recipes import PRESETS

EPOCH_PRESETS = ("grokking-3layer",)


def step_flop(net, rows):
    """Floating-point operations of the matrix products in one step on `rows` samples."""
    shapes = [W.shape for W in net.weights]
    forward = sum(2 * rows * k * n for k, n in shapes)
    backward = sum(2 * rows * k * n * (2 if li else 1) for li, (k, n) in enumerate(shapes))
    return forward + (rows if net.repeat_update else 1) * backward


def _run(timed, be, dtype, mnist, recipe, net, rows, group):
    X = be.asarray(mnist.images(rows, dtype, recipe.split), dtype)
    y = be.asarray(mnist.labels(rows, recipe.split), np.int64)
    steps = rows // (recipe.batch_size or rows)
    total, correct = timed(group, be.train_epoch, net, X, y, recipe.batch_size, np.random.RandomState(5), None,
                           flop=steps * step_flop(net, recipe.batch_size or rows), preset=recipe.name,
                           rows=rows, batch=recipe.batch_size or rows)
    assert np.isfinite(float(total)) and 0 <= int(correct) <= rows, f"loss {total}, correct {correct}"
    for W in net.weights:
        assert np.all(np.isfinite(be.to_numpy(W))), "training produced NaN or infinite weights"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_train_step(timed, be, dtype, new_net, mnist, preset):
    recipe, net = new_net(preset)
    rows = recipe.batch_size or len(mnist.split(recipe.split))
    _run(timed, be, dtype, mnist, recipe, net, rows, "steps/train_step")


@pytest.mark.parametrize("preset", EPOCH_PRESETS)
def test_batch1_epoch(timed, be, dtype, new_net, mnist, preset):
    recipe, net = new_net(preset, batch_size=1)
    _run(timed, be, dtype, mnist, recipe, net, len(mnist.split(recipe.split)), "steps/epoch")


@pytest.mark.parametrize("preset", EPOCH_PRESETS)
def test_whole_run(benchmark, jit_backend, dtype, preset):
    """The preset's whole run (350 iterations and 36 evaluations for grokking-3layer) as a user calls it,
    fastmnist.train, after one untimed run that loads the kernels and parses the data files (kept in memory
    by this process)."""
    import fastmnist

    def run():
        return fastmnist.train(preset, backend=jit_backend, dtype=dtype, progress=False)

    first = run()
    benchmark.group = f"whole_run/{preset}"
    benchmark.extra_info.update(backend=jit_backend, dtype=dtype, preset=preset,
                                iterations=first.history[-1]["iteration"] + 1, test_acc=first.history[-1]["test_acc"])
    last = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=0)
    assert last.history[-1] == {**first.history[-1], "elapsed_s": last.history[-1]["elapsed_s"]}, "runs differ"
