"""What every file of the kernel lab shares: the validator, the timer and the command line.

A lab file studies one kernel, as llm.c's dev/cuda files do: a plain float64 reference, numbered versions
(the file says which of them is the one in fastmnist.kernels; higher numbers are later candidates), a
validator and a timer. It defines

    CASES    {name: (rows, ...)}: the small, awkward shapes --check validates on
    REAL     the shape the timer uses (real MNIST images where the kernel reads images)
    inputs(shape, dtype, rng, real) -> dict of host arrays (and scalars); `real`: the timer's run, which
             may read the MNIST files (FASTMNIST_DATA) instead of drawing random sparse images
    reference(inputs) -> tuple of float64 arrays: what every version must compute
    VERSIONS {"v1": prepare, ...}: prepare(inputs, kernels) -> run, a zero-argument call returning the
             outputs (the arrays it allocates up front stay out of the timing); `kernels` is the package
             fastmnist.kernels, or with --widths a copy of it compiled for another vector width
    WORK     optional: work(inputs) -> (floating-point operations, bytes moved) for the achieved rates

and ends with `run_main(globals())`. `python bench/lab/<kernel>.py` validates every version at the real shape
(in float64) and prints its error and its median time over alternating rounds (the machine is shared: only ratios within
one run mean anything); `--check` validates every version on the small shapes in both dtypes, untimed,
and exits 1 on any error beyond the dtype's bound or any NaN. `--widths 32,64` runs every version at each
SIMD vector width (FASTMNIST_VECTOR_BYTES) in the same process, alternated like the versions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

# The error measure and bounds the tests use (tests/tolerances.py): a wrong shape is infinitely far, NaN fails.
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "tests"))
from tolerances import LAB_TOL as TOL, rel_err


def kernels_at(vector_bytes: int):
    """fastmnist.kernels compiled for `vector_bytes`-byte SIMD vectors, loaded as a separate package so that
    two widths can be timed in one process (its width-dependent kernels compile in memory when the width is
    not the host's: see kernels/cpu/simd.py)."""
    import importlib
    import importlib.util

    import fastmnist.kernels as home

    name = f"_lab_kernels_w{vector_bytes}"
    if name in sys.modules:
        return sys.modules[name]
    folder = os.path.dirname(home.__file__)
    old = os.environ.get("FASTMNIST_VECTOR_BYTES")
    os.environ["FASTMNIST_VECTOR_BYTES"] = str(vector_bytes)
    try:
        spec = importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        spec.loader.exec_module(package)
        _import_all(name)
    finally:
        if old is None:
            os.environ.pop("FASTMNIST_VECTOR_BYTES")
        else:
            os.environ["FASTMNIST_VECTOR_BYTES"] = old
    return package


def _import_all(package):
    import importlib

    for module in ("reference", "interface", "cpu.simd", "cpu.activation", "cpu.backend", "cpu.head",
                   "cpu.sparse_step"):
        importlib.import_module(f"{package}.{module}")


def _versions(spec, widths) -> dict:
    """{label: prepare(inputs) -> run}: every version, at every width asked for."""
    import fastmnist.kernels as home

    _import_all("fastmnist.kernels")
    if not widths:
        return {name: (lambda d, f=fn: f(d, home)) for name, fn in spec["VERSIONS"].items()}
    return {f"{name}@{w}": (lambda d, f=fn, k=kernels_at(w): f(d, k))
            for name, fn in spec["VERSIONS"].items() for w in widths}


def validate(spec, shape, dtype, rng, real=False, widths=None) -> dict:
    """{version: worst relative error over its outputs} against the float64 reference on fresh inputs."""
    data = spec["inputs"](shape, dtype, rng, real)
    as64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
            for k, v in data.items()}
    want = spec["reference"](as64)
    errors = {}
    for name, prepare in _versions(spec, widths).items():
        got = prepare(data)()
        errors[name] = max(rel_err(g, w) for g, w in zip(got, want))
    return errors


def alternate(runs: dict, rounds: int, clock=time.perf_counter) -> dict:
    """{name: median seconds} of zero-argument calls taken in turn, after one untimed round."""
    times = {name: [] for name in runs}
    for r in range(rounds + 1):
        for name, run in runs.items():
            t = clock()
            run()
            if r:
                times[name].append(clock() - t)
    return {name: float(np.median(t)) for name, t in times.items()}


def main(spec, argv=None) -> int:
    p = argparse.ArgumentParser(description=(spec.get("__doc__") or "").split("\n")[0])
    p.add_argument("--check", action="store_true", help="validate every version on small shapes, untimed")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="dtype to time")
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--versions", help="a comma list of the versions to run (default all)")
    p.add_argument("--widths", help="a comma list of SIMD vector widths in bytes (16, 32, 64) to run each version at")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: the process's CPU time, steadier than wall time on a busy machine but meaningful only "
                        "single-threaded (NUMBA_NUM_THREADS=1)")
    args = p.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")] if args.widths else None
    if args.versions:
        keep = args.versions.split(",")
        unknown = [v for v in keep if v not in spec["VERSIONS"]]
        if unknown:
            p.error(f"unknown version(s) {', '.join(unknown)}; choose from {', '.join(spec['VERSIONS'])}")
        spec = dict(spec, VERSIONS={k: v for k, v in spec["VERSIONS"].items() if k in keep})
    rng = np.random.default_rng()
    tol = spec.get("TOL", TOL)
    failed = False
    if args.check:
        for dtype in (np.float64, np.float32):
            for case, shape in spec["CASES"].items():
                for name, err in validate(spec, shape, dtype, rng, widths=widths).items():
                    ok = err <= tol[dtype]            # NaN fails
                    failed |= not ok
                    print(f"{name:7s} {np.dtype(dtype).name:8s} {case:24s} rel err {err:.2e}  {'ok' if ok else 'FAIL'}")
        return 1 if failed else 0

    dtype = np.dtype(args.dtype).type
    data = spec["inputs"](spec["REAL"], dtype, rng, True)
    # at the real shape the versions are validated in float64: a long float32 run (an epoch of Adam steps) may
    # drift from a float64 reference by far more than rounding, and --check covers float32 on small shapes
    errors = validate(spec, spec["REAL"], np.float64, rng, True, widths)
    runs = {name: prepare(data) for name, prepare in _versions(spec, widths).items()}
    medians = alternate(runs, args.rounds, time.process_time if args.clock == "cpu" else time.perf_counter)
    flop, nbytes = spec["WORK"](data) if "WORK" in spec else (0, 0)
    first = next(iter(medians.values()))
    name = os.path.basename(spec.get("__file__", "lab"))
    print(f"{name}: shape {spec['REAL']}, {args.dtype}, median {args.clock} time of {args.rounds} alternating rounds")
    for name, seconds in medians.items():
        rates = ""
        if flop:
            rates += f"  {flop / seconds / 1e9:7.1f} GFLOP/s"
        if nbytes:
            rates += f"  {nbytes / seconds / 1e9:6.1f} GB/s"
        ok = errors[name] <= tol[np.float64]
        failed |= not ok
        print(f"{name:7s} {seconds * 1e3:9.3f} ms  {first / seconds:5.2f}x first{rates}  rel err {errors[name]:.1e}"
              f"{'' if ok else '  FAIL'}")
    return 1 if failed else 0


def run_main(spec):
    sys.exit(main(spec))


# -- inputs the lab files share ------------------------------------------------------------------------

def sparse_images(rng, rows, cols, dtype, density=0.19):
    """Random images in [0, 1] with MNIST's share of non-zero pixels."""
    X = rng.random((rows, cols))
    X[rng.random((rows, cols)) > density] = 0
    return X.astype(dtype)


def mnist_images(rows, dtype, split="50k-10k-10k"):
    """The first `rows` training images of a split as floats in [0, 1], and their labels."""
    from fastmnist import data
    from fastmnist.kernels.reference import ReferenceBackend

    train = data.load_splits(split).train
    return ReferenceBackend().to_float(train.images[:rows], dtype), train.labels[:rows].astype(np.int64)


def preset_net(backend, preset, dtype, seed=None, **overrides):
    """(recipe, a freshly initialised Net of `preset`) on `backend`, built as fastmnist.train builds them."""
    from fastmnist.training import build_net, init_params, make_recipe

    recipe = make_recipe(preset, **overrides)
    rng = np.random.RandomState(recipe.seed if seed is None else seed)
    return recipe, build_net(backend, recipe, *init_params(recipe, rng), np.dtype(dtype).name)
