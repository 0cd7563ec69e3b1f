"""Losses on the GPU: mean squared error and numerically stable softmax cross-entropy with their
gradients, the count of correct predictions, and the L2 penalty of seed 004.

Sums are reduced in a fixed order (per-block partial sums, then one block adds them), so results do not
depend on timing. They stay on the device: the caller reads them when it needs the number.
"""

from __future__ import annotations

import functools
import math

import numba
from numba import cuda

from .tiles import elementwise
from ..codes import MSE



def _block_sum(threads: int):
    """Device function: adds shared[0:threads] into shared[0]; every thread of the block calls it."""

    @cuda.jit(device=True)
    def block_sum(shared, t):
        step = threads // 2
        while step > 0:
            if t < step:
                shared[t] += shared[t + step]
            cuda.syncthreads()
            step //= 2

    return block_sum


def _block_totals(threads: int):
    """Device function: every thread's (loss, correct) summed into sh_loss[0], sh_correct[0]."""
    block_sum = _block_sum(threads)

    @cuda.jit(device=True)
    def block_totals(sh_loss, sh_correct, t, loss, correct):
        sh_loss[t] = loss
        sh_correct[t] = correct
        cuda.syncthreads()
        block_sum(sh_loss, t)
        block_sum(sh_correct, t)

    return block_totals


@functools.lru_cache(maxsize=None)
def loss_kernels(threads: int, dtype):
    """(rows kernel, finish kernel) for blocks of `threads` threads (a power of two)."""
    ew = elementwise(dtype)
    zero, one = ew.zero, ew.one
    block_totals = _block_totals(threads)

    @cuda.jit(cache=True)
    def rows(kind, out, labels, eps, grad, need_grad, inv_n, part_loss, part_correct):
        sh_loss = cuda.shared.array(threads, numba.float64)
        sh_correct = cuda.shared.array(threads, numba.int64)
        t = cuda.threadIdx.x
        n, classes = out.shape
        loss = 0.0
        correct = 0
        for i in range(cuda.blockIdx.x * threads + t, n, threads * cuda.gridDim.x):
            label = labels[i]
            best, top = 0, out[i, 0]
            for k in range(1, classes):        # numpy's argmax: the first maximum, or the first NaN
                if top != top:
                    break
                if out[i, k] > top or out[i, k] != out[i, k]:
                    best, top = k, out[i, k]
            if best == label:
                correct += 1
            if kind == MSE:
                for k in range(classes):
                    d = out[i, k] - (one if k == label else zero)
                    loss += d * d
                    if need_grad:
                        grad[i, k] = d * inv_n
            else:
                total = zero
                for k in range(classes):
                    total += math.exp(out[i, k] - top)
                shifted = out[i, label] - top
                if eps == 0:
                    loss += math.log(total) - shifted
                else:
                    loss -= math.log(math.exp(shifted) / total + eps)
                if need_grad:
                    for k in range(classes):
                        p = math.exp(out[i, k] - top) / total
                        grad[i, k] = (p - (one if k == label else zero)) * inv_n
        block_totals(sh_loss, sh_correct, t, loss, correct)
        if t == 0:
            part_loss[cuda.blockIdx.x] = sh_loss[0]
            part_correct[cuda.blockIdx.x] = sh_correct[0]

    @cuda.jit(cache=True)
    def finish(part_loss, part_correct, accumulate, total_loss, total_correct):
        """total (+)= the sum of the partials, in one block."""
        sh_loss = cuda.shared.array(threads, numba.float64)
        sh_correct = cuda.shared.array(threads, numba.int64)
        t = cuda.threadIdx.x
        loss = 0.0
        correct = 0
        for b in range(t, part_loss.shape[0], threads):
            loss += part_loss[b]
            correct += part_correct[b]
        block_totals(sh_loss, sh_correct, t, loss, correct)
        if t == 0:
            if accumulate:
                total_loss[0] += sh_loss[0]
                total_correct[0] += sh_correct[0]
            else:
                total_loss[0] = sh_loss[0]
                total_correct[0] = sh_correct[0]

    return rows, finish


@functools.lru_cache(maxsize=None)
def penalty_kernel(threads: int):
    block_sum = _block_sum(threads)

    @cuda.jit(cache=True)
    def kernel(W, starts, stops, factors, out):
        """out[0] = sum over segments s of factors[s] * mean(W[:, starts[s]:stops[s]] ** 2) / 2."""
        shared = cuda.shared.array(threads, numba.float64)
        t = cuda.threadIdx.x
        rows = W.shape[0]
        total = 0.0
        for s in range(starts.shape[0]):
            start, width = starts[s], stops[s] - starts[s]
            acc = 0.0
            for e in range(t, rows * width, threads):
                w = W[e // width, start + e % width]
                acc += w * w
            shared[t] = acc
            cuda.syncthreads()
            block_sum(shared, t)
            if t == 0 and factors[s] != 0:
                total += factors[s] * (shared[0] / (rows * width)) / 2
            cuda.syncthreads()
        if t == 0:
            out[0] = total

    return kernel


def loss_blocks(rows: int, threads: int, most: int) -> int:
    return max(1, min(most, -(-rows // threads)))


def loss(kind: int, out, labels, eps, grad, inv_n, part_loss, part_correct, total_loss, total_correct,
         threads: int, accumulate=False, stream=0):
    """Writes the summed loss into total_loss[0] and the number correct into total_correct[0] (adding
    to them when `accumulate`), and the gradient of the mean loss into `grad` unless it is None.
    part_loss / part_correct hold one partial sum per block; their length sets the number of blocks."""
    rows, finish = loss_kernels(threads, out.dtype)
    ntype = out.dtype.type
    rows[part_loss.shape[0], threads, stream](
        kind, out, labels, ntype(eps), out if grad is None else grad, grad is not None, ntype(inv_n),
        part_loss, part_correct)
    finish[1, threads, stream](part_loss, part_correct, accumulate, total_loss, total_correct)


def l2_penalty(W, starts, stops, factors, out, threads: int, stream=0):
    penalty_kernel(threads)[1, threads, stream](W, starts, stops, factors, out)

