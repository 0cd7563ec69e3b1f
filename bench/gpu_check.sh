#!/usr/bin/env bash
# The CUDA checks that need a real GPU, in one call:
#   ceilings  copy bandwidth and cuBLAS rates (bench/gpu_ceilings.py);
#   profile   the pieces of cuda-hybrid's branchnet step, timed one by one (bench/gpu_profile.py);
#   tests     the conformance suite and the CUDA kernels' own tests on the device at full size
#             (FASTMNIST_REAL_GPU=1: no simulator);
#   bench     the pytest-benchmark suite on the GPU backends, with its Markdown report;
#   train     branchnet, 10,000 full-batch iterations in float32 on each GPU backend, each required to end
#             on the plateau, at least 98.1% test accuracy (bench/gpu_train.py; docs/presets.md);
#   fast      the `fast` preset to 98% test accuracy, three seeds per backend in each of two fresh processes (the
#             second with the kernels in the on-disk cache), time to target in the logs;
#   compare   `python -m fastmnist compare` on every backend (the headline table of docs/performance.md).
# Logs and JSON go to $OUT (or bench/gpu_out).
#
# Usage: bash bench/gpu_check.sh [all | a comma list of ceilings,profile,tests,bench,train,fast,compare]   (default all)
#   GPU_BENCH_BACKENDS, GPU_BENCH_SELECT, GPU_TRAIN_BACKENDS, GPU_TRAIN_SEEDS, GPU_FAST_BACKENDS,
#   GPU_FAST_SEEDS and GPU_TEST_SELECT (a pytest -k expression) narrow the stages (seeds: a comma list, `default` for the recipe's own).
#
# The device machine reaches no registry and gets only the repository, so prepare once, from the repo root:
#   printf '/.whl/\n/.data/\n' >> .git/info/exclude
#   mkdir -p .data && cp -r ../shared/data/mnist .data/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl pooch platformdirs
# (the GPU image has numba, numba-cuda, cupy, pytest and tqdm but not pooch). If its numba-cuda fails to import
# under its numpy (numba-cuda 0.30.x needs numpy < 2.5), add numba-cuda==0.30.4 and numpy==2.4.* to .whl.
# Then, with the device tool: run(command="bash bench/gpu_check.sh", carry=[".whl", ".data"]).
set -uo pipefail

what=${1:-all}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=${OUT:-bench/gpu_out}
mkdir -p "$out"
if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export FASTMNIST_DATA=${FASTMNIST_DATA:-$PWD/.data/mnist}
unset NUMBA_ENABLE_CUDASIM FASTMNIST_ALLOW_CUDASIM

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
"$PY" - <<'EOF' | tee -a "$out/gpu.txt" || exit 1
import numpy, numba
from numba import cuda
import cupy
import fastmnist
print("numpy", numpy.__version__, "numba", numba.__version__, "cupy", cupy.__version__)
for b in fastmnist.backends():
    print(f"  {b.name:11s} {'available' if b.available else 'unavailable: ' + b.reason}")
EOF

status=0
has() { [ "$what" = all ] || [[ ",$what," == *",$1,"* ]]; }
if has ceilings; then
    "$PY" bench/gpu_ceilings.py "$out/ceilings.json" 2>&1 | tee "$out/ceilings.log" || status=1
fi
if has profile; then
    "$PY" bench/gpu_profile.py "$out/profile.json" 2>&1 | tee "$out/profile.log" || status=1
fi
if has tests; then
    FASTMNIST_REAL_GPU=1 "$PY" -m pytest tests/test_conformance.py tests/test_cuda_kernels.py tests/test_cuda_blas.py \
        -q -x -p no:cacheprovider \
        --durations=10 -k "${GPU_TEST_SELECT:-}" 2>&1 \
        | tee "$out/tests.log" || status=1
fi
if has bench; then
    FASTMNIST_REAL_GPU=1 FASTMNIST_BENCH_BACKENDS=${GPU_BENCH_BACKENDS:-cupy,numba-cuda,cuda-hybrid} \
        "$PY" -m pytest bench -q -p no:cacheprovider -m "not slow" --benchmark-only --bench-grid \
        -k "${GPU_BENCH_SELECT:-train_step or dense_forward or dense_backward}" \
        --benchmark-max-time=0.2 --benchmark-min-rounds=5 --benchmark-json "$out/bench.json" \
        --benchmark-columns=median,mean,rounds --benchmark-sort=name 2>&1 | tee "$out/bench.log" || status=1
    "$PY" -m fastmnist bench-report "$out/bench.json" > "$out/bench-report.md" 2>&1 || status=1
fi
if has train; then
    for backend in ${GPU_TRAIN_BACKENDS:-numba-cuda cupy}; do
        "$PY" bench/gpu_train.py "$backend" --seeds "${GPU_TRAIN_SEEDS:-}" --out "$out" 2>&1 \
            | tee "$out/train-$backend.log" || status=1
    done
fi
if has fast; then
    # twice per backend, each in a fresh process: the second one's first run is the one with every kernel
    # already in Numba's on-disk cache
    for backend in ${GPU_FAST_BACKENDS:-cuda-hybrid numba-cuda cupy}; do
        for process in 1 2; do
            mkdir -p "$out/process$process"
            "$PY" bench/gpu_train.py "$backend" --preset fast --seeds "${GPU_FAST_SEEDS:-1,2,3}" --min-test-acc 0.98 \
                --out "$out/process$process" 2>&1 | tee "$out/process$process/fast-$backend.log" || status=1
        done
    done
fi
if has compare; then
    "$PY" -m fastmnist compare --json "$out/compare.json" 2>&1 | tee "$out/compare.md" || status=1
fi
exit $status
