"""numba-cpu's general minibatch epoch (cpu/stack_epoch.py: a sparse first layer and any stack of dense layers)
against the reference backend on generated networks: depth, widths (1, 7, 33 among them), relu/tanh/identity
branches, biases or none, per-unit and element-wise dropout with the reference's masks, L2, SGD / Adam-like /
Adam, softmax-CE and MSE, shuffled or not, batch sizes that leave a remainder, both dtypes; NaN propagates.

Few compiled signatures: the worker compiles once per dtype whatever the depth and widths (the dense layers
come as flat arrays), so the generated cases cost run time, not compile time."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fastmnist.kernels.cpu import backend as cpu
from fastmnist.kernels.cpu import stack_path
from fastmnist.kernels.cpu.backend import NumbaCpuBackend
from fastmnist.kernels.interface import Net
from fastmnist.kernels.reference import ReferenceBackend
from tolerances import GENERAL_EPOCH_TOL as TOL, rel_err

ACTS = ("relu", "tanh", "identity")
INPUTS, CLASSES = 30, 5


def make_net(be, dtype, spec, seed):
    """spec: dict(layers=[[(units, act), ...] per hidden layer], bias, keep, l2, loss, optimizer, dropout)."""
    rng = np.random.RandomState(seed)
    widths = [sum(u for u, _ in branches) for branches in spec["layers"]] + [CLASSES]
    sizes = [INPUTS] + widths
    segments = []
    for branches in spec["layers"]:
        seg, at = [], 0
        for units, act in branches:
            seg.append((at, at + units, act))
            at += units
        segments.append(tuple(seg))
    segments.append(((0, CLASSES, spec.get("out_act", "identity")),))
    W = [be.asarray(rng.standard_normal((a, b)) * np.sqrt(1 / a), dtype) for a, b in zip(sizes, sizes[1:])]
    b = [be.asarray(rng.standard_normal(n) * 0.1, dtype) if spec["bias"] else None for n in widths]
    keep = spec["keep"]
    net = Net(W, b, segments, spec["loss"], 1e-7 if spec["loss"] == "softmax_ce" else 0.0, spec["optimizer"],
              lr=0.01, dropout=spec["dropout"],
              keep=[None if keep is None else np.full(n, keep) if spec.get("uniform_keep") else
                    np.linspace(keep, 1.0, n, endpoint=False) for n in widths[:-1]] + [None],
              l2=[np.linspace(0.5, 2, n) if spec["l2"] else None for n in widths])
    net.state = ([(np.zeros_like(p), np.zeros_like(p)) for p in net.params()] if spec["optimizer"] != "sgd"
                 else [(None, None)] * len(net.params()))
    return net


def data(dtype, rows, seed):
    rng = np.random.RandomState(seed)
    X = rng.random_sample((rows, INPUTS))
    X[X < 0.6] = 0                            # sparse, as MNIST is
    return X.astype(dtype), rng.randint(0, CLASSES, rows)


def compare(spec, dtype, rows, batch, shuffled, seed=0, epochs=2, loosen=1.0, truth=None):
    """numba-cpu's general epoch against the reference on the same net and data. With `truth` (a float64 copy
    of the reference's run, for float32 only) the parameters are checked instead for being as close to the
    float64 run as the reference's own float32 run is: where rounding is amplified (batch 1, Adam's step of
    about lr for a gradient that is near zero in one and exactly zero in the other), both drift from the
    float64 run alike, while a wrong kernel drifts further."""
    tol = {k: v * loosen for k, v in TOL.items()}
    ref, be = ReferenceBackend(), NumbaCpuBackend()
    X, y = data(dtype, rows, seed)
    net0, net = make_net(ref, dtype, spec, seed), make_net(be, dtype, spec, seed)
    # one hidden layer routes to the batch-1 or the `fast` epoch where they fit; the general one is run directly
    route = be._route(net, rows, batch)[0]
    assert route is cpu._STACK or (len(net.weights) == 2 and route in (cpu._BATCH1, cpu._MINIBATCH))
    if route is not cpu._BATCH1:
        assert be.epoch_path(net, rows, batch, shuffled) == "minibatch epoch"
    order = np.random.RandomState(seed + 1).permutation(rows) if shuffled else None
    for _ in range(epochs):
        t0, c0 = ref.train_epoch(net0, X, y, batch, np.random.RandomState(seed + 2), order)
        t1, c1 = stack_path.run(be, net, be._inputs.get(X), y, batch, np.random.RandomState(seed + 2), order)
        assert abs(float(t1) - float(t0)) <= 10 * tol[dtype] * max(abs(float(t0)), 1.0), (t0, t1)
        assert int(c1) == int(c0) or dtype == np.float32
    assert net.step == net0.step
    if truth is not None:
        for p64, p0, p1 in zip(truth(), net0.params(), net.params()):
            drift, err = rel_err(p0, p64), rel_err(p1, p64)
            assert err <= 2 * drift + TOL[np.float32], (err, drift)
        return
    for p0, p1 in zip(net0.params(), net.params()):
        err = rel_err(p1, p0)
        assert err <= tol[dtype], err
    for (v0, s0), (v1, s1) in zip(net0.state, net.state):
        if v0 is not None:
            assert rel_err(v1, v0) <= tol[dtype] and rel_err(s1, s0) <= tol[dtype]


# hand-picked cases: each feature at least once, in both dtypes
CASES = [
    dict(layers=[[(33, "relu")], [(7, "tanh")]], bias=True, keep=None, l2=False, loss="softmax_ce",
         optimizer="adam", dropout="unit"),
    dict(layers=[[(20, "relu"), (13, "tanh")], [(1, "relu")], [(7, "identity")]], bias=False, keep=0.6, l2=True,
         loss="mse", optimizer="adam_like", dropout="unit"),
    dict(layers=[[(17, "relu")], [(9, "tanh"), (8, "relu")]], bias=True, keep=0.5, l2=True, loss="softmax_ce",
         optimizer="sgd", dropout="element"),
    dict(layers=[[(7, "tanh")]], bias=True, keep=0.7, l2=False, loss="mse", optimizer="adam", dropout="element",
         out_act="relu"),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_general_epoch_matches_reference(dtype, case):
    compare(CASES[case], dtype, rows=103, batch=10, shuffled=case % 2 == 0)


def test_element_dropout_of_one_half_everywhere_draws_as_seed_000():
    """keep 0.5 on every unit: the reference draws rng.randint(2) instead of comparing uniforms."""
    compare(dict(CASES[2], uniform_keep=True), np.float64, rows=50, batch=8, shuffled=True, epochs=1)


def test_general_epoch_takes_batch_one_and_a_batch_of_all_but_one_row():
    compare(CASES[1], np.float64, rows=23, batch=1, shuffled=True, epochs=1)
    compare(CASES[0], np.float64, rows=23, batch=22, shuffled=False, epochs=1)


_branches = st.lists(st.tuples(st.sampled_from([1, 7, 33, 5]), st.sampled_from(ACTS)), min_size=1, max_size=2)
_specs = st.fixed_dictionaries(dict(
    layers=st.lists(_branches, min_size=1, max_size=4), bias=st.booleans(),
    keep=st.sampled_from([None, 0.5, 0.8]), l2=st.booleans(), loss=st.sampled_from(["softmax_ce", "mse"]),
    optimizer=st.sampled_from(["sgd", "adam_like", "adam"]), dropout=st.sampled_from(["unit", "element"])))


def parts_by_rounding_alone(spec, dtype, batch) -> bool:
    """float32, batches of 1 or 2, Adam or Adam-like: a step of about lr from a gradient that rounding leaves near
    zero in one run and exactly zero in the other makes any two float32 runs, the reference's among them, part
    by a random amount (seen: 4-8x the reference's own drift from float64, on layers of width 1; in the default
    run, a loss 0.3% apart after one epoch of 33 identity -> 1 tanh units at batch 2). float64 checks these
    networks at every batch size, float32 at the larger ones."""
    return dtype == np.float32 and batch <= 2 and spec["optimizer"] != "sgd"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_specs, dtype=st.sampled_from([np.float64, np.float32]), batch=st.sampled_from([2, 7, 16]),
       shuffled=st.booleans(), seed=st.integers(0, 1000))
def test_generated_networks_match_reference(spec, dtype, batch, shuffled, seed):
    assume(not parts_by_rounding_alone(spec, dtype, batch))
    compare(spec, dtype, rows=45, batch=batch, shuffled=shuffled, seed=seed, epochs=1)


# Many more networks, batch 1 among them. Over 45 steps of batch 1, a rounding difference that moves a ReLU unit
# across 0 or flips the sign of a near-zero gradient (which Adam-like turns into a whole step of lr) grows far
# past rounding in float32 (checked against a float64 run, as the reference's float32 run is), and to ~1e-10 in
# float64 (loosened 20x), whichever side is the more exact.
@pytest.mark.exhaustive
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_specs, dtype=st.sampled_from([np.float64, np.float32]), batch=st.sampled_from([1, 2, 7, 16, 44]),
       shuffled=st.booleans(), seed=st.integers(0, 1000))
def test_generated_networks_match_reference_exhaustive(spec, dtype, batch, shuffled, seed):
    assume(not parts_by_rounding_alone(spec, dtype, batch))
    truth = None
    if dtype == np.float32:
        def truth():
            ref = ReferenceBackend()
            X, y = data(np.float64, 45, seed)
            net = make_net(ref, np.float64, spec, seed)
            order = np.random.RandomState(seed + 1).permutation(45) if shuffled else None
            ref.train_epoch(net, X, y, batch, np.random.RandomState(seed + 2), order)
            return net.params()
    compare(spec, dtype, rows=45, batch=batch, shuffled=shuffled, seed=seed, epochs=1, loosen=20.0, truth=truth)


def test_routes_deeper_networks_and_element_dropout_to_the_general_epoch():
    be = NumbaCpuBackend()
    deep = make_net(be, np.float64, CASES[1], 0)
    assert be._route(deep, 100, 10)[0] is cpu._STACK
    assert be._route(deep, 100, None)[0] is cpu._SPARSE            # the full batch keeps the sparse step
    shallow = make_net(be, np.float64, CASES[3], 0)                 # one hidden layer, element-wise dropout
    assert be._route(shallow, 100, 10)[0] is cpu._STACK
    assert be.epoch_path(shallow, 100, 10, True) == "minibatch epoch"
    shallow.repeat_update = True
    assert be.epoch_path(shallow, 100, 10, True).startswith("reference operations: ")


@pytest.mark.parametrize("where", ["input", "dense weight"])
def test_nan_propagates(where):
    be = NumbaCpuBackend()
    X, y = data(np.float64, 40, 0)
    net = make_net(be, np.float64, CASES[0], 0)
    if where == "input":
        X[3, np.flatnonzero(X[3])[0]] = np.nan
    else:
        net.weights[1][2, 3] = np.nan
    total, _ = be.train_epoch(net, X, y, 8, np.random.RandomState(0))
    assert np.isnan(total)
    assert all(np.isnan(p).any() for p in net.params())
