"""Where the time of one branchnet full-batch step goes on a GPU, timed with CUDA events (median of 20
after a warm-up): the whole step replayed from its captured graph and launched kernel by kernel, the host
time to queue a replayed step, and the pieces of cuda-hybrid's step one by one (a numba-cuda kernel's
figure includes its launch from Python, which the graph removes).

    python bench/gpu_profile.py [out.json]
"""

from __future__ import annotations

import json
import sys
import time

import cupy
import numpy as np

from fastmnist import data
from fastmnist.kernels.reference import ReferenceBackend
from fastmnist.kernels.cuda import elementwise, loss, optim
from fastmnist.kernels.cuda.hybrid import CudaHybridBackend
from fastmnist.kernels.cuda.backend import NumbaCudaBackend
from fastmnist.training import build_net, init_params, make_recipe
from gpu_ceilings import median_ms      # run as a script from the repository root: bench/ is on sys.path


def branchnet(be, dtype, images, labels):
    recipe = make_recipe("branchnet")
    rng = np.random.RandomState(0)
    net = build_net(be, recipe, *init_params(recipe, rng), dtype)
    X = ReferenceBackend(cupy).to_float(cupy.asarray(images), dtype)
    return net, X, cupy.asarray(labels.astype(np.int64)), rng


def steps(r, label, be, dtype, images, labels):
    net, X, y, rng = branchnet(be, dtype, images, labels)
    r[f"{label}: step replayed"] = median_ms(lambda: be.train_step(net, X, y, rng), warmup=2)
    assert be.replayer.enabled, be.replayer.failure
    be.synchronize()
    t0 = time.perf_counter()
    for _ in range(50):
        be.train_step(net, X, y, rng)
    r[f"{label}: host time to queue a replayed step"] = (time.perf_counter() - t0) / 50 * 1e3
    be.synchronize()
    be.replayer.enabled = False
    r[f"{label}: step launched kernel by kernel"] = median_ms(lambda: be.train_step(net, X, y, rng), warmup=2)
    be.replayer.enabled = True
    return net, X, y


def main(argv):
    from cupy._core import _routines_linalg as linalg

    split = data.load_splits("50k-10k-10k").train
    r = {}
    hybrid = CudaHybridBackend()
    net, X, y = steps(r, "cuda-hybrid float32", hybrid, "float32", split.images, split.labels)
    steps(r, "cuda-hybrid float64", hybrid, "float64", split.images, split.labels)
    steps(r, "numba-cuda float32", NumbaCudaBackend(), "float32", split.images, split.labels)
    f32 = np.dtype(np.float32)
    old = linalg.get_compute_type(f32)
    linalg.set_compute_type(f32, linalg.COMPUTE_TYPE_TF32)
    try:
        steps(r, "cuda-hybrid TF32", CudaHybridBackend(), "float32", split.images, split.labels)
        r["TF32: X @ W1"] = median_ms(lambda: cupy.matmul(X, net.weights[0]))
    finally:
        linalg.set_compute_type(f32, old)

    be, dv, rows = hybrid, hybrid._dev, X.shape[0]
    W1 = net.weights[0]
    dZ = cupy.random.standard_normal((rows, W1.shape[1]), dtype=cupy.float32)
    H, A = cupy.empty_like(dZ), cupy.empty_like(dZ)
    views = dict(dZ=dv(dZ), H=dv(H), A=dv(A), b=dv(net.biases[0]), mask=dv(cupy.ones((1, 192), cupy.float32)))
    codes = be._codes(net.segments[0], W1.shape[1])
    ones = cupy.ones((1, rows), cupy.float32)
    out10 = cupy.random.standard_normal((rows, 10), dtype=cupy.float32)
    lv = dict(out=dv(out10), grad=dv(cupy.empty_like(out10)), y=dv(y))
    tot, cnt = (dv(a) for a in be._accumulators())
    parts = be._loss_partials(rows)
    ws = be._workspace(net)
    hyper = be._constant(optim.hyper_values(1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7, step=1), np.float64)
    r["piece: X @ W1 (50000x784x192)"] = median_ms(lambda: cupy.matmul(X, W1, out=H))
    r["piece: X.T @ dZ1"] = median_ms(lambda: X.T @ dZ)
    r["piece: ones @ dZ1 (bias gradient)"] = median_ms(lambda: ones @ dZ)
    r["piece: dZ1.sum(axis=0) (not used)"] = median_ms(lambda: dZ.sum(axis=0))
    r["piece: epilogue 50000x192 (+launch)"] = median_ms(
        lambda: elementwise.epilogue(views["H"], views["b"], codes, views["mask"], views["A"], be.threads,
                                          stream=be.stream))
    r["piece: pre-activation grad 50000x192 (+launch)"] = median_ms(
        lambda: elementwise.pre_activation_grad(views["dZ"], views["H"], codes, views["mask"], views["A"],
                                                     be.threads, stream=be.stream))
    r["piece: softmax CE + grad 50000x10 (+launch)"] = median_ms(
        lambda: loss.loss(1, lv["out"], lv["y"], 1e-7, lv["grad"], 1 / rows, *parts, tot, cnt, be.threads,
                               stream=be.stream))
    r["piece: update, all parameters (+launch)"] = median_ms(lambda: ws.update(1, hyper))
    r["piece: evaluate 10000 images"] = median_ms(lambda: be.evaluate(net, X[:10000], y[:10000]))
    width = max(map(len, r))
    for k, v in r.items():
        print(f"{k:{width}s} {v:8.3f} ms")
    if len(argv) > 1:
        with open(argv[1], "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main(sys.argv)
