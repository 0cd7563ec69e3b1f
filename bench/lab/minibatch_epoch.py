"""The `fast` preset's epoch (784 -> ReLU 320 -> softmax 10, Adam, minibatches of 128 in shuffled order) as one
compiled call.

v1: minibatch_epoch.minibatch_epoch through numba-cpu's train_epoch, in fastmnist.kernels: T threads, each
    owning a slice of the hidden units for the whole epoch and meeting the others twice per batch at a spin
    barrier; the weight gradient gathered by pairs of adjacent pixels, fused with the optimiser.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import mnist_images, preset_net, run_main, sparse_images

import fastmnist  # noqa: F401  (first: OpenBLAS's thread timeout)
from fastmnist.kernels.reference import ReferenceBackend

# (rows, inputs, hidden, batch): a remainder batch, widths that are no whole vector
CASES = {"10x13x5b3": (10, 13, 5, 3), "103x30x17b10": (103, 30, 17, 10), "300x784x40b128": (300, 784, 40, 128)}
REAL = (60_000, 784, 320, 128)     # the `fast` preset: all 60,000 training images


def inputs(shape, dtype, rng, real):
    rows, n_in, units, batch = shape
    X, y = mnist_images(rows, dtype, "full") if real else (sparse_images(rng, rows, n_in, dtype),
                                                            rng.integers(0, 10, rows))
    return {"X": X, "y": y, "hidden": units, "batch": batch, "order": rng.permutation(rows),
            "seed": int(rng.integers(1 << 31))}


def _run_on(backend, d, dtype):
    _, net = preset_net(backend, "fast", dtype, seed=d["seed"], hidden=d["hidden"], inputs=d["X"].shape[1],
                        batch_size=d["batch"])
    X = backend.asarray(d["X"].astype(dtype))

    def run():
        total, _ = backend.train_epoch(net, X, d["y"], d["batch"], np.random.RandomState(0), d["order"])
        return np.array([float(total)]), *net.params()
    return run


def reference(d):
    return _run_on(ReferenceBackend(), d, np.float64)()


def v1(d, k):
    return _run_on(k.cpu.backend.NumbaCpuBackend(), d, d["X"].dtype)


VERSIONS = {"v1": v1}
TOL = {np.float64: 1e-11, np.float32: 1e-4}      # Adam's division by sqrt(s) amplifies float32 rounding


def WORK(d):
    nnz, units, item = np.count_nonzero(d["X"]), d["hidden"], d["X"].itemsize
    rows = d["X"].shape[0]
    return 4 * nnz * units + 6 * rows * units * 10, (rows // d["batch"]) * 7 * 784 * units * item


if __name__ == "__main__":
    run_main(globals())
