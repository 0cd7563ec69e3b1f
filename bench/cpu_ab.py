"""A/B comparisons on numba-cpu that alternate two versions in one process (this machine's speed drifts by
up to 2x between runs, so only ratios within one process mean anything). Median seconds per call:

- step-blocks: branchnet's float32 full-batch step with the first layer's weight gradient from column blocks
  against the scatter version (the backend's blocks withheld);
- step-workspace: the same step keeping its batch-sized buffers on the net against fresh ones every step;
- adam: cpu_optim.adam_range against v1, the earlier loop (indices from a run-time start, three divisions),
  over 250,000 float32 parameters on one thread;
- activation: cpu_activation's activation and derivative passes over 50,000 x 160 float32 units (102 ReLU,
  52 tanh) against v1, the earlier loops (indices from each run's start, tanh_float32 under Python's error
  model), parallel over rows; the results are checked to be identical first;
- batch1: grokking-3layer's batch-1 epoch (1,000 samples, float32 and float64) with the output layer's
  product as a vectorised reduction (cpu_epoch._dot) against v1, a plain loop; first checked to agree;
- step-noise: round by round, a 256 MB parallel copy, a register-bound loop on two threads, branchnet's
  float32 step and the CPU time stolen by the hypervisor during it (which of them the step's swings from
  one call to the next follow);
- planned: the kernels that gather or scatter once per row (the batch-1 epoch, branchnet's fused head, the
  `fast` minibatch epoch) with the tile plan made once per call of the kernel against v1, made per row;
- tile6: branchnet's float32 fused head with SIMD tiles of up to 6 vectors against v1, up to 5;
- skip-zero: the batch-1 epoch whose first-layer update skips the vectors of its step that are all zero (units
  whose ReLU is off) against v1, which updates them all; results are bit-identical;
- loop-limits (not an A/B): the batch-1 first-layer loops in cycles per 32-byte vector (L1 and L2) beside a
  contiguous vectorised update, the clock from a chain of FMAs, and the epoch without pixels;
- head-phases: branchnet's fused head taking each block of rows phase by phase against v1, row by row;
- forward-tiles: branchnet's first-layer sparse forward with tiles of at most 4 vectors against v1, at most 6,
  float32 and float64, then whole float32 steps with each;
- dense-head: branchnet's fused head with dense gathers and scatters (no index array) against v1, which reads
  an index array 0, 1, 2, ... for every row; then whole float32 steps with each;
- column-pairs: branchnet's float32 first-layer weight gradient from column blocks gathering two adjacent input
  columns at once against v1, one column per gather (on a real step's arguments); then whole steps with each;
- two-rows: branchnet's float32 fused head with its three big products two rows at a time against v1, one row at
  a time (both with dW2's products on a transposed copy of the block, as then); then whole steps with each;
- in-place-columns: the fused head with dW2's products reading the block's columns of A1 in place against v1,
  which copies the block transposed first; then whole steps with each;
- step-parts (not an A/B): branchnet's float32 step beside its three big kernels run alone on a real step's
  arguments (first-layer forward, fused head, first-layer weight gradient);
- batch1-parts (not an A/B): the batch-1 epoch beside its first layer's gather and update loops run alone,
  with the weights in the L2 cache and folded into the L1 cache, float32 and float64.

    python bench/cpu_ab.py [step-blocks step-workspace adam activation batch1 step-noise planned tile6 skip-zero
                            batch1-parts loop-limits head-phases step-parts forward-tiles dense-head
                            column-pairs two-rows in-place-columns]
"""

from __future__ import annotations

import os
import sys
import time
import types

import fastmnist  # first: it sets OpenBLAS's thread timeout
import numpy as np
from numba import njit, prange

from fastmnist import data
from fastmnist.kernels import cpu_activation, cpu_epoch, cpu_head, cpu_loss, cpu_minibatch, cpu_optim, cpu_simd
from fastmnist.train import build_net, init_params, make_recipe


def alternate(variants, rounds, report=None):
    """{name: median seconds} of the zero-argument callables in `variants`, called in turn `rounds` times
    after one untimed round; report(times), if given, after each timed round ({name: [seconds so far]})."""
    times = {name: [] for name in variants}
    for r in range(rounds + 1):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - t)
        if r and report is not None:
            report(times)
    return {name: float(np.median(t)) for name, t in times.items()}


def _branchnet_step(dtype=np.float32):
    """(backend, net, a zero-argument call of one full-batch branchnet step on numba-cpu in `dtype`)."""
    be = fastmnist.get_backend("numba-cpu")
    recipe = make_recipe("branchnet")
    dtype = np.dtype(dtype)
    net = build_net(be, recipe, *init_params(recipe, np.random.RandomState(recipe.seed)), dtype)
    train = data.load_splits("50k-10k-10k").train
    X, y = be.to_float(train.images, dtype), train.labels.astype(np.int64)
    rng = np.random.RandomState(5)
    return be, net, lambda: be.train_epoch(net, X, y, None, rng, None)


def _steps_ab(label, module, name, v1, rounds, exact=True, current=None):
    """Whole float32 branchnet steps, two nets from the same start, one with `module.name` swapped for v1 (and the
    other for `current`, if given); their first steps are checked to give the same loss and count first (the
    loss within rounding unless `exact`)."""
    step, step_v1 = (_branchnet_step()[2] for _ in range(2))
    if current is not None and current is not getattr(module, name):
        step = (lambda call: lambda: _swapped(module, name, current, call))(step)
    pair = {f"branchnet step {label}": step, "branchnet step v1": lambda: _swapped(module, name, v1, step_v1)}
    a, b = (f() for f in pair.values())
    assert a == b if exact else a[1] == b[1] and abs(a[0] - b[0]) <= 1e-5 * abs(b[0]), \
        f"the two versions disagree: {a} {b}"
    return alternate(pair, rounds)


def _captured(kernels, call):
    """The arguments of the first call of each kernel named in `kernels` ((module, attribute) pairs) while
    `call()` runs, the kernels running as usual."""
    calls = [None] * len(kernels)
    saved = [getattr(module, attr) for module, attr in kernels]

    def recording(k):
        def kernel(*args):
            if calls[k] is None:
                calls[k] = args
            return saved[k](*args)
        return kernel

    for k, (module, attr) in enumerate(kernels):
        setattr(module, attr, recording(k))
    try:
        call()
    finally:
        for (module, attr), f in zip(kernels, saved):
            setattr(module, attr, f)
    assert all(c is not None for c in calls), [attr for (_, attr), c in zip(kernels, calls) if c is None]
    return calls


def step_blocks(rounds=15):
    be, _, step = _branchnet_step()
    blocks = be._inputs.blocks

    def without():
        be._inputs.blocks = lambda X: None
        try:
            step()
        finally:
            be._inputs.blocks = blocks

    return alternate({"column blocks": step, "scatter": without}, rounds)


def step_workspace(rounds=15):
    _, net, step = _branchnet_step()

    def fresh():
        net.workspace.clear()
        step()

    return alternate({"kept buffers": step, "fresh buffers": fresh}, rounds)


@njit(cache=True, error_model="numpy")
def adam_range_v1(p, g, v, s, lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2, start, stop):
    for i in range(start, stop):
        gi = g[i]
        vi = v[i] * beta1 + one_minus_beta1 * gi
        si = s[i] * beta2 + one_minus_beta2 * (gi * gi)
        v[i] = vi
        s[i] = si
        p[i] -= lr * (vi / c1) / (np.sqrt(si / c2) + eps)


def adam(rounds=41):
    f = np.float32
    n = 784 * 320
    rng = np.random.default_rng(0)
    p, g, v, s = (rng.random(n).astype(f) for _ in range(4))
    args = (f(0.006), f(0.9), f(0.1), f(0.999), f(0.001), f(1e-8), f(1 - 0.9 ** 5), f(1 - 0.999 ** 5), 0, n)
    return alternate({"vectorised": lambda: cpu_optim.adam_range(p, g, v, s, *args),
                      "v1": lambda: adam_range_v1(p, g, v, s, *args)}, rounds)


tanh_float32_v1 = njit(cache=True, fastmath={"contract"})(cpu_activation.tanh_float32.py_func)


@njit(cache=True, fastmath={"contract"})
def activate_runs_v1(v, runs):
    for r in range(runs.shape[0]):
        j0, j1, code = runs[r, 0], runs[r, 1], runs[r, 2]
        if code == cpu_activation.RELU:
            for j in range(j0, j1):
                z = v[j]
                v[j] = z if z >= 0 else z * 0
        elif code == cpu_activation.TANH:
            for j in range(j0, j1):
                v[j] = tanh_float32_v1(v[j])


@njit(cache=True, fastmath={"contract"})
def times_derivative_runs_v1(d, h, runs):
    one, zero = np.float32(1), np.float32(0)
    for r in range(runs.shape[0]):
        j0, j1, code = runs[r, 0], runs[r, 1], runs[r, 2]
        if code == cpu_activation.RELU:
            for j in range(j0, j1):
                d[j] = d[j] * (one if h[j] > 0 else zero)
        elif code == cpu_activation.TANH:
            for j in range(j0, j1):
                d[j] = d[j] * (1 - h[j] * h[j])


def _passes(activate, derivative):
    @njit(parallel=True)
    def run(H, D, runs):
        for i in prange(H.shape[0]):
            activate(H[i], runs)
            derivative(D[i], H[i], runs)
    return run


def activation(rounds=15):
    rng = np.random.default_rng(0)
    H0 = rng.standard_normal((50_000, 160)).astype(np.float32)
    D = rng.standard_normal((50_000, 160)).astype(np.float32)
    codes = np.zeros(160, np.int8)
    codes[:102], codes[102:154] = cpu_activation.RELU, cpu_activation.TANH
    runs = cpu_activation.code_runs(codes)
    new = _passes(cpu_activation.activate_runs, cpu_activation.times_derivative_runs)
    old = _passes(activate_runs_v1, times_derivative_runs_v1)
    a, b = H0.copy(), H0.copy()
    new(a, D.copy(), runs)
    old(b, D.copy(), runs)
    assert np.array_equal(a, b), "the two versions disagree"
    Hs, Ds = (H0.copy(), H0.copy()), (D.copy(), D.copy())       # each version repeats its passes in place
    return alternate({"vectorised": lambda: new(Hs[0], Ds[0], runs),
                      "v1": lambda: old(Hs[1], Ds[1], runs)}, rounds)


def _copies(args):
    """Fresh copies of the arrays among a kernel call's arguments, each starting on a cache line as the backend's
    arrays do (a plain NumPy copy starts 0, 16, 32 or 48 bytes past one, which changes the kernels' speed)."""
    return [cpu_simd.aligned_copy(a.copy()) if isinstance(a, np.ndarray) else a for a in args]


def _recompiled(kernel, **replace):
    """`kernel` compiled again (not cached) from its own source, with some of the functions it calls replaced:
    how the v1 versions here are made without a second copy of the kernel."""
    f = kernel.py_func
    g = types.FunctionType(f.__code__, dict(f.__globals__, **replace), f.__name__, f.__defaults__, f.__closure__)
    return njit(**{k: v for k, v in kernel.targetoptions.items() if k not in ("cache", "nopython")})(g)


_dot_v1 = njit(cache=True, fastmath={"contract"})(cpu_epoch._dot.py_func)     # the same loop, in its written order


def _batch1_epoch(kernel, dtype):
    """A zero-argument call of `kernel` (cpu_epoch.sgd_epoch_batch1 or a version of it) on grokking-3layer's
    batch-1 epoch (1,000 samples) with its own weights, cache-line aligned as the backend stores them."""
    be = fastmnist.get_backend("numba-cpu")
    images = data.load_splits("first-1000").train
    c = be._inputs.get(be.to_float(images.images, dtype))
    rng = np.random.default_rng(0)
    W1 = cpu_simd.aligned_copy((rng.standard_normal((784, 40)) * 0.05).astype(dtype))
    W2 = (rng.standard_normal((40, 10)) * 0.2).astype(dtype)
    codes1 = cpu_activation.layer_codes(((0, 40, "relu"),), 40)
    codes2 = cpu_activation.layer_codes(((0, 10, "identity"),), 10)
    none = np.zeros((0, 0), dtype)
    args = (c.indptr, c.indices, c.values, np.arange(1000), images.labels.astype(np.int64), W1, W2,
            codes1, codes2, none, none, dtype(0.005), cpu_loss.LOSS_CODES["mse"], dtype(0))
    return lambda: kernel(*args)


def _batch1_variants(old, names):
    """{"<dtype> <names[0]>": cpu_epoch.sgd_epoch_batch1, "<dtype> <names[1]>": old} on grokking-3layer's
    batch-1 epoch in float32 and float64, each pair first checked to agree."""
    variants = {}
    for dtype in (np.float32, np.float64):
        pair = [_batch1_epoch(kernel, dtype) for kernel in (cpu_epoch.sgd_epoch_batch1, old)]
        first = [epoch() for epoch in pair]
        assert first[0][1] == first[1][1] and abs(first[0][0] - first[1][0]) <= 1e-4 * first[1][0], first
        for label, epoch in zip(names, pair):
            variants[f"{np.dtype(dtype).name} {label}"] = epoch
    return variants


def batch1(rounds=41):
    """The batch-1 epoch of grokking-3layer (1,000 samples) in float32 and float64."""
    return alternate(_batch1_variants(_recompiled(cpu_epoch.sgd_epoch_batch1, _dot=_dot_v1), ("vectorised", "v1")),
                     rounds)


@njit(inline="always")
def _gather_per_call_v1(plan, indices, values, lo, hi, M, h, j0, j1):
    cpu_simd.gather_columns(indices, values, lo, hi, M, h, j0, j1)


@njit(inline="always")
def _scatter_per_call_v1(plan, indices, values, lo, hi, d, G, j0, j1):
    cpu_simd.scatter_columns(indices, values, lo, hi, d, G, j0, j1)


def _fast_epoch(epoch):
    """One epoch of the `fast` preset (float32, fixed order) on its own network, with cpu_minibatch's epoch
    kernel swapped for `epoch` during the call."""
    be = fastmnist.get_backend("numba-cpu")
    recipe = make_recipe("fast")
    dtype = np.dtype("float32")
    net = build_net(be, recipe, *init_params(recipe, np.random.RandomState(recipe.seed)), dtype)
    train = data.load_splits(recipe.split).train
    X, y = be.to_float(train.images, dtype), train.labels.astype(np.int64)
    order = np.random.default_rng(0).permutation(X.shape[0])
    return lambda: _swapped(cpu_minibatch, "minibatch_epoch", epoch, lambda: be.train_epoch(
        net, X, y, recipe.batch_size, np.random.RandomState(1), order))


def _swapped(module, name, kernel, call):
    saved = getattr(module, name)
    setattr(module, name, kernel)
    try:
        return call()
    finally:
        setattr(module, name, saved)


def planned(rounds=15):
    """The kernels that call cpu_simd's gathers and scatters once per row with the tile plan made once
    (gather_planned / scatter_planned, inlined) against v1, the same kernels calling gather_columns /
    scatter_columns, which make the plan in every call: the batch-1 epoch, branchnet's step (the fused head,
    cpu_head._rows) and the `fast` preset's minibatch epoch. Results are identical (checked first)."""
    v1 = dict(gather_planned=_gather_per_call_v1, scatter_planned=_scatter_per_call_v1)
    variants = _batch1_variants(_recompiled(cpu_epoch.sgd_epoch_batch1, **v1), ("planned", "v1"))
    head_v1 = _recompiled(cpu_head.head_step, _rows=_recompiled(cpu_head._rows, **v1))
    epochs = {"fast epoch planned": _fast_epoch(cpu_minibatch.minibatch_epoch),
              "fast epoch v1": _fast_epoch(_recompiled(cpu_minibatch.minibatch_epoch, gather_planned=_gather_per_call_v1))}
    a, b = (f() for f in epochs.values())
    assert a == b if exact else a[1] == b[1] and abs(a[0] - b[0]) <= 1e-5 * abs(b[0]), \
        f"the two versions disagree: {a} {b}"
    return {**alternate(variants, 41), **_steps_ab("planned", cpu_head, "head_step", head_v1, rounds),
            **alternate(epochs, rounds)}


@njit(cache=True, fastmath=True)
def _fma_chains(x, n):
    a = np.zeros(64, np.float32)
    for _ in range(n):
        for j in range(64):
            a[j] = a[j] * x + 1
    return a.sum()


@njit(cache=True, parallel=True)
def _fma_on_threads(x, n, threads):
    out = np.zeros(threads)
    for t in prange(threads):
        out[t] = _fma_chains(x, n)
    return out.sum()


@njit(cache=True, parallel=True)
def _copy(a, b):
    for i in prange(a.shape[0]):
        b[i] = a[i]


def _steal_seconds():
    """CPU time the hypervisor gave to other guests while this machine's CPUs wanted it (/proc/stat's steal
    column, all CPUs), or NaN where the system does not say (so the report shows "nan", not a false 0)."""
    try:
        with open("/proc/stat") as f:
            return int(f.readline().split()[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def step_noise(rounds=25):
    """Round by round: a parallel copy of 256 MB (DRAM bandwidth), a register-bound loop on each of two threads
    (whether both cores are ours), branchnet's float32 step, and the time stolen by the hypervisor during the
    step, to see which of them the step's swings follow."""
    _, _, step = _branchnet_step()
    a = np.ones(64_000_000, np.float32)
    b = np.empty_like(a)
    x = np.float32(0.999)
    stolen = []

    def stepped():
        before = _steal_seconds()
        step()
        stolen.append(_steal_seconds() - before)

    probes = {"copy": lambda: _copy(a, b), "two threads": lambda: _fma_on_threads(x, 20_000_000, 2), "step": stepped}

    def report(times):
        print(f"  copy {2 * a.nbytes / times['copy'][-1] / 1e9:5.1f} GB/s, two threads "
              f"{1e3 * times['two threads'][-1]:5.1f} ms, step {1e3 * times['step'][-1]:4.0f} ms, "
              f"stolen during the step {1e3 * stolen[-1]:3.0f} ms", flush=True)

    return alternate(probes, rounds, report)


@njit(cache=True)
def _gathers(indptr, indices, values, W, h):
    plan = cpu_simd.tile_plan(0, W.shape[1], W.itemsize)
    for t in range(indptr.shape[0] - 1):
        cpu_simd.gather_planned(plan, indices, values, indptr[t], indptr[t + 1], W, h, 0, W.shape[1])


@njit(cache=True)
def _scatters(indptr, indices, values, W, d):
    plan = cpu_simd.tile_plan(0, W.shape[1], W.itemsize)
    for t in range(indptr.shape[0] - 1):
        cpu_simd.scatter_planned(plan, indices, values, indptr[t], indptr[t + 1], d, W, 0, W.shape[1])


@njit(inline="always")
def _scatter_all_v1(plans, columns, indices, values, lo, hi, d, G, j0, j1):
    last = plans.shape[0] - 1
    cpu_simd.scatter_planned((plans[last, 0], plans[last, 1], plans[last, 2]), indices, values, lo, hi, d, G, j0, j1)


def skip_zero(rounds=41):
    """The batch-1 epoch whose first-layer update skips the vectors of its step that are all zero (units whose
    ReLU is off; cpu_simd.scatter_nonzero) against v1, updating every vector (scatter_planned), float32 and
    float64, each pair first checked to agree."""
    v1 = _recompiled(cpu_epoch.sgd_epoch_batch1, scatter_nonzero=_scatter_all_v1)
    return alternate(_batch1_variants(v1, ("skip-zero", "v1")), rounds)


def batch1_parts(rounds=41):
    """Not an A/B: the batch-1 epoch beside its first layer's two loops run alone over the same 1,000 samples, the
    gather and the update, on the 784 x 40 weights (125 KB in float32, 250 KB in float64: the L2 cache) and with
    the pixel indices folded onto 150 rows (24 or 47 KB: about the 32 KB L1 cache), in both dtypes."""
    be = fastmnist.get_backend("numba-cpu")
    images = data.load_splits("first-1000").train.images
    rng = np.random.default_rng(0)
    variants = {}
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        variants[f"{name} epoch"] = _batch1_epoch(cpu_epoch.sgd_epoch_batch1, dtype)
        c = be._inputs.get(be.to_float(images, dtype))
        W = cpu_simd.aligned_copy((rng.standard_normal((784, 40)) * 0.05).astype(dtype))
        h = cpu_simd.aligned_copy(np.zeros(40, dtype))
        d = cpu_simd.aligned_copy(np.full(40, 1e-6, dtype))
        for where, indices in (("L2", c.indices), ("L1", (c.indices % 150).astype(c.indices.dtype))):
            variants[f"{name} gathers {where}"] = lambda c=c, i=indices, W=W, h=h: _gathers(c.indptr, i, c.values, W, h)
            variants[f"{name} updates {where}"] = lambda c=c, i=indices, W=W, d=d: _scatters(c.indptr, i, c.values, W, d)
    return alternate(variants, rounds)


@njit(cache=True, fastmath={"contract"})
def _fma_chain(n, a, b):
    x = a - a
    for _ in range(n):
        x = x * a + b
    return x


@njit(cache=True, fastmath=True)
def _contiguous_updates(a, d, x, reps):
    for _ in range(reps):
        for i in range(a.shape[0]):
            a[i] += x * d[i]


def _cycles_per(call, units, clock_hz, rounds):
    times = []
    for _ in range(rounds + 1):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:])) * clock_hz / units


def loop_limits(rounds=21):
    """Not an A/B: the batch-1 epoch's first-layer loops in clock cycles per 32-byte vector, beside what this
    core does at best. The clock comes from a chain of dependent fused multiply-adds (Zen 3: 4 cycles each).
    The loops run over synthetic rows (150 stored pixels per sample, 1,000 samples, 40 units) with the rows
    touched fitting the L1 cache (pixels folded onto 20 rows) or spread over all 784 rows of W1 (L2); the
    reference is a vectorised a += x * d over a contiguous 3.2 KB array (L1). Also the epoch with every
    sample's pixels removed: the fixed cost of its per-sample work (the 40 x 10 layer, loss, masks, calls)."""
    n = 200_000_000
    _fma_chain(10, 0.5, 0.5)
    t = time.perf_counter()
    _fma_chain(n, np.float64(0.9999999), np.float64(1e-9))
    clock = 4 * n / (time.perf_counter() - t)
    report = {"clock GHz": clock / 1e9}
    rng = np.random.default_rng(0)
    samples, per_sample, units = 1000, 150, 40
    indptr = np.arange(samples + 1, dtype=np.int64) * per_sample
    for dtype in (np.float32, np.float64):
        name, lanes = np.dtype(dtype).name, cpu_simd.lanes(np.dtype(dtype))
        vectors = samples * per_sample * units // lanes
        values = rng.random(samples * per_sample).astype(dtype)
        W = cpu_simd.aligned_copy(rng.random((784, units)).astype(dtype))
        h = cpu_simd.aligned_copy(np.zeros(units, dtype))
        d = cpu_simd.aligned_copy(np.full(units, 1e-9, dtype))
        for where, rows in (("L1", 20), ("L2", 784)):
            indices = rng.integers(0, rows, samples * per_sample).astype(np.int32)
            report[f"{name} gather {where}"] = _cycles_per(lambda: _gathers(indptr, indices, values, W, h), vectors,
                                                           clock, rounds)
            report[f"{name} update {where}"] = _cycles_per(lambda: _scatters(indptr, indices, values, W, d), vectors,
                                                           clock, rounds)
        a, b, reps = np.zeros(800 // (lanes // 4), dtype), np.ones(800 // (lanes // 4), dtype), 100_000
        _contiguous_updates(a, b, dtype(1e-9), 1)
        report[f"{name} contiguous update L1"] = _cycles_per(lambda: _contiguous_updates(a, b, dtype(1e-9), reps),
                                                             reps * a.shape[0] // lanes, clock, rounds)
        epoch = _batch1_epoch(cpu_epoch.sgd_epoch_batch1, dtype)
        args = list(epoch.__closure__[0].cell_contents)
        args[0] = np.zeros_like(args[0])                     # every sample without pixels
        report[f"{name} epoch without pixels, ms"] = 1e3 * _cycles_per(lambda: cpu_epoch.sgd_epoch_batch1(*args), 1,
                                                                        1, rounds)
    return report


def tile6(rounds=21):
    """branchnet's fused head with cpu_simd's tiles of up to 6 vectors against v1, up to 5 (its 48-unit rows then
    take one pass instead of two); the two are first checked to agree within rounding."""
    v1 = _recompiled(cpu_head._rows, tile_plan=_recompiled(cpu_simd.tile_plan, MAX_TILE=5))
    return _head_ab("tiles of 6", _recompiled(cpu_head.head_step, _rows=v1), rounds, steps=False, exact=False)


@njit(cache=True, fastmath={"contract"})
def _head_rows_v1(A1, W2, b2, codes2, scale2, W3, b3, codes3, W2T, W3T, labels, loss_kind, eps, nd, start, stop,
          dA1, dW2, db2, dW3, db3):
    """cpu_head._rows before its phases (with its dense products): each row through all its products in turn."""
    k1, m2 = W2.shape
    classes = db3.shape[0]
    padded = W3.shape[1]
    dtype = A1.dtype
    h2 = np.empty(m2, dtype)
    a2 = np.empty(m2, dtype)
    out = np.empty(padded, dtype)
    g = np.zeros(padded, dtype)
    D2 = np.empty((cpu_head.BLOCK, m2), dtype)          # the block's hidden-layer gradients dZ2
    A1T = np.empty((k1, cpu_head.BLOCK), dtype)         # the block's first-layer activations, transposed
    row = np.empty(m2, dtype)
    runs2 = cpu_activation.code_runs(codes2)
    to_m2 = cpu_simd.tile_plan(0, m2, A1.itemsize)
    to_padded = cpu_simd.tile_plan(0, padded, A1.itemsize)
    to_k1 = cpu_simd.tile_plan(0, k1, A1.itemsize)
    dW2[:] = 0
    dW3[:] = 0
    db2[:] = 0
    db3[:] = 0
    total = 0.0
    correct = 0
    for s0 in range(start, stop, cpu_head.BLOCK):
        nb = min(stop, s0 + cpu_head.BLOCK) - s0
        for b in range(nb):
            i = s0 + b
            a1 = A1[i]
            cpu_simd.gather_planned(to_m2, None, a1, 0, k1, W2, h2, 0, m2)
            if b2.shape[0]:
                for j in range(m2):
                    h2[j] += b2[j]
            cpu_activation.activate_runs(h2, runs2)
            for j in range(m2):
                a2[j] = h2[j] * scale2[j]
            cpu_simd.gather_planned(to_padded, None, a2, 0, m2, W3, out, 0, padded)
            for c in range(classes):
                z = out[c] + b3[c] if b3.shape[0] else out[c]
                out[c] = cpu_activation.activate(z, codes3[c])
            loss, ok = cpu_loss.row_loss(out[:classes], labels[i], loss_kind, eps, nd, g, True)
            total += loss
            correct += ok
            for c in range(classes):
                g[c] = g[c] * cpu_activation.derivative(out[c], codes3[c])
                db3[c] += g[c]
            cpu_simd.scatter_planned(to_padded, None, a2, 0, m2, g, dW3, 0, padded)
            d2 = D2[b]
            cpu_simd.gather_planned(to_m2, None, g, 0, classes, W3T, d2, 0, m2)
            cpu_activation.times_derivative_runs(d2, h2, runs2)
            for j in range(m2):
                d2[j] = d2[j] * scale2[j]
                db2[j] += d2[j]
            cpu_simd.gather_planned(to_k1, None, d2, 0, m2, W2T, dA1[i], 0, k1)
            for j in range(k1):
                A1T[j, b] = a1[j]
        for j in range(k1):
            cpu_simd.gather_planned(to_m2, None, A1T[j], 0, nb, D2, row, 0, m2)
            for u in range(m2):
                dW2[j, u] += row[u]
    return total, correct


def _head_ab(label, head_v1, rounds, steps=True, exact=True, head=None):
    """The fused head (float32, on the arguments of a real step, copied for each version; cpu_head.head_step
    unless `head` is given) against head_v1, first checked to give bit-identical results (`exact`) or to agree
    within rounding; then, if `steps`, whole steps with each version of the head."""
    (captured,) = _captured([(cpu_head, "head_step")], _branchnet_step()[2])
    args = [_copies(captured) for _ in range(2)]
    head = cpu_head.head_step if head is None else head
    heads = {f"head {label}": lambda: head(*args[0]), "head v1": lambda: head_v1(*args[1])}
    (t, c), (t1, c1) = (f() for f in heads.values())
    if exact:
        assert (t, c) == (t1, c1) and all(np.array_equal(a, b) for a, b in zip(args[0][-5:], args[1][-5:])), (t, t1)
    else:
        assert c == c1 and abs(t - t1) <= 1e-5 * abs(t1), f"the two versions disagree: {t, c} {t1, c1}"
    medians = alternate(heads, rounds)
    if steps:
        medians.update(_steps_ab(label, cpu_head, "head_step", head_v1, rounds, exact, current=head))
    return medians


def head_phases(rounds=21):
    """branchnet's fused head taking each block of rows phase by phase (all its hidden-layer products with W2,
    then the per-row work, then all its products with W2T) against v1, each row through every product in turn
    (W2 and W2T, 29 KB each, then share the L1 cache); bit-identical. Then whole steps with each."""
    return _head_ab("in phases", _recompiled(cpu_head.head_step, _rows=_head_rows_v1), rounds)


def step_parts(rounds=21):
    """Not an A/B: branchnet's float32 step beside its three big kernels, each called alone on the arguments
    it had in a real step: the first layer's sparse forward, the fused head, the first layer's weight
    gradient (column blocks)."""
    from fastmnist.kernels import cpu_step
    kernels = {"forward": (cpu_step.cpu_sparse, "sparse_dense_forward"), "head": (cpu_step.cpu_head, "head_step"),
               "weight gradient": (cpu_step.cpu_sparse, "blocked_weight_grad")}
    _, _, step = _branchnet_step()
    parts = {"step": step}
    for (name, (module, attr)), args in zip(kernels.items(), _captured(list(kernels.values()), step)):
        parts[name] = lambda f=getattr(module, attr), args=_copies(args): f(*args)
    return alternate(parts, rounds)


def forward_tiles(rounds=15):
    """branchnet's first-layer sparse forward (on a real step's arguments, float32 and float64) with tiles of
    at most cpu_sparse.FORWARD_TILE = 4 vectors against v1, at most cpu_simd.MAX_TILE = 6; then whole float32
    steps with each. Results are identical: each unit's sum runs over the same pixels in the same order."""
    from fastmnist.kernels import cpu_sparse, cpu_step
    v1 = _recompiled(cpu_sparse.sparse_dense_forward, _forward_block=_recompiled(
        cpu_sparse._forward_block, _gather_block=_recompiled(cpu_sparse._gather_block, FORWARD_TILE=cpu_simd.MAX_TILE)))
    medians = {}
    for dtype in (np.float32, np.float64):
        (captured,) = _captured([(cpu_step.cpu_sparse, "sparse_dense_forward")], _branchnet_step(dtype)[2])
        args = [_copies(captured) for _ in range(2)]
        name = np.dtype(dtype).name
        pair = {f"{name} forward tiles of 4": lambda: cpu_sparse.sparse_dense_forward(*args[0]),
                f"{name} forward v1": lambda: v1(*args[1])}
        for f in pair.values():
            f()
        assert np.array_equal(args[0][-1], args[1][-1]), "the two versions disagree"
        medians.update(alternate(pair, rounds))
    return {**medians, **_steps_ab("tiles of 4", cpu_step.cpu_sparse, "sparse_dense_forward", v1, rounds)}


_EVERY = np.arange(4096, dtype=np.int32)     # v1's index arrays for the head's dense products (a constant)


@njit(inline="always")
def _gather_every_v1(plan, indices, values, lo, hi, M, h, j0, j1):
    cpu_simd.gather_planned(plan, _EVERY, values, lo, hi, M, h, j0, j1)


@njit(inline="always")
def _scatter_every_v1(plan, indices, values, lo, hi, d, G, j0, j1):
    cpu_simd.scatter_planned(plan, _EVERY, values, lo, hi, d, G, j0, j1)


def dense_head(rounds=21):
    """branchnet's fused head with its products as cpu_simd's dense gathers and scatters (indices None: value p
    goes with row p) against v1, the same loops reading an index array 0, 1, 2, ... for every row;
    bit-identical. Then whole steps with each."""
    v1 = _recompiled(cpu_head._rows, gather_planned=_gather_every_v1, scatter_planned=_scatter_every_v1)
    return _head_ab("dense", _recompiled(cpu_head.head_step, _rows=v1), rounds)


# v1 of the first layer's weight gradient from column blocks: one column per gather (before the pairs)
@njit(cache=True, parallel=True)
def _regroup_blocks_v1(indptr, indices, values, columns, block, colptr, local, out):
    n = indptr.shape[0] - 1
    for blk in prange(colptr.shape[0]):
        r0 = np.int64(blk) * block
        r1 = min(n, r0 + block)
        cp = colptr[blk]
        cp[:] = 0
        for p in range(indptr[r0], indptr[r1]):
            cp[indices[p] + 1] += 1
        cp[0] = indptr[r0]
        for j in range(columns):
            cp[j + 1] += cp[j]
        nxt = cp[:columns].copy()
        for r in range(r0, r1):
            for p in range(indptr[r], indptr[r + 1]):
                q = nxt[indices[p]]
                local[q] = r - r0
                out[q] = values[p]
                nxt[indices[p]] = q + 1


def _column_blocks_v1(indptr, indices, values, columns):
    from fastmnist.kernels.cpu_sparse import COLUMN_BLOCK
    colptr = np.empty(((indptr.shape[0] - 1 + COLUMN_BLOCK - 1) // COLUMN_BLOCK, columns + 1), np.int64)
    local = np.empty(values.shape[0], np.int32)
    out = np.empty_like(values)
    _regroup_blocks_v1(indptr, indices, values, columns, COLUMN_BLOCK, colptr, local, out)
    return colptr, local, out


@njit(cache=True, fastmath={"contract"})
def _gather_block_columns_v1(colptr, local, values, dz, acc):
    columns, k = colptr.shape[0] - 1, acc.shape[1]
    lanes = cpu_simd.VECTOR_BYTES // acc.itemsize
    nv, wide, narrow = cpu_simd.tile_plan(0, k, acc.itemsize)
    c = 0
    for t in range(wide + narrow):
        width = nv + 1 if t < wide else nv
        for j in range(columns):
            if colptr[j + 1] > colptr[j]:
                cpu_simd.gather_row_tile(width, local, values, colptr[j], colptr[j + 1], dz, acc, j, c, 1, True)
        c += width * lanes
    if c < k:
        for j in range(columns):
            for p in range(colptr[j], colptr[j + 1]):
                for u in range(c, k):
                    acc[j, u] += values[p] * dz[local[p], u]


def column_pairs(rounds=21):
    """branchnet's float32 first-layer weight gradient (on a real step's arguments) from column blocks whose
    gathers take two adjacent input columns at once (one read of each dZ row serves both) against v1, one
    column per gather; then whole steps with each. The sums' order within a column changes (one chain over the
    pair's rows instead of even and odd rows), so the two agree within rounding, not bit for bit."""
    from fastmnist.kernels import cpu_sparse, cpu_step
    v1 = _recompiled(cpu_sparse.blocked_weight_grad, _gather_block_columns=_gather_block_columns_v1,
                     _private_copies=njit(lambda threads, rows, dW: cpu_sparse._private_copies(threads, dW.shape[0], dW)))
    _, _, step = _branchnet_step()
    forward, grad = _captured([(cpu_step.cpu_sparse, "sparse_dense_forward"),
                               (cpu_step.cpu_sparse, "blocked_weight_grad")], step)
    blocks_v1 = _column_blocks_v1(*forward[:3], grad[0].shape[1] * 2 - 2)
    args = [_copies(grad), _copies(list(blocks_v1) + list(grad[3:]))]
    pair = {"weight gradient pairs": lambda: cpu_sparse.blocked_weight_grad(*args[0]),
            "weight gradient v1": lambda: v1(*args[1])}
    for f in pair.values():
        f()
    dW, dW_v1 = args[0][7], args[1][7]
    err = np.linalg.norm(dW.astype(np.float64) - dW_v1) / np.linalg.norm(dW_v1.astype(np.float64))
    assert err < 1e-5 and np.array_equal(args[0][8], args[1][8]), f"the two versions disagree: {err}"

    def step_v1(colptr, local, values, *rest):
        return v1(*blocks_v1, *rest)
    return {**alternate(pair, rounds), **_steps_ab("pairs", cpu_step.cpu_sparse, "blocked_weight_grad", step_v1,
                                                   rounds)}


_COPIED_COLUMNS = {       # the fused head before dW2's products read the block's columns in place
    "    row = np.empty((1, m2), dtype)\n":
        "    row = np.empty((1, m2), dtype)\n    A1T = np.empty((k1, BLOCK), dtype)\n",
    "        block = A1[s0:s0 + nb]\n":
        "        for b in range(nb):\n            for j in range(k1):\n                A1T[j, b] = A1[s0 + b, j]\n"
        "        block = A1T\n",
    "j, j + 1, 0, m2, True, True)": "j, j + 1, 0, m2, True, False)",
    "0, 0, 0, m2, False, True)": "0, 0, 0, m2, False, False)",
}


def _source_variant(kernel, replacements, **replace):
    """`kernel` compiled again (not cached) from its source with a few lines changed (each `replacements` key
    must occur once) and, as in _recompiled, some functions it calls replaced: a v1 that differs from the
    current kernel in a few lines, without a second copy of it."""
    import inspect
    import textwrap
    source = textwrap.dedent(inspect.getsource(kernel.py_func))
    source = source[source.index("def "):]
    for old, new in replacements.items():
        assert source.count(old) == 1, f"{kernel.__name__} no longer has exactly one {old!r}"
        source = source.replace(old, new)
    namespace = dict(kernel.py_func.__globals__, **replace)
    exec(compile(source, f"<{kernel.__name__} v1>", "exec"), namespace)
    return njit(**{k: v for k, v in kernel.targetoptions.items() if k not in ("cache", "nopython")})(
        namespace[kernel.__name__])


def in_place_columns(rounds=21):
    """branchnet's float32 fused head with dW2's products reading the block's columns of A1 in place
    (gather_two_rows_planned's `transposed`) against v1, which first copies the block transposed (A1T);
    bit-identical. Then whole steps with each."""
    v1 = _source_variant(cpu_head._rows, _COPIED_COLUMNS)
    return _head_ab("in place", _recompiled(cpu_head.head_step, _rows=v1), rounds)


@njit(inline="always")
def _one_row_at_a_time_v1(plan, V, va, vb, lo, hi, M, Out, row_a, row_b, j0, j1, accumulate, transposed):
    """v1 of cpu_simd.gather_two_rows_planned: each row's product alone (the weights' tiles loaded per row);
    whole vectors and rows of V only (not transposed), as the fused head with A1T has them."""
    lanes = cpu_simd.VECTOR_BYTES // M.itemsize
    nv, wide, narrow = plan
    for row, v in ((row_a, va), (row_b, vb)):
        cpu_simd.gather_row_tile(nv + 1, None, V[v], lo, hi, M, Out, row, j0, wide, accumulate)
        cpu_simd.gather_row_tile(nv, None, V[v], lo, hi, M, Out, row, j0 + wide * (nv + 1) * lanes, narrow,
                                 accumulate)


def two_rows(rounds=21):
    """branchnet's float32 fused head with its three big products (with W2, W2T and dW2's) two rows at a time
    (cpu_simd.gather_two_rows_planned: each tile of the weights loaded once for both rows) against v1, one row
    at a time, both with dW2's products reading a transposed copy of the block (as before in_place_columns);
    then whole steps with each. Within rounding, not bit for bit (one chain of FMAs per row instead of even
    and odd terms)."""
    head = _recompiled(cpu_head.head_step, _rows=_source_variant(cpu_head._rows, _COPIED_COLUMNS))
    v1 = _source_variant(cpu_head._rows, _COPIED_COLUMNS, gather_two_rows_planned=_one_row_at_a_time_v1)
    return _head_ab("two rows", _recompiled(cpu_head.head_step, _rows=v1), rounds, exact=False, head=head)


CASES = {"step-blocks": step_blocks, "step-workspace": step_workspace, "adam": adam, "activation": activation,
         "batch1": batch1, "step-noise": step_noise, "planned": planned, "tile6": tile6,
         "batch1-parts": batch1_parts, "skip-zero": skip_zero, "loop-limits": loop_limits,
         "head-phases": head_phases, "step-parts": step_parts,
         "forward-tiles": forward_tiles, "dense-head": dense_head, "column-pairs": column_pairs,
         "two-rows": two_rows, "in-place-columns": in_place_columns}

if __name__ == "__main__":
    for name in sys.argv[1:] or CASES:
        medians = CASES[name]()
        if name == "loop-limits":        # cycles per vector, not seconds
            print(name, ", ".join(f"{k} {v:.2f}" for k, v in medians.items()), flush=True)
        else:
            print(name, ", ".join(f"{k} {1e3 * t:.2f} ms" for k, t in medians.items()), flush=True)
