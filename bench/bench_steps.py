"""Whole training steps as fastmnist.train runs them: one iteration's `train_epoch` call on one batch of
every preset, the batch-1 epoch (1,000 samples) of grokking-3layer, whole minibatch epochs of networks that are
no preset (784-256-128-10 with Adam, branchnet's network in minibatches of 128: the general minibatch epoch on
numba-cpu), and grokking-3layer's whole run on the compiled backends."""

from __future__ import annotations

import numpy as np
import pytest

from dataclasses import replace

from fastmnist.recipes import PRESETS, Branch, Layer

EPOCH_PRESETS = ("grokking-3layer",)


def _general_networks():
    """Networks a user writes next, as Recipes: the `fast` preset's training with two hidden layers, and
    branchnet's network (its L2, unit dropout, Adam-like) in shuffled minibatches of 128."""
    fast = PRESETS["fast"]
    deep = replace(fast, name="784-256-128-10", layers=(
        Layer((Branch(256, "relu", "1"),)), Layer((Branch(128, "relu", "2"),)),
        Layer((Branch(10, "identity", "3", init_gain=1.0),))))
    branch = replace(PRESETS["branchnet"], name="branchnet-b128", batch_size=128, shuffle=True)
    return {r.name: r.validate() for r in (deep, branch)}


GENERAL_NETWORKS = _general_networks()


def step_work(net, X):
    """(flop, bytes) one step on the batch X needs, counted the same for every backend.

    flop: the matrix products, a multiply-add counted as 2, with the first layer's counted on the batch's
    nonzero pixels only (a zero input contributes nothing, and the sparse kernels skip it), so a share of the
    FMA peak is of work that must be done. bytes: the batch's nonzero inputs read once; every weight read by
    the forward product and again by the backward one (except the first layer's), its gradient written, and
    the update reading weight, gradient and optimiser state and writing weight and state; under SGD only the
    first layer's rows that a nonzero pixel touched. With the notebook's repeated update (grokking-batch) the
    backward pass counts once, as the gradient does not change between the repeats (the notebook computes it
    once per sample; numba-cpu applies the repeats in closed form), and the update's traffic once per sample.
    """
    X = np.asarray(X)
    rows, itemsize = X.shape[0], X.dtype.itemsize
    nonzero = np.count_nonzero(X)
    shapes = [W.shape for W in net.weights]
    (k0, n0), rest = shapes[0], shapes[1:]
    forward = 2 * nonzero * n0 + sum(2 * rows * k * n for k, n in rest)
    backward = 2 * nonzero * n0 + sum(4 * rows * k * n for k, n in rest)
    flop = forward + backward
    repeats = rows if net.repeat_update else 1
    state = 0 if net.optimizer == "sgd" else 2
    touched = np.count_nonzero(X.any(axis=0)) if state == 0 else k0
    per_weight = 1 + 3 + 2 * state                    # gradient written; update: W, gradient read, W written
    first = (touched * n0) * (1 + repeats * per_weight)     # forward reads only the touched rows too
    others = sum(k * n * (2 + repeats * per_weight) for k, n in rest)
    return flop, itemsize * (nonzero + first + others)


def epoch_work(net, X, batch):
    """step_work summed over the epoch's batches, taken in order."""
    work = [step_work(net, X[i:i + batch]) for i in range(0, X.shape[0] - batch + 1, batch)]
    return sum(f for f, _ in work), sum(b for _, b in work)


def _run(timed, be, dtype, mnist, recipe, net, rows, group, cores=None):
    images = mnist.images(rows, dtype, recipe.split)
    X = be.asarray(images, dtype)
    y = be.asarray(mnist.labels(rows, recipe.split), np.int64)
    batch = recipe.batch_size or rows
    flop, nbytes = epoch_work(net, images, batch)
    total, correct = timed(group, be.train_epoch, net, X, y, recipe.batch_size, np.random.RandomState(5), None,
                           flop=flop, nbytes=nbytes, cores=cores, preset=recipe.name, rows=rows, batch=batch)
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
    # per-sample SGD is a chain of dependent steps: one core's peaks are its limit
    _run(timed, be, dtype, mnist, recipe, net, len(mnist.split(recipe.split)), "steps/epoch", cores=1)


@pytest.mark.parametrize("network", list(GENERAL_NETWORKS))
def test_minibatch_epoch(timed, be, dtype, new_net, mnist, network):
    """One whole epoch (all of the split's training images in minibatches) of a network that is no preset."""
    recipe, net = new_net(GENERAL_NETWORKS[network])
    _run(timed, be, dtype, mnist, recipe, net, len(mnist.split(recipe.split)), "steps/minibatch_epoch")


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
