#!/usr/bin/env bash
# The CUDA checks that need a real GPU, in one call (issue 4):
#   1. tests/test_numba_cuda.py on the device at full size (FASTMNIST_REAL_GPU=1: no simulator);
#   2. branchnet, 10,000 full-batch iterations in float32 on numba-cuda and on cupy, each required to
#      reach at least 98.3% test accuracy; per-backend summaries and timings go to $OUT (or bench/gpu_out).
#
# Usage: bash bench/gpu_check.sh [tests|train|all]     (default all)
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
if [ "$what" = all ] || [ "$what" = tests ]; then
    FASTMNIST_REAL_GPU=1 "$PY" -m pytest tests/test_numba_cuda.py -q -p no:cacheprovider --durations=10 2>&1 \
        | tee "$out/tests.log" || status=1
fi
if [ "$what" = all ] || [ "$what" = train ]; then
    for backend in numba-cuda cupy; do
        "$PY" - "$backend" "$out" <<'EOF' 2>&1 | tee "$out/branchnet-$backend.log" || status=1
import json, sys
import fastmnist
backend, out = sys.argv[1], sys.argv[2]
result = fastmnist.train("branchnet", backend=backend, dtype="float32", iterations=10000, progress=False)
print(result.summary())
final = result.final
with open(f"{out}/branchnet-{backend}.json", "w") as f:
    json.dump({"backend": backend, "final": final, "timings": result.timings}, f, indent=1)
if final.get("test_acc", 0) < 0.983:
    sys.exit(f"branchnet on {backend}: test accuracy {final.get('test_acc')} is below 0.983")
EOF
    done
fi
exit $status
