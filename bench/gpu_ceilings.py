"""The GPU's measured ceilings, against which bench/ reports each kernel: device-to-device copy bandwidth
(bytes read + written) and the rate of a large cuBLAS matrix product in float32, TF32 and float64.

    python bench/gpu_ceilings.py [out.json]
"""

from __future__ import annotations

import json
import sys

import cupy


def median_ms(fn, repeat=20, warmup=1):
    """Median time of fn() in ms, by CUDA events around each call, after `warmup` untimed calls."""
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    times.sort()
    return times[len(times) // 2]


def copy_gbps(nbytes=2 << 30):
    src = cupy.random.random(nbytes // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    ms = median_ms(lambda: dst.__setitem__(Ellipsis, src))
    return 2 * src.nbytes / ms / 1e6


def matmul_tflops(dtype, n=8192, tf32=False):
    from cupy._core import _routines_linalg as linalg

    a = cupy.random.random((n, n), dtype=cupy.float64).astype(dtype)
    b = cupy.random.random((n, n), dtype=cupy.float64).astype(dtype)
    old = linalg.get_compute_type(a.dtype)
    if tf32:
        linalg.set_compute_type(a.dtype, linalg.COMPUTE_TYPE_TF32)
    try:
        ms = median_ms(lambda: a @ b, repeat=10)
    finally:
        linalg.set_compute_type(a.dtype, old)
    return 2 * n ** 3 / ms / 1e9


def main(argv):
    props = cupy.cuda.runtime.getDeviceProperties(0)
    result = {"gpu": props["name"].decode(), "multiprocessors": props["multiProcessorCount"],
              "copy_gbps": copy_gbps(), "float32_tflops": matmul_tflops(cupy.float32),
              "tf32_tflops": matmul_tflops(cupy.float32, tf32=True), "float64_tflops": matmul_tflops(cupy.float64)}
    print(json.dumps(result, indent=1))
    if len(argv) > 1:
        with open(argv[1], "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv)
