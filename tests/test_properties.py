"""Property-based checks: hypothesis picks the shapes, branch splits, layouts and masks."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmnist.kernels.cpu.backend import NumbaCpuBackend
from fastmnist.kernels.reference import ReferenceBackend
from fastmnist.model import as_inputs
from tolerances import rel_err

ref, be = ReferenceBackend(), NumbaCpuBackend()
ACTIVATIONS = ("relu", "tanh", "identity")


@st.composite
def layers(draw):
    rows, inputs, units = draw(st.integers(1, 40)), draw(st.integers(1, 70)), draw(st.integers(1, 45))
    cuts = sorted(draw(st.lists(st.integers(1, units - 1), max_size=3, unique=True))) if units > 1 else []
    bounds = [0, *cuts, units]
    segments = tuple((a, b, draw(st.sampled_from(ACTIVATIONS))) for a, b in zip(bounds, bounds[1:]))
    return rows, inputs, units, segments, draw(st.sampled_from(["C", "F", "strided"])), \
        draw(st.sampled_from([None, "unit", "element"])), draw(st.integers(0, 2**32 - 1))


def arrange(a, order):
    if order == "F":
        return np.asfortranarray(a)
    if order == "strided":
        return np.repeat(a, 2, axis=1)[:, ::2]
    return a


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers())
def test_numba_cpu_dense_layer_matches_reference_in_float64(case):
    rows, inputs, units, segments, order, mask_kind, seed = case
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, inputs)) * (rng.random((rows, inputs)) < 0.3)
    W, b = rng.standard_normal((inputs, units)) / np.sqrt(inputs), rng.standard_normal(units)
    mask = {None: None, "unit": (rng.random((1, units)) < 0.8) / 0.8,
            "element": (rng.random((rows, units)) < 0.5) * 2.0}[mask_kind]
    A, H = be.dense_forward(arrange(X, order), arrange(W, order), b, segments, mask)
    rA, rH = ref.dense_forward(X, W, b, segments, mask)
    assert rel_err(A, rA) < 1e-12 and rel_err(H, rH) < 1e-12
    dA = rng.standard_normal((rows, units))
    l2 = rng.random(units)
    got = be.dense_backward(arrange(dA, order), arrange(X, order), W, H, segments, mask, l2)
    want = ref.dense_backward(dA, X, W, rH, segments, mask, l2)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-12


@given(st.integers(1, 5), st.sampled_from([(784,), (28, 28)]), st.integers(0, 255))
def test_model_inputs_scale_uint8_to_the_unit_interval(n, shape, value):
    images = np.full((n, *shape), value, np.uint8)
    out = as_inputs(images, np.float64)
    assert out.shape == (n, 784) and np.all(out == value / 255)
