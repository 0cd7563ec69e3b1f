"""One conformance suite for every backend: each operation of the backend contract (kernels/interface.py)
against the reference backend, in float64 and float32, on fresh random inputs of awkward shapes (batch 1,
sizes that are not multiples of a tile or a vector) and layouts (Fortran order, strided views), NaN
propagation, and a short training run of every preset against the reference's.

The backends come from the registry: every registered backend that can be built here is covered. numpy and
numba-cpu always; numba-cuda and cuda-hybrid in numba-cuda's CPU simulator (tiny shapes) when it is on, or
on a GPU at full size with FASTMNIST_REAL_GPU=1; cupy on a GPU. The toy backend registered below (a few
lines, as a third party would write one) shows that registering is all it takes to be covered.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import fastmnist
from fastmnist import dispatch
from fastmnist.kernels.interface import CONTRACT, Backend
from fastmnist.kernels.reference import ReferenceBackend
from fastmnist.recipes import PRESETS, get_preset
from fastmnist.training import build_net, init_params, planned_path
from tolerances import TOL, rel_err

ref = ReferenceBackend()
DTYPES = (np.float64, np.float32)
LAYOUTS = ("C", "F", "strided")
# The default run checks each backend on all pairs of its parameters' values (the root conftest.py), the rest
# of each product under the `exhaustive` marker.
pairwise = pytest.mark.pairwise(per=("backend_name",))


class ToyBackend(ReferenceBackend):
    """A third party's backend: the reference with its forward product written as an einsum."""

    def __init__(self):
        super().__init__(np, name="toy-einsum")

    def dense_forward(self, X, W, b, segments, mask=None):
        Z = np.einsum("ik,kj->ij", X, W)
        if b is not None:
            Z += b
        H = self._activate(Z, segments)
        return (H if mask is None else H * mask), H


dispatch.register("toy-einsum", ToyBackend, "the conformance suite's toy backend", priority=-100)


def _buildable() -> dict:
    """{name: backend object} for every registered backend that can be built here; numba-cuda's simulated
    backends are allowed for this (never for `auto`)."""
    old = os.environ.get("FASTMNIST_ALLOW_CUDASIM")
    os.environ["FASTMNIST_ALLOW_CUDASIM"] = "1"
    dispatch._load.cache_clear()
    try:
        return {i.name: fastmnist.get_backend(i.name) for i in fastmnist.backends() if i.available}
    finally:
        if old is None:
            os.environ.pop("FASTMNIST_ALLOW_CUDASIM")
        else:
            os.environ["FASTMNIST_ALLOW_CUDASIM"] = old
        dispatch._load.cache_clear()


BACKENDS = _buildable()


def size_class(be) -> str:
    """'sim' (numba-cuda's simulator runs every GPU thread in Python: tiny shapes), 'gpu' or 'cpu'."""
    return "sim" if getattr(be, "simulated", False) else be.device


# (rows, inputs, units): batch 1, sizes that are no multiple of a vector or a tile, more than one tile
SHAPES = {"cpu": [(1, 1, 1), (1, 784, 40), (7, 13, 5), (33, 17, 19), (130, 61, 37)],    # the last above SMALL_WORK
          "sim": [(1, 5, 3), (7, 10, 8), (10, 15, 13)],
          "gpu": [(1, 784, 192), (1000, 784, 192), (50000, 784, 192), (50000, 192, 48), (4099, 37, 10)]}


REFERENCE_CODE = ("numpy", "toy-einsum")


def pytest_generate_tests(metafunc):
    """`backend_name` over every buildable backend; with `shape`, each backend's own list of shapes;
    `host_backend` over those that draw the reference's masks and run real sizes (real-data runs)."""
    if "host_backend" in metafunc.fixturenames:
        # numpy against itself and the toy (numpy's code with an einsum) run in the exhaustive part only
        hosts = [n for n, be in BACKENDS.items() if be.host_masks and size_class(be) != "sim"]
        metafunc.parametrize("host_backend", [pytest.param(n, marks=[pytest.mark.exhaustive] * (n in REFERENCE_CODE))
                                              for n in hosts])
    if "backend_name" not in metafunc.fixturenames:
        return
    if "shape" in metafunc.fixturenames:
        combos = [pytest.param(n, s, id=f"{n}-{'x'.join(map(str, s))}")
                  for n, be in BACKENDS.items() for s in SHAPES[size_class(be)]]
        metafunc.parametrize(("backend_name", "shape"), combos)
    else:
        metafunc.parametrize("backend_name", list(BACKENDS))


@pytest.fixture
def be(backend_name):
    backend = BACKENDS[backend_name]
    if size_class(backend) == "sim":
        # the simulator hands the GIL between its per-thread Python threads: a short switch interval makes
        # it several times faster
        old = sys.getswitchinterval()
        sys.setswitchinterval(5e-4)
        yield backend
        sys.setswitchinterval(old)
    else:
        yield backend


# -- helpers ------------------------------------------------------------------------------------------

def host(be, a):
    return None if a is None else np.asarray(be.to_numpy(a))


def close(be, got, want, dtype, tol=None):
    """Relative error (Frobenius norm) within the dtype's bound; NaN anywhere fails."""
    got, want = host(be, got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    err = rel_err(got, want)
    assert err <= (tol or TOL[dtype]), f"relative error {err:.3g}"      # NaN compares False: fails


def on(be, a, kind="C", dtype=None):
    """Host values `a` as a backend array: C-contiguous, Fortran-ordered or a strided view of a larger one."""
    a = np.asarray(a, dtype=dtype)
    if kind == "F" and a.ndim == 2:
        return be.asarray(np.ascontiguousarray(a.T)).T
    if kind == "strided" and a.ndim == 2:
        big = np.zeros((2 * a.shape[0], a.shape[1] + 3), a.dtype)
        big[::2, 2:2 + a.shape[1]] = a
        return be.asarray(big)[::2, 2:2 + a.shape[1]]
    return be.asarray(a)


def segments_for(units):
    """relu, tanh and identity branches splitting `units` (some empty for tiny layers)."""
    a, b = units // 2, (3 * units) // 4
    return ((0, a, "relu"), (a, b, "tanh"), (b, units, "identity"))


def random_layer(rng, rows, inputs, units, dtype):
    X = rng.standard_normal((rows, inputs))
    X[rng.random((rows, inputs)) < 0.5] = 0                    # exact zeros, as in images
    W = rng.standard_normal((inputs, units)) / np.sqrt(inputs)
    return X.astype(dtype), W.astype(dtype), rng.standard_normal(units).astype(dtype)


def random_masks(rng, rows, units, kind, dtype):
    """(forward, backward) masks as the reference's dropout_mask returns them."""
    if kind is None:
        return None, None
    keep = rng.uniform(0.4, 0.9, units)
    if kind == "unit":
        fwd = ((rng.random((1, units)) < keep) / keep).astype(dtype)
        return fwd, fwd
    kept = rng.random((rows, units)) < keep
    return (kept / keep).astype(dtype), kept.astype(dtype)


# -- the contract -------------------------------------------------------------------------------------

def test_every_registered_backend_that_can_run_here_is_covered():
    names = {i.name for i in fastmnist.backends()}
    assert "toy-einsum" in names and "toy-einsum" in BACKENDS
    assert {"numpy", "numba-cpu"} <= set(BACKENDS)
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        assert {"numba-cuda", "cuda-hybrid"} <= set(BACKENDS)


def test_backend_provides_the_whole_contract(be):
    assert isinstance(be, Backend)
    assert all(hasattr(be, m) for m in CONTRACT)
    assert be.device in ("cpu", "gpu") and isinstance(be.name, str) and isinstance(be.host_masks, bool)


@pytest.mark.parametrize("dtype", DTYPES)
def test_moving_data_in_and_out(be, dtype):
    images = np.random.default_rng().integers(0, 256, (5, 784)).astype(np.uint8)
    X = be.to_float(images, dtype)
    assert host(be, X).dtype == dtype
    np.testing.assert_array_equal(host(be, X), ref.to_float(images, dtype))
    source = np.random.default_rng().standard_normal((31, 17))[:, ::2]
    p = be.parameter(source, dtype)
    np.testing.assert_array_equal(host(be, p), source.astype(dtype))
    p[0, 0] = 123
    assert source[0, 0] != 123 and host(be, p)[0, 0] == 123                # a copy, writeable
    a = be.asarray(np.arange(6).reshape(2, 3)[:, ::2], dtype)
    np.testing.assert_array_equal(host(be, a), np.array([[0, 2], [3, 5]], dtype))
    be.synchronize()


@pairwise
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", [None, "unit", "element"])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_forward(be, shape, dtype, mask_kind, bias):
    rng = np.random.default_rng()
    X, W, b = random_layer(rng, *shape, dtype)
    fwd, _ = random_masks(rng, shape[0], shape[2], mask_kind, dtype)
    seg = segments_for(shape[2])
    A, H = be.dense_forward(on(be, X), on(be, W), on(be, b) if bias else None, seg,
                            None if fwd is None else on(be, fwd))
    rA, rH = ref.dense_forward(X.astype(np.float64), W.astype(np.float64), b.astype(np.float64) if bias else None,
                               seg, fwd)
    assert host(be, A).dtype == dtype and host(be, H).dtype == dtype
    close(be, H, rH, dtype)
    close(be, A, rA, dtype)


@pairwise
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", [None, "unit", "element"])
@pytest.mark.parametrize("with_l2", [True, False])
def test_dense_backward(be, shape, dtype, mask_kind, with_l2):
    rng = np.random.default_rng()
    X, W, b = random_layer(rng, *shape, dtype)
    seg = segments_for(shape[2])
    _, H = ref.dense_forward(X, W, b, seg)
    dA = rng.standard_normal(H.shape).astype(dtype)
    _, bwd = random_masks(rng, shape[0], shape[2], mask_kind, dtype)
    l2 = rng.uniform(0, 2, shape[2]).astype(dtype) if with_l2 else None
    got = be.dense_backward(on(be, dA), on(be, X), on(be, W), on(be, H), seg, None if bwd is None else on(be, bwd),
                            None if l2 is None else on(be, l2))
    f64 = [None if a is None else a.astype(np.float64) for a in (dA, X, W, H, bwd, l2)]
    want = ref.dense_backward(f64[0], f64[1], f64[2], f64[3], seg, f64[4], f64[5])
    for g, w in zip(got, want):
        assert host(be, g).dtype == dtype
        close(be, g, w, dtype)
    dX, dW, db = be.dense_backward(on(be, dA), on(be, X), on(be, W), on(be, H), seg, need_dx=False)
    assert dX is None
    close(be, dW, ref.dense_backward(f64[0], f64[1], f64[2], f64[3], seg)[1], dtype)


@pytest.mark.parametrize("x_layout", LAYOUTS)
@pytest.mark.parametrize("w_layout", LAYOUTS)
def test_dense_layers_read_any_layout(be, x_layout, w_layout):
    rng = np.random.default_rng()
    rows, inputs, units = (7, 10, 8) if size_class(be) == "sim" else (9, 11, 6)
    X, W, b = random_layer(rng, rows, inputs, units, np.float64)
    fwd, bwd = random_masks(rng, rows, units, "element", np.float64)
    seg = segments_for(units)
    A, H = be.dense_forward(on(be, X, x_layout), on(be, W, w_layout), on(be, b[::-1].copy()), seg,
                            on(be, fwd, x_layout))
    rA, rH = ref.dense_forward(X, W, b[::-1].copy(), seg, fwd)
    close(be, A, rA, np.float64)
    dA = rng.standard_normal(rH.shape)
    l2 = rng.random(units)
    got = be.dense_backward(on(be, dA, x_layout), on(be, X, x_layout), on(be, W, w_layout), on(be, rH, w_layout),
                            seg, on(be, bwd, x_layout), on(be, l2))
    for g, w in zip(got, ref.dense_backward(dA, X, W, rH, seg, bwd, l2)):
        close(be, g, w, np.float64)


def test_units_outside_every_segment_stay_linear(be):
    rng = np.random.default_rng()
    X, W, b = random_layer(rng, 3, 4, 6, np.float64)
    seg = ((0, 2, "relu"),)
    close(be, be.dense_forward(on(be, X), on(be, W), on(be, b), seg)[0], ref.dense_forward(X, W, b, seg)[0],
          np.float64)


def test_loss_counts_ties_and_nan_as_numpy_argmax_does(be):
    out = np.array([[1.0, 3.0, 3.0, 0.0], [np.nan, 5.0, 1.0, 0.0], [0.0, np.nan, 9.0, 0.0]])
    labels = out.argmax(axis=1)                     # 1 (the first of a tie), 0 and 1 (the NaNs)
    for kind in ("mse", "softmax_ce"):
        _, correct, _ = be.loss(kind, on(be, out), on(be, labels, dtype=np.int64))
        assert int(correct) == 3


def test_nan_propagates_through_layers_and_losses(be):
    rng = np.random.default_rng()
    rows, inputs, units = 4, 6, 5
    X = rng.uniform(0.1, 1, (rows, inputs))               # no zeros: NaN * 0 is not at issue here
    W = rng.uniform(0.1, 1, (inputs, units))
    seg = segments_for(units)
    X[1, 2] = np.nan
    A, H = be.dense_forward(on(be, X), on(be, W), None, seg)
    rA, rH = ref.dense_forward(X, W, None, seg)
    np.testing.assert_array_equal(np.isnan(host(be, A)), np.isnan(rA))
    assert np.isnan(host(be, A)[1]).all() and not np.isnan(host(be, A)[[0, 2, 3]]).any()
    dA = rng.uniform(0.1, 1, (rows, units))
    dA[0, 3] = np.nan
    X[1, 2] = 0.5
    _, rH = ref.dense_forward(X, W, None, seg)
    for g, w in zip(be.dense_backward(on(be, dA), on(be, X), on(be, W), on(be, rH), seg),
                    ref.dense_backward(dA, X, W, rH, seg)):
        np.testing.assert_array_equal(np.isnan(host(be, g)), np.isnan(w))
        assert np.isnan(w).any()
    out = rng.standard_normal((3, 10))
    out[1, 2] = np.nan
    for kind in ("mse", "softmax_ce"):
        total, _, grad = be.loss(kind, on(be, out), on(be, np.array([0, 2, 1]), dtype=np.int64))
        assert np.isnan(float(total)) and np.isnan(host(be, grad)[1]).any()


@pairwise
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,eps", [("mse", 0.0), ("softmax_ce", 0.0), ("softmax_ce", 1e-7)])
@pytest.mark.parametrize("rows,classes", [(1, 10), (17, 10), (300, 3)])
def test_loss(be, dtype, kind, eps, rows, classes):
    rng = np.random.default_rng()
    out = (3 * rng.standard_normal((rows, 2 * classes)))[:, ::2].astype(dtype)      # strided rows
    out[0, 1] += 500 if dtype == np.float64 else 50        # a large logit: the softmax must not overflow
    labels = rng.integers(0, classes, rows)
    total, correct, grad = be.loss(kind, on(be, out, "strided"), on(be, labels, dtype=np.int64), eps)
    rtotal, rcorrect, rgrad = ref.loss(kind, out.astype(np.float64), labels, eps)
    assert int(correct) == int(rcorrect)
    assert abs(float(total) - rtotal) <= TOL[dtype] * max(abs(rtotal), 1.0)
    assert host(be, grad).dtype == dtype
    close(be, grad, rgrad, dtype)
    t2, c2, g2 = be.loss(kind, on(be, out), on(be, labels, dtype=np.int32), eps, need_grad=False)
    assert g2 is None and int(c2) == int(correct) and float(t2) == pytest.approx(float(total), rel=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_l2_penalty(be, dtype):
    W = np.random.default_rng().standard_normal((13, 11)).astype(dtype)
    seg = segments_for(11)
    factors = [1.19, 0.0, 2.5]
    got = be.l2_penalty(on(be, W), seg, factors)
    want = ref.l2_penalty(W.astype(np.float64), seg, factors)
    assert abs(float(got) - want) <= TOL[dtype] * want


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["sgd", "adam_like", "adam"])
def test_update_over_steps(be, dtype, kind):
    rng = np.random.default_rng()
    shapes = ((13, 7), (7,), (7, 3), (3,), (40, 30))
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
    state = [(rng.standard_normal(s).astype(dtype) * 0.1, rng.random(s).astype(dtype)) for s in shapes]
    want = [p.astype(np.float64) for p in params], [(v.astype(np.float64), s.astype(np.float64)) for v, s in state]
    mine = [on(be, p) for p in params]
    my_state = [(on(be, v), on(be, s)) for v, s in state] if kind != "sgd" else [(None, None)] * len(shapes)
    settings = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-7)
    for step in range(1, 4):
        ref.update(kind, want[0], [g.astype(np.float64) for g in grads], want[1], step=step, **settings)
        be.update(kind, mine, [on(be, g, "F") for g in grads], my_state, step=step, **settings)
    for p, w in zip(mine, want[0]):
        assert host(be, p).dtype == dtype
        close(be, p, w, dtype, 4 * TOL[dtype])
    if kind != "sgd":
        for (v, s), (rv, rs) in zip(my_state, want[1]):
            close(be, v, rv, dtype, 4 * TOL[dtype])
            close(be, s, rs, dtype, 4 * TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["unit", "element"])
def test_dropout_masks(be, dtype, kind):
    rows, units = 40, 50
    keep = np.r_[np.full(20, 0.3), np.full(units - 20, 0.9)]
    fwd, bwd = (host(be, m) for m in be.dropout_mask(np.random.RandomState(3), rows, keep, kind, dtype))
    shape = (1, units) if kind == "unit" else (rows, units)
    assert fwd.shape == bwd.shape == shape and fwd.dtype == bwd.dtype == dtype
    kept = fwd != 0
    np.testing.assert_allclose(fwd, (kept / keep).astype(dtype), rtol=1e-6)
    np.testing.assert_array_equal(bwd, fwd if kind == "unit" else kept.astype(dtype))
    again = host(be, be.dropout_mask(np.random.RandomState(3), rows, keep, kind, dtype)[0])
    np.testing.assert_array_equal(fwd, again)                           # reproducible from the seed
    if be.host_masks:
        for g, w in zip((fwd, bwd), ref.dropout_mask(np.random.RandomState(3), rows, keep, kind, dtype)):
            np.testing.assert_array_equal(g, w)
    if kind == "element":
        assert 0.2 < kept[:, :20].mean() < 0.4 and 0.8 < kept[:, 20:].mean() < 0.97


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_and_evaluate_in_chunks(be, dtype):
    rng = np.random.default_rng()
    sizes = (7, 9, 6, 4) if size_class(be) == "sim" else (30, 17, 9, 10)
    net, net0 = (small_net(b, dtype, sizes) for b in (be, ref))
    rows = 13 if size_class(be) == "sim" else 301
    X = rng.random((rows, sizes[0]))
    X[X < 0.6] = 0
    y = rng.integers(0, sizes[-1], rows)
    X0 = X.astype(dtype)
    out = be.forward(net, on(be, X0), chunk=5 if size_class(be) == "sim" else 100)
    close(be, out, ref.forward(net0, X0.astype(np.float64)), dtype)
    chunk = 5 if size_class(be) == "sim" else 100
    total, correct = be.evaluate(net, on(be, X0), on(be, y, dtype=np.int64), chunk=chunk)
    t0, c0 = ref.evaluate(net0, X0.astype(np.float64), y)
    assert int(correct) == int(c0) and abs(float(total) - t0) <= 10 * TOL[dtype] * abs(t0)


def small_net(be, dtype, sizes, *, loss="softmax_ce", optimizer="adam_like", keep=None, dropout="unit"):
    """A network with relu/tanh/identity branches, biases and L2, the same on every backend for one seed."""
    rng = np.random.RandomState(9)
    segs = [segments_for(n) for n in sizes[1:-1]] + [((0, sizes[-1], "identity"),)]
    W = [be.parameter(rng.standard_normal((a, b)) * np.sqrt(2 / a), dtype) for a, b in zip(sizes, sizes[1:])]
    b = [be.parameter(rng.standard_normal(n) * 0.1, dtype) for n in sizes[1:]]
    net = fastmnist.Net(W, b, segs, loss, 1e-7 if loss == "softmax_ce" else 0.0, optimizer, lr=0.01,
                        dropout=dropout, keep=[None if keep is None or li == len(W) - 1 else np.full(n, keep)
                                               for li, n in enumerate(sizes[1:])],
                        l2=[np.linspace(0.5, 2.0, n) for n in sizes[1:]])
    net.state = ([(be.parameter(np.zeros(p.shape), dtype), be.parameter(np.zeros(p.shape), dtype))
                  for p in net.params()] if optimizer != "sgd" else [(None, None)] * len(net.params()))
    return net


# -- training ------------------------------------------------------------------------------------------

def composed_epoch(be, net, X, y, batch, rng, order):
    """The reference's epoch loop driving `be`'s own operations (each checked above) one by one: what a
    fused epoch must equal when its dropout masks are the backend's own."""
    n = X.shape[0]
    batch = n if batch is None else batch
    total, correct = 0.0, 0
    for start in range(0, n - batch + 1, batch):
        rows = slice(start, start + batch) if order is None else be.asarray(order[start:start + batch])
        t, c = ReferenceBackend.train_step(be, net, X[rows], y[rows], rng)
        total, correct = total + float(t), correct + int(c)
    return total, correct


# Each preset's recipe and batching, shrunk for the simulator (and in rows everywhere) so that a run takes
# seconds: the same layers' kinds, losses, optimisers, dropout kinds and quirks, on fewer units and inputs.
SIM_SIZES = {"grokking-3layer": dict(hidden=6), "grokking-dropout": dict(hidden=6),
             "grokking-batch": dict(hidden=6, batch_size=4), "branchnet": dict(units_11=5, units_12=3, units_2=4),
             "fast": dict(hidden=7, batch_size=5)}
ROWS = {"cpu": {"grokking-3layer": 40, "grokking-dropout": 40, "grokking-batch": 200, "branchnet": 300, "fast": 300},
        "sim": {"grokking-3layer": 6, "grokking-dropout": 6, "grokking-batch": 9, "branchnet": 11, "fast": 13}}
ROWS["gpu"] = ROWS["cpu"]


@pytest.mark.pairwise(per=("backend_name",), strength=1)     # each preset and each dtype on every backend
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_short_training_run_of_every_preset(be, preset, dtype):
    """Two epochs of the preset's recipe from its own initialisation on sparse random images: the same
    parameters, losses and counts as the reference (for backends whose masks are the device's, as the
    reference's loop composing this backend's operations)."""
    small = size_class(be) == "sim"
    recipe = get_preset(preset).with_overrides(**(dict(SIM_SIZES[preset], inputs=12) if small else {}))
    rows = ROWS[size_class(be)][preset]
    rng = np.random.RandomState(11)
    X = rng.random_sample((rows, recipe.inputs))
    X[X < 0.8] = 0
    y = rng.randint(0, recipe.classes, rows)
    params = init_params(recipe, np.random.RandomState(recipe.seed))
    net = build_net(be, recipe, *params, np.dtype(dtype).name)
    X0 = X.astype(dtype)
    Xb, yb = on(be, X0), on(be, y, dtype=np.int64)
    oracle = ref if be.host_masks else be
    net0 = build_net(oracle, recipe, *params, np.dtype(dtype).name)
    Xo, yo = (X0, y) if be.host_masks else (Xb, yb)
    for epoch in range(2):
        net.lr = net0.lr = recipe.lr_at(epoch)
        order = np.random.RandomState(epoch).permutation(rows) if recipe.shuffle else None
        t, c = be.train_epoch(net, Xb, yb, recipe.batch_size, np.random.RandomState(epoch + 7), order)
        if be.host_masks:
            t0, c0 = ref.train_epoch(net0, Xo, yo, recipe.batch_size, np.random.RandomState(epoch + 7), order)
        else:
            t0, c0 = composed_epoch(be, net0, Xo, yo, recipe.batch_size, np.random.RandomState(epoch + 7), order)
        assert np.isfinite(float(t0)), "the reference diverged: the test's settings need a smaller step"
        assert int(c) == int(c0)
        assert abs(float(t) - float(t0)) <= 100 * TOL[dtype] * abs(float(t0))
    assert net.step == net0.step
    for p, p0 in zip(net.params(), net0.params()):
        close(be, p, host(oracle, p0), dtype, 1e-10 if dtype == np.float64 else 2e-4)
    path = be.epoch_path(net, rows, recipe.batch_size, recipe.shuffle)
    assert isinstance(path, str) and path


def test_a_single_train_step_on_a_batch(be):
    dtype = np.float64
    sizes = (7, 9, 6, 4) if size_class(be) == "sim" else (30, 17, 9, 10)
    net, net0 = small_net(be, dtype, sizes, keep=0.7), small_net(be if not be.host_masks else ref, dtype, sizes,
                                                                  keep=0.7)
    rng = np.random.default_rng()
    rows = 11 if size_class(be) == "sim" else 57
    X, y = rng.random((rows, sizes[0])), rng.integers(0, sizes[-1], rows)
    t, c = be.train_step(net, on(be, X), on(be, y, dtype=np.int64), np.random.RandomState(5))
    if be.host_masks:
        t0, c0 = ref.train_step(net0, X, y, np.random.RandomState(5))
    else:
        t0, c0 = ReferenceBackend.train_step(be, net0, on(be, X), on(be, y, dtype=np.int64), np.random.RandomState(5))
    assert int(c) == int(c0) and abs(float(t) - float(t0)) <= 1e-12 * abs(float(t0))
    for p, p0 in zip(net.params(), net0.params()):
        close(be, p, host(be if not be.host_masks else ref, p0), dtype, 1e-11)


# (dtype, settings) of fastmnist.train runs on the real MNIST files, compared report by report
REAL_RUNS = [("grokking-3layer", "float64", dict(iterations=3, eval_every=1)),
             ("grokking-dropout", "float64", dict(iterations=3, eval_every=1)),
             ("grokking-batch", "float64", dict(iterations=1)),
             ("branchnet", "float64", dict(iterations=3, eval_every=1, split="first-1000")),
             ("branchnet", "float32", dict(iterations=2)),
             ("fast", "float64", dict(iterations=1, target_accuracy=None))]


_NUMPY_RUNS = {}


def numpy_run(preset, dtype, settings):
    """The numpy backend's run of a REAL_RUNS entry, made once and shared by every backend compared with it."""
    key = (preset, dtype, repr(sorted(settings.items())))
    if key not in _NUMPY_RUNS:
        _NUMPY_RUNS[key] = fastmnist.train(preset, backend="numpy", dtype=dtype, progress=False, **settings)
    return _NUMPY_RUNS[key]


@pytest.mark.parametrize("preset,dtype,settings", REAL_RUNS, ids=[f"{p}-{d}" for p, d, _ in REAL_RUNS])
def test_train_on_real_data_matches_numpy(host_backend, preset, dtype, settings):
    """fastmnist.train end to end (data, initialisation, masks, evaluation) against the numpy backend (whose
    own run is compared with a second, fresh one)."""
    runs = [numpy_run(preset, dtype, settings),
            fastmnist.train(preset, backend=host_backend, dtype=dtype, progress=False, **settings)]
    rel = 1e-10 if dtype == "float64" else 1e-4
    assert len(runs[0].history) == len(runs[1].history)
    for a, b in zip(runs[0].history, runs[1].history):
        for key, value in a.items():
            if key.endswith("_acc"):
                assert b[key] == pytest.approx(value, abs=2.5e-4 if dtype == "float32" else 0), key
            elif key.endswith(("_err", "loss")):
                assert b[key] == pytest.approx(value, rel=rel), key
    for w, v in zip(runs[1].model.weights, runs[0].model.weights):
        assert rel_err(w, v) < rel
    assert runs[1].path == planned_path(fastmnist.get_backend(host_backend), runs[1].recipe, dtype)
