"""The reference backend: plain array code that runs unchanged on numpy and on cupy arrays.

It implements every member of the backend contract (interface.Backend) in the most direct way and is the
oracle every kernel is checked against in float64. The compiled backends subclass it and replace the
operations they accelerate; conventions (rows are samples, segments, masks) are interface.py's.
"""

from __future__ import annotations

import numpy


def draw_dropout_mask(rng, rows, keep_probs, kind):
    """One layer's dropout masks as float64 host arrays, drawn from `rng` (a numpy RandomState) in the order
    every backend draws them. `keep_probs` is a host vector with one keep probability per unit.

    unit: one value per unit per step, (1, units), kept units scaled by 1/keep both ways (seed 004); the two
    masks are one array. element: one value per element, (rows, units); keep 0.5 draws rng.randint(2) as seed
    000 does; kept units scaled by 1/keep forwards only. Returns (forward mask, backward mask).
    """
    keep = numpy.asarray(keep_probs, dtype=numpy.float64)
    if kind == "unit":
        kept = rng.random_sample(keep.shape[0]) < keep
        fwd = (kept / keep).reshape(1, -1)
        return fwd, fwd
    if kind == "element":
        shape = (rows, keep.shape[0])
        kept = rng.randint(2, size=shape) if numpy.all(keep == 0.5) else rng.random_sample(shape) < keep
        return kept / keep, kept.astype(numpy.float64)
    raise ValueError(f"unknown dropout kind {kind!r}")


class ReferenceBackend:
    name = "numpy"
    device = "cpu"
    host_masks = True

    def __init__(self, xp=numpy, name: str | None = None):
        self.xp = xp
        self.device = "cpu" if xp is numpy else "gpu"
        if name:
            self.name = name

    # -- moving data ------------------------------------------------------------------------------
    def asarray(self, a, dtype=None):
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def to_float(self, images, dtype):
        """Pixels 0..255 (any integer array) as a new float32 or float64 array of this backend in [0, 1]."""
        try:
            resolved = None if dtype is None else numpy.dtype(dtype)
        except TypeError:
            resolved = None
        if resolved not in (numpy.float32, numpy.float64):
            raise ValueError(f"to_float: dtype {dtype!r} is not float32 or float64")
        out = self.xp.asarray(images).astype(resolved)
        out /= 255
        return out

    def parameter(self, a, dtype):
        """A new array for a trainable parameter (or its optimiser state) with the values of `a`."""
        return self.xp.array(a, dtype=dtype, order="C")

    def to_numpy(self, a):
        return a.get() if hasattr(a, "get") else numpy.asarray(a)

    def synchronize(self):
        if self.xp is not numpy:
            self.xp.cuda.get_current_stream().synchronize()

    # -- dense layers -----------------------------------------------------------------------------
    def dense_forward(self, X, W, b, segments, mask=None):
        """A = act(X @ W + b) * mask. Returns (A, H) where H = act(...) before the mask."""
        Z = X @ W
        if b is not None:
            Z += b
        H = self._activate(Z, segments)
        A = H if mask is None else H * mask
        return A, H

    def dense_backward(self, dA, X, W, H, segments, mask=None, l2=None, need_dx=True):
        """Gradients of a dense layer from the gradient of its output A.

        `l2` is an optional per-unit vector c: the weight gradient gains c * W (seed 004's reg * W / m).
        Returns (dX or None, dW, db).
        """
        dZ = self._times_derivative(dA, H, segments)
        if mask is not None:
            dZ *= mask
        dW = X.T @ dZ
        if l2 is not None:
            dW += W * l2
        db = dZ.sum(axis=0)
        dX = dZ @ W.T if need_dx else None
        return dX, dW, db

    def _activate(self, Z, segments):
        xp = self.xp
        for start, stop, act in segments:
            part = Z[:, start:stop]
            if act == "relu":
                xp.maximum(part, 0, out=part)
            elif act == "tanh":
                xp.tanh(part, out=part)
        return Z

    def _times_derivative(self, dA, H, segments):
        """dA * act'(Z), with the derivative written in terms of H = act(Z)."""
        dZ = dA.copy()
        for start, stop, act in segments:
            h = H[:, start:stop]
            if act == "relu":
                dZ[:, start:stop] *= h > 0
            elif act == "tanh":
                dZ[:, start:stop] *= 1 - h * h
        return dZ

    # -- losses -----------------------------------------------------------------------------------
    def loss(self, kind, out, labels, eps=0.0, need_grad=True):
        """(summed loss, number correct, gradient of the mean loss w.r.t. `out` or None).

        mse: sum over samples of sum_k (out - onehot)^2; gradient (out - onehot) / n, as seed 000 steps.
        softmax_ce: sum over samples of -log(softmax(out)[label] + eps); gradient (p - onehot) / n.
        """
        xp = self.xp
        n = out.shape[0]
        rows = xp.arange(n)
        correct = (out.argmax(axis=1) == labels).sum()
        if kind == "mse":
            diff = out.copy()
            diff[rows, labels] -= 1
            total = (diff * diff).sum()
            grad = diff / n if need_grad else None
        elif kind == "softmax_ce":
            e = xp.exp(out - out.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
            total = -xp.log(p[rows, labels] + eps).sum()
            if need_grad:
                p[rows, labels] -= 1
                p /= n
            grad = p if need_grad else None
        else:
            raise ValueError(f"unknown loss {kind!r}")
        return total, correct, grad

    def l2_penalty(self, W, segments, factors):
        """sum over branches of factor * mean(W_branch ** 2) / 2 (the seed 004 loss term)."""
        total = 0.0
        for (start, stop, _), f in zip(segments, factors):
            if f:
                w = W[:, start:stop]
                total = total + f * (w * w).mean() / 2
        return total

    # -- dropout ----------------------------------------------------------------------------------
    def dropout_mask(self, rng, rows, keep_probs, kind, dtype):
        """Masks for one layer, drawn on the host from `rng` (a numpy RandomState) so every CPU backend
        draws the same numbers (draw_dropout_mask); returns (forward mask, backward mask) as this backend's
        arrays of `dtype`."""
        fwd, bwd = draw_dropout_mask(rng, rows, keep_probs, kind)
        m = self.asarray(fwd, dtype)
        return (m, m) if bwd is fwd else (m, self.asarray(bwd, dtype))

    # -- optimisers -------------------------------------------------------------------------------
    def update(self, kind, params, grads, state, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, step=1):
        """Updates every parameter in place. `state` is a list of (v, s) pairs (zeros at first)."""
        xp = self.xp
        for p, g, (v, s) in zip(params, grads, state):
            if kind == "sgd":
                p -= lr * g
                continue
            v *= beta1
            v += (1 - beta1) * g
            s *= beta2
            s += (1 - beta2) * (g * g)
            if kind == "adam_like":
                p -= lr * v / (xp.sqrt(s) + eps)
            elif kind == "adam":
                vhat = v / (1 - beta1 ** step)
                shat = s / (1 - beta2 ** step)
                p -= lr * vhat / (xp.sqrt(shat) + eps)
            else:
                raise ValueError(f"unknown optimizer {kind!r}")

    # -- whole steps (backends may replace these with fused versions) ------------------------------
    def forward(self, net, X, chunk=8192):
        """Output-layer values (before softmax) without dropout, computed in chunks of rows."""
        outs = []
        for start in range(0, X.shape[0], chunk):
            A = X[start:start + chunk]
            for W, b, seg in zip(net.weights, net.biases, net.segments):
                A, _ = self.dense_forward(A, W, b, seg)
            outs.append(A)
        return outs[0] if len(outs) == 1 else self.xp.concatenate(outs)

    def evaluate(self, net, X, labels, chunk=8192):
        """(summed loss, number correct) without dropout."""
        total, correct = 0.0, 0
        for start in range(0, X.shape[0], chunk):
            out = self.forward(net, X[start:start + chunk], chunk)
            t, c, _ = self.loss(net.loss, out, labels[start:start + chunk], net.loss_eps, need_grad=False)
            total, correct = total + t, correct + c
        return total, correct

    def train_step(self, net, X, labels, rng):
        """One forward/backward/update on a batch. Returns (summed loss, number correct)."""
        rows = X.shape[0]
        acts, hs, masks = [X], [], []
        for li, (W, b, seg) in enumerate(zip(net.weights, net.biases, net.segments)):
            keep = net.keep[li] if net.keep else None
            fwd, bwd = (None, None) if keep is None else self.dropout_mask(rng, rows, keep, net.dropout, W.dtype)
            A, H = self.dense_forward(acts[-1], W, b, seg, fwd)
            acts.append(A)
            hs.append(H)
            masks.append(bwd)
        total, correct, grad = self.loss(net.loss, acts[-1], labels, net.loss_eps)
        l2 = [None if c is None else self.asarray(c, net.dtype)
              for c in (net.l2_coefficients(li, rows) for li in range(len(net.weights)))]
        for _ in range(rows if net.repeat_update else 1):
            grads, dA = [], grad
            for li in reversed(range(len(net.weights))):
                dA, dW, db = self.dense_backward(dA, acts[li], net.weights[li], hs[li], net.segments[li],
                                                 masks[li], l2[li], need_dx=li > 0)
                grads[:0] = [dW] if net.biases[li] is None else [dW, db]
            net.step += 1
            self.update(net.optimizer, net.params(), grads, net.state, lr=net.lr, beta1=net.beta1,
                        beta2=net.beta2, eps=net.eps, step=net.step)
        return total, correct

    def train_epoch(self, net, X, labels, batch_size, rng, order=None):
        """One pass over the data in batches (the remainder that does not fill a batch is dropped, as
        the seeds do). `order` optionally permutes the rows. Returns (summed loss, number correct)."""
        n = X.shape[0]
        batch_size = n if batch_size is None else batch_size
        total, correct = 0.0, 0
        for start in range(0, n - batch_size + 1, batch_size):
            if order is None:
                xb, yb = X[start:start + batch_size], labels[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                xb, yb = X[idx], labels[idx]
            t, c = self.train_step(net, xb, yb, rng)
            total, correct = total + t, correct + c
        return total, correct

    def epoch_path(self, net, rows, batch_size, shuffled):
        return "reference operations" if self.xp is numpy else f"reference operations on {self.name}"
