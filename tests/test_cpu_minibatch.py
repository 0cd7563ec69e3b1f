"""numba-cpu's compiled minibatch epoch (networks with one hidden layer, e.g. the `fast` preset) against the
reference backend: shuffled batches that leave a remainder, biases or none, relu/tanh branches, per-unit
dropout with the reference's masks, L2 on both layers, SGD / Adam-like / Adam, softmax-CE and MSE, over two epochs."""

from __future__ import annotations

import numpy as np
import pytest

from fastmnist.kernels.interface import Net
from fastmnist.kernels.cpu import minibatch_epoch
from fastmnist.kernels.cpu.backend import NumbaCpuBackend
from fastmnist.kernels.reference import ReferenceBackend
from tolerances import MINIBATCH_TOL as TOL, rel_err

SIZES = (30, 17, 5)     # 17 units: whole vector tiles and a scalar remainder in either dtype


def make_net(be, dtype, optimizer, bias, keep, l2, loss, segments, seed=0):
    rng = np.random.RandomState(seed)
    W = [be.asarray(rng.standard_normal((a, b)) * np.sqrt(2 / a), dtype) for a, b in zip(SIZES, SIZES[1:])]
    b = [be.asarray(rng.standard_normal(n) * 0.1, dtype) if bias else None for n in SIZES[1:]]
    net = Net(W, b, [segments, ((0, SIZES[-1], "identity"),)], loss, 1e-7 if loss == "softmax_ce" else 0.0,
              optimizer, lr=0.01, dropout="unit", keep=[None if keep is None else np.full(SIZES[1], keep), None],
              l2=[np.linspace(0.5, 2, SIZES[1]) if l2 else None, np.linspace(0.2, 1, SIZES[2]) if l2 else None])
    net.state = ([(np.zeros_like(p), np.zeros_like(p)) for p in net.params()] if optimizer != "sgd"
                 else [(None, None)] * len(net.params()))
    return net


CASES = [
    dict(bias=True, keep=None, l2=False, loss="softmax_ce", segments=((0, 17, "relu"),)),
    dict(bias=False, keep=0.7, l2=True, loss="mse", segments=((0, 8, "relu"), (8, 17, "tanh"))),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("optimizer", ["adam", "adam_like", "sgd"])
@pytest.mark.parametrize("case", CASES, ids=["bias-relu-ce", "dropout-l2-branches-mse"])
def test_minibatch_epoch_matches_reference(dtype, optimizer, case):
    ref, be = ReferenceBackend(), NumbaCpuBackend()
    rng = np.random.RandomState(3)
    X = rng.random_sample((103, SIZES[0]))
    X[X < 0.6] = 0                            # sparse, as MNIST is
    X = X.astype(dtype)
    y = rng.randint(0, SIZES[-1], 103)
    net0, net = make_net(ref, dtype, optimizer, **case), make_net(be, dtype, optimizer, **case)
    assert be.epoch_path(net, X.shape[0], 10, True) == "minibatch epoch"
    for epoch in range(2):
        order = np.random.RandomState(epoch).permutation(103)
        t0, c0 = ref.train_epoch(net0, X, y, 10, np.random.RandomState(epoch + 7), order)
        t1, c1 = be.train_epoch(net, X, y, 10, np.random.RandomState(epoch + 7), order)
        assert int(c1) == int(c0)
        assert abs(float(t1) - float(t0)) <= 10 * TOL[dtype] * abs(float(t0))
    assert net.step == net0.step == 20
    for p, p0 in zip(net.params(), net0.params()):
        assert np.all(np.isfinite(p))
        err = rel_err(p, p0)
        assert err <= TOL[dtype], err


def test_minibatch_epoch_rejects_a_wrong_order():
    be = NumbaCpuBackend()
    net = make_net(be, np.float64, "adam", **CASES[0])
    X = np.random.RandomState(0).random_sample((40, SIZES[0]))
    with pytest.raises(ValueError, match="order must have shape"):
        be.train_epoch(net, X, np.zeros(40, np.int64), 8, np.random.RandomState(0), np.arange(39))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows", [1, 255, 700])
@pytest.mark.parametrize("case", CASES, ids=["bias-relu-ce", "dropout-l2-branches-mse"])
def test_one_hidden_layer_evaluation_matches_reference(dtype, rows, case):
    """evaluate() of a one-hidden-layer network runs the minibatch epoch's compiled layers, rows split between
    threads in chunks: the reference's loss and count (NaN rows included)."""
    ref, be = ReferenceBackend(), NumbaCpuBackend()
    rng = np.random.RandomState(4)
    X = rng.random_sample((rows, SIZES[0]))
    X[X < 0.6] = 0
    if rows > 3:
        X[3, 2] = np.nan
    X = X.astype(dtype)
    y = rng.randint(0, SIZES[-1], rows)
    net0, net = make_net(ref, dtype, "adam", **case), make_net(be, dtype, "adam", **case)
    t0, c0 = ref.evaluate(net0, X, y)
    t1, c1 = be.evaluate(net, X, y)
    assert int(c1) == int(c0)
    if rows > 3:
        assert np.isnan(t0) and np.isnan(t1)
    else:
        assert abs(float(t1) - float(t0)) <= 10 * TOL[dtype] * abs(float(t0))
    images = (rng.random_sample((rows, SIZES[0])) * 255 * (rng.random_sample((rows, SIZES[0])) > 0.6)).astype(np.uint8)
    Xc = be.to_float(images, dtype)
    t2, c2 = be.evaluate(net, Xc, y)
    t3, c3 = ref.evaluate(net0, ref.to_float(images, dtype), y)
    assert int(c2) == int(c3) and abs(float(t2) - float(t3)) <= 10 * TOL[dtype] * abs(float(t3))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("bias", [True, False])
def test_evaluation_runs_the_training_epochs_compiled_worker(dtype, optimizer, bias):
    """evaluate() calls the epoch's worker with the argument types a training epoch gives it, so a first run
    compiles that worker once, not once per use; and an evaluation leaves the parameters and moments alone."""
    be = NumbaCpuBackend()
    net = make_net(be, dtype, optimizer, **dict(CASES[0], bias=bias))
    rng = np.random.RandomState(5)
    X = rng.random_sample((57, SIZES[0]))
    X[X < 0.6] = 0
    X = X.astype(dtype)
    y = rng.randint(0, SIZES[-1], 57)
    be.train_epoch(net, X, y, 10, np.random.RandomState(0), np.arange(57))
    compiled = set(minibatch_epoch._epoch_worker.signatures)
    before = [a.copy() for a in net.params()] + [a.copy() for pair in net.state for a in pair if a is not None]
    be.evaluate(net, X, y)
    assert set(minibatch_epoch._epoch_worker.signatures) == compiled
    after = list(net.params()) + [a for pair in net.state for a in pair if a is not None]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
