"""The numba-cuda and cuda-hybrid backends' own machinery, beyond the backend contract (which
tests/test_conformance.py checks on them): the batch-split weight gradient, the GPU tiling, the Philox
generator, the packed update, graph replay, registration and the kernel cache.

Without a GPU (CI) every kernel runs in numba-cuda's CPU simulator (the repository's conftest.py sets
NUMBA_ENABLE_CUDASIM=1) on tiny shapes that are not multiples of the tiles. With FASTMNIST_REAL_GPU=1 on
a machine with a GPU the same tests run on the device at full size (bench/gpu_check.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from fastmnist.kernels.cuda import backward, dense, dropout
from fastmnist.kernels.codes import activation_codes
from fastmnist.kernels.cuda.tiles import GPU_TILING, SIM_TILING
from fastmnist.kernels.cuda.hybrid import CudaHybridBackend
from fastmnist.kernels.interface import Net
from fastmnist.kernels.cuda.backend import NumbaCudaBackend, simulator_enabled
from fastmnist.kernels.reference import ReferenceBackend
from tolerances import TOL, rel_err

SIMULATED = simulator_enabled()
DTYPES = [np.float64, np.float32]
# (rows, inputs, units): batch 1, partial tiles in every dimension, more than one tile.
SHAPES = ([(1, 5, 3), (7, 10, 8), (10, 15, 13)] if SIMULATED
          else [(1, 784, 192), (1000, 784, 192), (50000, 784, 192), (50000, 192, 48), (4099, 37, 10)])
SEGMENT_KINDS = ("relu", "tanh", "identity")

ref = ReferenceBackend()


def _backend(cls):
    if not SIMULATED and os.environ.get("FASTMNIST_REAL_GPU") != "1":
        pytest.fail("numba.cuda was imported before conftest.py set NUMBA_ENABLE_CUDASIM=1: run the tests "
                    "directory first, or set the variable yourself (FASTMNIST_REAL_GPU=1 tests on a real GPU)")
    if SIMULATED:
        # The simulator hands the GIL between its per-thread Python threads: a short switch interval
        # makes it several times faster.
        old = sys.getswitchinterval()
        sys.setswitchinterval(5e-4)
        yield cls()
        sys.setswitchinterval(old)
    else:
        yield cls()


@pytest.fixture(scope="module")
def nb():
    """numba-cuda: for the kernels that cuda-hybrid shares with it (losses, masks, updates) and its own products."""
    yield from _backend(NumbaCudaBackend)


@pytest.fixture(scope="module", params=[NumbaCudaBackend, CudaHybridBackend], ids=["numba-cuda", "cuda-hybrid"])
def be(request):
    """Each backend whose layer operations differ: numba-cuda's tiled products, cuda-hybrid's library ones."""
    yield from _backend(request.param)


def segments_for(units):
    """Up to three branches (relu, tanh, identity) splitting `units`."""
    cuts = sorted({0, units, units // 3, (2 * units) // 3})
    return tuple((a, b, SEGMENT_KINDS[i % 3]) for i, (a, b) in enumerate(zip(cuts, cuts[1:])))


def close(be, got, want, dtype):
    got, want = np.asarray(be.to_numpy(got)), np.asarray(be.to_numpy(want))
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(np.isfinite(got)), "non-finite values"
    err = rel_err(got, want)
    if not err <= TOL[dtype]:     # say where the difference lies: a tile, a row, a column, or everywhere
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        far = np.argwhere(diff > 1e-3 * diff.max()).reshape(-1, diff.ndim)
        spans = "; ".join(f"axis {a}: {sorted(set(far[:, a].tolist()))[:24]}" for a in range(diff.ndim))
        pytest.fail(f"relative error {err:.3g} on shape {diff.shape}: largest difference {diff.max():.3g}, "
                    f"{len(far)} elements differ by over 1e-3 of that ({spans})")


def make_mask(rng, kind, rows, units):
    if kind is None:
        return None, None
    keep = rng.uniform(0.4, 0.9, units)
    if kind == "unit":
        fwd = ((rng.random_sample(units) < keep) / keep).reshape(1, -1)
        return fwd, fwd
    kept = rng.random_sample((rows, units)) < keep
    return kept / keep, kept.astype(np.float64)


def dense_inputs(seed, shape, dtype):
    rng = np.random.RandomState(seed)
    m, k, n = shape
    X, W, b = rng.standard_normal((m, k)), rng.standard_normal((k, n)) * 0.3, rng.standard_normal(n)
    return rng, X.astype(dtype), W.astype(dtype), b.astype(dtype)


# -- dense layers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("splits", [1, 2, 3, 7])
def test_weight_gradient_split_over_the_batch(nb, splits):
    """The batch split of the weight-gradient product (slices of unequal length, empty ones included)."""
    shape, dtype = (SHAPES[-1][0], 11, 13) if SIMULATED else (50000, 784, 192), np.float64
    rng, X, W, _ = dense_inputs(4, shape, dtype)
    seg = segments_for(shape[2])
    _, H = ref.dense_forward(X, W, None, seg)
    dA, l2 = rng.standard_normal(H.shape), rng.uniform(0, 0.1, shape[2])
    xp, dev = nb.xp, nb._dev
    dW, db = xp.empty(W.shape), xp.empty(shape[2])
    parts, db_parts = xp.empty((splits,) + W.shape), xp.empty((splits, shape[2]))
    backward.weight_grad(*map(dev, (xp.asarray(X), xp.asarray(dA), xp.asarray(H))),
                              nb._codes(seg, shape[2]), None, dev(xp.asarray(W)), dev(xp.asarray(l2)),
                              dev(dW), dev(db), dev(parts), dev(db_parts), nb.tiling, nb.stream)
    _, dW0, db0 = ref.dense_backward(dA, X, W, H, seg, None, l2)
    close(nb, dW, dW0, dtype)
    close(nb, db, db0, dtype)


@pytest.mark.skipif(not SIMULATED, reason="on a GPU every test already runs with the GPU tiling")
def test_gpu_tiling_in_the_simulator(nb):
    """The 64 x 64 tiles that a GPU runs, on one block of the simulator (the other tests use small tiles)."""
    assert nb.tiling == SIM_TILING
    dtype, (m, k, n) = np.float64, (9, 21, 11)
    rng, X, W, b = dense_inputs(5, (m, k, n), dtype)
    seg = segments_for(n)
    codes = activation_codes(seg, n)
    fwd, bwd = make_mask(rng, "element", m, n)
    H, A = np.empty((m, n)), np.empty((m, n))
    dense.dense_forward(X, W, b, codes, fwd, H, A, GPU_TILING)
    A0, H0 = ref.dense_forward(X, W, b, seg, fwd)
    close(nb, A, A0, dtype)
    dA = rng.standard_normal((m, n))
    dX, dW, db = np.empty((m, k)), np.empty((k, n)), np.empty(n)
    backward.input_grad(dA, H0, codes, bwd, W, dX, GPU_TILING)
    backward.weight_grad(X, dA, H0, codes, bwd, W, None, dW, db, np.empty((1, k, n)), np.empty((1, n)),
                              GPU_TILING)
    for g, w in zip((dX, dW, db), ref.dense_backward(dA, X, W, H0, seg, bwd)):
        close(nb, g, w, dtype)


# -- losses ---------------------------------------------------------------------------------------------

# -- dropout --------------------------------------------------------------------------------------------

def philox_py(counter, key):
    """Philox-4x32-10 in plain Python, the generator's definition."""
    c, (k0, k1) = list(counter), key
    mask = 0xFFFFFFFF
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & mask, (p0 >> 32) ^ c[3] ^ k1, p0 & mask]
        k0, k1 = (k0 + 0x9E3779B9) & mask, (k1 + 0xBB67AE85) & mask
    return c


def test_philox_known_answers(nb):
    # Known-answer vectors of the Random123 distribution (kat_vectors, philox4x32 10 rounds).
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    counters = np.array([c for c, _, _ in cases], dtype=np.uint64)
    keys = np.array([k for _, k, _ in cases], dtype=np.uint64)
    out = nb.xp.zeros((len(cases), 4), np.uint64)
    dropout.philox_kernel[1, 4](nb._dev(nb.xp.asarray(counters)), nb._dev(nb.xp.asarray(keys)), nb._dev(out))
    want = np.array([w for _, _, w in cases], dtype=np.uint64)
    np.testing.assert_array_equal(nb.to_numpy(out), want)
    for c, k, w in cases:
        assert tuple(philox_py(c, k)) == w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["unit", "element"])
def test_dropout_masks_follow_the_generator(nb, dtype, kind):
    rows, units = 7, 9
    keep = np.r_[np.full(4, 0.3), np.full(units - 4, 0.9)]
    fwd, bwd = nb.dropout_mask(np.random.RandomState(3), rows, keep, kind, dtype)
    fwd, bwd = nb.to_numpy(fwd), nb.to_numpy(bwd)
    key = tuple(int(k) for k in np.random.RandomState(3).randint(0, 2 ** 32, size=2, dtype=np.uint64))
    shape = (1, units) if kind == "unit" else (rows, units)
    n = shape[0] * shape[1]
    words = [w for g in range(-(-n // 4)) for w in philox_py((g, 0, 0, 0), key)][:n]
    kept = (np.array(words, dtype=np.float64) * 2.0 ** -32).reshape(shape) < keep
    assert fwd.dtype == dtype and fwd.shape == shape
    np.testing.assert_array_equal(fwd, (kept / keep).astype(dtype))
    np.testing.assert_array_equal(bwd, fwd if kind == "unit" else kept.astype(dtype))
    assert 0 < kept.sum() < kept.size


# -- optimiser ------------------------------------------------------------------------------------------

PARAM_SHAPES = [(7, 5), (5,), (5, 3)]


def random_params(dtype, seed=8):
    rng = np.random.RandomState(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in PARAM_SHAPES]
    grads = [rng.standard_normal(s).astype(dtype) for s in PARAM_SHAPES]
    state = [(rng.standard_normal(s).astype(dtype) * 0.1, rng.random_sample(s).astype(dtype)) for s in PARAM_SHAPES]
    return params, grads, state


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["sgd", "adam_like", "adam"])
def test_packed_update_matches_reference(nb, dtype, kind):
    """One launch over a packed network's parameters (the conformance suite checks the unpacked update)."""
    params, grads, state = random_params(dtype)
    hyper = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, step=3)
    want = [p.copy() for p in params], [(v.copy(), s.copy()) for v, s in state]
    ref.update(kind, want[0], grads, want[1], **hyper)
    dev = [nb.asarray(p) for p in params]
    dev_state = [(nb.asarray(v), nb.asarray(s)) for v, s in state] if kind != "sgd" else [(None, None)] * 3
    net = Net([dev[0], dev[2]], [dev[1], None], [((0, 5, "relu"),), ((0, 3, "identity"),)], "mse",
              optimizer=kind, state=dev_state)
    ws = nb._workspace(net)
    for view, g in zip(ws.packed.grad_views, grads):
        view[...] = nb.asarray(g)
    dev, dev_grads, dev_state = net.params(), ws.packed.grad_views, net.state
    assert nb._workspace_holding(dev, dev_grads) is ws
    nb.update(kind, dev, dev_grads, dev_state, **hyper)
    for p, w in zip(dev, want[0]):
        close(nb, p, w, dtype)
    if kind != "sgd":
        for (v, s), (v0, s0) in zip(dev_state, want[1]):
            close(nb, v, v0, dtype)
            close(nb, s, s0, dtype)


# -- the fused training step ----------------------------------------------------------------------------

def make_net(be, dtype, *, loss="softmax_ce", optimizer="adam_like", bias=True, keep=None, dropout="unit",
             repeat=False, sizes=None, lr=0.01, seed=9):
    sizes = sizes or ((7, 9, 6, 4) if SIMULATED else (784, 192, 48, 10))
    rng = np.random.RandomState(seed)
    segs = [segments_for(n) for n in sizes[1:-1]] + [((0, sizes[-1], "identity"),)]
    W = [be.asarray(rng.standard_normal((a, b)) * np.sqrt(2 / a), dtype) for a, b in zip(sizes, sizes[1:])]
    b = [be.asarray(rng.standard_normal(n) * 0.1, dtype) if bias else None for n in sizes[1:]]
    net = Net(W, b, segs, loss, 1e-7 if loss == "softmax_ce" else 0.0, optimizer, lr=lr, dropout=dropout,
              keep=[None if keep is None or li == len(W) - 1 else np.full(n, keep) for li, n in enumerate(sizes[1:])],
              l2=[np.linspace(0.5, 2.0, n) for n in sizes[1:]], repeat_update=repeat)
    net.state = ([(be.xp.zeros_like(p), be.xp.zeros_like(p)) for p in net.params()] if optimizer != "sgd"
                 else [(None, None)] * len(net.params()))
    return net


def training_data(be, dtype, rows, inputs, classes, seed=10):
    rng = np.random.RandomState(seed)
    return (be.asarray(rng.random_sample((rows, inputs)), dtype), be.asarray(rng.randint(0, classes, rows), np.int64))


@pytest.mark.skipif(SIMULATED, reason="CUDA graphs need a GPU: the simulator launches every kernel from Python")
def test_replayed_steps_equal_steps_launched_one_by_one(be):
    """From the second step on the same arrays the fused step replays a captured CUDA graph, with new
    dropout keys, optimiser scales and gathered minibatches each time: the same numbers as launching
    every kernel from Python."""
    dtype, rows, batch = np.float64, 4096, 512
    nets = [make_net(be, dtype, keep=0.7, optimizer="adam") for _ in range(2)]
    X, y = training_data(be, dtype, rows, nets[0].weights[0].shape[0], nets[0].weights[-1].shape[1])
    totals = []
    for net, replay in zip(nets, (True, False)):
        be.replayer.enabled = replay
        try:
            for epoch in range(2):
                order = np.random.RandomState(epoch).permutation(rows)
                totals.append(be.train_epoch(net, X, y, batch, np.random.RandomState(epoch), order))
        finally:
            be.replayer.enabled = not be.replayer.failure
        assert not be.replayer.failure, be.replayer.failure
    assert any(g is not None for w in be._workspaces.values() for b in w.buffers.values() for g in b.graphs.values())
    for (t, c), (t1, c1) in zip(totals[:2], totals[2:]):
        assert int(c) == int(c1) and abs(float(t) - float(t1)) <= 1e-12 * abs(float(t1))
    for p, p1 in zip(nets[0].params(), nets[1].params()):
        close(be, p, p1, dtype)


@pytest.mark.skipif(SIMULATED, reason="the simulator checks no grid sizes: only a GPU launch can warn")
def test_training_launches_no_low_occupancy_warnings(be):
    net = make_net(be, np.float32, keep=0.7)
    X, y = training_data(be, np.float32, 7, net.weights[0].shape[0], net.weights[-1].shape[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        be.train_step(net, X, y, np.random.RandomState(0))
        be.evaluate(net, X, y)
    assert not [str(w.message) for w in caught if w.category.__name__ == "NumbaPerformanceWarning"]


def test_train_step_returns_device_scalars_and_repacks_replaced_weights(be):
    net = make_net(be, np.float64)
    X, y = training_data(be, np.float64, 6, net.weights[0].shape[0], net.weights[-1].shape[1])
    total, _ = be.train_step(net, X, y, np.random.RandomState(0))
    if not SIMULATED:
        assert isinstance(total, be.xp.ndarray)
    first = be._workspace(net)
    net.weights[0] = be.asarray(be.to_numpy(net.weights[0]) * 0)     # the caller swaps an array in
    be.train_step(net, X, y, np.random.RandomState(0))
    assert be._workspace(net) is not first
    assert be._workspace(net).packed.holds(net.params())


# -- availability ---------------------------------------------------------------------------------------

def test_registry_hides_the_simulator_unless_allowed(monkeypatch):
    import fastmnist
    from fastmnist import dispatch

    if not SIMULATED:
        pytest.skip("this checks the simulator's registration")
    monkeypatch.delenv("FASTMNIST_ALLOW_CUDASIM", raising=False)
    dispatch._load.cache_clear()
    infos = {b.name: b for b in fastmnist.backends()}
    for name in CUDA_KERNEL_BACKENDS:
        assert not infos[name].available and "NUMBA_ENABLE_CUDASIM" in infos[name].reason
        assert infos[name].device == "gpu"
    assert fastmnist.get_backend("auto").name not in CUDA_KERNEL_BACKENDS
    monkeypatch.setenv("FASTMNIST_ALLOW_CUDASIM", "1")
    dispatch._load.cache_clear()
    try:
        for name in CUDA_KERNEL_BACKENDS:
            assert fastmnist.get_backend(name).name == name
    finally:
        monkeypatch.delenv("FASTMNIST_ALLOW_CUDASIM")
        dispatch._load.cache_clear()


CUDA_KERNEL_BACKENDS = ("numba-cuda", "cuda-hybrid")
PROBE = """
import json
import fastmnist
from numba import cuda
infos = {b.name: b for b in fastmnist.backends()}
print(json.dumps([cuda.is_available(), [[infos[n].available, infos[n].reason] for n in %r],
                  fastmnist.get_backend("auto").name]))
""" % (CUDA_KERNEL_BACKENDS,)


def test_backends_report_the_cuda_backends_as_the_machine_allows():
    """Without the simulator, numba-cuda and cuda-hybrid are available exactly when numba-cuda sees a GPU, and
    says why not; the other backends still work."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "FASTMNIST_ALLOW_CUDASIM")}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    gpu, probes, auto = json.loads(out.stdout.strip().splitlines()[-1])
    for available, reason in probes:
        assert available == gpu
        if not gpu:
            assert reason.startswith("no usable CUDA device")
    assert (auto in CUDA_KERNEL_BACKENDS) == gpu


CACHE_PROBE = """
import gc, json, sys
import numpy as np
import fastmnist
from numba.cuda.dispatcher import CUDADispatcher
from fastmnist.training import build_net, init_params, make_recipe
be = fastmnist.get_backend(sys.argv[1])
recipe = make_recipe("branchnet")
net = build_net(be, recipe, *init_params(recipe, np.random.RandomState(0)), "float32")
rng = np.random.RandomState(1)
X = be.asarray(rng.random_sample((300, 784)), np.float32)
y = be.asarray(rng.randint(0, 10, 300), np.int64)
be.train_epoch(net, X, y, 100, rng, rng.permutation(300))
be.evaluate(net, X, y)
be.synchronize()
ours = [d for d in gc.get_objects() if isinstance(d, CUDADispatcher) and d.py_func.__module__.startswith("fastmnist")]
print(json.dumps([len(ours), sum(sum(d.stats.cache_hits.values()) for d in ours),
                  sum(sum(d.stats.cache_misses.values()) for d in ours)]))
"""


@pytest.mark.skipif(SIMULATED, reason="the simulator compiles nothing: only a GPU run has kernels to cache")
@pytest.mark.parametrize("name", CUDA_KERNEL_BACKENDS)
def test_a_second_process_loads_every_kernel_from_the_disk_cache(name, tmp_path):
    """The kernels are compiled with cache=True: a fresh process trains without compiling any of them again."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", CACHE_PROBE, name], env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    (kernels, hits0, misses0), (_, hits1, misses1) = runs
    assert kernels > 0 and misses0 > 0 and hits0 == 0
    assert misses1 == 0 and hits1 == misses0
