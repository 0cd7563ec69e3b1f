"""Per-unit activations for the compiled CPU kernels: segments become one activation code per unit.

The derivative is written in terms of the activation's output h, as the reference backend does, with
the same NaN behaviour: relu(NaN) is NaN, relu'(from NaN) is 0.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload

from ..codes import RELU, TANH, activation_codes


def layer_codes(segments, units) -> np.ndarray:
    """The activation codes of a layer of `units` units as numba-cpu's kernels read them: int8, one per unit
    (codes.activation_codes; units outside every segment are linear)."""
    return activation_codes(segments, units, np.int8)


# numpy's error model: Python's zero-division check on the division below (q >= 0.0048 anyway) keeps every
# loop that calls this function scalar
@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def tanh_float32(x):
    """tanh for float32 without a library call, so loops over it vectorise: a rational approximation on
    [-7.9053, 7.9053] (Eigen's), clamped outside; within 5 float32 ulps everywhere, NaN stays NaN."""
    c = np.float32(7.90531110763549805)
    y = min(max(x, -c), c)
    y2 = y * y
    p = y2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
    p = y2 * p + np.float32(-8.60467152213735e-11)
    p = y2 * p + np.float32(5.12229709037114e-08)
    p = y2 * p + np.float32(1.48572235717979e-05)
    p = y2 * p + np.float32(6.37261928875436e-04)
    p = y2 * p + np.float32(4.89352455891786e-03)
    q = y2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
    q = y2 * q + np.float32(2.26843463243900e-03)
    q = y2 * q + np.float32(4.89352518554385e-03)
    r = y * p / q
    if abs(x) < np.float32(0.0004) or x != x:
        r = x
    return r


@intrinsic
def _float64_from_bits(typingctx, bits):
    """The float64 whose IEEE bits are the int64 `bits` (a bit cast, which vectorises)."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return types.float64(types.int64), codegen


# numpy's error model, as tanh_float32's: no zero-division branch, so loops over it vectorise
@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def tanh_float64(x):
    """tanh for float64 without a library call, so loops over it vectorise: Cephes' rational form
    x + x^3 P(x^2)/Q(x^2) below |x| = 0.625, else 1 - 2/(exp(2|x|) + 1) with exp from Cephes' range reduction
    and rational form, the power of two made from its bits (2|x| capped at 44, where tanh is 1.0 in float64
    anyway); both computed and one selected, so there is no branch. Within 1.5 ulps everywhere, the sign of
    zero kept, NaN stays NaN."""
    a = abs(x)
    z = a * a
    p = (z * -9.64399179425052238628e-1 + -9.92877231001918586564e1) * z + -1.61468768441708447952e3
    q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z + 4.84406305325125486048e3
    small = a + a * z * p / q
    y = min(2 * a, 44.0)
    k = np.int64(y * 1.4426950408889634073599 + 0.5)          # round(y / ln 2), y >= 0
    kf = np.float64(k)
    r = (y - kf * 6.93145751953125e-1) - kf * 1.42860682030941723212e-6     # y - k ln 2 in two parts
    rr = r * r
    px = r * ((rr * 1.26177193074810590878e-4 + 3.02994407707441961300e-2) * rr + 9.99999999999999999910e-1)
    qx = ((rr * 3.00198505138664455042e-6 + 2.52448340349684104192e-3) * rr + 2.27265548208155028766e-1) * rr \
        + 2.00000000000000000009e0
    e = (1 + 2 * (px / (qx - px))) * _float64_from_bits((k + 1023) << 52)        # exp(r) * 2^k
    big = 1 - 2 / (e + 1)
    t = math.copysign(small if a < 0.625 else big, x)
    if x != x:
        t = x
    return t


def _tanh(z):
    return np.tanh(z)


@overload(_tanh)
def _tanh_typed(z):
    if z == types.float32:
        return lambda z: tanh_float32(z)
    if z == types.float64:
        return lambda z: tanh_float64(z)
    return lambda z: np.tanh(z)


@njit(cache=True)
def activate(z, code):
    if code == RELU:
        return z * 0 if z < 0 else z          # z * 0 keeps the dtype; NaN stays NaN
    if code == TANH:
        return _tanh(z)           # float32: tanh_float32; float64: tanh_float64
    return z


@njit(cache=True)
def derivative(h, code):
    """act'(z) from h = act(z): 1 for identity, (h > 0) for relu, 1 - h^2 for tanh."""
    if code == TANH:
        return 1 - h * h
    if code == RELU and not h > 0:
        return np.float32(0)                  # exact in either dtype; unifies with h's dtype
    return np.float32(1)


@njit(cache=True)
def code_runs(codes):
    """(start, stop, code) of each run of consecutive units sharing an activation, as a (runs, 3) array."""
    n = codes.shape[0]
    runs = np.empty((max(n, 1), 3), np.int64)
    r = 0
    j = 0
    while j < n:
        e = j + 1
        while e < n and codes[e] == codes[j]:
            e += 1
        runs[r, 0], runs[r, 1], runs[r, 2] = j, e, codes[j]
        r += 1
        j = e
    return runs[:r]


@njit(cache=True, fastmath={"contract"})
def activate_runs(v, runs):
    """v <- act(v) in place, as `activate`, with one loop per run of code_runs: no branch per unit, so the
    loops vectorise (a ReLU's sign is a coin toss that a branch would mispredict half the time)."""
    for r in range(runs.shape[0]):
        code = runs[r, 2]
        run = v[runs[r, 0]:runs[r, 1]]      # indexed from 0: no wraparound check per element
        if code == RELU:
            for j in range(run.shape[0]):
                z = run[j]
                run[j] = z if z >= 0 else z * 0          # NaN stays NaN
        elif code == TANH:
            for j in range(run.shape[0]):
                run[j] = _tanh(run[j])


@njit(cache=True, fastmath={"contract"})
def times_derivative_runs(d, h, runs):
    """d <- d * act'(z) from h = act(z), as `derivative`, one loop per run of code_runs."""
    one, zero = np.float32(1), np.float32(0)
    for r in range(runs.shape[0]):
        code = runs[r, 2]
        dr, hr = d[runs[r, 0]:runs[r, 1]], h[runs[r, 0]:runs[r, 1]]
        if code == RELU:
            for j in range(dr.shape[0]):
                dr[j] = dr[j] * (one if hr[j] > 0 else zero)
        elif code == TANH:
            for j in range(dr.shape[0]):
                dr[j] = dr[j] * (1 - hr[j] * hr[j])
