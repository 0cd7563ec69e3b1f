"""What numba-cpu does beyond the backend contract (tests/test_conformance.py checks the contract): writing
updates back into non-contiguous arrays, per-sample masks, refusing wrong shapes, its float32 tanh, aligned
parameters, and the seed's printed numbers from its batch-1 epoch."""

import numpy as np
import pytest

from fastmnist.kernels.cpu.backend import NumbaCpuBackend
from fastmnist.kernels.reference import ReferenceBackend
from tolerances import TOL, rel_err

ref = ReferenceBackend()
be = NumbaCpuBackend()
def close(a, b, dtype):
    err = rel_err(a, b)
    assert err < TOL[dtype], err          # a NaN error (and a wrong shape's inf) fails too


def layout(a, kind):
    """The same values as a C, Fortran or strided (non-contiguous) array."""
    if kind == "F":
        return np.asfortranarray(a)
    if kind == "strided":
        big = np.zeros((2 * a.shape[0], a.shape[1] + 3), a.dtype)
        big[::2, 2:2 + a.shape[1]] = a
        view = big[::2, 2:2 + a.shape[1]]
        assert min(a.shape) == 1 or not (view.flags.c_contiguous or view.flags.f_contiguous)
        return view
    return np.ascontiguousarray(a)


def random_params(rng, dtype):
    shapes = ((13, 7), (7,), (7, 3), (3,), (200, 300))
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
    return params, grads


def test_update_writes_back_into_non_contiguous_parameters():
    rng = np.random.default_rng()
    params, grads = random_params(rng, np.float64)
    mine = [layout(p, "F") if p.ndim == 2 else p.copy() for p in params]
    state = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    my_state = [(layout(v, "strided") if v.ndim == 2 else v.copy(), s.copy()) for v, s in state]
    ref.update("adam", params, grads, state, lr=0.01, step=1)
    be.update("adam", mine, grads, my_state, lr=0.01, step=1)
    for p, q in zip(mine, params):
        close(p, q, np.float64)
    for (v, _), (rv, _) in zip(my_state, state):
        close(v, rv, np.float64)


@pytest.mark.parametrize("kind", ["element", "unit"])
@pytest.mark.parametrize("keep", [0.5, 0.8])
def test_per_sample_masks_are_the_numbers_of_one_draw_per_sample(kind, keep):
    n, units = 37, 13
    keep_probs = np.full(units, keep)
    one_by_one = [ref.dropout_mask(np.random.RandomState(5), 1, keep_probs, kind, np.float64)]
    rng = np.random.RandomState(5)
    rows = [ref.dropout_mask(rng, 1, keep_probs, kind, np.float64) for _ in range(n)]
    fwd, bwd = be.per_sample_masks(np.random.RandomState(5), n, keep_probs, kind, np.float64)
    np.testing.assert_array_equal(fwd, np.concatenate([f for f, _ in rows]))
    np.testing.assert_array_equal(bwd, np.concatenate([b for _, b in rows]))
    np.testing.assert_array_equal(fwd[:1], one_by_one[0][0])
    assert 0 < np.count_nonzero(fwd) < fwd.size


def test_wrong_shapes_and_types_are_rejected_not_misread():
    X, W = np.ones((4, 5)), np.ones((5, 3))
    seg = ((0, 3, "relu"),)
    with pytest.raises(ValueError):
        be.dense_forward(X, np.ones((4, 3)), None, seg)
    with pytest.raises(ValueError):
        be.dense_forward(X, W, np.ones(4), seg)
    with pytest.raises(ValueError):
        be.dense_forward(X, W, None, seg, np.ones((2, 3)))
    with pytest.raises(ValueError):
        be.dense_forward(X, W, None, ((0, 4, "relu"),))
    with pytest.raises(ValueError):
        be.dense_forward(X[0], W, None, seg)
    with pytest.raises(TypeError):
        be.dense_forward(X.astype(int), W.astype(int), None, seg)
    with pytest.raises(ValueError):
        be.dense_backward(np.ones((4, 2)), X, W, np.ones((4, 3)), seg)
    with pytest.raises(ValueError):
        be.loss("mse", np.ones((4, 3)), np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError):
        be.loss("mse", np.ones((4, 3)), np.array([0, 1]))
    with pytest.raises(TypeError):
        be.loss("mse", np.ones((4, 3)), np.ones(4))
    with pytest.raises(ValueError):
        be.loss("hinge", np.ones((4, 3)), np.zeros(4, int))
    with pytest.raises(ValueError):
        be.update("sgd", [np.ones(3)], [np.ones(4)], [(None, None)], lr=0.1)
    with pytest.raises(ValueError):
        be.update("rmsprop", [np.ones(3)], [np.ones(3)], [(None, None)], lr=0.1)


def test_float32_tanh_is_within_five_ulps_over_the_whole_range():
    from numba import njit

    from fastmnist.kernels.cpu.activation import tanh_float32

    @njit
    def apply(x, out):
        for i in range(x.size):
            out[i] = tanh_float32(x[i])

    big = np.logspace(-45, 38, 100_000)
    x = np.concatenate([np.linspace(-20, 20, 1_000_001), big, -big, [np.inf, -np.inf, 0.0, -0.0,
                        np.finfo(np.float32).max, -np.finfo(np.float32).max]]).astype(np.float32)
    out = np.empty_like(x)
    apply(x, out)
    exact = np.tanh(x.astype(np.float64))
    ulps = np.abs(out - exact) / np.spacing(np.abs(exact).astype(np.float32))
    assert ulps.max() <= 5 and np.all(np.abs(out) <= 1)
    nan = np.array([np.nan], np.float32)
    apply(nan, out[:1])
    assert np.isnan(out[0])


def test_float64_tanh_is_within_two_ulps_over_the_whole_range():
    from numba import njit

    from fastmnist.kernels.cpu.activation import tanh_float64

    @njit
    def apply(x, out):
        for i in range(x.size):
            out[i] = tanh_float64(x[i])

    rng = np.random.default_rng()
    big = np.logspace(-323, 308, 200_000)
    x = np.concatenate([np.linspace(-25, 25, 1_000_001), rng.uniform(-1, 1, 500_000), rng.uniform(0.6, 0.65, 100_000),
                        rng.standard_normal(500_000) * 3, big, -big,
                        [np.inf, -np.inf, 0.0, -0.0, 5e-324, -5e-324, np.finfo(np.float64).max, 0.625, -0.625]])
    out = np.empty_like(x)
    apply(x, out)
    # the exact value from the 80-bit long double where there is one (x86), else numpy's float64 tanh
    extended = np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant
    exact = np.tanh(x.astype(np.longdouble)) if extended else np.tanh(x)
    ulp = np.spacing(np.abs(exact).astype(np.float64)).astype(np.longdouble)
    ulps = (np.abs(out.astype(np.longdouble) - exact) / ulp).astype(np.float64)
    assert ulps.max() <= (2 if extended else 3), f"{ulps.max()} ulps at x = {x[ulps.argmax()]!r}"
    assert np.all(np.abs(out) <= 1) and np.array_equal(np.signbit(out), np.signbit(x))
    nan = np.array([np.nan, -np.nan])
    apply(nan, out[:2])
    assert np.all(np.isnan(out[:2]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_parameters_are_fresh_copies_starting_on_a_cache_line(dtype):
    rng = np.random.default_rng()
    source = rng.standard_normal((31, 17))[:, ::2]          # strided, float64
    p = NumbaCpuBackend().parameter(source, dtype)
    assert p.dtype == dtype and p.flags.c_contiguous and p.flags.writeable and p.ctypes.data % 64 == 0
    np.testing.assert_array_equal(p, source.astype(dtype))
    p[0, 0] = 123
    assert source[0, 0] != 123
    q = ReferenceBackend(np).parameter(source, dtype)
    np.testing.assert_array_equal(q, source.astype(dtype))
    assert q.flags.c_contiguous and not np.shares_memory(q, source)


def printed(row, *keys):
    """The values as seed 000 prints them: str(value)[0:5]."""
    return tuple(str(row[k])[0:5] for k in keys)


def test_grokking_3layer_reproduces_the_seed_numbers():
    import fastmnist

    result = fastmnist.train("grokking-3layer", backend="numba-cpu", dtype="float64", progress=False)
    first, last = result.history[0], result.history[-1]
    assert printed(first, "train_err", "train_acc", "test_err", "test_acc") == ("0.729", "0.527", "0.593", "0.649")
    assert first["test_acc"] == 0.6493
    assert last["iteration"] == 349
    assert printed(last, "train_acc", "test_acc") == ("0.999", "0.829")
    assert result.path == "batch-1 epoch"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1, 784, 40), (9, 31, 17), (40, 100, 10)])
def test_small_and_blas_dense_paths_agree_with_the_reference(monkeypatch, dtype, shape):
    """A layer takes the fused loops (dense.forward_small / backward_small) where dense.takes_small_path says
    so and BLAS elsewhere: the same layer down either path matches the reference."""
    from fastmnist.kernels.cpu import dense

    rows, k, n = shape
    rng = np.random.default_rng()
    X = rng.standard_normal((rows, k))
    X[rng.random((rows, k)) < 0.6] = 0
    W, b = rng.standard_normal((k, n)) / np.sqrt(k), rng.standard_normal(n)
    seg = ((0, n // 2, "relu"), (n // 2, n, "tanh"))
    mask = (rng.random((rows, n)) < 0.7) / 0.7
    dA, l2 = rng.standard_normal((rows, n)), rng.random(n)
    _, rH = ref.dense_forward(X, W, b, seg, mask)
    want_fwd = ref.dense_forward(X, W, b, seg, mask)
    want_bwd = ref.dense_backward(dA, X, W, rH, seg, mask, l2)
    for small in (False, True):
        monkeypatch.setattr(dense, "takes_small_path", lambda *shape, small=small: small)
        c = lambda a: a.astype(dtype)       # noqa: E731
        for got, want in zip(be.dense_forward(c(X), c(W), c(b), seg, c(mask)), want_fwd):
            close(got, want, dtype)
        got = be.dense_backward(c(dA), c(X), c(W), c(rH), seg, c(mask), c(l2))
        for g, w in zip(got, want_bwd):
            close(g, w, dtype)
        assert be.dense_backward(c(dA), c(X), c(W), c(rH), seg, c(mask), need_dx=False)[0] is None
