"""Compiled optimiser updates over all parameters in one call, in place.

Each argument is a tuple of flat (1-D, C-contiguous) arrays of one dtype; scalars have that dtype, so the
arithmetic rounds as the reference backend's does (numpy treats Python floats as weak scalars).
adam_like is adam with c1 = c2 = 1 (no bias correction).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .threads import chunk_bounds, chunks_for


# numpy's error model: no zero-division check per element, so the loops vectorise (the results are the same).
# The loops index views from 0: an index that starts at a run-time `start` could be negative, and the
# wraparound check that Numba then adds per element stops LLVM from vectorising.
@njit(cache=True, error_model="numpy")
def sgd_range(p, g, lr, start, stop):
    pv, gv = p[start:stop], g[start:stop]
    for i in range(pv.shape[0]):
        pv[i] -= lr * gv[i]


@njit(inline="always")
def _adam_factors(p, lr, c1, c2):
    """(lr / c1, 1 / sqrt(c2)), so that the update is (lr / c1) v / (sqrt(s) / sqrt(c2) + eps): one division and
    one square root per element, not three divisions (the divider bounds these loops); exactly the reference's
    arithmetic when c1 = c2 = 1 (adam_like). In p's dtype: a Python 1 would make 1 / sqrt(c2) a float64 and a
    float32 loop mixed-precision."""
    return lr / c1, p.dtype.type(1) / np.sqrt(c2)


@njit(inline="always")
def _adam_element(g, v, s, step, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, inv_root_c2):
    """(new v, new s, the amount to subtract from p) for one element."""
    v = v * beta1 + one_minus_beta1 * g
    s = s * beta2 + one_minus_beta2 * (g * g)
    return v, s, step * v / (np.sqrt(s) * inv_root_c2 + eps)


@njit(cache=True, error_model="numpy")
def adam_range(p, g, v, s, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2, start, stop):
    step, inv_root_c2 = _adam_factors(p, lr, c1, c2)
    pv, gv, vv, sv = p[start:stop], g[start:stop], v[start:stop], s[start:stop]
    for i in range(pv.shape[0]):
        vv[i], sv[i], d = _adam_element(gv[i], vv[i], sv[i], step, beta1, one_minus_beta1, beta2, one_minus_beta2,
                                        eps, inv_root_c2)
        pv[i] -= d


# Row forms for kernels that update one row's columns start:stop of a 2-D parameter from row `grow` of a 2-D
# gradient: no views are made (each view of a shared array costs an atomic reference-count update, which two
# threads updating the same arrays would contend for), and the unsigned column index needs no wraparound
# check, so the loops still vectorise.
@njit(cache=True, error_model="numpy")
def sgd_row(P, row, G, grow, lr, start, stop):
    for j in range(np.uint64(start), np.uint64(stop)):
        P[row, j] -= lr * G[grow, j]


@njit(cache=True, error_model="numpy")
def adam_row(P, row, G, grow, V, S, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2, start, stop):
    step, inv_root_c2 = _adam_factors(P, lr, c1, c2)
    for j in range(np.uint64(start), np.uint64(stop)):
        V[row, j], S[row, j], d = _adam_element(G[grow, j], V[row, j], S[row, j], step, beta1, one_minus_beta1, beta2,
                                                one_minus_beta2, eps, inv_root_c2)
        P[row, j] -= d


@njit(cache=True, parallel=True)
def _sgd_all(params, grads, lr, chunks):
    for t in range(len(params)):
        p, g = params[t], grads[t]
        if chunks == 1:
            sgd_range(p, g, lr, 0, p.size)
        else:
            for c in prange(chunks):
                start, stop = chunk_bounds(c, p.size, chunks)
                sgd_range(p, g, lr, start, stop)


@njit(cache=True, parallel=True)
def _adam_all(params, grads, vs, ss, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2, chunks):
    for t in range(len(params)):
        p, g, v, s = params[t], grads[t], vs[t], ss[t]
        if chunks == 1:
            adam_range(p, g, v, s, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2, 0, p.size)
        else:
            for c in prange(chunks):
                start, stop = chunk_bounds(c, p.size, chunks)
                adam_range(p, g, v, s, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2,
                            start, stop)


def _chunks(params):
    size = sum(p.size for p in params)
    return chunks_for(size, size)


def sgd(params, grads, lr):
    """p -= lr g for every parameter."""
    _sgd_all(params, grads, lr, _chunks(params))


def adam(params, grads, vs, ss, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2):
    """v = beta1 v + (1 - beta1) g; s = beta2 s + (1 - beta2) g^2; p -= lr (v / c1) / (sqrt(s / c2) + eps)."""
    _adam_all(params, grads, vs, ss, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2,
              _chunks(params))


def step(kind, params, grads, vs, ss, lr, beta1, beta2, eps, t, dtype):
    """One optimiser step ("sgd", "adam_like" or "adam") of flat parameters (vs, ss unread by SGD), t the step's
    number from 1: the settings made `dtype` scalars and Adam's bias corrections formed from the Python floats,
    as the reference forms them."""
    d = dtype.type
    if kind == "sgd":
        sgd(params, grads, d(lr))
        return
    c1, c2 = (1 - beta1 ** t, 1 - beta2 ** t) if kind == "adam" else (1.0, 1.0)
    adam(params, grads, vs, ss, d(lr), d(beta1), d(1 - beta1), d(beta2), d(1 - beta2), d(eps), d(c1), d(c2))
