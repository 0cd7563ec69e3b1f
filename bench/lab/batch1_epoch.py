"""Seed 000's batch-1 epoch (grokking-3layer: 784 -> ReLU 40 -> 10, no biases, MSE, SGD, one sample at a time),
and with element dropout (grokking-dropout), as one compiled call.

v1: batch1_epoch.sgd_epoch_batch1 through numba-cpu's train_epoch, in fastmnist.kernels: each sample's
    stored pixels gathered against W1's rows (explicit SIMD), the update scattered back skipping the
    all-zero vectors of its step, the output layer on a transposed W2.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import mnist_images, preset_net, run_main, sparse_images

import fastmnist  # noqa: F401  (first: OpenBLAS's thread timeout)
from fastmnist.kernels.reference import ReferenceBackend

# (rows, inputs, hidden, dropout): one sample, widths that are no whole vector, the seed's shape with dropout
CASES = {"1x13x5": (1, 13, 5, False), "9x31x17": (9, 31, 17, False), "40x784x40": (40, 784, 40, False),
         "20x31x17-dropout": (20, 31, 17, True)}
REAL = (1000, 784, 40, False)      # grokking-3layer's epoch: the first 1,000 training images


def inputs(shape, dtype, rng, real):
    rows, n_in, units, dropout = shape
    X, y = mnist_images(rows, dtype, "first-1000") if real else (sparse_images(rng, rows, n_in, dtype),
                                                                  rng.integers(0, 10, rows))
    return {"X": X, "y": y, "hidden": units, "dropout": dropout, "seed": int(rng.integers(1 << 31))}


def _run_on(backend, d, dtype):
    preset = "grokking-dropout" if d["dropout"] else "grokking-3layer"
    _, net = preset_net(backend, preset, dtype, seed=d["seed"], hidden=d["hidden"], inputs=d["X"].shape[1])
    X = backend.asarray(d["X"].astype(dtype))

    def run():
        total, _ = backend.train_epoch(net, X, d["y"], 1, np.random.RandomState(d["seed"]))
        return np.array([float(total)]), net.weights[0], net.weights[1]
    return run


def reference(d):
    return _run_on(ReferenceBackend(), d, np.float64)()


def v1(d, k):
    return _run_on(k.cpu.backend.NumbaCpuBackend(), d, d["X"].dtype)


VERSIONS = {"v1": v1}


def WORK(d):
    nnz, units, item = np.count_nonzero(d["X"]), d["hidden"], d["X"].itemsize
    rows = d["X"].shape[0]
    return 4 * nnz * units + 6 * rows * units * 10, 3 * nnz * units * item


if __name__ == "__main__":
    run_main(globals())
