"""The SIMD gather / scatter loops of kernels/cpu/simd.py against numpy, over column ranges of every tiling case
(a single partial vector, whole vectors, tiles of one to MAX_TILE vectors, several passes of mixed widths), at
every vector width this host runs (16, 32 and 64 bytes with AVX-512): the width is a compile-time argument of
the loops, so one process covers them all."""

import itertools

import numpy as np
import pytest

from numba import njit

from fastmnist.kernels.cpu import simd
from tolerances import SIMD_TOL as TOL, rel_err

VBYTES = [w for w in simd.WIDTHS if w <= simd.VECTOR_BYTES]
# Each (tile size, dtype, width) compiles a loop of its own. The default run checks all pairs of each test's
# parameters' values (every width with every dtype and every tile size, ...); the whole products are exhaustive.
pytestmark = pytest.mark.pairwise
by_width = pytest.mark.parametrize("vbytes", VBYTES)


def at_width(fn, vbytes):
    """A compiled caller of simd's inlined helper `fn` (scatter_nonzero, gather_two_rows_planned or
    gather_four_rows_planned) with vbytes
    as a constant: they take their width only so."""
    if fn is simd.scatter_nonzero:
        @njit
        def scatter_nonzero(plans, columns, indices, values, lo, hi, d, G, j0, j1):
            simd.scatter_nonzero(plans, columns, indices, values, lo, hi, d, G, j0, j1, vbytes)
        return scatter_nonzero

    if fn is simd.gather_four_rows_planned:
        @njit
        def four_rows(plan, V, vs, lo, hi, M, Out, rows, j0, j1, accumulate, transposed):
            simd.gather_four_rows_planned(plan, V, vs, lo, hi, M, Out, rows, j0, j1, accumulate, transposed, vbytes)
        return four_rows

    @njit
    def two_rows(plan, V, va, vb, lo, hi, M, Out, row_a, row_b, j0, j1, accumulate, transposed):
        simd.gather_two_rows_planned(plan, V, va, vb, lo, hi, M, Out, row_a, row_b, j0, j1, accumulate, transposed,
                                     vbytes)
    return two_rows


def test_the_widths_include_32_and_this_hosts():
    assert simd.VECTOR_BYTES in VBYTES and (32 in VBYTES or simd.VECTOR_BYTES < 32)
    assert all(simd.width(k) in simd.WIDTHS and simd.width(k) <= simd.VECTOR_BYTES for k in simd.PREFERRED)


@pytest.mark.parametrize("kernel", sorted(simd.PREFERRED))
def test_width_for_gives_compiled_code_the_kernels_width_for_each_dtype(kernel):
    of = simd.width_for(kernel)

    @njit
    def both(a, b):
        return of(a), of(b)

    assert both(np.zeros(1, np.float32), np.zeros((2, 2))) == (simd.width(kernel, np.float32),
                                                                simd.width(kernel, np.float64))


def widths(dtype, vbytes):
    lanes = simd.lanes(np.dtype(dtype), vbytes)
    return sorted({1, lanes - 1, lanes, lanes + 3, 5 * lanes, simd.MAX_TILE * lanes,
                   (simd.MAX_TILE + 1) * lanes + 1, 13 * lanes + 5, 20 * lanes})


def _scatter_want(G, indices, values, lo, hi, d, j0, j1):
    want = G.astype(np.float64)
    np.add.at(want, (indices[lo:hi, None], np.arange(j0, j1)[None, :]),
              values[lo:hi, None].astype(np.float64) * d[None, j0:j1])
    return want


@by_width
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("max_tile", [None, 1, 4])
def test_tile_plan_covers_the_whole_vectors_in_the_fewest_passes(dtype, max_tile, vbytes):
    lanes = simd.lanes(np.dtype(dtype), vbytes)
    limit = max_tile or simd.MAX_TILE
    for j0 in (0, 3):
        for width in range(0, 40 * lanes):
            nv, wide, narrow = simd.tile_plan(j0, j0 + width, np.dtype(dtype).itemsize, limit, vbytes)
            assert wide * (nv + 1) + narrow * nv == width // lanes
            assert nv + (wide > 0) <= limit
            assert wide + narrow == -(-(width // lanes) // limit)


@by_width
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("j0", [0, 5])
@pytest.mark.parametrize("dense", [False, True], ids=["indexed", "dense"])
def test_gather_and_scatter_columns_match_numpy(dtype, j0, dense, vbytes):
    rng = np.random.default_rng()
    for width in widths(dtype, vbytes):
        cols = j0 + width + 2
        M = rng.standard_normal((50, cols)).astype(dtype)
        indices = rng.integers(0, 50, 37).astype(np.int32)          # repeats included
        if dense:                                                   # no indices: value p goes with row p
            indices = np.arange(37, dtype=np.int32)
        values = rng.standard_normal(37).astype(dtype)
        lo, hi = 4, 33
        h = np.full(cols, np.nan, dtype)
        simd.gather_columns(None if dense else indices, values, lo, hi, M, h, j0, j0 + width, vbytes)
        rows = M[indices[lo:hi]].astype(np.float64)
        want = values[lo:hi].astype(np.float64) @ rows
        # measured against the sums of |terms|: a few columns' sums can cancel to near 0 (width 1: one column)
        magnitude = np.abs(values[lo:hi].astype(np.float64)) @ np.abs(rows)
        assert rel_err(h[j0:j0 + width], want[j0:j0 + width]) * np.linalg.norm(want[j0:j0 + width]) \
            <= TOL[dtype] * np.linalg.norm(magnitude[j0:j0 + width]), width
        assert np.isnan(h[:j0]).all() and np.isnan(h[j0 + width:]).all(), "wrote outside its columns"

        d = rng.standard_normal(cols).astype(dtype)
        G = rng.standard_normal((50, cols)).astype(dtype)
        want, before = _scatter_want(G, indices, values, lo, hi, d, j0, j0 + width), G.copy()
        simd.scatter_columns(None if dense else indices, values, lo, hi, d, G, j0, j0 + width, vbytes)
        assert rel_err(G, want) < TOL[dtype], width
        outside = np.ones(cols, bool)
        outside[j0:j0 + width] = False
        assert np.array_equal(G[:, outside], before[:, outside]), "changed columns outside its range"


@by_width
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("j0", [0, 5])
def test_scatter_nonzero_matches_numpy_and_skips_only_all_zero_vectors(dtype, j0, vbytes):
    rng = np.random.default_rng()
    lanes = simd.lanes(np.dtype(dtype), vbytes)
    scatter_nonzero = at_width(simd.scatter_nonzero, vbytes)
    for width in widths(dtype, vbytes):
        cols = j0 + width + 2
        plans = simd.listed_plans(j0, j0 + width, np.dtype(dtype).itemsize, vbytes)
        assert len(plans) == width // lanes + 1
        columns = np.full(len(plans), -1, np.int64)
        indices = rng.integers(0, 50, 37).astype(np.int32)
        values = rng.standard_normal(37).astype(dtype)
        for zero_share in (0.0, 0.5, 0.8, 1.0):
            d = rng.standard_normal(cols).astype(dtype)
            d[j0:j0 + width][rng.random(width) < zero_share] = 0          # some whole vectors end up all zero
            G = rng.standard_normal((50, cols)).astype(dtype)
            want, before = _scatter_want(G, indices, values, 4, 33, d, j0, j0 + width), G.copy()
            scatter_nonzero(plans, columns, indices, values, 4, 33, d, G, j0, j0 + width)
            assert rel_err(G, want) < TOL[dtype], (width, zero_share)
            outside = np.ones(cols, bool)
            outside[j0:j0 + width] = False
            assert np.array_equal(G[:, outside], before[:, outside]), "changed columns outside its range"
            vectors = d[j0:j0 + (width // lanes) * lanes].reshape(-1, lanes)
            live = np.flatnonzero((vectors != 0).any(axis=1))
            assert np.array_equal(columns[:len(live)], j0 + live * lanes), "listed the wrong vectors"


@by_width
def test_scatter_nonzero_counts_nan_as_non_zero(vbytes):
    cols = 2 * simd.lanes(np.dtype(np.float32), vbytes)
    d = np.zeros(cols, np.float32)
    d[cols - 3] = np.nan
    G = np.ones((3, cols), np.float32)
    plans = simd.listed_plans(0, cols, 4, vbytes)
    at_width(simd.scatter_nonzero, vbytes)(plans, np.empty(3, np.int64), np.array([1], np.int32),
                                           np.ones(1, np.float32), 0, 1, d, G, 0, cols)
    assert np.isnan(G[1, cols - 3]) and np.isfinite(np.delete(G.ravel(), 2 * cols - 3)).all()


@by_width
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nv", range(1, simd.MAX_TILE + 1))
def test_scatter_listed_tile_takes_its_vectors_in_any_order(dtype, nv, vbytes):
    rng = np.random.default_rng()
    lanes = simd.lanes(np.dtype(dtype), vbytes)
    cols = 2 * simd.MAX_TILE * lanes + 3
    starts = rng.permutation(2 * simd.MAX_TILE)[:2 * nv] * lanes              # two tiles, shuffled vectors
    d = rng.standard_normal(cols).astype(dtype)
    G = rng.standard_normal((20, cols)).astype(dtype)
    indices = rng.integers(0, 20, 9).astype(np.int32)
    values = rng.standard_normal(9).astype(dtype)
    picked = np.zeros(cols, bool)
    for c in starts:
        picked[c:c + lanes] = True
    want = G.astype(np.float64)
    np.add.at(want, (indices[:, None], np.flatnonzero(picked)[None, :]),
              values[:, None].astype(np.float64) * d[None, picked])
    simd.scatter_listed_tile(nv, indices, values, 0, 9, d, G, starts.astype(np.int64), 0, 2, vbytes)
    assert rel_err(G, want) < TOL[dtype]


@by_width
def test_gather_propagates_nan(vbytes):
    M = np.ones((4, 24), np.float32)
    M[2, 17] = np.nan
    h = np.zeros(24, np.float32)
    simd.gather_columns(np.array([0, 2], np.int32), np.ones(2, np.float32), 0, 2, M, h, 0, 24, vbytes)
    assert np.isnan(h[17]) and np.isfinite(np.delete(h, 17)).all()


def test_gather_refuses_strided_indices_or_values():
    M = np.ones((4, 8), np.float32)
    h = np.zeros(8, np.float32)
    values = np.ones(4, np.float32)
    with pytest.raises(Exception, match="C-contiguous"):
        simd.gather_columns(np.arange(4, dtype=np.int32)[::2], values[:2], 0, 2, M, h, 0, 8, 32)
    with pytest.raises(Exception, match="C-contiguous"):
        simd.gather_columns(np.arange(2, dtype=np.int32), values[::2], 0, 2, M, h, 0, 8, 32)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (784, 160)])
def test_aligned_arrays_start_on_a_cache_line(dtype, shape):
    like = np.zeros(1, dtype)
    for a in (simd.aligned_empty(shape, dtype), simd.empty_rows(*shape, like)):
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % simd.CACHE_LINE == 0
    src = np.arange(np.prod(shape) * 2, dtype=dtype).reshape(shape[0], -1)[:, ::2]   # strided
    copy = simd.aligned_copy(src)
    assert np.array_equal(copy, src) and copy.flags.c_contiguous and copy.ctypes.data % simd.CACHE_LINE == 0
    assert simd.aligned_copy(copy) is copy


def _row_tile_case(dtype, nv, streams, vbytes):
    """(j0, tiles, span, M, indices, values, Out) for the row-tile gathers: 37 stored entries, `streams` values
    per entry, a span of two tiles starting one vector in."""
    rng = np.random.default_rng()
    lanes = simd.lanes(np.dtype(dtype), vbytes)
    j0, tiles = lanes, 2
    cols = j0 + tiles * nv * lanes + 3
    M = rng.standard_normal((50, cols)).astype(dtype)
    indices = rng.integers(0, 50, 37).astype(np.int32)
    values = rng.standard_normal(streams * 37).astype(dtype)
    Out = rng.standard_normal((5, cols)).astype(dtype)
    return j0, tiles, slice(j0, j0 + tiles * nv * lanes), M, indices, values, Out


def _check_rows(Out, before, want, rows, span, dtype):
    assert rel_err(Out, want) < TOL[dtype]
    outside = np.ones(Out.shape, bool)
    outside[list(rows), span] = False
    assert np.array_equal(Out[outside], before[outside]), "changed elements outside its rows' tiles"


@by_width
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nv", range(1, simd.MAX_TILE + 1))
def test_gather_row_tile_writes_or_adds_into_one_row_of_its_output(dtype, nv, vbytes):
    j0, tiles, span, M, indices, values, Out = _row_tile_case(dtype, nv, 1, vbytes)
    before = Out.copy()
    for (lo, hi), add in itertools.product(((4, 33), (4, 4), (5, 6)), (True, False)):   # odd, even, no pixels
        simd.gather_row_tile(nv, indices, values, lo, hi, M, Out, 2, j0, tiles, add, vbytes)
        want = before.astype(np.float64)
        want[2, span] = (want[2, span] if add else 0) + values[lo:hi].astype(np.float64) @ M[indices[lo:hi], span]
        _check_rows(Out, before, want, (2,), span, dtype)
        before = Out.copy()


@by_width
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nv", range(1, simd.MAX_TILE + 1))
def test_gather_pair_tile_writes_or_adds_two_interleaved_sums_into_two_rows(dtype, nv, vbytes):
    j0, tiles, span, M, indices, values, Out = _row_tile_case(dtype, nv, 2, vbytes)
    values[11] = 0                                             # an entry of the second row only
    before = Out.copy()
    for (lo, hi), add, (ra, rb) in itertools.product(((4, 33), (4, 4), (36, 37)), (True, False), ((2, 3), (4, 1))):
        simd.gather_pair_tile(nv, indices, values, lo, hi, M, Out, ra, rb, j0, tiles, add, vbytes)
        want = before.astype(np.float64)
        for m, r in enumerate((ra, rb)):
            want[r, span] = ((want[r, span] if add else 0)
                             + values[2 * lo + m:2 * hi:2].astype(np.float64) @ M[indices[lo:hi], span])
        _check_rows(Out, before, want, (ra, rb), span, dtype)
        before = Out.copy()


@by_width
def test_gather_pair_tile_propagates_nan_to_its_own_row_only(vbytes):
    lanes = simd.lanes(np.dtype(np.float32), vbytes)
    M = np.ones((4, lanes), np.float32)
    values = np.ones(4, np.float32)
    values[2] = np.nan                                         # entry 1, first row
    Out = np.zeros((2, lanes), np.float32)
    simd.gather_pair_tile(1, np.array([0, 3], np.int32), values, 0, 2, M, Out, 0, 1, 0, 1, True, vbytes)
    assert np.isnan(Out[0]).all() and np.array_equal(Out[1], np.full(lanes, 2, np.float32))


# (the rows summed, the output rows) of each call: distinct rows, rows out of order, and for two rows one row
# asked for twice (an odd row count's last), which is summed once
ROW_CHOICES = {2: (((0, 1), (1, 2)), ((3, 1), (4, 0)), ((2, 2), (3, 3))),
               4: (((0, 1, 2, 3), (1, 2, 3, 4)), ((4, 0, 2, 1), (5, 0, 3, 2)))}


def rows_at_once(count, vbytes):
    """(compiled call taking tuples of rows, its max tile) of gather_two_rows_planned or gather_four_rows_planned."""
    if count == 4:
        return at_width(simd.gather_four_rows_planned, vbytes), simd.MAX_TILE_FOUR
    two = at_width(simd.gather_two_rows_planned, vbytes)

    def call(plan, V, vs, lo, hi, M, Out, rows, j0, j1, add, transposed):
        two(plan, V, vs[0], vs[1], lo, hi, M, Out, rows[0], rows[1], j0, j1, add, transposed)
    return call, simd.MAX_TILE


@by_width
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("j0", [0, 5])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("count", [2, 4])
def test_gather_rows_planned_writes_or_adds_rows_of_a_dense_product(count, dtype, j0, transposed, vbytes):
    """gather_two_rows_planned / gather_four_rows_planned: rows of U @ M (U = V or V.T), written or added."""
    rng = np.random.default_rng()
    product, max_tile = rows_at_once(count, vbytes)
    for width in widths(dtype, vbytes):
        cols = j0 + width + 2
        M = rng.standard_normal((40, cols)).astype(dtype)
        U = rng.standard_normal((5, 40)).astype(dtype)           # the rows summed: V, or V.T when transposed
        V = np.ascontiguousarray(U.T) if transposed else U
        for (lo, hi), add, (vs, rows) in itertools.product(((3, 38), (7, 7), (0, 1)), (True, False),
                                                           ROW_CHOICES[count]):
            Out = rng.standard_normal((6, cols)).astype(dtype)
            before = Out.copy()
            plan = simd.tile_plan(j0, j0 + width, M.itemsize, max_tile, vbytes)
            product(plan, V, vs, lo, hi, M, Out, rows, j0, j0 + width, add, transposed)
            span = slice(j0, j0 + width)
            want = before.astype(np.float64)
            for r, v in dict(zip(rows, vs)).items():
                want[r, span] = (want[r, span] if add else 0) + U[v, lo:hi].astype(np.float64) @ M[lo:hi, span]
            magnitude = (np.abs(before[list(rows), span]) * add
                         + np.abs(U[list(vs), lo:hi]) @ np.abs(M[lo:hi, span]))
            assert np.linalg.norm(Out - want) <= TOL[dtype] * np.linalg.norm(magnitude), (width, lo, hi, add)
            outside = np.ones(Out.shape, bool)
            outside[list(rows), span] = False
            assert np.array_equal(Out[outside], before[outside]), "changed elements outside its rows' columns"


@by_width
@pytest.mark.parametrize("count", [2, 4])
def test_gather_rows_propagate_nan_to_their_own_row_only(count, vbytes):
    cols = simd.lanes(np.dtype(np.float32), vbytes) + 3        # a whole vector and a scalar tail
    M = np.ones((3, cols), np.float32)
    V = np.ones((count, 3), np.float32)
    V[1, 2] = np.nan
    Out = np.zeros((count, cols), np.float32)
    product, max_tile = rows_at_once(count, vbytes)
    rows = tuple(range(count))
    product(simd.tile_plan(0, cols, 4, max_tile, vbytes), V, rows, 0, 3, M, Out, rows, 0, cols, False, False)
    others = np.delete(Out, 1, axis=0)
    assert np.isnan(Out[1]).all() and np.array_equal(others, np.full(others.shape, 3, np.float32))


def test_work_buffers_start_as_nan_under_the_test_hook_and_start_on_a_cache_line():
    """The conftest's poisoned allocators are in place: float buffers start as NaN, int buffers as they come."""
    assert simd.aligned_empty is simd.poisoned_aligned_empty and simd.scratch is simd.poisoned_scratch
    for dtype in (np.float32, np.float64):
        a = simd.aligned_empty((5, 3), dtype)
        assert a.dtype == dtype and a.shape == (5, 3) and a.flags.c_contiguous
        assert a.ctypes.data % simd.CACHE_LINE == 0 and np.isnan(a).all()
        assert np.isnan(simd.scratch((7,), dtype)).all()
        a = simd.aligned_copy(np.arange(12, dtype=dtype).reshape(3, 4)[:, 1:])
        assert a.ctypes.data % simd.CACHE_LINE == 0 and (a == np.arange(12).reshape(3, 4)[:, 1:]).all()
    ints = simd.aligned_empty(9, np.int64)
    assert ints.shape == (9,) and ints.ctypes.data % simd.CACHE_LINE == 0
