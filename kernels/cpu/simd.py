"""Explicit SIMD loops for the sparse first layer, written as Numba intrinsics (LLVM vectors).

LLVM does not vectorise these loops well by itself: it cannot prove that the output does not alias the
weights, so it keeps the accumulators in memory and adds checks per stored pixel. Here a tile of `nv`
vectors of `vbytes` bytes stays in registers for the whole pixel loop.

Every intrinsic and loop takes the vector width in bytes as its last argument, a compile-time constant.
VECTOR_BYTES follows the host's widest vectors as LLVM reports its CPU features: 64 with AVX-512, 32 with
AVX or AVX2, 16 elsewhere (SSE2, ARM NEON, ...); each kernel compiles for `width(kernel)`, the host's width
capped at what measured fastest for it (PREFERRED). FASTMNIST_VECTOR_BYTES (16, 32 or 64) forces one width
on every kernel. Numba's on-disk cache does not see these module-level constants, so a forced width
compiles the kernels in memory only (CACHE is False): a cached kernel is always one built for the host.

gather_tiles(nv)(indices, values, lo, hi, W, h, j0, ntiles, vbytes):
    h[j0:j0 + ntiles*T] = sum over p in [lo, hi) of values[p] * W[indices[p], j0:j0 + ntiles*T]
scatter_tiles(nv)(indices, values, lo, hi, dz, acc, j0, ntiles, vbytes):
    acc[indices[p], j0:j0 + ntiles*T] += values[p] * dz[j0:j0 + ntiles*T] for p in [lo, hi)
with T = nv * vbytes / itemsize (`lanes`). indices may be None: then values[p] goes with row p of W or acc, a dense
product with no index to load per row. Callers check bounds: the intrinsics index without checks. W, acc are
C-contiguous 2-D arrays, h and dz contiguous 1-D ones, all of one float dtype. Products are fused
multiply-adds, so results equal a plain loop's within rounding. gather_columns and scatter_columns do the
same over any column range [j0, j1): its whole vectors in the fewest passes of tiles of at most MAX_TILE
vectors (`tile_plan`; each pass reads the pixels' indices and values once more), the rest one element at a
time; gather_planned and scatter_planned do it with a plan made once by kernels that call them row after row.
scatter_nonzero skips the vectors of dz that are all zero (scatter_listed_tiles: tiles of listed vectors).
gather_pair_tiles(nv) sums two interleaved streams of values over one index list into two rows of Out;
gather_two_rows_tiles(nv) and gather_two_rows_planned do two rows of a dense product V @ W (or V.T @ W) at once.
gather_tile / scatter_tile pick the intrinsic for a tile width known only at run time.
"""

from __future__ import annotations

import functools
import os
import sys

import numba
import numpy as np
from llvmlite import ir
from numba import literally, njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from ..interface import SettingError

WIDTHS = (16, 32, 64)


def host_vector_bytes() -> int:
    """The widest vector registers of the CPU Numba compiles for: NUMBA_CPU_FEATURES if set, else the host's
    features as LLVM reports them."""
    forced = numba.config.CPU_FEATURES
    if forced:
        features = {f[1:] for f in forced.split(",") if f.startswith("+")}
    else:
        import llvmlite.binding as llvm
        features = {name for name, on in llvm.get_host_cpu_features().items() if on}
    if "avx512f" in features:
        return 64
    if "avx2" in features or "avx" in features:
        return 32
    return 16


def _chosen_vector_bytes() -> int:
    raw = os.environ.get("FASTMNIST_VECTOR_BYTES", "").strip()
    if not raw:
        return host_vector_bytes()
    if raw not in {str(w) for w in WIDTHS}:
        raise SettingError(f"FASTMNIST_VECTOR_BYTES must be one of {', '.join(map(str, WIDTHS))}, got {raw!r}")
    return int(raw)


HOST_VECTOR_BYTES = host_vector_bytes()
VECTOR_BYTES = _chosen_vector_bytes()
FORCED = bool(os.environ.get("FASTMNIST_VECTOR_BYTES", "").strip())
CACHE = not FORCED      # the kernels that read a width from a module constant cache only the host's policy

# Per kernel, the widest vectors worth using when the host has them, for float32 and for float64: in the lab on
# a 2-core Zen 4 (AVX-512 on 256-bit pipes; bench/lab/README.md has the measurements) the sparse forward and
# the batch-1 epoch ran faster on 32-byte vectors in float32 and on 64-byte ones in float64; the weight
# gradient, the fused head and the minibatch epoch on 64-byte ones in both.
PREFERRED = {"sparse_forward": (32, 64), "batch1_epoch": (32, 64), "weight_grad": (64, 64), "head": (64, 64),
             "minibatch_epoch": (64, 64), "dense_small": (32, 32)}


def width(kernel: str, dtype=np.float32) -> int:
    """The vector width in bytes that `kernel` (a key of PREFERRED) compiles for in `dtype`: the host's,
    capped at the kernel's preference, unless FASTMNIST_VECTOR_BYTES forces one for every kernel."""
    float32, float64 = PREFERRED[kernel]
    return VECTOR_BYTES if FORCED else min(VECTOR_BYTES, float64 if np.dtype(dtype).itemsize == 8 else float32)


@functools.lru_cache(maxsize=None)
def width_for(kernel: str):
    """An intrinsic width_for(kernel)(a) for compiled code: width(kernel, a.dtype) as a compile-time constant
    (a literal, as the SIMD loops' vbytes argument needs), for kernels whose best width differs by dtype."""
    @intrinsic
    def _width(typingctx, like):
        if not isinstance(like, types.Array):
            return None
        w = width(kernel, numba.np.numpy_support.as_dtype(like.dtype))

        def codegen(context, builder, signature, args):
            return context.get_constant(types.int64, w)

        return types.literal(w)(like), codegen

    return _width


CACHE_LINE = 64   # the kernels' matrices start on a cache line: a vector load then never straddles two lines


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a cache line."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(nbytes + CACHE_LINE, np.uint8)
    start = -buf.ctypes.data % CACHE_LINE
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def scratch(shape, dtype) -> np.ndarray:
    """np.empty(shape, dtype) for a float buffer a kernel fills."""
    return np.empty(shape, dtype)


# -- test hook: poisoned work buffers ------------------------------------------------------------------------
# The unit tests (tests/conftest.py), and FASTMNIST_POISON_SCRATCH=1 at import (the subprocesses they start),
# put these in place of aligned_empty and scratch: float buffers then start as NaN, so that a kernel that reads
# one before writing it gives NaN every time rather than whatever the memory last held (numpy hands small
# buffers back from a cache of freed ones, so that is often an earlier array's NaN or data). Callers reach the
# allocators through this module (simd.aligned_empty), so the swap reaches them; the production allocators
# test nothing.

def poisoned_aligned_empty(shape, dtype, _allocate=aligned_empty) -> np.ndarray:
    """Test hook: aligned_empty with float arrays filled with NaN (_allocate: the unpoisoned allocator)."""
    out = _allocate(shape, dtype)
    if out.dtype.kind == "f":
        out.fill(np.nan)
    return out


def poisoned_scratch(shape, dtype) -> np.ndarray:
    """Test hook: scratch filled with NaN."""
    return np.full(shape, np.nan, dtype)


def poison_work_buffers(set_attribute=setattr) -> None:
    """Test hook: the poisoned allocators in place of aligned_empty and scratch, for everything that allocates
    through this module. `set_attribute`: a pytest monkeypatch's setattr puts the originals back after a test."""
    module = sys.modules[__name__]
    set_attribute(module, "aligned_empty", poisoned_aligned_empty)
    set_attribute(module, "scratch", poisoned_scratch)


if os.environ.get("FASTMNIST_POISON_SCRATCH", "").strip() == "1":
    poison_work_buffers()


def aligned_copy(a) -> np.ndarray:
    """`a` as a C-contiguous array starting on a cache line (a itself when it already is one)."""
    a = np.asarray(a)
    if a.flags.c_contiguous and a.ctypes.data % CACHE_LINE == 0:
        return a
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


@njit(cache=CACHE)
def empty_rows(rows, cols, like):
    """Inside kernels: an uninitialised (rows, cols) array of like's dtype starting on a cache line
    (Numba's own arrays start on 32 bytes)."""
    per_line = CACHE_LINE // like.itemsize
    buf = np.empty(rows * cols + per_line, like.dtype)
    start = -(buf.ctypes.data // like.itemsize) % per_line
    return buf[start:start + rows * cols].reshape((rows, cols))


def lanes(dtype, vbytes=None) -> int:
    """Lanes of one vector of vbytes bytes (VECTOR_BYTES by default) for a numpy float dtype."""
    return (vbytes or VECTOR_BYTES) // np.dtype(dtype).itemsize


def _parts(context, builder, ty, value):
    arr = context.make_array(ty)(context, builder, value)
    return arr.data, cgutils.unpack_tuple(builder, arr.shape)


def _vector_type(context, dtype, vbytes):
    fty = context.get_value_type(dtype)
    return fty, ir.VectorType(fty, vbytes // (dtype.bitwidth // 8))


def _width_of(ty) -> int:
    """The vector width in bytes an intrinsic is compiled for: its last argument, a compile-time constant."""
    value = getattr(ty, "literal_value", getattr(ty, "value", None))
    if value not in WIDTHS:
        raise TypingError(f"simd: the vector width must be a constant in {WIDTHS}, got {ty}")
    return value


def _splat(builder, vty, x):
    v = ir.Constant(vty, ir.Undefined)
    v = builder.insert_element(v, x, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), vty.count), None))


def _index(builder, ind_ty, ind_p, p):
    if ind_p is None:                                   # no indices: value p goes with row p
        return p
    r = builder.load(builder.gep(ind_p, [p], inbounds=True))
    if r.type.width == 64:
        return r
    extend = builder.sext if ind_ty.dtype.signed else builder.zext
    return extend(r, ir.IntType(64))


def _fma(builder, a, b, c):
    vty = a.type
    name = f"llvm.fma.v{vty.count}{vty.element.intrinsic_name}"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]), name)
    return builder.call(fn, [a, b, c])


def _vector_ptr(builder, base, offset, vty):
    return builder.bitcast(builder.gep(base, [offset], inbounds=True), vty.as_pointer())


def _check_types(indices, values, matrix, out, out_ndim=1, values_ndim=1):
    ok = ((indices is types.none or isinstance(indices, types.Array) and isinstance(indices.dtype, types.Integer)
           and indices.ndim == 1 and indices.layout == "C")
          and isinstance(values, types.Array) and values.dtype in (types.float32, types.float64)
          and values.ndim == values_ndim and values.layout == "C"
          and isinstance(matrix, types.Array) and matrix.ndim == 2 and matrix.layout == "C"
          and isinstance(out, types.Array) and out.ndim == out_ndim and out.layout == "C"
          and matrix.dtype == values.dtype == out.dtype)
    if not ok:
        raise TypeError("cpu_simd: need integer indices (or None), float values and C-contiguous arrays of one dtype")


def _gather_codegen(nv, vbytes, context, builder, ind_ty, val_ty, w_ty, args, out_p, out_off, j0_v, nt_v, accumulate):
    """The tile loop of a gather: out[out_off + col : + T] (+)= sum of values[p] * W[indices[p], col : + T]."""
    fty, vty = _vector_type(context, w_ty.dtype, vbytes)
    i64 = ir.IntType(64)
    ind_p = None if ind_ty is types.none else _parts(context, builder, ind_ty, args[0])[0]
    val_p, _ = _parts(context, builder, val_ty, args[1])
    lo_v, hi_v = args[2], args[3]
    w_p, (_, width) = _parts(context, builder, w_ty, args[4])
    sets = [[cgutils.alloca_once(builder, vty) for _ in range(nv)] for _ in range(2)]
    tile = vty.count * nv
    one, two = ir.Constant(i64, 1), ir.Constant(i64, 2)

    def accumulate_pixel(p, accs, col):
        r = _index(builder, ind_ty, ind_p, p)
        x = _splat(builder, vty, builder.load(builder.gep(val_p, [p], inbounds=True)))
        row = builder.add(builder.mul(r, width), col)
        for v, a in enumerate(accs):
            w = builder.load(_vector_ptr(builder, w_p, builder.add(row, ir.Constant(i64, v * vty.count)), vty),
                             align=4)
            builder.store(_fma(builder, x, w, builder.load(a)), a)

    count = builder.sub(hi_v, lo_v)
    with cgutils.for_range(builder, nt_v) as tloop:
        col = builder.add(j0_v, builder.mul(tloop.index, ir.Constant(i64, tile)))
        outs = [_vector_ptr(builder, out_p, builder.add(builder.add(out_off, col), ir.Constant(i64, v * vty.count)),
                            vty) for v in range(nv)]
        for v in range(nv):
            start = ir.Constant(vty, None)
            if accumulate is not None:                    # an i1 value: start from what out holds
                start = builder.select(accumulate, builder.load(outs[v], align=4), start)
            builder.store(start, sets[0][v])
            builder.store(ir.Constant(vty, None), sets[1][v])
        # two independent sets of accumulators (even and odd pixels) hide the latency of the FMAs
        with cgutils.for_range(builder, builder.ashr(count, one)) as ploop:
            p = builder.add(lo_v, builder.mul(ploop.index, two))
            accumulate_pixel(p, sets[0], col)
            accumulate_pixel(builder.add(p, one), sets[1], col)
        with builder.if_then(builder.icmp_signed("!=", builder.and_(count, one), ir.Constant(i64, 0))):
            accumulate_pixel(builder.sub(hi_v, one), sets[0], col)
        for v, (a, b) in enumerate(zip(*sets)):
            builder.store(builder.fadd(builder.load(a), builder.load(b)), outs[v], align=4)


@functools.lru_cache(maxsize=None)
def gather_tiles(nv: int):
    @intrinsic
    def _gather(typingctx, indices, values, lo, hi, W, h, j0, ntiles, vbytes):
        _check_types(indices, values, W, h)
        sig = types.void(indices, values, types.int64, types.int64, W, h, types.int64, types.int64, vbytes)
        width = _width_of(vbytes)

        def codegen(context, builder, signature, args):
            ind_ty, val_ty, _, _, w_ty, h_ty = signature.args[:6]
            h_p, _ = _parts(context, builder, h_ty, args[5])
            _gather_codegen(nv, width, context, builder, ind_ty, val_ty, w_ty, args, h_p,
                            ir.Constant(ir.IntType(64), 0), args[6], args[7], accumulate=None)
            return context.get_dummy_value()

        return sig, codegen

    return _gather


@functools.lru_cache(maxsize=None)
def gather_row_tiles(nv: int):
    """gather_row_tiles(nv)(indices, values, lo, hi, W, Out, row, j0, ntiles, accumulate): as gather_tiles,
    into row `row` of the C-contiguous 2-D Out, adding to what it holds when `accumulate`. No row view is
    made, so nothing is reference-counted per call."""
    @intrinsic
    def _gather_row(typingctx, indices, values, lo, hi, W, Out, row, j0, ntiles, accumulate, vbytes):
        _check_types(indices, values, W, Out, out_ndim=2)
        sig = types.void(indices, values, types.int64, types.int64, W, Out, types.int64, types.int64, types.int64,
                         types.boolean, vbytes)
        width = _width_of(vbytes)

        def codegen(context, builder, signature, args):
            ind_ty, val_ty, _, _, w_ty, out_ty = signature.args[:6]
            out_p, (_, out_width) = _parts(context, builder, out_ty, args[5])
            _gather_codegen(nv, width, context, builder, ind_ty, val_ty, w_ty, args, out_p,
                            builder.mul(args[6], out_width), args[7], args[8], accumulate=args[9])
            return context.get_dummy_value()

        return sig, codegen

    return _gather_row


def _two_sums_codegen(nv, vbytes, context, builder, w_ty, out_ty, args, entry):
    """The tile loop of gather_pair_tiles and gather_two_rows_tiles: rows row_a and row_b of Out each get their
    own stream of values summed over one list of rows of W, so each tile of W is loaded once for both. args:
    (lo, hi, W, Out, row_a, row_b, j0, ntiles, accumulate); entry(p) gives entry p's row of W and its two values
    (i64, scalars)."""
    _sums_codegen(nv, vbytes, context, builder, w_ty, out_ty, args[:4], args[4:6], args[6:9], entry)


def _sums_codegen(nv, vbytes, context, builder, w_ty, out_ty, arrays, rows, rest, entry):
    """The tile loop of the multi-row gathers: each of `rows` (i64 values) of Out gets its own stream of values
    summed over one list of rows of W, so each tile of W is loaded once for all of them. One set of accumulators
    per output row: its chain of FMAs hides the others' latency. arrays: (lo, hi, W, Out); rest: (j0, ntiles,
    accumulate); entry(p) gives entry p's row of W and one value per output row (i64, scalars)."""
    fty, vty = _vector_type(context, w_ty.dtype, vbytes)
    i64 = ir.IntType(64)
    lo_v, hi_v = arrays[0], arrays[1]
    w_p, (_, width) = _parts(context, builder, w_ty, arrays[2])
    out_p, (_, out_width) = _parts(context, builder, out_ty, arrays[3])
    starts = [builder.mul(row, out_width) for row in rows]
    j0_v, nt_v, accumulate = rest
    sets = [[cgutils.alloca_once(builder, vty) for _ in range(nv)] for _ in rows]
    tile = vty.count * nv
    with cgutils.for_range(builder, nt_v) as tloop:
        col = builder.add(j0_v, builder.mul(tloop.index, ir.Constant(i64, tile)))
        outs = [[_vector_ptr(builder, out_p, builder.add(builder.add(start, col), ir.Constant(i64, v * vty.count)),
                             vty) for v in range(nv)] for start in starts]
        for accs, ptrs in zip(sets, outs):
            for a, ptr in zip(accs, ptrs):
                builder.store(builder.select(accumulate, builder.load(ptr, align=4), ir.Constant(vty, None)), a)
        with cgutils.for_range(builder, builder.sub(hi_v, lo_v)) as ploop:
            r, values = entry(builder.add(lo_v, ploop.index))
            xs = [_splat(builder, vty, x) for x in values]
            row = builder.add(builder.mul(r, width), col)
            for v in range(nv):
                w = builder.load(_vector_ptr(builder, w_p, builder.add(row, ir.Constant(i64, v * vty.count)), vty),
                                 align=4)
                for x, accs in zip(xs, sets):
                    builder.store(_fma(builder, x, w, builder.load(accs[v])), accs[v])
        for accs, ptrs in zip(sets, outs):
            for a, ptr in zip(accs, ptrs):
                builder.store(builder.load(a), ptr, align=4)


_TWO_SUMS_REST = (types.int64,) * 4 + (types.boolean,)     # row_a, row_b, j0, ntiles, accumulate


@functools.lru_cache(maxsize=None)
def gather_pair_tiles(nv: int):
    """gather_pair_tiles(nv)(indices, values, lo, hi, W, Out, row_a, row_b, j0, ntiles, accumulate): for
    (row, m) in ((row_a, 0), (row_b, 1)), Out[row, j0:j0 + ntiles*T] (+)= sum over p in [lo, hi) of
    values[2p + m] * W[indices[p], j0:j0 + ntiles*T], adding to what Out holds when `accumulate`: two sums over
    one list of W's rows (two adjacent input columns of a weight gradient)."""
    @intrinsic
    def _gather_pair(typingctx, indices, values, lo, hi, W, Out, row_a, row_b, j0, ntiles, accumulate, vbytes):
        _check_types(indices, values, W, Out, out_ndim=2)
        if indices is types.none:
            raise TypeError("cpu_simd: a pair gather needs its index array")
        sig = types.void(indices, values, types.int64, types.int64, W, Out, *_TWO_SUMS_REST, vbytes)
        width = _width_of(vbytes)

        def codegen(context, builder, signature, args):
            ind_ty, val_ty, _, _, w_ty, out_ty = signature.args[:6]
            ind_p = _parts(context, builder, ind_ty, args[0])[0]
            val_p, _ = _parts(context, builder, val_ty, args[1])

            def entry(p):
                pair = builder.mul(p, ir.Constant(ir.IntType(64), 2))
                return _index(builder, ind_ty, ind_p, p), [
                    builder.load(builder.gep(val_p, [builder.add(pair, ir.Constant(ir.IntType(64), m))], inbounds=True))
                    for m in range(2)]

            _two_sums_codegen(nv, width, context, builder, w_ty, out_ty, args[2:], entry)
            return context.get_dummy_value()

        return sig, codegen

    return _gather_pair


@functools.lru_cache(maxsize=None)
def gather_two_rows_tiles(nv: int):
    """gather_two_rows_tiles(nv)(V, va, vb, lo, hi, W, Out, row_a, row_b, j0, ntiles, accumulate, transposed): for
    (row, v) in ((row_a, va), (row_b, vb)), Out[row, j0:j0 + ntiles*T] (+)= sum over p in [lo, hi) of
    U[v, p] * W[p, j0:j0 + ntiles*T], with U = V.T if `transposed` else V: two rows of a dense product U @ W,
    each tile of W loaded once for both (transposed: V's columns read in place, no transposed copy)."""
    @intrinsic
    def _gather_two_rows(typingctx, V, va, vb, lo, hi, W, Out, row_a, row_b, j0, ntiles, accumulate, transposed,
                         vbytes):
        _check_types(types.none, V, W, Out, out_ndim=2, values_ndim=2)
        sig = types.void(V, types.int64, types.int64, types.int64, types.int64, W, Out, *_TWO_SUMS_REST, types.boolean,
                         vbytes)
        width = _width_of(vbytes)

        def codegen(context, builder, signature, args):
            v_ty, w_ty, out_ty = signature.args[0], signature.args[5], signature.args[6]
            v_p, (_, v_width) = _parts(context, builder, v_ty, args[0])
            one = ir.Constant(ir.IntType(64), 1)
            step = builder.select(args[12], v_width, one)            # from one term to the next
            across = builder.select(args[12], one, v_width)          # from one of U's rows to the next
            firsts = [builder.mul(args[1], across), builder.mul(args[2], across)]

            def entry(p):
                at = builder.mul(p, step)
                return p, [builder.load(builder.gep(v_p, [builder.add(first, at)], inbounds=True)) for first in firsts]

            _two_sums_codegen(nv, width, context, builder, w_ty, out_ty, args[3:12], entry)
            return context.get_dummy_value()

        return sig, codegen

    return _gather_two_rows


@functools.lru_cache(maxsize=None)
def gather_four_rows_tiles(nv: int):
    """gather_four_rows_tiles(nv)(V, vs, lo, hi, W, Out, rows, j0, ntiles, accumulate, transposed): for each
    (row, v) of zip(rows, vs) (tuples of four ints), Out[row, j0:j0 + ntiles*T] (+)= sum over p in [lo, hi) of
    U[v, p] * W[p, j0:j0 + ntiles*T], U = V.T if `transposed` else V: four rows of a dense product U @ W, each
    tile of W loaded once for four rows (a 4 x nv register tile; gather_two_rows_tiles is the 2 x nv one)."""
    @intrinsic
    def _gather_four_rows(typingctx, V, vs, lo, hi, W, Out, rows, j0, ntiles, accumulate, transposed, vbytes):
        _check_types(types.none, V, W, Out, out_ndim=2, values_ndim=2)
        four = types.UniTuple(types.int64, 4)
        sig = types.void(V, four, types.int64, types.int64, W, Out, four, types.int64, types.int64, types.boolean,
                         types.boolean, vbytes)
        width = _width_of(vbytes)

        def codegen(context, builder, signature, args):
            v_ty, w_ty, out_ty = signature.args[0], signature.args[4], signature.args[5]
            v_p, (_, v_width) = _parts(context, builder, v_ty, args[0])
            one = ir.Constant(ir.IntType(64), 1)
            step = builder.select(args[10], v_width, one)            # from one term to the next
            across = builder.select(args[10], one, v_width)          # from one of U's rows to the next
            firsts = [builder.mul(v, across) for v in cgutils.unpack_tuple(builder, args[1], 4)]

            def entry(p):
                at = builder.mul(p, step)
                return p, [builder.load(builder.gep(v_p, [builder.add(first, at)], inbounds=True)) for first in firsts]

            _sums_codegen(nv, width, context, builder, w_ty, out_ty, (args[2], args[3], args[4], args[5]),
                          cgutils.unpack_tuple(builder, args[6], 4), args[7:10], entry)
            return context.get_dummy_value()

        return sig, codegen

    return _gather_four_rows


def _scatter_codegen(nv, vbytes, context, builder, ind_ty, val_ty, dz_ty, acc_ty, args, nt_v, tile_columns):
    """The tile loop of a scatter: acc[indices[p], c_v : c_v + lanes] += values[p] * dz[c_v : c_v + lanes] for
    the nv columns c_v that tile_columns(tile index) gives (i64 values)."""
    fty, vty = _vector_type(context, acc_ty.dtype, vbytes)
    ind_p = None if ind_ty is types.none else _parts(context, builder, ind_ty, args[0])[0]
    val_p, _ = _parts(context, builder, val_ty, args[1])
    lo_v, hi_v = args[2], args[3]
    dz_p, _ = _parts(context, builder, dz_ty, args[4])
    acc_p, (_, width) = _parts(context, builder, acc_ty, args[5])
    with cgutils.for_range(builder, nt_v) as tloop:
        cols = tile_columns(tloop.index)
        d = [builder.load(_vector_ptr(builder, dz_p, c, vty), align=4) for c in cols]
        with cgutils.for_range(builder, builder.sub(hi_v, lo_v)) as ploop:
            p = builder.add(lo_v, ploop.index)
            r = _index(builder, ind_ty, ind_p, p)
            x = _splat(builder, vty, builder.load(builder.gep(val_p, [p], inbounds=True)))
            row = builder.mul(r, width)
            for c, dv in zip(cols, d):
                ptr = _vector_ptr(builder, acc_p, builder.add(row, c), vty)
                builder.store(_fma(builder, x, dv, builder.load(ptr, align=4)), ptr, align=4)


@functools.lru_cache(maxsize=None)
def scatter_tiles(nv: int):
    @intrinsic
    def _scatter(typingctx, indices, values, lo, hi, dz, acc, j0, ntiles, vbytes):
        _check_types(indices, values, acc, dz)
        sig = types.void(indices, values, types.int64, types.int64, dz, acc, types.int64, types.int64, vbytes)
        width = _width_of(vbytes)

        def codegen(context, builder, signature, args):
            ind_ty, val_ty, _, _, dz_ty, acc_ty = signature.args[:6]
            i64 = ir.IntType(64)
            count = _vector_type(context, acc_ty.dtype, width)[1].count

            def tile_columns(t):
                col = builder.add(args[6], builder.mul(t, ir.Constant(i64, count * nv)))
                return [builder.add(col, ir.Constant(i64, v * count)) for v in range(nv)]

            _scatter_codegen(nv, width, context, builder, ind_ty, val_ty, dz_ty, acc_ty, args, args[7], tile_columns)
            return context.get_dummy_value()

        return sig, codegen

    return _scatter


@functools.lru_cache(maxsize=None)
def scatter_listed_tiles(nv: int):
    """scatter_listed_tiles(nv)(indices, values, lo, hi, dz, acc, columns, first, ntiles): as scatter_tiles over
    the vectors starting at columns[first], columns[first + 1], ... (ntiles * nv of them, each a multiple of
    the lane count), in any order: a scatter that skips the vectors of dz that are all zero."""
    @intrinsic
    def _scatter_listed(typingctx, indices, values, lo, hi, dz, acc, columns, first, ntiles, vbytes):
        _check_types(indices, values, acc, dz)
        if not (isinstance(columns, types.Array) and columns.dtype == types.int64 and columns.ndim == 1
                and columns.layout == "C"):
            raise TypeError("cpu_simd: the column list must be a contiguous int64 array")
        sig = types.void(indices, values, types.int64, types.int64, dz, acc, columns, types.int64, types.int64, vbytes)
        width = _width_of(vbytes)

        def codegen(context, builder, signature, args):
            ind_ty, val_ty, _, _, dz_ty, acc_ty, col_ty = signature.args[:7]
            i64 = ir.IntType(64)
            col_p, _ = _parts(context, builder, col_ty, args[6])

            def tile_columns(t):
                at = builder.add(args[7], builder.mul(t, ir.Constant(i64, nv)))
                return [builder.load(builder.gep(col_p, [builder.add(at, ir.Constant(i64, v))], inbounds=True))
                        for v in range(nv)]

            _scatter_codegen(nv, width, context, builder, ind_ty, val_ty, dz_ty, acc_ty, args, args[8], tile_columns)
            return context.get_dummy_value()

        return sig, codegen

    return _scatter_listed


MAX_TILE = 6      # vectors per tile: two sets of accumulators (even and odd pixels) and the broadcast value
                  # take 13 of the 16 registers (checked in the assembly: no spills)
G1, G2, G3, G4, G5, G6 = (gather_tiles(nv) for nv in range(1, MAX_TILE + 1))
S1, S2, S3, S4, S5, S6 = (scatter_tiles(nv) for nv in range(1, MAX_TILE + 1))
R1, R2, R3, R4, R5, R6 = (gather_row_tiles(nv) for nv in range(1, MAX_TILE + 1))
L1, L2, L3, L4, L5, L6 = (scatter_listed_tiles(nv) for nv in range(1, MAX_TILE + 1))
P1, P2, P3, P4, P5, P6 = (gather_pair_tiles(nv) for nv in range(1, MAX_TILE + 1))
T1, T2, T3, T4, T5, T6 = (gather_two_rows_tiles(nv) for nv in range(1, MAX_TILE + 1))
# four rows x nv vectors of accumulators, a vector of W and four broadcast values: 4 * nv + 5 registers, so up to
# 6 vectors with AVX-512's 32 registers and 2 with AVX2's 16
MAX_TILE_FOUR = 6 if HOST_VECTOR_BYTES >= 64 else 2
F1, F2, F3, F4, F5, F6 = (gather_four_rows_tiles(nv) for nv in range(1, 7))


@njit(cache=CACHE)
def tile_plan(j0, j1, itemsize, max_tile=MAX_TILE, vbytes=VECTOR_BYTES):
    """(nv, wide, narrow): the whole vectors of columns j0:j1 as `wide` tiles of nv + 1 vectors followed by
    `narrow` tiles of nv, in the fewest passes of at most max_tile (<= MAX_TILE) vectors; (j1 - j0) % lanes
    columns remain."""
    vectors = (j1 - j0) // (vbytes // itemsize)
    passes = -(-vectors // max_tile)
    if passes == 0:
        return 0, 0, 0
    nv = vectors // passes
    wide = vectors - nv * passes
    return nv, wide, passes - wide


@njit(cache=CACHE)
def gather_tile(nv, indices, values, lo, hi, M, h, j0, nt, vbytes):
    literally(vbytes)
    if nt == 0 or nv == 0:
        return
    if nv == 1:
        G1(indices, values, lo, hi, M, h, j0, nt, vbytes)
    elif nv == 2:
        G2(indices, values, lo, hi, M, h, j0, nt, vbytes)
    elif nv == 3:
        G3(indices, values, lo, hi, M, h, j0, nt, vbytes)
    elif nv == 4:
        G4(indices, values, lo, hi, M, h, j0, nt, vbytes)
    elif nv == 5:
        G5(indices, values, lo, hi, M, h, j0, nt, vbytes)
    else:
        G6(indices, values, lo, hi, M, h, j0, nt, vbytes)


@njit(cache=CACHE)
def gather_row_tile(nv, indices, values, lo, hi, M, Out, row, j0, nt, accumulate, vbytes):
    literally(vbytes)
    if nt == 0 or nv == 0:
        return
    if nv == 1:
        R1(indices, values, lo, hi, M, Out, row, j0, nt, accumulate, vbytes)
    elif nv == 2:
        R2(indices, values, lo, hi, M, Out, row, j0, nt, accumulate, vbytes)
    elif nv == 3:
        R3(indices, values, lo, hi, M, Out, row, j0, nt, accumulate, vbytes)
    elif nv == 4:
        R4(indices, values, lo, hi, M, Out, row, j0, nt, accumulate, vbytes)
    elif nv == 5:
        R5(indices, values, lo, hi, M, Out, row, j0, nt, accumulate, vbytes)
    else:
        R6(indices, values, lo, hi, M, Out, row, j0, nt, accumulate, vbytes)


@njit(cache=CACHE)
def gather_pair_tile(nv, indices, values, lo, hi, M, Out, row_a, row_b, j0, nt, accumulate, vbytes):
    literally(vbytes)
    if nt == 0 or nv == 0:
        return
    if nv == 1:
        P1(indices, values, lo, hi, M, Out, row_a, row_b, j0, nt, accumulate, vbytes)
    elif nv == 2:
        P2(indices, values, lo, hi, M, Out, row_a, row_b, j0, nt, accumulate, vbytes)
    elif nv == 3:
        P3(indices, values, lo, hi, M, Out, row_a, row_b, j0, nt, accumulate, vbytes)
    elif nv == 4:
        P4(indices, values, lo, hi, M, Out, row_a, row_b, j0, nt, accumulate, vbytes)
    elif nv == 5:
        P5(indices, values, lo, hi, M, Out, row_a, row_b, j0, nt, accumulate, vbytes)
    else:
        P6(indices, values, lo, hi, M, Out, row_a, row_b, j0, nt, accumulate, vbytes)


@njit(cache=CACHE)
def gather_two_rows_tile(nv, V, va, vb, lo, hi, M, Out, row_a, row_b, j0, nt, accumulate, transposed, vbytes):
    literally(vbytes)
    if nt == 0 or nv == 0:
        return
    if nv == 1:
        T1(V, va, vb, lo, hi, M, Out, row_a, row_b, j0, nt, accumulate, transposed, vbytes)
    elif nv == 2:
        T2(V, va, vb, lo, hi, M, Out, row_a, row_b, j0, nt, accumulate, transposed, vbytes)
    elif nv == 3:
        T3(V, va, vb, lo, hi, M, Out, row_a, row_b, j0, nt, accumulate, transposed, vbytes)
    elif nv == 4:
        T4(V, va, vb, lo, hi, M, Out, row_a, row_b, j0, nt, accumulate, transposed, vbytes)
    elif nv == 5:
        T5(V, va, vb, lo, hi, M, Out, row_a, row_b, j0, nt, accumulate, transposed, vbytes)
    else:
        T6(V, va, vb, lo, hi, M, Out, row_a, row_b, j0, nt, accumulate, transposed, vbytes)


@njit(cache=CACHE)
def gather_four_rows_tile(nv, V, vs, lo, hi, M, Out, rows, j0, nt, accumulate, transposed, vbytes):
    literally(vbytes)
    if nt == 0 or nv == 0:
        return
    if nv == 1:
        F1(V, vs, lo, hi, M, Out, rows, j0, nt, accumulate, transposed, vbytes)
    elif nv == 2:
        F2(V, vs, lo, hi, M, Out, rows, j0, nt, accumulate, transposed, vbytes)
    elif nv == 3:
        F3(V, vs, lo, hi, M, Out, rows, j0, nt, accumulate, transposed, vbytes)
    elif nv == 4:
        F4(V, vs, lo, hi, M, Out, rows, j0, nt, accumulate, transposed, vbytes)
    elif nv == 5:
        F5(V, vs, lo, hi, M, Out, rows, j0, nt, accumulate, transposed, vbytes)
    else:
        F6(V, vs, lo, hi, M, Out, rows, j0, nt, accumulate, transposed, vbytes)


@njit(cache=CACHE)
def scatter_tile(nv, indices, values, lo, hi, d, G, j0, nt, vbytes):
    literally(vbytes)
    if nt == 0 or nv == 0:
        return
    if nv == 1:
        S1(indices, values, lo, hi, d, G, j0, nt, vbytes)
    elif nv == 2:
        S2(indices, values, lo, hi, d, G, j0, nt, vbytes)
    elif nv == 3:
        S3(indices, values, lo, hi, d, G, j0, nt, vbytes)
    elif nv == 4:
        S4(indices, values, lo, hi, d, G, j0, nt, vbytes)
    elif nv == 5:
        S5(indices, values, lo, hi, d, G, j0, nt, vbytes)
    else:
        S6(indices, values, lo, hi, d, G, j0, nt, vbytes)


@njit(cache=CACHE)
def scatter_listed_tile(nv, indices, values, lo, hi, d, G, columns, first, nt, vbytes):
    literally(vbytes)
    if nt == 0 or nv == 0:
        return
    if nv == 1:
        L1(indices, values, lo, hi, d, G, columns, first, nt, vbytes)
    elif nv == 2:
        L2(indices, values, lo, hi, d, G, columns, first, nt, vbytes)
    elif nv == 3:
        L3(indices, values, lo, hi, d, G, columns, first, nt, vbytes)
    elif nv == 4:
        L4(indices, values, lo, hi, d, G, columns, first, nt, vbytes)
    elif nv == 5:
        L5(indices, values, lo, hi, d, G, columns, first, nt, vbytes)
    else:
        L6(indices, values, lo, hi, d, G, columns, first, nt, vbytes)


@njit(cache=CACHE, fastmath={"contract"})
def gather_columns(indices, values, lo, hi, M, h, j0, j1, vbytes):
    """h[j0:j1] = sum over p in [lo, hi) of values[p] * M[indices[p], j0:j1] in vectors of vbytes bytes (a
    constant); j0 starts a tile."""
    literally(vbytes)
    gather_planned(tile_plan(j0, j1, M.itemsize, MAX_TILE, vbytes), indices, values, lo, hi, M, h, j0, j1, vbytes)


@njit(cache=CACHE, fastmath={"contract"}, inline="always")
def gather_planned(plan, indices, values, lo, hi, M, h, j0, j1, vbytes):
    """gather_columns with its tile_plan(j0, j1, M.itemsize, ..., vbytes) made once by a caller that repeats it
    over many rows (the plan's integer divisions and an extra call are a noticeable share of a short gather)."""
    lanes = vbytes // M.itemsize
    nv, wide, narrow = plan
    gather_tile(nv + 1, indices, values, lo, hi, M, h, j0, wide, vbytes)
    k = j0 + wide * (nv + 1) * lanes
    gather_tile(nv, indices, values, lo, hi, M, h, k, narrow, vbytes)
    k1 = k + narrow * nv * lanes
    if k1 == j1:
        return
    for j in range(k1, j1):
        h[j] = 0
    for p in range(lo, hi):
        x = values[p]
        m = M[p] if indices is None else M[indices[p]]
        for j in range(k1, j1):
            h[j] += x * m[j]


@njit(cache=CACHE, fastmath={"contract"}, inline="always")
def gather_two_rows_planned(plan, V, va, vb, lo, hi, M, Out, row_a, row_b, j0, j1, accumulate, transposed, vbytes):
    """Out[row, j0:j1] (+)= U[v, lo:hi] @ M[lo:hi, j0:j1] for (row, v) in ((row_a, va), (row_b, vb)), U = V.T if
    `transposed` else V, with plan = tile_plan(j0, j1, M.itemsize): two rows of a dense product at once
    (gather_two_rows_tiles), the columns after the last whole vector one element at a time."""
    lanes = vbytes // M.itemsize
    nv, wide, narrow = plan
    gather_two_rows_tile(nv + 1, V, va, vb, lo, hi, M, Out, row_a, row_b, j0, wide, accumulate, transposed, vbytes)
    k = j0 + wide * (nv + 1) * lanes
    gather_two_rows_tile(nv, V, va, vb, lo, hi, M, Out, row_a, row_b, k, narrow, accumulate, transposed, vbytes)
    k1 = k + narrow * nv * lanes
    for m in range(1 if row_b == row_a else 2):     # one row asked for twice (an odd row count's last): once
        row, v = (row_a, va) if m == 0 else (row_b, vb)
        for j in range(k1, j1):
            if not accumulate:
                Out[row, j] = 0
            for p in range(lo, hi):
                Out[row, j] += (V[p, v] if transposed else V[v, p]) * M[p, j]


@njit(cache=CACHE, fastmath={"contract"}, inline="always")
def gather_four_rows_planned(plan, V, vs, lo, hi, M, Out, rows, j0, j1, accumulate, transposed, vbytes):
    """Out[rows[m], j0:j1] (+)= U[vs[m], lo:hi] @ M[lo:hi, j0:j1] for m in 0..3 (four distinct rows), U = V.T if
    `transposed` else V, with plan = tile_plan(j0, j1, M.itemsize, MAX_TILE_FOUR): gather_two_rows_planned for
    four rows at once (gather_four_rows_tiles)."""
    lanes = vbytes // M.itemsize
    nv, wide, narrow = plan
    gather_four_rows_tile(nv + 1, V, vs, lo, hi, M, Out, rows, j0, wide, accumulate, transposed, vbytes)
    k = j0 + wide * (nv + 1) * lanes
    gather_four_rows_tile(nv, V, vs, lo, hi, M, Out, rows, k, narrow, accumulate, transposed, vbytes)
    k1 = k + narrow * nv * lanes
    for m in range(4):
        row, v = rows[m], vs[m]
        for j in range(k1, j1):
            if not accumulate:
                Out[row, j] = 0
            for p in range(lo, hi):
                Out[row, j] += (V[p, v] if transposed else V[v, p]) * M[p, j]


@njit(cache=CACHE, fastmath={"contract"}, inline="always")
def _scatter_rest(indices, values, lo, hi, d, G, k1, j1):
    """The columns k1:j1 after a scatter's last whole vector, one element at a time."""
    if k1 == j1:
        return
    for p in range(lo, hi):
        x = values[p]
        g = G[p] if indices is None else G[indices[p]]
        for j in range(k1, j1):
            g[j] += x * d[j]


@njit(cache=CACHE, fastmath={"contract"})
def scatter_columns(indices, values, lo, hi, d, G, j0, j1, vbytes):
    """G[indices[p], j0:j1] += values[p] * d[j0:j1] for p in [lo, hi), in vectors of vbytes bytes (a constant);
    j0 starts a tile."""
    literally(vbytes)
    scatter_planned(tile_plan(j0, j1, G.itemsize, MAX_TILE, vbytes), indices, values, lo, hi, d, G, j0, j1, vbytes)


@njit(cache=CACHE, fastmath={"contract"}, inline="always")
def scatter_planned(plan, indices, values, lo, hi, d, G, j0, j1, vbytes):
    """scatter_columns with its tile_plan(j0, j1, G.itemsize, ..., vbytes) made once by the caller."""
    lanes = vbytes // G.itemsize
    nv, wide, narrow = plan
    scatter_tile(nv + 1, indices, values, lo, hi, d, G, j0, wide, vbytes)
    k = j0 + wide * (nv + 1) * lanes
    scatter_tile(nv, indices, values, lo, hi, d, G, k, narrow, vbytes)
    k1 = k + narrow * nv * lanes
    _scatter_rest(indices, values, lo, hi, d, G, k1, j1)


@njit(cache=CACHE)
def listed_plans(j0, j1, itemsize, vbytes):
    """plans[m] = tile_plan for m whole vectors, m = 0 .. the whole vectors of columns j0:j1: scatter_nonzero's
    plans for every count of non-zero vectors, made once by the caller."""
    lanes = vbytes // itemsize
    vectors = (j1 - j0) // lanes
    plans = np.empty((vectors + 1, 3), np.int64)
    for m in range(vectors + 1):
        plans[m, 0], plans[m, 1], plans[m, 2] = tile_plan(0, m * lanes, itemsize, MAX_TILE, vbytes)
    return plans


@njit(cache=CACHE, fastmath={"contract"}, inline="always")
def scatter_nonzero(plans, columns, indices, values, lo, hi, d, G, j0, j1, vbytes):
    """scatter_columns that skips the whole vectors of d[j0:j1] that are all zero (which would leave G as it
    is), e.g. the step of a layer whose ReLU units are mostly off. `plans` is listed_plans(j0, j1, itemsize);
    `columns` an int64 scratch array of at least len(plans) - 1 elements. NaN counts as non-zero."""
    lanes = vbytes // G.itemsize
    m = 0
    k1 = j0 + (plans.shape[0] - 1) * lanes
    for c in range(j0, k1, lanes):
        live = False
        for j in range(c, c + lanes):
            live |= d[j] != 0
        if live:
            columns[m] = c
            m += 1
    nv, wide, narrow = plans[m, 0], plans[m, 1], plans[m, 2]
    scatter_listed_tile(nv + 1, indices, values, lo, hi, d, G, columns, m - m, wide, vbytes)
    scatter_listed_tile(nv, indices, values, lo, hi, d, G, columns, wide * (nv + 1), narrow, vbytes)
    _scatter_rest(indices, values, lo, hi, d, G, k1, j1)
