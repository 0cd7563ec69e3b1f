"""This machine's peaks, measured: FMA rate, and L1, L2 and memory read bandwidth.

    python bench/peaks.py [--json FILE]

`measure()` returns a dict (all rates per second, G = 1e9):

    fma_gfmas_per_core_<dtype>     vector fused multiply-adds per second on one thread, float32 and float64
    fma_gfmas_all_cores_<dtype>    the same on every core at once (one thread per core)
    clock_ghz_from_fma_latency     the core clock implied by one dependent chain of FMAs (see below)
    theory_fma_gfmas_per_core_<dtype>   FMA pipes x lanes per pipe x that clock, from the CPU model's table
    l1_gbps_per_core, l2_gbps_per_core   reads of a working set that fits L1 (16 KiB) / L2 but not L1 (512 KiB)
    memory_gbps_per_core, memory_gbps_all_cores   reads of 256 MiB, one thread / one thread per core

How each is measured. Every probe is a Numba function built from explicit LLVM vector operations (Numba
intrinsics, like the kernels' `kernels/cpu/simd.py`) at the kernels' vector width
`fastmnist.kernels.cpu.simd.VECTOR_BYTES`, which follows the host (64 bytes with AVX-512). The FMA probe
keeps FMA_CHAINS independent chains of `acc = fma(acc, m, a)` in vector registers, so nothing but the FMA
pipes limits it; the read probes sum the vectors of an array into READ_ACCUMULATORS independent vector
accumulators (vector loads and adds only; the adds are not the bound). Each probe is sized to take about
TRIAL_S, run TRIALS times, and the fastest trial is the peak: on a shared machine noise only ever slows a
trial down. Threads are Python threads running `nogil` functions, started together at a barrier; the rate
of all cores is the total work over the span from the first start to the last finish.

The theoretical FMA figure. A core with P FMA pipes of B bits retires P * B / (8 * itemsize) FMAs per
cycle whatever the vector width the code uses (a vector wider than a pipe is split across pipes or
cycles). `FMA_UNITS` lists P, B and the FMA latency in cycles for the CPUs LLVM names; for AMD Zen 4
(`znver4`): two 256-bit FMA pipes (FP0 and FP1; AVX-512 instructions run as two 256-bit halves), latency 4,
so 16 float32 or 8 float64 FMAs per cycle. The clock is not the TSC's nominal figure under a hypervisor or
with boost: it is measured as 1 / (the time of one FMA in a single dependent chain / its latency), so the
theory is FMAs per cycle x that clock, and the measured peak should come to about 100% of it (it cannot
exceed it unless the table is wrong). The nominal clock (/proc/cpuinfo's `cpu MHz`) is reported beside it.

`achieved(seconds, flop=..., nbytes=..., cores=...)` turns a benchmark's work into GFMA/s and GB/s and their
shares of these peaks, and `record(benchmark, ...)` adds them to a timed benchmark's extra_info;
`session_peaks()` measures once per process (the benchmarks' conftest stores it in pytest-benchmark's
machine_info).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import threading
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from fastmnist.kernels.cpu.simd import CACHE, VECTOR_BYTES, aligned_empty

FMA_CHAINS = 16 if VECTOR_BYTES == 64 else 12   # independent chains: > pipes x latency, < vector registers
READ_ACCUMULATORS = 8                            # independent sums: > the adds in flight the loads allow
TRIAL_S = 0.005
TRIALS = 30
L1_BYTES = 16 << 10
L2_BYTES = 512 << 10
MEMORY_BYTES = 256 << 20

# LLVM CPU name -> (FMA pipes per core, bits per pipe, FMA latency in cycles); from the vendors' optimisation
# manuals. CPUs not listed get no theoretical figure.
FMA_UNITS = {
    "znver4": (2, 256, 4),
    "znver3": (2, 256, 4),
    "znver2": (2, 256, 5),
    "znver5": (2, 512, 4),
    "sapphirerapids": (2, 512, 4),
    "emeraldrapids": (2, 512, 4),
    "icelake-server": (2, 512, 4),
    "cascadelake": (2, 512, 4),
    "skylake-avx512": (2, 512, 4),
    "skylake": (2, 256, 4),
    "alderlake": (2, 256, 4),
    "haswell": (2, 256, 5),
    "broadwell": (2, 256, 5),
}


# -- the probes, as explicit LLVM vector code -----------------------------------------------------------

def _vector(context, dtype):
    fty = context.get_value_type(dtype)
    return fty, ir.VectorType(fty, VECTOR_BYTES // (dtype.bitwidth // 8))


def _splat(builder, vty, x):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), vty.count), None))


def _fma(builder, a, b, c):
    vty = a.type
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]),
                                        f"llvm.fma.v{vty.count}{vty.element.intrinsic_name}")
    return builder.call(fn, [a, b, c])


def _horizontal_sum(builder, vectors):
    total = vectors[0]
    for v in vectors[1:]:
        total = builder.fadd(total, v)
    s = builder.extract_element(total, ir.Constant(ir.IntType(32), 0))
    for lane in range(1, total.type.count):
        s = builder.fadd(s, builder.extract_element(total, ir.Constant(ir.IntType(32), lane)))
    return s


def _fma_chains_intrinsic(chains):
    @intrinsic
    def fma_chains(typingctx, n, m, a):
        """n rounds of acc_k = fma(acc_k, m, a) on `chains` vectors; returns the sum of every lane."""
        if not (isinstance(n, types.Integer) and m in (types.float32, types.float64) and a == m):
            return None

        def codegen(context, builder, sig, args):
            fty, vty = _vector(context, sig.args[1])
            count = context.cast(builder, args[0], sig.args[0], types.int64)
            mv, av = _splat(builder, vty, args[1]), _splat(builder, vty, args[2])
            # distinct starting values, or LLVM would merge identical chains into one
            starts = [builder.fadd(av, _splat(builder, vty, ir.Constant(fty, float(k)))) for k in range(chains)]
            accs = [cgutils.alloca_once_value(builder, v) for v in starts]
            with cgutils.for_range(builder, count):
                for acc in accs:
                    builder.store(_fma(builder, builder.load(acc), mv, av), acc)
            return _horizontal_sum(builder, [builder.load(acc) for acc in accs])

        return m(n, m, a), codegen

    return fma_chains


_fma_many = _fma_chains_intrinsic(FMA_CHAINS)
_fma_one = _fma_chains_intrinsic(1)


@intrinsic
def _read_sum(typingctx, arr, reps):
    """Sums the C-contiguous 1-D float array `reps` times through READ_ACCUMULATORS vector accumulators
    (its length a multiple of READ_ACCUMULATORS vectors); returns the sum of every lane."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"
            and arr.dtype in (types.float32, types.float64) and isinstance(reps, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        fty, vty = _vector(context, sig.args[0].dtype)
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        data, (length,) = ary.data, cgutils.unpack_tuple(builder, ary.shape)
        i64 = ir.IntType(64)
        block = READ_ACCUMULATORS * vty.count
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vty, [ir.Constant(fty, 0.0)] * vty.count))
                for _ in range(READ_ACCUMULATORS)]
        blocks = builder.sdiv(length, ir.Constant(i64, block))
        with cgutils.for_range(builder, context.cast(builder, args[1], sig.args[1], types.int64)):
            with cgutils.for_range(builder, blocks) as loop:
                start = builder.mul(loop.index, ir.Constant(i64, block))
                for k, acc in enumerate(accs):
                    p = builder.gep(data, [builder.add(start, ir.Constant(i64, k * vty.count))], inbounds=True)
                    v = builder.load(builder.bitcast(p, vty.as_pointer()), align=VECTOR_BYTES)
                    builder.store(builder.fadd(builder.load(acc), v), acc)
        return _horizontal_sum(builder, [builder.load(acc) for acc in accs])

    return arr.dtype(arr, reps), codegen


@njit(nogil=True, cache=CACHE)
def _fma_many_run(n, m, a):
    return _fma_many(n, m, a)


@njit(nogil=True, cache=CACHE)
def _fma_one_run(n, m, a):
    return _fma_one(n, m, a)


@njit(nogil=True, cache=CACHE)
def _read_run(arr, reps):
    return _read_sum(arr, reps)


# -- timing -------------------------------------------------------------------------------------------

def _lanes(dtype) -> int:
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def _timed_threads(fn, args_per_thread) -> float:
    """Runs fn(*args) on one thread per entry, all released together; the span from first start to last end."""
    if len(args_per_thread) == 1:
        t0 = time.perf_counter()
        fn(*args_per_thread[0])
        return time.perf_counter() - t0
    barrier = threading.Barrier(len(args_per_thread))
    spans = [None] * len(args_per_thread)

    def work(i, args):
        barrier.wait()
        t0 = time.perf_counter()
        fn(*args)
        spans[i] = (t0, time.perf_counter())

    threads = [threading.Thread(target=work, args=(i, a)) for i, a in enumerate(args_per_thread)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return max(end for _, end in spans) - min(start for start, _ in spans)


def _best_rate(run, work_per_unit, units_for, trial_s=TRIAL_S, trials=TRIALS) -> float:
    """The highest rate (work per second) of `trials` trials of run(units), with units chosen so a trial takes
    about trial_s. units_for(scale) gives the units for a scale factor (1 = the smallest)."""
    run(units_for(1))                                    # compiles, touches the data
    scale = 1
    while True:
        elapsed = run(units_for(scale))
        if elapsed >= trial_s / 8 or scale >= 1 << 30:
            break
        scale *= 4
    scale = max(1, int(scale * trial_s / max(elapsed, 1e-9)))
    units = units_for(scale)
    best = min(run(units) for _ in range(trials))
    return work_per_unit * units / best


def fma_rate(dtype="float32", threads=1, chains=FMA_CHAINS, **timing) -> float:
    """Vector FMAs per second (GFMA/s) with `threads` threads each running its own chains."""
    dtype = np.dtype(dtype).type
    fn = {FMA_CHAINS: _fma_many_run, 1: _fma_one_run}[chains]
    m, a = dtype(0.999), dtype(0.001)

    def run(n):
        return _timed_threads(fn, [(n, m, a)] * threads)

    return _best_rate(run, chains * _lanes(dtype) * threads / 1e9, lambda s: 1024 * s, **timing)


def read_bandwidth(nbytes, threads=1, array=None, **timing) -> float:
    """GB/s reading a float32 working set of `nbytes` (split between the threads) over and over."""
    lanes = _lanes(np.float32)
    per_thread = nbytes // threads // 4 // (READ_ACCUMULATORS * lanes) * (READ_ACCUMULATORS * lanes)
    if array is None:
        array = aligned_empty(per_thread * threads, np.float32)
        array.fill(1.0)
    parts = [array[i * per_thread:(i + 1) * per_thread] for i in range(threads)]

    def run(reps):
        return _timed_threads(_read_run, [(p, reps) for p in parts])

    return _best_rate(run, per_thread * threads * 4 / 1e9, lambda s: s, **timing)


# -- the whole measurement ----------------------------------------------------------------------------

def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_name() -> str:
    import llvmlite.binding as llvm
    return llvm.get_host_cpu_name()


def _cpuinfo(field):
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def theory_fma_per_cycle(dtype="float32", cpu=None):
    """FMAs per cycle per core from FMA_UNITS, or None for a CPU not listed."""
    units = FMA_UNITS.get(cpu or cpu_name())
    if units is None:
        return None
    pipes, bits, _ = units
    return pipes * bits // (8 * np.dtype(dtype).itemsize)


def measure(trial_s=TRIAL_S, trials=TRIALS) -> dict:
    """Every peak of this machine (see the module's docstring)."""
    t0 = time.perf_counter()
    timing = dict(trial_s=trial_s, trials=trials)
    n = cores()
    cpu = cpu_name()
    out = {"cpu": cpu, "model": _cpuinfo("model name") or platform.processor(), "cores": n,
           "vector_bytes": VECTOR_BYTES, "fma_chains": FMA_CHAINS}
    mhz = _cpuinfo("cpu MHz")
    out["nominal_clock_ghz"] = float(mhz) / 1e3 if mhz else None
    for dtype in ("float32", "float64"):
        out[f"fma_gfmas_per_core_{dtype}"] = fma_rate(dtype, 1, **timing)
        out[f"fma_gfmas_all_cores_{dtype}"] = fma_rate(dtype, n, **timing)
    latency = FMA_UNITS.get(cpu, (None, None, 4))[2]
    chain = fma_rate("float32", 1, chains=1, **timing) / _lanes(np.float32)     # dependent vector FMAs / ns
    out["clock_ghz_from_fma_latency"] = chain * latency
    out["fma_latency_cycles_assumed"] = latency
    for dtype in ("float32", "float64"):
        per_cycle = theory_fma_per_cycle(dtype, cpu)
        out[f"theory_fma_per_cycle_{dtype}"] = per_cycle
        out[f"theory_fma_gfmas_per_core_{dtype}"] = per_cycle * out["clock_ghz_from_fma_latency"] if per_cycle else None
    out["l1_gbps_per_core"] = read_bandwidth(L1_BYTES, 1, **timing)
    out["l2_gbps_per_core"] = read_bandwidth(L2_BYTES, 1, **timing)
    big = aligned_empty(MEMORY_BYTES // 4, np.float32)
    big.fill(1.0)
    out["memory_gbps_per_core"] = read_bandwidth(MEMORY_BYTES, 1, array=big, trial_s=0, trials=trials)
    out["memory_gbps_all_cores"] = read_bandwidth(MEMORY_BYTES, n, array=big, trial_s=0, trials=trials)
    del big
    out["measure_s"] = time.perf_counter() - t0
    return out


@functools.lru_cache(maxsize=None)
def _session_peaks() -> dict:
    return measure()


def session_peaks() -> dict:
    """measure(), once per process (a copy: callers may change it)."""
    return dict(_session_peaks())


def achieved(seconds, *, flop=0.0, nbytes=0.0, cores=1, dtype="float32", peaks=None) -> dict:
    """A benchmark's rates and their shares of this machine's peaks.

    flop counts a multiply-add as 2 operations (as the benchmarks' `flop` does), so GFMA/s = flop / 2 / s;
    nbytes is the data it moved. Benchmarks count the dense products' work, so a kernel that skips work
    (the sparse first layer's zero pixels) can show a share above what its FMA units did. `cores` is how
    many cores ran it: the FMA share is against `cores` times the per-core peak (or the all-core peak when
    cores is every core), the L2 share against `cores` times the per-core L1 or L2 bandwidth, the memory
    share against one core's or all cores' memory bandwidth. Returns gfmas, fma_share, gbps, l1_share,
    l2_share and memory_share (shares as fractions; keys only for what was given).
    """
    peaks = session_peaks() if peaks is None else peaks
    dtype = np.dtype(dtype).name
    all_cores = cores >= peaks["cores"]
    out = {}
    if flop:
        out["gfmas"] = flop / 2 / seconds / 1e9
        peak = (peaks[f"fma_gfmas_all_cores_{dtype}"] if all_cores
                else cores * peaks[f"fma_gfmas_per_core_{dtype}"])
        out["fma_share"] = out["gfmas"] / peak
    if nbytes:
        out["gbps"] = nbytes / seconds / 1e9
        out["l1_share"] = out["gbps"] / (min(cores, peaks["cores"]) * peaks["l1_gbps_per_core"])
        out["l2_share"] = out["gbps"] / (min(cores, peaks["cores"]) * peaks["l2_gbps_per_core"])
        out["memory_share"] = out["gbps"] / peaks["memory_gbps_all_cores" if all_cores else "memory_gbps_per_core"]
    return out


def record(benchmark, *, flop=0.0, nbytes=0.0, cores=1, dtype="float32") -> dict:
    """Adds achieved()'s figures at a pytest-benchmark benchmark's median time to its extra_info (nothing
    when it was not timed, so the untimed test run measures no peaks). Returns what it added."""
    stats = getattr(benchmark, "stats", None)
    if stats is None or not stats.stats.data or not (flop or nbytes):
        return {}
    figures = achieved(stats.stats.median, flop=flop, nbytes=nbytes, cores=cores, dtype=dtype)
    benchmark.extra_info.update(figures, cores=cores)
    return figures


def _report(p: dict) -> str:
    def f(x, unit=""):
        return "-" if x is None else f"{x:.3g}{unit}"

    lines = [f"{p['model']} ({p['cpu']}), {p['cores']} cores, {p['vector_bytes']}-byte vectors, "
             f"nominal clock {f(p['nominal_clock_ghz'], ' GHz')}, clock from FMA latency "
             f"{f(p['clock_ghz_from_fma_latency'], ' GHz')} (latency {p['fma_latency_cycles_assumed']} cycles)"]
    for dtype in ("float32", "float64"):
        theory = p[f"theory_fma_gfmas_per_core_{dtype}"]
        share = f" = {p[f'fma_gfmas_per_core_{dtype}'] / theory:.0%} of" if theory else ", theory"
        lines.append(f"FMA {dtype}: {f(p[f'fma_gfmas_per_core_{dtype}'])} GFMA/s per core{share} "
                     f"{p[f'theory_fma_per_cycle_{dtype}'] or '?'} per cycle x clock ({f(theory)}); "
                     f"{f(p[f'fma_gfmas_all_cores_{dtype}'])} GFMA/s on all cores")
    clock = p["clock_ghz_from_fma_latency"]
    lines.append(f"read bandwidth per core: L1 {f(p['l1_gbps_per_core'])} GB/s "
                 f"({p['l1_gbps_per_core'] / clock:.0f} B/cycle), L2 {f(p['l2_gbps_per_core'])} GB/s "
                 f"({p['l2_gbps_per_core'] / clock:.0f} B/cycle), memory {f(p['memory_gbps_per_core'])} GB/s; "
                 f"memory on all cores {f(p['memory_gbps_all_cores'])} GB/s")
    lines.append(f"measured in {p['measure_s']:.2f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args(argv)
    peaks = measure()
    print(_report(peaks))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(peaks, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
