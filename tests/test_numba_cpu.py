"""numba-cpu's operations against the reference backend on fresh random inputs and awkward shapes and layouts."""

import numpy as np
import pytest

from fastmnist.kernels.numba_cpu import NumbaCpuBackend
from fastmnist.kernels.reference import ReferenceBackend

ref = ReferenceBackend()
be = NumbaCpuBackend()
TOL = {np.float64: 1e-12, np.float32: 1e-5}
DTYPES = (np.float64, np.float32)
LAYOUTS = ("C", "F", "strided")
SHAPES = ((1, 1, 1), (1, 784, 40), (7, 13, 5), (33, 17, 19))   # rows, inputs, units


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def close(a, b, dtype):
    err = rel_err(a, b)
    assert err < TOL[dtype], err          # a NaN error fails too


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


def segments_for(units):
    """relu, tanh and identity branches (some empty for tiny layers), covering all units."""
    a, b = units // 2, (3 * units) // 4
    return ((0, a, "relu"), (a, b, "tanh"), (b, units, "identity"))


def random_layer(rng, rows, inputs, units, dtype):
    X = rng.standard_normal((rows, inputs)).astype(dtype)
    X[rng.random((rows, inputs)) < 0.5] = 0                  # some exact zeros, as in images
    W = (rng.standard_normal((inputs, units)) / np.sqrt(inputs)).astype(dtype)
    b = rng.standard_normal(units).astype(dtype)
    return X, W, b


def masks(rng, rows, units, dtype):
    unit = ((rng.random((1, units)) < 0.7) / 0.7).astype(dtype)
    element = (rng.random((rows, units)) < 0.5).astype(dtype) * 2
    return {"none": None, "unit": unit, "element": element}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask_kind", ["none", "unit", "element"])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_forward_matches_reference(dtype, shape, mask_kind, bias):
    rng = np.random.default_rng()
    X, W, b = random_layer(rng, *shape, dtype)
    mask = masks(rng, shape[0], shape[2], dtype)[mask_kind]
    seg = segments_for(shape[2])
    A, H = be.dense_forward(X, W, b if bias else None, seg, mask)
    rA, rH = ref.dense_forward(X, W, b if bias else None, seg, mask)
    assert A.dtype == dtype and H.dtype == dtype and A.shape == rA.shape
    close(H, rH, dtype)
    close(A, rA, dtype)
    assert (A is H) == (mask is None)


@pytest.mark.parametrize("x_layout", LAYOUTS)
@pytest.mark.parametrize("w_layout", LAYOUTS)
def test_dense_forward_reads_any_layout(x_layout, w_layout):
    rng = np.random.default_rng()
    X, W, b = random_layer(rng, 9, 11, 6, np.float64)
    mask = masks(rng, 9, 6, np.float64)["element"]
    seg = segments_for(6)
    A, _ = be.dense_forward(layout(X, x_layout), layout(W, w_layout), b[::-1], seg, layout(mask, x_layout))
    rA, _ = ref.dense_forward(X, W, b[::-1].copy(), seg, mask)
    close(A, rA, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask_kind", ["none", "unit", "element"])
@pytest.mark.parametrize("with_l2", [True, False])
def test_dense_backward_matches_reference(dtype, shape, mask_kind, with_l2):
    rng = np.random.default_rng()
    X, W, b = random_layer(rng, *shape, dtype)
    mask = masks(rng, shape[0], shape[2], dtype)[mask_kind]
    seg = segments_for(shape[2])
    _, H = ref.dense_forward(X, W, b, seg)
    dA = rng.standard_normal(H.shape).astype(dtype)
    l2 = rng.random(shape[2]).astype(dtype) if with_l2 else None
    got = be.dense_backward(dA, X, W, H, seg, mask, l2)
    want = ref.dense_backward(dA, X, W, H, seg, mask, l2)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        close(g, w, dtype)


@pytest.mark.parametrize("kind", LAYOUTS)
def test_dense_backward_reads_any_layout_and_can_skip_dx(kind):
    rng = np.random.default_rng()
    X, W, b = random_layer(rng, 8, 10, 7, np.float64)
    seg = segments_for(7)
    _, H = ref.dense_forward(X, W, b, seg)
    dA = rng.standard_normal(H.shape)
    dX, dW, db = be.dense_backward(layout(dA, kind), layout(X, kind), layout(W, kind), layout(H, kind), seg,
                                   need_dx=False)
    _, rdW, rdb = ref.dense_backward(dA, X, W, H, seg)
    assert dX is None
    close(dW, rdW, np.float64)
    close(db, rdb, np.float64)


def test_relu_keeps_nan_and_its_derivative_matches_the_reference():
    X = np.array([[np.nan], [-1.0], [2.0]])
    W = np.ones((1, 1))
    A, H = be.dense_forward(X, W, None, ((0, 1, "relu"),))
    assert np.isnan(A[0, 0]) and A[1, 0] == 0 and A[2, 0] == 2
    dA = np.ones((3, 1))
    for got, want in zip(be.dense_backward(dA, X, W, H, ((0, 1, "relu"),)),
                         ref.dense_backward(dA, X, W, H, ((0, 1, "relu"),))):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["mse", "softmax_ce"])
@pytest.mark.parametrize("rows,classes", [(1, 10), (17, 10), (300, 3), (5000, 10)])
def test_loss_matches_reference(dtype, kind, rows, classes):
    rng = np.random.default_rng()
    out = (3 * rng.standard_normal((rows, classes))).astype(dtype)
    labels = rng.integers(0, classes, rows)
    eps = 1e-7
    total, correct, grad = be.loss(kind, out, labels, eps)
    rtotal, rcorrect, rgrad = ref.loss(kind, out, labels, eps)
    assert correct == rcorrect
    assert abs(total - rtotal) <= TOL[dtype] * abs(rtotal)
    assert grad.dtype == dtype
    close(grad, rgrad, dtype)
    t2, c2, g2 = be.loss(kind, layout(out, "strided"), labels.astype(np.int32), eps, need_grad=False)
    assert g2 is None and c2 == correct and t2 == pytest.approx(total, rel=TOL[dtype])


def test_loss_counts_ties_and_nan_as_numpy_argmax_does():
    out = np.array([[1.0, 3.0, 3.0, 0.0], [np.nan, 5.0, 1.0, 0.0], [0.0, np.nan, 9.0, 0.0]])
    labels = out.argmax(axis=1)
    _, correct, grad = be.loss("mse", out, labels)
    assert correct == 3 and np.isnan(grad).any()


def test_softmax_ce_is_stable_for_large_logits():
    out = np.array([[1000.0, 0, -1000] + [0] * 7], dtype=np.float32)
    total, correct, grad = be.loss("softmax_ce", out, np.array([0]))
    assert np.isfinite(total) and total < 1e-6 and correct == 1 and np.all(np.isfinite(grad))


def random_params(rng, dtype):
    shapes = ((13, 7), (7,), (7, 3), (3,), (200, 300))
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
    return params, grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["sgd", "adam_like", "adam"])
def test_update_matches_reference_over_steps(dtype, kind):
    rng = np.random.default_rng()
    params, grads = random_params(rng, dtype)
    mine = [p.copy() for p in params]
    state = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    my_state = [(v.copy(), s.copy()) for v, s in state]
    settings = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-7)
    for step in range(1, 4):
        ref.update(kind, params, grads, state, step=step, **settings)
        be.update(kind, mine, [layout(g, "F") if g.ndim == 2 else g for g in grads], my_state, step=step,
                  **settings)
    for p, q in zip(mine, params):
        assert p.dtype == dtype
        close(p, q, dtype)
    for (v, s), (rv, rs) in zip(my_state, state):
        if kind != "sgd":
            close(v, rv, dtype)
            close(s, rs, dtype)


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


def test_dropout_masks_are_those_of_the_reference():
    keep = np.array([0.5] * 6)
    for kind in ("element", "unit"):
        got = be.dropout_mask(np.random.RandomState(3), 4, keep, kind, np.float32)
        want = ref.dropout_mask(np.random.RandomState(3), 4, keep, kind, np.float32)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


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


def test_units_outside_every_segment_stay_linear():
    rng = np.random.default_rng()
    X, W, b = random_layer(rng, 3, 4, 6, np.float64)
    seg = ((0, 2, "relu"),)
    close(be.dense_forward(X, W, b, seg)[0], ref.dense_forward(X, W, b, seg)[0], np.float64)


def test_float32_tanh_is_within_five_ulps_over_the_whole_range():
    from numba import njit

    from fastmnist.kernels.cpu_activation import tanh_float32

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
