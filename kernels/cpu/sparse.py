"""Sparse inputs: a compressed-row copy of a dense input matrix and the first layer's products over it.

About 81% of MNIST pixels are exactly 0, so a first layer that reads only the stored (non-zero) pixels does
a fifth of the dense work. `rows` picks and orders the samples of a batch; the first layer's units are
compacted to those a per-unit dropout mask keeps (`scale` holds their 1/keep factors), so dropped units
cost nothing. The weight gradient sums each thread's rows into a private buffer and then adds the buffers:
race-free under parallel=True. The inner products may fuse multiply and add (fastmath "contract"), so
results equal the reference's within rounding, not bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .activation import activate_runs, code_runs, times_derivative_runs
from .dense import column_sums
from .simd import (CACHE, MAX_TILE, empty_rows, gather_columns, gather_pair_tile, gather_row_tile, scatter_columns,
                   scatter_tile, tile_plan, width_for)
from .simd import width as vector_width


class CompressedRows(NamedTuple):
    indptr: np.ndarray     # (rows + 1,) int64: row i's entries are indptr[i]:indptr[i + 1]
    indices: np.ndarray    # (nnz,) int32 column of each stored entry
    values: np.ndarray     # (nnz,) the entries, in the input's dtype
    shape: tuple

    @property
    def density(self) -> float:
        return self.values.shape[0] / max(1, self.shape[0] * self.shape[1])


@njit(cache=CACHE, parallel=True)
def _count_nonzeros(X, counts):
    for i in prange(X.shape[0]):
        c = 0
        for j in range(X.shape[1]):
            if X[i, j] != 0:
                c += 1
        counts[i] = c


@njit(cache=CACHE, parallel=True)
def _fill(X, indptr, indices, values):
    for i in prange(X.shape[0]):
        p = indptr[i]
        for j in range(X.shape[1]):
            if X[i, j] != 0:
                indices[p] = j
                values[p] = X[i, j]
                p += 1


@njit(cache=CACHE)
def _count_pixels(words, counts):
    """Non-zero bytes per row of uint8 images viewed as rows of 8-byte words (zero words skipped whole)."""
    for i in range(words.shape[0]):
        c = 0
        for w in range(words.shape[1]):
            word = words[i, w]
            while word:
                c += (word & 0xFF) != 0
                word >>= 8
        counts[i] = c


@njit(cache=CACHE)
def _fill_scaled(images, words, denominator, indptr, indices, values):
    """The non-zero pixels of each row as floats pixel / denominator (numpy's astype then division, bit for bit),
    walking the row 8 pixels at a time and skipping the all-zero words."""
    dtype = values.dtype
    for i in range(images.shape[0]):
        p = indptr[i]
        for w in range(words.shape[1]):
            if words[i, w] == 0:
                continue
            for j in range(8 * w, 8 * w + 8):
                x = images[i, j]
                if x != 0:
                    indices[p] = j
                    values[p] = dtype.type(x) / denominator
                    p += 1


def _allocate_compressed(X, dtype) -> CompressedRows:
    """A CompressedRows for X's non-zero pattern with indices and values still to be filled."""
    if X.ndim != 2:
        raise ValueError(f"compress_rows needs a 2-D array, got shape {X.shape}")
    if X.shape[1] >= 2 ** 31:
        raise ValueError("compress_rows: too many columns for int32 indices")
    counts = np.empty(X.shape[0], dtype=np.int64)
    _count_nonzeros(X, counts)
    indptr = np.zeros(X.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return CompressedRows(indptr, np.empty(indptr[-1], np.int32), np.empty(indptr[-1], dtype), X.shape)


def compress_rows(X: np.ndarray) -> CompressedRows:
    """The non-zero entries of a 2-D float array, row by row (NaN counts as non-zero)."""
    X = np.ascontiguousarray(X)
    if X.dtype not in (np.float32, np.float64):
        raise ValueError(f"compress_rows needs a float32/float64 array, got {X.dtype}")
    compressed = _allocate_compressed(X, X.dtype)
    _fill(X, compressed.indptr, compressed.indices, compressed.values)
    return compressed


def compress_images(images: np.ndarray, dtype) -> CompressedRows:
    """The non-zero pixels of uint8 images, row by row, as floats in [0, 1] (pixel / 255, equal to numpy's
    images.astype(dtype) / 255), without making the dense float array. Serial: a parallel loop would cost more
    to compile, in a new install, than it saves."""
    images = np.asarray(images)
    dtype = np.dtype(dtype)
    if images.dtype != np.uint8 or images.ndim != 2 or dtype not in (np.float32, np.float64):
        raise ValueError(f"compress_images needs 2-D uint8 pixels and float32/float64, got {images.dtype} "
                         f"{images.shape}, {dtype}")
    rows, cols = images.shape
    padded = -(-cols // 8) * 8
    if padded != cols or not images.flags.c_contiguous:
        wide = np.zeros((rows, padded), np.uint8)
        wide[:, :cols] = images
        images = wide
    words = images.view(np.uint64)
    counts = np.empty(rows, np.int64)
    _count_pixels(words, counts)
    indptr = np.zeros(rows + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    compressed = CompressedRows(indptr, np.empty(indptr[-1], np.int32), np.empty(indptr[-1], dtype), (rows, cols))
    _fill_scaled(images, words, dtype.type(255), compressed.indptr, compressed.indices, compressed.values)
    return compressed


@njit(cache=CACHE)
def _densify(indptr, indices, values, rows, out):
    for i in range(rows.shape[0]):
        r = rows[i]
        for p in range(indptr[r], indptr[r + 1]):
            out[i, indices[p]] = values[p]


class CompressedImages:
    """Images as numba-cpu keeps training and test sets: only their non-zero pixels (CompressedRows), with no
    dense float copy. Array-like enough for code written for arrays: shape, dtype, ndim, len(), X[rows] (dense
    float rows, made on demand) and np.asarray(X) (the whole dense array)."""

    ndim = 2

    def __init__(self, compressed: CompressedRows):
        self.compressed = compressed
        self.shape = tuple(compressed.shape)
        self.dtype = compressed.values.dtype
        self.blocks = None           # the column blocks of a full-batch step, built on first use

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, which) -> np.ndarray:
        """Dense float rows `which` (an index array) as a new C-contiguous array."""
        which = np.ascontiguousarray(which, dtype=np.int64)
        out = np.zeros((which.shape[0], self.shape[1]), self.dtype)
        c = self.compressed
        _densify(c.indptr, c.indices, c.values, which, out)
        return out

    def __getitem__(self, key):
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(first, (int, np.integer)):
            dense = self.rows(np.arange(self.shape[0])[[first]])[0]
            return dense[rest] if rest else dense
        dense = self.rows(np.arange(self.shape[0])[first])
        return dense[(slice(None),) + rest] if rest else dense

    def __array__(self, dtype=None, copy=None):
        dense = self.rows(np.arange(self.shape[0]))
        return dense if dtype is None else dense.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"CompressedImages(shape={self.shape}, dtype={self.dtype}, stored={self.compressed.values.shape[0]})"



BLOCK = 64     # rows per block: their stored pixels and one tile of the weights stay in the L2 cache
FORWARD_WIDTH = width_for("sparse_forward")     # FORWARD_WIDTH(W): bytes per SIMD vector of the forward's gathers
GRAD_WIDTH = vector_width("weight_grad")            # bytes per SIMD vector in the weight gradient's scatters
FORWARD_TILE = 4   # vectors per tile of the forward's gathers: 4-vector tiles of W read faster than 5- or
                   # 6-vector ones (bench/lab/README.md; bench/lab/sparse_forward.py times the kernel)


@njit(cache=CACHE, fastmath={"contract"})
def _gather_block(indptr, indices, values, rows, start, stop, W, H):
    """H[i] = X[rows[i]] @ W for i in [start, stop), one tile of units at a time for all the block's rows,
    so that the tile of W they read stays in cache."""
    k = W.shape[1]
    vbytes = FORWARD_WIDTH(W)
    lanes = vbytes // W.itemsize
    nv, wide, narrow = tile_plan(0, k, W.itemsize, FORWARD_TILE, vbytes)
    c = 0
    for t in range(wide + narrow):
        width = nv + 1 if t < wide else nv
        for i in range(start, stop):
            r = rows[i]
            gather_row_tile(width, indices, values, indptr[r], indptr[r + 1], W, H, i, c, 1, False, vbytes)
        c += width * lanes
    if c < k:
        for i in range(start, stop):
            r = rows[i]
            gather_columns(indices, values, indptr[r], indptr[r + 1], W, H[i], c, k, vbytes)


@njit(cache=CACHE, fastmath={"contract"})
def _scatter_block(indptr, indices, values, rows, start, dZ, acc):
    """acc[indices[p]] += values[p] * dZ[i] over the stored pixels p of rows[start + i], i < len(dZ),
    one tile of units at a time (as _gather_block)."""
    k = acc.shape[1]
    lanes = GRAD_WIDTH // acc.itemsize
    nv, wide, narrow = tile_plan(0, k, acc.itemsize, MAX_TILE, GRAD_WIDTH)
    c = 0
    for t in range(wide + narrow):
        width = nv + 1 if t < wide else nv
        for i in range(dZ.shape[0]):
            r = rows[start + i]
            scatter_tile(width, indices, values, indptr[r], indptr[r + 1], dZ[i], acc, c, 1, GRAD_WIDTH)
        c += width * lanes
    if c < k:
        for i in range(dZ.shape[0]):
            r = rows[start + i]
            scatter_columns(indices, values, indptr[r], indptr[r + 1], dZ[i], acc, c, k, GRAD_WIDTH)


@njit(cache=CACHE, fastmath={"contract"})
def _forward_block(indptr, indices, values, rows, W, b, runs, scale, H, A, start, stop):
    _gather_block(indptr, indices, values, rows, start, stop, W, H)
    k = W.shape[1]
    for i in range(start, stop):
        h = H[i]
        if b.shape[0]:
            for j in range(k):
                h[j] += b[j]
        activate_runs(h, runs)
        for j in range(k):
            A[i, j] = h[j] * scale[j]


@njit(cache=CACHE, parallel=True)
def sparse_dense_forward(indptr, indices, values, rows, W, b, codes, scale, H, A):
    """H = act(X[rows] @ W + b) and A = H * scale for a compressed X; b may be empty (no bias)."""
    n = rows.shape[0]
    runs = code_runs(codes)
    for blk in prange((n + BLOCK - 1) // BLOCK):
        start = np.int64(blk) * BLOCK
        _forward_block(indptr, indices, values, rows, W, b, runs, scale, H, A, start, min(n, start + BLOCK))


@njit(cache=CACHE, fastmath={"contract"})
def _dz_rows(dA, H, runs, scale, s0, s1, dz, db):
    """dz[i - s0] = dA[i] * act'(H[i]) * scale for i in [s0, s1), each row also added to db."""
    k = dA.shape[1]
    for i in range(s0, s1):
        d, a = dz[i - s0], dA[i]
        for j in range(k):          # a loop, not d[:] = a: slice assignment compiles a shape check and its message
            d[j] = a[j]
        times_derivative_runs(d, H[i], runs)
        for j in range(k):
            d[j] = d[j] * scale[j]
            db[j] += d[j]


@njit(cache=CACHE, fastmath={"contract"})
def _grad_rows(indptr, indices, values, rows, dA, H, runs, scale, acc, db, start, stop):
    k = dA.shape[1]
    db[:] = 0
    dz = np.empty((BLOCK, k), dtype=acc.dtype)
    for s0 in range(start, stop, BLOCK):
        s1 = min(stop, s0 + BLOCK)
        _dz_rows(dA, H, runs, scale, s0, s1, dz, db)
        _scatter_block(indptr, indices, values, rows, s0, dz[:s1 - s0], acc)


@njit(cache=CACHE)
def _private_copies(threads, rows, dW):
    """A zeroed (threads, rows, dW.shape[1]) array (rows >= dW.shape[0]), each thread's copy starting on a cache
    line."""
    acc = empty_rows(threads * rows, dW.shape[1], dW).reshape((threads, rows, dW.shape[1]))
    acc[:] = 0
    return acc


@njit(cache=CACHE, parallel=True)
def _sum_private(acc, dW):
    """dW = the sum of the threads' copies (their rows past dW's last are padding)."""
    threads = acc.shape[0]
    inputs, k = dW.shape
    for r in prange(inputs):
        for j in range(k):
            s = acc[0, r, j]
            for t in range(1, threads):
                s += acc[t, r, j]
            dW[r, j] = s


@njit(cache=CACHE, parallel=True)
def sparse_weight_grad(indptr, indices, values, rows, dA, H, codes, scale, dW, db, threads):
    """dZ = dA * act'(H) * scale fused into dW = X[rows].T @ dZ and db = dZ summed over rows,
    with one private dW per thread (`threads`: numba.get_num_threads())."""
    n, k = dA.shape
    threads = max(1, min(threads, n))
    acc = _private_copies(threads, dW.shape[0], dW)
    runs = code_runs(codes)
    dbs = np.empty((threads, k))
    for t in prange(threads):
        start, stop = np.int64(t) * n // threads, (np.int64(t) + 1) * n // threads
        _grad_rows(indptr, indices, values, rows, dA, H, runs, scale, acc[t], dbs[t], start, stop)
    _sum_private(acc, dW)
    column_sums(dbs, db)


# -- a whole input in order: its pixels regrouped by pairs of columns, block by block -------------------------

COLUMN_BLOCK = 128   # rows per block of ColumnBlocks: one tile of a block's dZ rows stays in the L1 cache


class ColumnBlocks(NamedTuple):
    """A compressed input's stored pixels regrouped, within each block of COLUMN_BLOCK rows, by pairs of
    adjacent input columns (2q, 2q + 1): block b's entries for pair q are colptr[b, q]:colptr[b, q + 1], one
    per row of the block that has a pixel in either column, holding that row's index in the block and its two
    values (values[2e], values[2e + 1]; 0 for a column without a pixel). The weight gradient of a batch of
    every row in order then reads dZ with gathers whose registers accumulate tiles of dW's rows 2q and
    2q + 1 together: neighbouring pixels are mostly stored in the same images, so each row of dZ read serves
    both (about 0.58 entries per stored pixel on MNIST)."""
    colptr: np.ndarray     # (blocks, pairs + 1) int64, pairs = ceil(columns / 2)
    rows: np.ndarray       # (entries,) int32 row within its block
    values: np.ndarray     # (2 * entries,) the two columns' values of each entry
    shape: tuple


@njit(cache=CACHE, parallel=True)
def _count_pairs(indptr, indices, block, colptr):
    """colptr[b, q + 1] = how many of block b's rows have a pixel in column 2q or 2q + 1 (colptr[b, 0] = 0)."""
    n = indptr.shape[0] - 1
    for blk in prange(colptr.shape[0]):
        cp = colptr[blk]
        cp[:] = 0
        for r in range(np.int64(blk) * block, min(n, (np.int64(blk) + 1) * block)):
            last = -1
            for p in range(indptr[r], indptr[r + 1]):
                q = indices[p] >> 1
                if q != last:
                    cp[q + 1] += 1
                    last = q


@njit(cache=CACHE, parallel=True)
def _regroup_blocks(indptr, indices, values, block, colptr, starts, local, out):
    """Turns _count_pairs' counts into entry ranges (block b's from starts[b]) and fills the entries."""
    n = indptr.shape[0] - 1
    pairs = colptr.shape[1] - 1
    for blk in prange(colptr.shape[0]):
        r0 = np.int64(blk) * block
        r1 = min(n, r0 + block)
        cp = colptr[blk]
        cp[0] = starts[blk]
        for q in range(pairs):
            cp[q + 1] += cp[q]
        nxt = cp[:pairs].copy()
        for r in range(r0, r1):
            last = -1
            e = 0
            for p in range(indptr[r], indptr[r + 1]):
                q = indices[p] >> 1
                if q != last:
                    e = nxt[q]
                    nxt[q] = e + 1
                    local[e] = r - r0
                    out[2 * e] = 0
                    out[2 * e + 1] = 0
                    last = q
                out[2 * e + (indices[p] & 1)] = values[p]


def column_blocks(compressed: CompressedRows) -> ColumnBlocks:
    n, columns = compressed.shape
    colptr = np.empty(((n + COLUMN_BLOCK - 1) // COLUMN_BLOCK, (columns + 1) // 2 + 1), np.int64)
    _count_pairs(compressed.indptr, compressed.indices, COLUMN_BLOCK, colptr)
    starts = np.zeros(colptr.shape[0] + 1, np.int64)
    np.cumsum(colptr[:, 1:].sum(axis=1), out=starts[1:])
    local = np.empty(starts[-1], np.int32)
    values = np.empty(2 * starts[-1], compressed.values.dtype)
    _regroup_blocks(compressed.indptr, compressed.indices, compressed.values, COLUMN_BLOCK, colptr, starts,
                    local, values)
    return ColumnBlocks(colptr, local, values, compressed.shape)


@njit(cache=CACHE, fastmath={"contract"})
def _gather_block_columns(colptr, local, values, dz, acc):
    """acc[2q + m] += sum over the block's entries e of pair q of values[2e + m] * dz[local[e]] (m = 0, 1),
    one tile of units at a time for every pair, so that the tile of dz they read stays in cache. acc has an
    even number of rows (a last odd column's partner row gets zeros)."""
    k = acc.shape[1]
    pairs = colptr.shape[0] - 1
    lanes = GRAD_WIDTH // acc.itemsize
    nv, wide, narrow = tile_plan(0, k, acc.itemsize, MAX_TILE, GRAD_WIDTH)
    c = 0
    for t in range(wide + narrow):
        width = nv + 1 if t < wide else nv
        for q in range(pairs):
            if colptr[q + 1] > colptr[q]:
                gather_pair_tile(width, local, values, colptr[q], colptr[q + 1], dz, acc, 2 * q, 2 * q + 1, c, 1, True,
                                 GRAD_WIDTH)
        c += width * lanes
    if c < k:                                    # the columns after the last whole vector
        for q in range(pairs):
            for e in range(colptr[q], colptr[q + 1]):
                for m in range(2):
                    x = values[2 * e + m]
                    for u in range(c, k):
                        acc[2 * q + m, u] += x * dz[local[e], u]


@njit(cache=CACHE, parallel=True)
def blocked_weight_grad(colptr, local, values, dA, H, codes, scale, dW, db, threads):
    """sparse_weight_grad for a batch of every row of the input in order, from its ColumnBlocks."""
    n, k = dA.shape
    blocks = colptr.shape[0]
    block = COLUMN_BLOCK
    threads = max(1, min(threads, blocks))
    acc = _private_copies(threads, 2 * (colptr.shape[1] - 1), dW)     # an even number of rows
    runs = code_runs(codes)
    dbs = np.zeros((threads, k))
    for t in prange(threads):
        dz = empty_rows(block, k, dW)
        for blk in range(np.int64(t) * blocks // threads, (np.int64(t) + 1) * blocks // threads):
            s0 = blk * block
            s1 = min(n, s0 + block)
            _dz_rows(dA, H, runs, scale, s0, s1, dz, dbs[t])
            _gather_block_columns(colptr[blk], local, values, dz[:s1 - s0], acc[t])
    _sum_private(acc, dW)
    column_sums(dbs, db)
