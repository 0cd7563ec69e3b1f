"""Register-tiled products of the dense layers after the first, on a range of a minibatch's rows, in compiled code.

forward_rows:  H[i] = act(A[i] @ W + b) for rows i0:i1
input_grad_rows: dA[i] = D[i] @ W.T for rows i0:i1, read from a transposed copy WT of W
weight_grad_pair: rows ga, gb of G = rows p, q of A.T @ D (A's columns read in place)
A layer narrower than one vector (an output layer of 10 classes) keeps its weights transposed for its own
products instead: forward_rows_narrow (dot products along the inputs) and weight_grad_pair_narrow (rows of
D.T @ A), both vectorised over the inputs, where the forms above would run one scalar at a time.

Each product is simd.gather_two_rows_planned: two output rows at once, a tile of up to MAX_TILE vectors per row
held in registers over the whole sum, so every vector of W is loaded once for two rows (the lab's dense_layer.py
compares this with numpy's BLAS per batch and with one row at a time). A range of odd length does its last row
as a pair with itself. All arrays C-contiguous, of one float dtype.
"""

from __future__ import annotations

from numba import njit

from .activation import activate_runs
from .simd import CACHE, MAX_TILE, gather_two_rows_planned, tile_plan, width_for

_width = width_for("head")      # the fused head's products are the same kind: dense rows of a few hundred columns


@njit(cache=CACHE, fastmath={"contract"})
def forward_rows(A, W, b, has_b, runs, H, i0, i1):
    """H[i] = act(A[i] @ W + b) for i in i0:i1, act given by code runs (activation.code_runs)."""
    vb = _width(W)
    k, n = W.shape
    plan = tile_plan(i0 - i0, n, W.itemsize, MAX_TILE, vb)
    for i in range(i0, i1, 2):
        ib = i + 1 if i + 1 < i1 else i
        gather_two_rows_planned(plan, A, i, ib, k - k, k, W, H, i, ib, k - k, n, False, False, vb)
        for r in range(i, ib + 1):
            h = H[r]
            if has_b:
                for j in range(n):
                    h[j] += b[j]
            activate_runs(h, runs)


@njit(cache=CACHE, fastmath={"contract"})
def input_grad_rows(D, WT, dA, i0, i1):
    """dA[i] = D[i] @ WT for i in i0:i1 (WT the transposed weights: the gradient of a layer's input)."""
    vb = _width(WT)
    n, k = WT.shape
    plan = tile_plan(i0 - i0, k, WT.itemsize, MAX_TILE, vb)
    for i in range(i0, i1, 2):
        ib = i + 1 if i + 1 < i1 else i
        gather_two_rows_planned(plan, D, i, ib, n - n, n, WT, dA, i, ib, n - n, k, False, False, vb)


@njit(cache=CACHE, fastmath={"contract"})
def weight_grad_pair(A, D, G, p, q, ga, gb, rows):
    """G[ga] = A[:rows, p] @ D[:rows] and G[gb] likewise with column q: two rows of A.T @ D."""
    vb = _width(D)
    n = D.shape[1]
    plan = tile_plan(p - p, n, D.itemsize, MAX_TILE, vb)
    gather_two_rows_planned(plan, A, p, q, p - p, rows, D, G, ga, gb, p - p, n, False, True, vb)


@njit(cache=CACHE, fastmath={"contract"})
def weight_grad_rows(A, D, G, p0, p1, rows):
    """G[p] = A[:rows, p] @ D[:rows] for p in p0:p1 (rows p0:p1 of A.T @ D)."""
    for p in range(p0, p1, 2):
        q = p + 1 if p + 1 < p1 else p
        weight_grad_pair(A, D, G, p, q, p, q, rows)


@njit(cache=CACHE, fastmath={"contract", "reassoc"})
def _dot(a, w, zero):
    """a @ w in whatever order vectorises (its own function: inlined, it would take its caller's fastmath flags)."""
    z = zero
    for j in range(a.shape[0]):
        z += a[j] * w[j]
    return z


@njit(cache=CACHE, fastmath={"contract"})
def forward_rows_narrow(A, WT, b, has_b, runs, H, i0, i1):
    """forward_rows for a layer too narrow for one vector of units (an output layer of 10 classes), from the
    transposed weights WT: each unit a dot product of the row with one of WT's rows, vectorised over inputs."""
    n = WT.shape[0]
    zero = WT.dtype.type(0)
    for i in range(i0, i1):
        h, a = H[i], A[i]
        for c in range(n):
            h[c] = _dot(a, WT[c], zero)
        if has_b:
            for c in range(n):
                h[c] += b[c]
        activate_runs(h, runs)


@njit(cache=CACHE, fastmath={"contract"})
def weight_grad_pair_narrow(A, D, GT, c, e, ga, gb, p0, p1, rows):
    """GT[ga, p0:p1] = D[:rows, c] @ A[:rows, p0:p1] and GT[gb] likewise with column e: two rows of the
    transposed weight gradient (D.T @ A) of a narrow layer, vectorised over its inputs."""
    vb = _width(A)
    plan = tile_plan(p0, p1, A.itemsize, MAX_TILE, vb)
    gather_two_rows_planned(plan, D, c, e, rows - rows, rows, A, GT, ga, gb, p0, p1, False, True, vb)
