"""The reference backend checked against first principles: finite differences and plain formulas."""

import numpy as np
import pytest

from fastmnist.kernels.reference import ReferenceBackend
from tolerances import rel_err

be = ReferenceBackend()
SEGMENTS = ((0, 3, "relu"), (3, 5, "tanh"), (5, 7, "identity"))


def numeric_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        up = f()
        x[i] = old - h
        down = f()
        x[i] = old
        g[i] = (up - down) / (2 * h)
    return g


@pytest.fixture
def layer():
    rng = np.random.default_rng()
    X = rng.standard_normal((5, 4))
    W = rng.standard_normal((4, 7))
    b = rng.standard_normal(7)
    return X, W, b


@pytest.mark.parametrize("dtype", ["float32", np.float64])
def test_to_float(dtype):
    images = np.array([[0, 1, 128, 255]], np.uint8)
    out = be.to_float(images, dtype)
    assert out.dtype == np.dtype(dtype) and out.flags.writeable
    assert np.array_equal(out, images.astype(dtype) / np.dtype(dtype).type(255))
    assert out[0, 0] == 0 and out[0, -1] == 1


@pytest.mark.parametrize("dtype", ["float16", "int32", None, "nonsense"])
def test_to_float_rejects_other_dtypes(dtype):
    with pytest.raises(ValueError, match=repr(dtype)):
        be.to_float(np.zeros((1, 784), np.uint8), dtype)


def test_forward_matches_formula(layer):
    X, W, b = layer
    A, H = be.dense_forward(X, W, b, SEGMENTS)
    Z = X @ W + b
    expected = np.concatenate([np.maximum(Z[:, :3], 0), np.tanh(Z[:, 3:5]), Z[:, 5:]], axis=1)
    assert rel_err(A, expected) < 1e-14 and A is H


def test_forward_applies_mask_after_activation(layer):
    X, W, b = layer
    mask = np.array([[2.0, 0, 2, 2, 0, 2, 2]])
    A, H = be.dense_forward(X, W, b, SEGMENTS, mask)
    assert rel_err(A, H * mask) < 1e-15 and np.all(A[:, [1, 4]] == 0)


@pytest.mark.parametrize("kind", ["mse", "softmax_ce"])
def test_loss_gradient_is_the_derivative_of_the_mean_loss(kind):
    rng = np.random.default_rng()
    out = rng.standard_normal((6, 10))
    labels = rng.integers(0, 10, 6)
    _, _, grad = be.loss(kind, out, labels)
    scale = 0.5 if kind == "mse" else 1.0   # seed 000's gradient is that of half the squared error
    numeric = numeric_grad(lambda: scale * float(be.loss(kind, out, labels, need_grad=False)[0]) / 6, out)
    assert rel_err(grad, numeric) < 1e-7


def test_softmax_ce_is_stable_for_large_logits():
    out = np.array([[1000.0, 0, -1000] + [0] * 7])
    total, correct, grad = be.loss("softmax_ce", out, np.array([0]))
    assert np.isfinite(total) and total < 1e-12 and correct == 1 and np.all(np.isfinite(grad))


def test_backward_matches_finite_differences(layer):
    X, W, b = layer
    rng = np.random.default_rng()
    mask = (rng.random((1, 7)) < 0.7) / 0.7
    target = rng.standard_normal((5, 7))
    l2 = rng.random(7)

    def objective():
        A, _ = be.dense_forward(X, W, b, SEGMENTS, mask)
        return float((A * target).sum()) + float((l2 * W * W).sum()) / 2

    _, H = be.dense_forward(X, W, b, SEGMENTS, mask)
    dX, dW, db = be.dense_backward(target, X, W, H, SEGMENTS, mask, l2)
    assert rel_err(dW, numeric_grad(objective, W)) < 1e-6
    assert rel_err(db, numeric_grad(objective, b)) < 1e-6
    assert rel_err(dX, numeric_grad(objective, X)) < 1e-6


def test_l2_penalty_is_the_seeds_mean_square_term():
    W = np.random.default_rng().standard_normal((4, 7))
    got = be.l2_penalty(W, SEGMENTS, [1.2, 0.0, 2.0])
    assert got == pytest.approx(1.2 * np.mean(W[:, :3] ** 2) / 2 + 2.0 * np.mean(W[:, 5:] ** 2) / 2, rel=1e-14)


def test_unit_dropout_masks_one_value_per_unit_scaled_both_ways():
    fwd, bwd = be.dropout_mask(np.random.RandomState(0), 9, np.full(50, 0.8), "unit", np.float64)
    assert fwd.shape == (1, 50) and fwd is bwd
    assert set(np.unique(fwd)) <= {0.0, 1 / 0.8}


def test_element_dropout_replays_the_seeds_randint_draws():
    fwd, bwd = be.dropout_mask(np.random.RandomState(3), 4, np.full(6, 0.5), "element", np.float64)
    expected = np.random.RandomState(3).randint(2, size=(4, 6))
    assert np.array_equal(bwd, expected) and np.array_equal(fwd, 2 * expected)


@pytest.mark.parametrize("kind", ["sgd", "adam_like", "adam"])
def test_update_formulas(kind):
    rng = np.random.default_rng()
    p, g = rng.standard_normal(5), rng.standard_normal(5)
    v, s = rng.random(5), rng.random(5)
    start, v0, s0 = p.copy(), v.copy(), s.copy()
    be.update(kind, [p], [g], [(v, s)], lr=0.01, beta1=0.9, beta2=0.999, eps=1e-7, step=3)
    if kind == "sgd":
        expected = start - 0.01 * g
    else:
        v1, s1 = 0.9 * v0 + 0.1 * g, 0.999 * s0 + 0.001 * g * g
        if kind == "adam":
            v1, s1 = v1 / (1 - 0.9 ** 3), s1 / (1 - 0.999 ** 3)
        expected = start - 0.01 * v1 / (np.sqrt(s1) + 1e-7)
    assert rel_err(p, expected) < 1e-14
