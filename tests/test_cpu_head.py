"""head.head_step (the fused layers after the first) against the reference backend's composed operations."""

import numpy as np
import pytest

from fastmnist.kernels import codes
from fastmnist.kernels.cpu import head
from fastmnist.kernels.cpu.activation import layer_codes
from fastmnist.kernels.reference import ReferenceBackend
from tolerances import TOL, rel_err

ref = ReferenceBackend()
HIDDEN = ((0, 7, "relu"), (7, 12, "tanh"), (12, 13, "identity"))


def composed(A1, W2, b2, scale2, W3, b3, labels, loss):
    """The reference backend's operations, float64: dense forward twice, loss, dense backward twice."""
    def f(a):
        return None if a is None else a.astype(np.float64)

    mask = scale2.astype(np.float64).reshape(1, -1)
    A2, H2 = ref.dense_forward(f(A1), f(W2), f(b2), HIDDEN, mask)
    out, _ = ref.dense_forward(A2, f(W3), f(b3), ((0, W3.shape[1], "identity"),))
    total, correct, dout = ref.loss(loss, out, labels, 1e-7)
    dA2, dW3, db3 = ref.dense_backward(dout, A2, f(W3), out, ((0, W3.shape[1], "identity"),))
    dA1, dW2, db2 = ref.dense_backward(dA2, f(A1), f(W2), H2, HIDDEN, mask)
    return total, correct, dA1, dW2, db2, dW3, db3


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows", [1, 3, 130])
@pytest.mark.parametrize("loss_kind", ["softmax_ce", "mse"])
@pytest.mark.parametrize("bias", [True, False])
def test_head_step_matches_the_composed_operations(dtype, rows, loss_kind, bias):
    rng = np.random.default_rng()
    k1, m2, classes = 21, 13, 10                   # none a multiple of a vector
    A1 = np.maximum(rng.standard_normal((rows, k1)), 0).astype(dtype)
    W2 = (0.5 * rng.standard_normal((k1, m2))).astype(dtype)
    W3 = (0.5 * rng.standard_normal((m2, classes))).astype(dtype)
    b2 = rng.standard_normal(m2).astype(dtype) if bias else None
    b3 = rng.standard_normal(classes).astype(dtype) if bias else None
    scale2 = np.where(rng.random(m2) < 0.8, 1 / 0.8, 0).astype(dtype)
    labels = rng.integers(0, classes, rows)
    want = composed(A1, W2, b2, scale2, W3, b3, labels, loss_kind)

    empty = np.zeros(0, dtype)
    dA1, dW2, db2 = np.empty_like(A1), np.empty_like(W2), np.empty(m2, dtype)
    dW3, db3 = np.empty_like(W3), np.empty(classes, dtype)
    total, correct = head.head_step(
        A1, W2, empty if b2 is None else b2, layer_codes(HIDDEN, m2), scale2, W3, empty if b3 is None else b3,
        layer_codes(((0, classes, "identity"),), classes), labels, codes.LOSS_CODES[loss_kind], dtype(1e-7), 2,
        dA1, dW2, db2, dW3, db3)
    assert correct == want[1]
    assert abs(total - want[0]) <= TOL[dtype] * abs(want[0]) * 10
    for got, exp, name in zip((dA1, dW2, db2, dW3, db3), want[2:], ("dA1", "dW2", "db2", "dW3", "db3")):
        assert rel_err(got, exp) < TOL[dtype], name


def test_head_step_lets_nan_through():
    A1 = np.ones((4, 8))
    A1[2, 3] = np.nan
    W2, W3 = np.ones((8, 8)), np.ones((8, 10))
    out = [np.empty_like(A1), np.empty_like(W2), np.empty(8), np.empty_like(W3), np.empty(10)]
    total, _ = head.head_step(A1, W2, np.zeros(0), layer_codes(((0, 8, "relu"),), 8), np.ones(8), W3,
                                  np.zeros(0), layer_codes(((0, 10, "identity"),), 10), np.zeros(4, np.int64),
                                  codes.SOFTMAX_CE, 1e-7, 2, *out)
    assert np.isnan(total) and np.isnan(out[1]).any()
