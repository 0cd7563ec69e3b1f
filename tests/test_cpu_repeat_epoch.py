"""numba-cpu's repeated-update minibatch epoch (seed 000's batch loop, each batch's SGD update applied batch-size
times, in closed form) against the reference backend's literal loop: relu and tanh hidden units, element and
unit dropout, both losses, shuffled batches with a remainder, and NaN."""

from __future__ import annotations

import numpy as np
import pytest

from fastmnist.kernels.cpu.backend import NumbaCpuBackend
from fastmnist.kernels.interface import Net
from fastmnist.kernels.reference import ReferenceBackend
from tolerances import REPEAT_TOL as TOL, rel_err


def make_net(be, dtype, segments, keep, dropout, loss, sizes=(30, 17, 5), lr=0.01):
    rng = np.random.RandomState(0)
    W = [be.parameter(0.2 * rng.random_sample((a, b)) - 0.1, dtype) for a, b in zip(sizes, sizes[1:])]
    return Net(W, [None, None], [segments, ((0, sizes[-1], "identity"),)], loss, 1e-7 if loss == "softmax_ce" else 0.0,
               "sgd", lr=lr, dropout=dropout, keep=[None if keep is None else np.full(sizes[1], keep), None],
               l2=[None, None], repeat_update=True, state=[(None, None), (None, None)])


CASES = [
    dict(segments=((0, 17, "relu"),), keep=0.5, dropout="element", loss="mse"),
    dict(segments=((0, 9, "relu"), (9, 17, "tanh")), keep=0.7, dropout="unit", loss="softmax_ce"),
    dict(segments=((0, 17, "tanh"),), keep=None, dropout="unit", loss="mse"),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=["relu-element-mse", "branches-unit-ce", "tanh-none-mse"])
@pytest.mark.parametrize("batch", [1, 4, 10])
def test_repeated_update_epoch_matches_the_reference_loop(dtype, case, batch):
    ref, be = ReferenceBackend(), NumbaCpuBackend()
    rng = np.random.RandomState(3)
    X = rng.random_sample((43, 30))
    X[X < 0.6] = 0
    X = X.astype(dtype)
    y = rng.randint(0, 5, 43)
    net0, net = make_net(ref, dtype, **case), make_net(be, dtype, **case)
    expected = "repeated-update minibatch epoch" if batch > 1 else "batch-1 epoch"
    assert be.epoch_path(net, 43, batch, True) == expected
    for epoch in range(2):
        order = np.random.RandomState(epoch).permutation(43)
        t0, c0 = ref.train_epoch(net0, X, y, batch, np.random.RandomState(epoch + 7), order)
        t1, c1 = be.train_epoch(net, X, y, batch, np.random.RandomState(epoch + 7), order)
        assert int(c1) == int(c0)
        assert abs(float(t1) - float(t0)) <= 10 * TOL[dtype] * abs(float(t0))
    assert net.step == net0.step
    for p, p0 in zip(net.params(), net0.params()):
        assert np.all(np.isfinite(p))
        err = rel_err(p, p0)
        assert err <= TOL[dtype], err


def test_a_nan_pixel_reaches_the_loss_and_the_weights():
    be = NumbaCpuBackend()
    net = make_net(be, np.float64, **CASES[0])
    X = np.random.RandomState(1).random_sample((8, 30))
    X[2, 5] = np.nan
    total, _ = be.train_epoch(net, X, np.zeros(8, np.int64), 4, np.random.RandomState(0))
    assert np.isnan(total) and np.isnan(net.weights[0]).any()


def test_networks_it_cannot_train_take_the_reference_operations_and_say_why():
    be = NumbaCpuBackend()
    net = make_net(be, np.float64, **CASES[0])
    net.biases[0] = be.parameter(np.zeros(17), np.float64)
    assert be.epoch_path(net, 40, 4, False).startswith("reference operations: ")
