"""Each operation of the backend interface at the shapes the presets train at.

Layers and their dropout and L2 settings come from the presets themselves; the first layer sees real
MNIST images and the later layers the activations of an initialised network.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from fastmnist.recipes import LOSSES, OPTIMIZERS, PRESETS

# The batches each preset's layers are timed at (branchnet trains full-batch on 50,000 images).
LAYER_BATCHES = {"branchnet": (1, 100, 50_000), "grokking-3layer": (1, 100), "grokking-dropout": (1, 100)}
LOSS_BATCHES = (1, 100, 50_000)
# Rows in the training set of each split, so that a full-batch case is named at collection (b50000).
TRAIN_ROWS = {"first-1000": 1_000, "50k-10k-10k": 50_000, "full": 60_000}


def _layer_cases():
    cases = []
    for preset, batches in LAYER_BATCHES.items():
        recipe = PRESETS[preset]
        for li, (n_in, layer) in enumerate(zip(recipe.layer_inputs(), recipe.layers)):
            cases += [pytest.param(preset, li, batch, id=f"b{batch}-{n_in}x{layer.units}") for batch in batches]
    return cases


def _dropout_cases():
    """One case per distinct (dropout kind, units, rows) that some preset trains with."""
    cases = {}
    for name, recipe in PRESETS.items():
        rows = recipe.batch_size or TRAIN_ROWS[recipe.split]
        for li, layer in enumerate(recipe.layers):
            if any(b.keep_prob < 1 for b in layer.branches):
                tag = f"b{rows}-{recipe.dropout}{layer.units}"
                cases.setdefault(tag, pytest.param(name, li, rows, id=tag))
    return list(cases.values())


LAYERS = _layer_cases()


def _layer(net, li):
    return net.weights[li], net.biases[li], net.segments[li]


def _masks(be, net, li, rows):
    """The (forward, backward) dropout masks the preset trains this layer with, or (None, None)."""
    keep = net.keep[li] if net.keep else None
    if keep is None:
        return None, None
    return be.dropout_mask(np.random.RandomState(0), rows, keep, net.dropout, net.dtype)


def _size(a):
    return 0 if a is None else a.size


@pytest.mark.parametrize(("preset", "layer", "batch"), LAYERS)
def test_dense_forward(timed, be, dtype, new_net, layer_inputs, check, preset, layer, batch):
    _, net = new_net(preset)
    W, b, segments = _layer(net, layer)
    X = be.asarray(layer_inputs(preset, layer, batch, dtype), dtype)
    mask, _ = _masks(be, net, layer, batch)
    k, n = W.shape
    moved = (batch * k + k * n + _size(b) + _size(mask) + 2 * batch * n) * W.dtype.itemsize
    A, H = timed("kernels/dense_forward", be.dense_forward, X, W, b, segments, mask,
                 flop=2 * batch * k * n, nbytes=moved, shape=[batch, k, n], preset=preset, layer=layer,
                 mask=net.dropout if mask is not None else None)
    check(A, (batch, n), "A")
    check(H, (batch, n), "H")


@pytest.mark.parametrize(("preset", "layer", "batch"), LAYERS)
def test_dense_backward(timed, be, dtype, new_net, layer_inputs, check, preset, layer, batch):
    _, net = new_net(preset)
    W, b, segments = _layer(net, layer)
    X = be.asarray(layer_inputs(preset, layer, batch, dtype), dtype)
    fwd, bwd = _masks(be, net, layer, batch)
    _, H = be.dense_forward(X, W, b, segments, fwd)
    k, n = W.shape
    dA = be.asarray(np.random.RandomState(1).standard_normal((batch, n)) / batch, dtype)
    c = net.l2_coefficients(layer, batch)
    l2 = None if c is None else be.asarray(c, dtype)
    need_dx = layer > 0  # as in training: nothing needs the gradient of the images
    moved = (2 * batch * n + batch * k + 2 * k * n + n + _size(bwd) + _size(l2)
             + (batch * k if need_dx else 0)) * W.dtype.itemsize
    dX, dW, db = timed("kernels/dense_backward", be.dense_backward, dA, X, W, H, segments, bwd, l2, need_dx,
                       flop=2 * batch * k * n * (2 if need_dx else 1), nbytes=moved, shape=[batch, k, n],
                       preset=preset, layer=layer, need_dx=need_dx)
    check(dW, (k, n), "dW")
    check(db, (n,), "db")
    if need_dx:
        check(dX, (batch, k), "dX")
    else:
        assert dX is None, "dX was computed although need_dx=False"


@pytest.mark.parametrize(("kind", "batch"), [pytest.param(k, b, id=f"b{b}-{k}") for k in LOSSES for b in LOSS_BATCHES])
def test_loss(timed, be, dtype, mnist, check, kind, batch):
    out = be.asarray(np.random.RandomState(2).standard_normal((batch, 10)), dtype)
    labels = be.asarray(mnist.labels(batch), np.int64)
    eps = PRESETS["branchnet"].loss_eps if kind == "softmax_ce" else 0.0
    moved = 2 * out.size * out.dtype.itemsize + labels.size * labels.dtype.itemsize
    total, correct, grad = timed("kernels/loss", be.loss, kind, out, labels, eps, nbytes=moved,
                                 shape=[batch, 10], kind=kind)
    check(grad, (batch, 10), "gradient")
    assert np.isfinite(float(total)) and 0 <= int(correct) <= batch, f"loss {total}, correct {correct}"


@pytest.mark.parametrize(("preset", "layer", "rows"), _dropout_cases())
def test_dropout_mask(timed, be, dtype, new_net, check, preset, layer, rows):
    _, net = new_net(preset)
    keep = net.keep[layer]
    rng = np.random.RandomState(3)
    fwd, bwd = timed("kernels/dropout_mask", be.dropout_mask, rng, rows, keep, net.dropout, net.dtype,
                     shape=[rows, keep.shape[0]], kind=net.dropout, preset=preset)
    shape = (1, keep.shape[0]) if net.dropout == "unit" else (rows, keep.shape[0])
    check(fwd, shape, "forward mask")
    check(bwd, shape, "backward mask")


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_update(timed, be, dtype, new_net, check, kind):
    _, net = new_net("branchnet", optimizer_kind=kind)
    params = net.params()
    rng = np.random.RandomState(4)
    grads = [be.asarray(rng.standard_normal(p.shape) * 1e-3, dtype) for p in params]
    count = sum(p.size for p in params)
    arrays_touched = 3 if kind == "sgd" else 7  # read p, g (and v, s); write p (and v, s)
    update = functools.partial(be.update, kind, params, grads, net.state,
                               lr=net.lr, beta1=net.beta1, beta2=net.beta2, eps=net.eps, step=1)
    timed("kernels/update", update,
          nbytes=arrays_touched * count * params[0].dtype.itemsize, parameters=count, kind=kind, preset="branchnet")
    for i, p in enumerate(params):
        check(p, p.shape, f"parameter {i}")
