"""How close a result must be to the reference, in one place for every test (and the kernel lab's harness).

Every comparison with the reference measures the relative error in the Frobenius norm, in float64
(`rel_err`): a result of the wrong shape is infinitely far, and one holding NaN or infinity is NaN, which
compares False with every bound, so it never passes. The bounds are per dtype and named for what they bound;
a test that scales one (`100 * TOL[dtype]` over several epochs) says why where it does.
"""

from __future__ import annotations

import numpy as np

# One operation (a layer, a loss, an update, a fused step) against the float64 reference: rounding only.
TOL = {np.float64: 1e-12, np.float32: 1e-5}

# The SIMD loops (tests/test_cpu_simd.py): sums of a few fused products, tighter than a layer in float64.
SIMD_TOL = {np.float64: 1e-13, np.float32: 1e-5}

# The compiled minibatch epoch against the reference in the same dtype, so only rounding differs (fused
# multiply-adds, the order of sums): tighter than a layer in float32. (Adam's bias corrections from the betas
# rounded to float32 were once off by 1e-5 relative and left 4e-6 here.)
MINIBATCH_TOL = {np.float64: 1e-12, np.float32: 1e-6}

# The general minibatch epoch (tests/test_cpu_general_epoch.py): two epochs of a generated stack of layers
# against the reference in the same dtype, through Adam's division by sqrt(s), which amplifies float32 rounding
# over an epoch of steps; looser than the one-layer epoch's, whose sums run in the reference's order.
GENERAL_EPOCH_TOL = {np.float64: 1e-10, np.float32: 2e-4}

# An epoch of repeated updates (each batch's SGD step applied batch-size times, in closed form against the
# reference's literal loop): the closed form rounds differently from a loop of hundreds of steps.
REPEAT_TOL = {np.float64: 1e-11, np.float32: 5e-5}

# The kernel lab's whole kernels (bench/lab/harness.py) on fresh random inputs, float64 reference.
LAB_TOL = {np.float64: 1e-11, np.float32: 2e-5}


def rel_err(got, want) -> float:
    """||got - want|| / ||want|| in float64; inf when the shapes differ, NaN when `got` is not all finite."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    if not np.all(np.isfinite(got)):
        return float("nan")
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def assert_close(got, want, bound, what="result"):
    """Fails unless rel_err(got, want) <= bound, saying the shapes, or the error, or that `got` holds NaN."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, the reference's {want.shape}"
    err = rel_err(got, want)
    assert err <= bound, f"{what}: relative error {err:.3g} (bound {bound:.1g})"     # NaN fails
