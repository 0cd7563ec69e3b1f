"""The fused training step of the numba-cuda backends: what it keeps per network and per batch size, and
the order in which one step's kernels are queued.

A network's parameters, gradients and optimiser moments are packed into flat buffers (one update launch for
all of them): the Net's weights, biases and state become views of those buffers. On a GPU the second step on
the same arrays is captured into a CUDA graph and every later one replayed (see replay); everything that
changes between steps (dropout keys, optimiser scales, L2 coefficients) is read on the device from one
buffer that a single asynchronous copy refreshes.
"""

from __future__ import annotations

import weakref

import numpy

from . import dropout, loss, optim
from .pack import pack
from .replay import StepValues
from ..codes import LOSS_CODES, OPTIMIZER_CODES


class Workspace:
    """What the fused step keeps for one network: its parameters, gradients and moments packed into
    flat buffers (the Net's arrays become views of them), per-layer constants, per-batch-size buffers,
    and the kernel views of all of these, made once."""

    def __init__(self, be, net):
        self.be, self.net = be, weakref.ref(net)
        self.packed = p = pack(be.xp, net.params(), net.state, moments=net.optimizer != "sgd")
        views = iter(p.param_views)
        grads = iter(p.grad_views)
        dW, db = [], []
        for li in range(len(net.weights)):
            net.weights[li] = next(views)
            dW.append(next(grads))
            if net.biases[li] is not None:
                net.biases[li] = next(views)
                db.append(next(grads))
            else:
                db.append(be.xp.empty(net.weights[li].shape[1], net.dtype))
        net.state = list(p.state_views)
        dev, pair = be._dev, be._pair
        self.flat = [dev(a) for a in (p.params, p.grads, p.v if p.v is not None else p.params,
                                      p.s if p.s is not None else p.params)]
        self.W = [pair(w) for w in net.weights]
        self.b = [pair(b) for b in net.biases]
        self.dW, self.db = [pair(g) for g in dW], [pair(g) for g in db]
        self.codes = [be._codes(seg, w.shape[1]) for seg, w in zip(net.segments, net.weights)]
        keeps = net.keep or [None] * len(net.weights)
        self.keep = [None if k is None else be._constant(k, numpy.float64) for k in keeps]
        self.key_slot, n_keys = [], 0          # row of the step's key table that each masked layer reads
        for k in keeps:
            self.key_slot.append(None if k is None else n_keys)
            n_keys += k is not None
        self.host_keys = numpy.zeros((max(n_keys, 1), 2), numpy.uint64)
        l2_units = [None if f is None else w.shape[1] for f, w in zip(net.l2 or [None] * len(net.weights),
                                                                     net.weights)]
        self.values = StepValues(be, n_keys, l2_units, net.dtype)
        self.acc_loss, self.acc_correct = be._accumulators()
        self.acc_views = dev(self.acc_loss), dev(self.acc_correct)
        self.buffers = {}

    def serves(self, net) -> bool:
        p = self.packed
        return (self.net() is net and p.holds(net.params())
                and all(a is b for (a, _), (b, _) in zip(net.state, p.state_views)))

    def update(self, code, hyper):
        """One launch over every packed parameter; `hyper` is a float64 device vector (see cuda_optim)."""
        optim.update(code, *self.flat, hyper, self.be.threads, self.be.stream)

    def reset_totals(self):
        self.acc_loss.fill(0)
        self.acc_correct.fill(0)

    def totals(self):
        """(summed loss, number correct) since reset_totals, as new device scalars."""
        return self.acc_loss.copy()[0], self.acc_correct.copy()[0]

    def gather(self, X, labels, rows):
        """Copies the rows (a slice or a device index array) of X and labels into this batch size's buffers."""
        batch = len(range(*rows.indices(X.shape[0]))) if isinstance(rows, slice) else rows.shape[0]
        bufs = self._buffers(batch)
        key = (X.shape[1], X.dtype.str, labels.dtype.str)
        if bufs.batch_key != key:
            xp = self.be.xp
            bufs.batch_key = key
            bufs.Xb, bufs.yb = xp.empty((batch, X.shape[1]), X.dtype), xp.empty(batch, labels.dtype)
        if isinstance(rows, slice):
            bufs.Xb[...] = X[rows]
            bufs.yb[...] = labels[rows]
        else:
            self.be.xp.take(X, rows, axis=0, out=bufs.Xb)
            self.be.xp.take(labels, rows, out=bufs.yb)
        return bufs.Xb, bufs.yb

    def _buffers(self, rows):
        bufs = self.buffers.get(rows)
        if bufs is None:
            if len(self.buffers) >= 4:
                self.buffers.clear()
            bufs = self.buffers[rows] = Buffers(self, rows)
        return bufs

    def step(self, X, labels, rng):
        """One fused step on (X, labels), adding its loss and number correct to the workspace's totals.
        On a GPU the second step on the same arrays is captured and every later one replayed."""
        be, net = self.be, self.net()
        rows = X.shape[0]
        bufs = self._buffers(rows)
        for li, slot in enumerate(self.key_slot):
            if slot is not None:
                self.host_keys[slot] = dropout.draw_key(rng)
        l2 = [net.l2_coefficients(li, rows) for li in range(len(self.W))]
        repeats = rows if net.repeat_update else 1
        replayer = be.replayer
        if repeats == 1 and replayer is not None and replayer.enabled:
            key = (X.data.ptr, labels.data.ptr, X.shape, X.strides, labels.strides)
            graph = bufs.graphs.get(key)
            if graph is None and key in bufs.graphs:        # seen once, eagerly: capture it now
                graph = bufs.graphs[key] = replayer.capture(lambda: self._enqueue(X, labels, bufs, None))
            if graph is not None:
                slot = self._stage(net.step + 1, l2)
                replayer.replay(graph, lambda stream: self.values.upload(slot, stream))
                net.step += 1
                return
            if len(bufs.graphs) >= 4:
                bufs.graphs.clear()
            bufs.graphs[key] = None
        self.values.upload(self._stage(net.step + 1, l2), be.cupy_stream)
        self._enqueue(X, labels, bufs, l2, repeats)
        net.step += repeats

    def _stage(self, step, l2):
        net = self.net()
        code = OPTIMIZER_CODES[net.optimizer]
        hyper = optim.hyper_values(code, lr=net.lr, beta1=net.beta1, beta2=net.beta2, eps=net.eps, step=step)
        return self.values.write(self.host_keys, hyper, l2)

    def _enqueue(self, X, labels, bufs, l2, repeats=1):
        """Queues one step's kernels, reading keys, hyper-parameters and L2 coefficients from self.values.
        With repeats > 1 (seed 000's batch loop) the values are staged again before each further update."""
        be, net = self.be, self.net()
        rows = X.shape[0]
        values = self.values
        acts = [be._pair(X)]
        for li in range(len(self.W)):
            fwd, bwd = bufs.fwd[li], bufs.bwd[li]
            if fwd is not None:
                dropout.dropout(values.keys, self.key_slot[li], self.keep[li], fwd.v, bwd.v, net.dropout == "unit",
                                 be.threads, be.stream)
            be._forward(acts[-1], self.W[li], self.b[li], self.codes[li], fwd, bufs.H[li], bufs.A[li])
            acts.append(bufs.A[li])
        loss.loss(LOSS_CODES[net.loss], acts[-1].v, be._dev(labels), net.loss_eps, bufs.grad.v,
                       1.0 / rows, bufs.part_loss, bufs.part_correct, *self.acc_views, be.threads,
                       accumulate=True, stream=be.stream)
        code = OPTIMIZER_CODES[net.optimizer]
        for r in range(repeats):
            if r > 0:
                values.upload(self._stage(net.step + 1 + r, l2), be.cupy_stream)
            dA = bufs.grad
            for li in reversed(range(len(self.W))):
                dX = bufs.dX[li] if li > 0 else None
                be._backward(dA, acts[li], self.W[li], bufs.H[li], self.codes[li], bufs.bwd[li], values.l2[li], dX,
                             self.dW[li], self.db[li], bufs.scratch[li])
                dA = dX
            self.update(code, values.hyper)


class Buffers:
    """The fused step's intermediates for one batch size, as Pairs (scratch: whatever the backend's
    backward pass asks for)."""

    def __init__(self, ws: Workspace, rows: int):
        be, net = ws.be, ws.net()
        xp, dtype = be.xp, net.dtype

        def empty(*shape):
            return be._pair(xp.empty(shape, dtype))

        self.H, self.A, self.fwd, self.bwd, self.dX, self.scratch = ([] for _ in range(6))
        for li, W in enumerate(net.weights):
            n_in, units = W.shape
            self.H.append(empty(rows, units))
            masked = ws.keep[li] is not None
            if not masked:
                fwd = bwd = None
            elif net.dropout == "unit":
                fwd = bwd = empty(1, units)
            else:
                fwd, bwd = empty(rows, units), empty(rows, units)
            self.fwd.append(fwd)
            self.bwd.append(bwd)
            self.A.append(empty(rows, units) if masked else self.H[-1])
            self.dX.append(empty(rows, n_in) if li > 0 else None)
            self.scratch.append(be._scratch(rows, W))
        self.grad = empty(rows, net.weights[-1].shape[1])
        self.part_loss, self.part_correct = be._loss_partials(rows)
        self.graphs = {}                         # (arrays the step reads) -> captured step, None until captured
        self.batch_key = self.Xb = self.yb = None   # gathered minibatches (see Workspace.gather)
