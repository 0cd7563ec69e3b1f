"""Compiled losses with their gradients, row by row (the reference backend's formulas and rounding order).

mse:        loss sum_k (out - onehot)^2, gradient (out - onehot) / n
softmax_ce: loss -log(softmax(out)[label] + eps), gradient (softmax(out) - onehot) / n
`row_loss` is shared with the fused training kernels.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import simd
from .threads import chunk_bounds, chunks_for
from ..codes import MSE



@njit(cache=True)
def argmax_row(out):
    """numpy's argmax: the first maximum, or the first NaN."""
    best = 0
    for j in range(1, out.shape[0]):
        if np.isnan(out[best]):
            break
        if out[j] > out[best] or np.isnan(out[j]):
            best = j
    return best


@njit(cache=True)
def row_loss(out, label, kind, eps, n, grad, need_grad):
    """(loss of one row as float64, 1 if argmax == label else 0); writes the row's gradient into grad.
    `n` and `eps` have the dtype of `out`."""
    one = n / n
    correct = 1 if argmax_row(out) == label else 0
    k = out.shape[0]
    total = 0.0
    if kind == MSE:
        for j in range(k):
            d = out[j] - one if j == label else out[j]
            total += d * d
            if need_grad:
                grad[j] = d / n
    else:
        top = out[0]
        for j in range(1, k):
            top = max(top, out[j])
        s = n - n
        for j in range(k):
            e = np.exp(out[j] - top)
            grad[j] = e
            s += e
        for j in range(k):
            grad[j] = grad[j] / s
        total = -np.log(grad[label] + eps)
        if need_grad:
            grad[label] -= one
            for j in range(k):
                grad[j] = grad[j] / n
    return total, correct


@njit(cache=True)
def _loss_rows(out, labels, kind, eps, nd, grad, need_grad, start, stop):
    total = 0.0
    correct = 0
    for i in range(start, stop):
        t, c = row_loss(out[i], labels[i], kind, eps, nd, grad[i], need_grad)
        total += t
        correct += c
    return total, correct


@njit(cache=True, parallel=True)
def _loss_parallel(out, labels, kind, eps, nd, grad, need_grad, totals, corrects):
    chunks = totals.shape[0]
    for c in prange(chunks):
        start, stop = chunk_bounds(c, out.shape[0], chunks)
        totals[c], corrects[c] = _loss_rows(out, labels, kind, eps, nd, grad, need_grad, start, stop)


def loss_and_grad(out, labels, kind, eps, nd, grad, need_grad):
    """(summed loss, number correct); grad (n, k) gets the gradient of the mean loss (scratch if not need_grad).
    `nd` is the number of rows and `eps` the loss epsilon, both in the dtype of `out`."""
    chunks = chunks_for(out.shape[0], out.size)
    if chunks == 1:
        return _loss_rows(out, labels, kind, eps, nd, grad, need_grad, 0, out.shape[0])
    totals, corrects = np.zeros(chunks), np.zeros(chunks, dtype=np.int64)
    _loss_parallel(out, labels, kind, eps, nd, grad, need_grad, totals, corrects)
    return float(totals.sum()), int(corrects.sum())


def loss_with_grad(out, labels, kind, eps, need_grad=True):
    """(summed loss, number correct, gradient of the mean loss or None) of out (n, k), C-contiguous, with a
    loss code `kind` and the loss epsilon `eps` (a Python float)."""
    grad = simd.scratch(out.shape, out.dtype)       # through the module: the tests poison it
    d = out.dtype.type
    total, correct = loss_and_grad(out, labels, kind, d(eps), d(out.shape[0]), grad, need_grad)
    return total, correct, (grad if need_grad else None)
