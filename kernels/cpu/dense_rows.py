"""Register-tiled products of the dense layers after the first, on a range of a minibatch's rows, in compiled code.

forward_rows:  H[i] = act(A[i] @ W + b) for rows i0:i1
input_grad_rows: dA[i] = D[i] @ W.T for rows i0:i1, read from a transposed copy WT of W
weight_grad_block: up to four rows of A.T @ D (A's columns read in place) into rows of G
A layer narrower than one vector (an output layer of 10 classes) keeps its weights transposed for its own
products instead: forward_rows_narrow (dot products along the inputs) and weight_grad_block_narrow (rows of
D.T @ A), both vectorised over the inputs, where the forms above would run one scalar at a time.

Each product is simd.gather_four_rows_planned: four output rows at once, a tile of up to MAX_TILE_FOUR vectors per
row held in registers over the whole sum, so every vector of W is loaded once for four rows; a range's last one
to three rows go as four with the last repeated. The lab's dense_layer.py compares these with numpy's BLAS per
batch, one row and two rows at a time. All arrays C-contiguous, of one float dtype.
"""

from __future__ import annotations

from numba import njit

from .activation import activate_runs
from .epoch_parts import dot
from .simd import CACHE, MAX_TILE_FOUR, gather_four_rows_planned, tile_plan, width_for

_width = width_for("head")      # the fused head's products are the same kind: dense rows of a few hundred columns


@njit(cache=CACHE, fastmath={"contract"}, inline="always")
def _four(i, e):
    """Rows i:e (one to four of them) as four row numbers, the last repeated: a product writes a repeated row
    twice with the same values, so one four-row tile serves every group (a second tile size would be compiled)."""
    return (i, min(i + 1, e - 1), min(i + 2, e - 1), min(i + 3, e - 1))


@njit(cache=CACHE, fastmath={"contract"}, inline="always")
def _product_rows(plan, U, M, Out, i, e, transposed, vb):
    """Out[r] = U[r] @ M for the rows r in i:e (one to four; U's columns if transposed), written, not added.
    plan: tile_plan of M's columns for four rows."""
    k, n = M.shape
    r = _four(i, e)
    gather_four_rows_planned(plan, U, r, k - k, k, M, Out, r, k - k, n, False, transposed, vb)


@njit(cache=CACHE)
def product_plan(M, vb):
    """The tile plan of _product_rows for M's columns."""
    n = M.shape[1]
    return tile_plan(n - n, n, M.itemsize, MAX_TILE_FOUR, vb)


@njit(cache=CACHE, fastmath={"contract"})
def forward_rows(A, W, b, has_b, runs, H, i0, i1):
    """H[i] = act(A[i] @ W + b) for i in i0:i1, act given by code runs (activation.code_runs)."""
    vb = _width(W)
    n = W.shape[1]
    plan = product_plan(W, vb)
    for i in range(i0, i1, 4):
        e = min(i + 4, i1)
        _product_rows(plan, A, W, H, i, e, False, vb)
        for r in range(i, e):
            h = H[r]
            if has_b:
                for j in range(n):
                    h[j] += b[j]
            activate_runs(h, runs)


@njit(cache=CACHE, fastmath={"contract"})
def input_grad_rows(D, WT, dA, i0, i1):
    """dA[i] = D[i] @ WT for i in i0:i1 (WT the transposed weights: the gradient of a layer's input)."""
    vb = _width(WT)
    plan = product_plan(WT, vb)
    for i in range(i0, i1, 4):
        _product_rows(plan, D, WT, dA, i, min(i + 4, i1), False, vb)


@njit(cache=CACHE, fastmath={"contract"})
def weight_grad_block(A, D, G, p, e, g, rows):
    """G[g + m] = A[:rows, p + m] @ D[:rows] for m in 0:e - p (at most four): rows p:e of A.T @ D, A's columns
    read in place, into G's rows from g on."""
    vb = _width(D)
    n = D.shape[1]
    gather_four_rows_planned(product_plan(D, vb), A, _four(p, e), rows - rows, rows, D, G, _four(g, g + e - p), n - n,
                             n, False, True, vb)


@njit(cache=CACHE, fastmath={"contract"})
def weight_grad_rows(A, D, G, p0, p1, rows):
    """G[p] = A[:rows, p] @ D[:rows] for p in p0:p1 (rows p0:p1 of A.T @ D)."""
    for p in range(p0, p1, 4):
        e = min(p + 4, p1)
        weight_grad_block(A, D, G, p, e, p, rows)


@njit(cache=CACHE, fastmath={"contract"})
def forward_rows_narrow(A, WT, b, has_b, runs, H, i0, i1):
    """forward_rows for a layer too narrow for one vector of units (an output layer of 10 classes), from the
    transposed weights WT: each unit a dot product of the row with one of WT's rows, vectorised over inputs."""
    n = WT.shape[0]
    zero = WT.dtype.type(0)
    for i in range(i0, i1):
        h, a = H[i], A[i]
        for c in range(n):
            h[c] = dot(a, WT[c], zero)
        if has_b:
            for c in range(n):
                h[c] += b[c]
        activate_runs(h, runs)


@njit(cache=CACHE, fastmath={"contract"})
def weight_grad_block_narrow(A, D, GT, c, e, g, p0, p1, rows):
    """GT[g + m, p0:p1] = D[:rows, c + m] @ A[:rows, p0:p1] for m in 0:e - c (at most four): rows of the transposed
    weight gradient (D.T @ A) of a narrow layer, vectorised over its inputs."""
    vb = _width(A)
    plan = tile_plan(p0, p1, A.itemsize, MAX_TILE_FOUR, vb)
    gather_four_rows_planned(plan, D, _four(c, e), rows - rows, rows, A, GT, _four(g, g + e - c), p0, p1, False,
                             True, vb)
