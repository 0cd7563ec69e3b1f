"""The numba-cuda backend: hand-written CUDA kernels for every operation of the backend interface, and a
fused training step that keeps every intermediate on the device and never waits for it.

Arrays: on a GPU the backend's arrays are CuPy arrays (xp = cupy) and kernels receive zero-copy numba
views of them. Under numba-cuda's simulator (NUMBA_ENABLE_CUDASIM=1, which the tests use) they are NumPy
arrays and kernels receive the simulator's zero-copy wrappers. The kernels are the same; only the tile
shape differs (the simulator runs every thread in Python).

The fused step (fused_step.py) packs a network's parameters, gradients and optimiser moments into flat
buffers (one update launch for all of them) and, on a GPU, replays each step from a CUDA graph.

Dropout masks come from a counter-based generator on the device, keyed by numbers drawn from the host
generator once per mask: a run is reproducible from its seed, but its masks are not numpy's.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy

from . import backward, dense, dropout, loss, optim
from .fused_step import Workspace
from .replay import Replayer
from .tiles import GPU_TILING, SIM_TILING
from ..codes import LOSS_CODES, OPTIMIZER_CODES, activation_codes
from ..reference import ReferenceBackend


class Pair(NamedTuple):
    """A backend array and its kernel view, made once and kept together."""
    a: object
    v: object


def _numba_cuda_config():
    try:
        from numba.cuda.core import config
    except ImportError:  # older layouts keep the CUDA flags in numba's own config
        from numba.core import config
    return config


def simulator_enabled() -> bool:
    """Whether numba-cuda runs kernels in its CPU simulator (NUMBA_ENABLE_CUDASIM=1 at import)."""
    return bool(_numba_cuda_config().ENABLE_CUDASIM)


class NumbaCudaBackend(ReferenceBackend):
    name = "numba-cuda"
    device = "gpu"
    host_masks = False          # masks come from the device generator (see dropout.py)
    captures_blas = False       # whether a captured step calls cuBLAS (see cuda_replay)

    def __init__(self):
        from numba import cuda

        self._cuda = cuda
        self.simulated = simulator_enabled()
        if self.simulated:
            from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

            xp, self._view, self.stream, self.cupy_stream = numpy, FakeCUDAArray, 0, None
            self.tiling, self.threads, self.multiprocessors = SIM_TILING, 8, 2
        else:
            try:
                import cupy
            except ImportError as exc:
                raise RuntimeError(f"numba-cuda needs CuPy for its arrays (pip install 'fastmnist[cuda]'): {exc}") \
                    from None
            xp = cupy
            self._view = lambda a: cuda.as_cuda_array(a, sync=False)
            self.cupy_stream = cupy.cuda.get_current_stream()
            ptr = self.cupy_stream.ptr
            self.stream = cuda.external_stream(ptr) if ptr else 0
            self.tiling, self.threads = GPU_TILING, 256
            # the small layers' kernels launch grids of a few blocks by design: without this numba-cuda warns
            # once for every new grid size and checks the grid on every launch
            _numba_cuda_config().CUDA_LOW_OCCUPANCY_WARNINGS = 0
            self.multiprocessors = cuda.get_current_device().MULTIPROCESSOR_COUNT
        super().__init__(xp, name="numba-cuda")
        self.device = "gpu"
        self._constants = {}
        self._workspaces = {}
        self.replayer = None if self.simulated else Replayer(self)

    # -- plumbing ---------------------------------------------------------------------------------
    def synchronize(self):
        if not self.simulated:
            self._cuda.synchronize()

    def _dev(self, a):
        """The kernel view of a backend array (None stays None)."""
        return self._view(a) if isinstance(a, self.xp.ndarray) else a

    def _pair(self, a):
        return None if a is None else Pair(a, self._dev(a))

    def _device_array(self, a, dtype):
        """`a` as a backend array of `dtype`, uploading host arrays."""
        return self.xp.asarray(a).astype(dtype, copy=False)

    def _constant(self, values, dtype):
        """Kernel view of a small host vector, uploaded once per distinct content."""
        host = numpy.ascontiguousarray(values, dtype=dtype)
        key = (host.dtype.str, host.shape, host.tobytes())
        hit = self._constants.get(key)
        if hit is None:
            if len(self._constants) > 1024:
                self._constants.clear()
            array = self.xp.array(host)          # a copy: the caller may change its array later
            hit = self._constants[key] = (array, self._dev(array))
        return hit[1]

    def _codes(self, segments, units):
        return self._constant(activation_codes(segments, units), numpy.int32)

    def _mask(self, mask, dtype):
        if mask is None:
            return None
        mask = self._device_array(mask, dtype)
        return self._pair(mask.reshape(1, -1) if mask.ndim == 1 else mask)

    def _l2(self, l2, dtype):
        if l2 is None:
            return None
        if isinstance(l2, numpy.ndarray) and self.xp is not numpy:
            return self._constant(l2, dtype)
        return self._dev(self._device_array(l2, dtype))

    def _accumulators(self):
        return self.xp.zeros(1, numpy.float64), self.xp.zeros(1, numpy.int64)

    # -- the two layer operations that the backends built on this one replace ----------------------
    def _scratch(self, batch, W):
        """Per-layer workspace of the backward pass: the weight gradient's partial sums over batch slices."""
        n_in, units = W.shape
        splits = backward.weight_grad_splits(self.tiling, batch, n_in, units, 4 * self.multiprocessors)
        return (self._dev(self.xp.empty((splits, n_in, units), W.dtype)),
                self._dev(self.xp.empty((splits, units), W.dtype)))

    def _forward(self, X, W, b, codes, mask, H, A):
        """H = act(X @ W + b), A = H * mask (Pairs; b and mask may be None)."""
        dense.dense_forward(X.v, W.v, b and b.v, codes, mask and mask.v, H.v, A.v, self.tiling, self.stream)

    def _backward(self, dA, X, W, H, codes, mask, l2, dX, dW, db, scratch):
        """dX (unless None) = dZ @ W.T, dW = X.T @ dZ + l2 * W, db = column sums of dZ, with
        dZ = dA * act'(Z) * mask (Pairs; mask may be None, l2 is a kernel view or None)."""
        args = (dA.v, H.v, codes, mask and mask.v)
        if dX is not None:
            backward.input_grad(*args, W.v, dX.v, self.tiling, self.stream)
        backward.weight_grad(X.v, *args, W.v, l2, dW.v, db.v, *scratch, self.tiling, self.stream)

    def _loss_partials(self, rows):
        blocks = loss.loss_blocks(rows, self.threads, 8 * self.multiprocessors)
        return (self._dev(self.xp.empty(blocks, numpy.float64)), self._dev(self.xp.empty(blocks, numpy.int64)))

    # -- interface operations ---------------------------------------------------------------------
    def dense_forward(self, X, W, b, segments, mask=None):
        m, n = X.shape[0], W.shape[1]
        H = self.xp.empty((m, n), W.dtype)
        A = H if mask is None else self.xp.empty((m, n), W.dtype)
        pair = self._pair
        self._forward(pair(X), pair(W), pair(b), self._codes(segments, n), self._mask(mask, W.dtype), pair(H),
                      pair(A))
        return A, H

    def dense_backward(self, dA, X, W, H, segments, mask=None, l2=None, need_dx=True):
        xp, dtype = self.xp, W.dtype
        (m, n_in), n = X.shape, W.shape[1]
        dX = xp.empty((m, n_in), dtype) if need_dx else None
        dW, db = xp.empty((n_in, n), dtype), xp.empty(n, dtype)
        pair = self._pair
        self._backward(pair(dA), pair(X), pair(W), pair(H), self._codes(segments, n), self._mask(mask, dtype),
                       self._l2(l2, dtype), pair(dX), pair(dW), pair(db), self._scratch(m, W))
        return dX, dW, db

    def loss(self, kind, out, labels, eps=0.0, need_grad=True):
        if kind not in LOSS_CODES:
            raise ValueError(f"unknown loss {kind!r}")
        grad = self.xp.empty(out.shape, out.dtype) if need_grad else None
        totals, counts = self._accumulators()
        loss.loss(LOSS_CODES[kind], self._dev(out), self._dev(self._device_array(labels, numpy.int64)),
                       eps, self._dev(grad), 1.0 / out.shape[0], *self._loss_partials(out.shape[0]),
                       self._dev(totals), self._dev(counts), self.threads, stream=self.stream)
        return totals[0], counts[0], grad

    def l2_penalty(self, W, segments, factors):
        out = self.xp.empty(1, numpy.float64)
        loss.l2_penalty(self._dev(W), self._constant([s[0] for s in segments], numpy.int64),
                             self._constant([s[1] for s in segments], numpy.int64),
                             self._constant(factors, numpy.float64), self._dev(out), self.threads,
                             self.stream)
        return out[0]

    def dropout_mask(self, rng, rows, keep_probs, kind, dtype):
        """Masks drawn on the device from a key taken from `rng` (see cuda_rng); shapes and scaling as
        the reference's."""
        if kind not in ("unit", "element"):
            raise ValueError(f"unknown dropout kind {kind!r}")
        units = len(keep_probs)
        fwd = self.xp.empty((1 if kind == "unit" else rows, units), dtype)
        bwd = fwd if kind == "unit" else self.xp.empty_like(fwd)
        keys = self._constant(dropout.draw_key(rng).reshape(1, 2), numpy.uint64)
        dropout.dropout(keys, 0, self._constant(keep_probs, numpy.float64), self._dev(fwd), self._dev(bwd),
                         kind == "unit", self.threads, self.stream)
        return fwd, bwd

    def update(self, kind, params, grads, state, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, step=1):
        """One launch when `params` and `grads` are a packed network's views; one per parameter else."""
        if kind not in OPTIMIZER_CODES:
            raise ValueError(f"unknown optimizer {kind!r}")
        code = OPTIMIZER_CODES[kind]
        hyper = self._constant(optim.hyper_values(code, lr=lr, beta1=beta1, beta2=beta2, eps=eps, step=step),
                               numpy.float64)
        ws = self._workspace_holding(params, grads)
        if ws is not None:
            ws.update(code, hyper)
            return
        for p, g, (v, s) in zip(params, grads, state):
            if not p.flags.c_contiguous:
                raise ValueError("update needs C-contiguous parameters")
            flat = [self._dev(a.reshape(-1)) for a in (p, self._device_array(g, p.dtype), v, s) if a is not None]
            flat += [flat[0]] * (4 - len(flat))          # SGD: moments unused
            optim.update(code, *flat, hyper, self.threads, self.stream)

    # -- fused training ---------------------------------------------------------------------------
    def train_step(self, net, X, labels, rng):
        """One fused forward/backward/update. Returns (summed loss, number correct) as device scalars."""
        ws = self._workspace(net)
        ws.reset_totals()
        ws.step(X, labels, rng)
        return ws.totals()

    def train_epoch(self, net, X, labels, batch_size, rng, order=None):
        """Minibatches are gathered into the workspace's batch buffers, so that every step of an epoch reads
        the same arrays and one captured step serves them all."""
        n = X.shape[0]
        batch_size = n if batch_size is None else batch_size
        ws = self._workspace(net)
        ws.reset_totals()
        order = None if order is None else self.xp.asarray(order)      # one upload per epoch
        for start in range(0, n - batch_size + 1, batch_size):
            if batch_size == n and order is None:
                ws.step(X, labels, rng)
            else:
                rows = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
                ws.step(*ws.gather(X, labels, rows), rng)
        return ws.totals()

    def epoch_path(self, net, rows, batch_size, shuffled):
        replayed = self.replayer is not None and self.replayer.enabled and not net.repeat_update
        return "fused step" + (", replayed from a CUDA graph" if replayed else "")

    def _workspace(self, net) -> Workspace:
        ws = self._workspaces.get(id(net))
        if ws is None or not ws.serves(net):
            self._workspaces = {k: w for k, w in self._workspaces.items() if w.net() is not None}
            ws = self._workspaces[id(net)] = Workspace(self, net)
        return ws

    def _workspace_holding(self, params, grads):
        for ws in self._workspaces.values():
            if ws.packed.holds(params) and all(g is h for g, h in zip(grads, ws.packed.grad_views)):
                return ws
        return None
