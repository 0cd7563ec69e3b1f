"""The versions of numba-cpu's first-layer weight gradient over sparse inputs, side by side at branchnet's
full-batch shape (50,000 real images, 160 kept units): v1 scatters every stored pixel into a private dW
(`cpu_sparse.sparse_weight_grad`, any rows); v2 gathers from the input regrouped by column in 128-row blocks
(`cpu_sparse.blocked_weight_grad`, a batch of every row in order, as full-batch training uses). Both are
checked against each other before they are timed."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from fastmnist.kernels import cpu_simd, cpu_sparse
from fastmnist.kernels.cpu_activation import layer_codes
from fastmnist.train import DTYPES

UNITS = 160
VERSIONS = ("v1-scatter", "v2-column-blocks")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_first_layer_weight_grad(timer_for, dtype, mnist, version):
    timed = timer_for("numba-cpu", dtype)
    X = mnist.images(50_000, dtype)
    n, n_in = X.shape
    compressed = cpu_sparse.compress_rows(X)
    rng = np.random.default_rng(0)
    H = cpu_simd.aligned_copy(np.maximum(rng.standard_normal((n, UNITS)), 0).astype(dtype))
    dA = cpu_simd.aligned_copy(rng.standard_normal((n, UNITS)).astype(dtype) / n)
    codes = layer_codes(((0, UNITS, "relu"),), UNITS)
    scale = np.full(UNITS, 1.25, dtype)
    threads = numba.get_num_threads()
    rows = np.arange(n)
    blocks = cpu_sparse.column_blocks(compressed)

    def v1(dW, db):
        cpu_sparse.sparse_weight_grad(compressed.indptr, compressed.indices, compressed.values, rows, dA, H, codes,
                                      scale, dW, db, threads)
        return dW, db

    def v2(dW, db):
        cpu_sparse.blocked_weight_grad(blocks.colptr, blocks.rows, blocks.values, dA, H, codes, scale, dW, db,
                                       threads)
        return dW, db

    outputs = [f(np.empty((n_in, UNITS), dtype), np.empty(UNITS, dtype)) for f in (v1, v2)]
    (dW1, db1), (dW2, db2) = outputs
    tol = 1e-4 if dtype == "float32" else 1e-11
    assert np.linalg.norm(dW2 - dW1) <= tol * np.linalg.norm(dW1), "the two versions disagree"
    assert np.linalg.norm(db2 - db1) <= tol * np.linalg.norm(db1), "the two versions disagree"
    fn = v1 if version.startswith("v1") else v2
    dW, db = np.empty((n_in, UNITS), dtype), np.empty(UNITS, dtype)
    timed("kernels/first_layer_weight_grad", fn, dW, db, flop=2 * compressed.values.shape[0] * UNITS,
          version=version, rows=n, units=UNITS)
