"""fastmnist's recipes written as a PyTorch user and a JAX user would write them, for bench_peers.py.

Each runner trains one recipe (a `fastmnist.Recipe`, read field by field, so a changed preset changes the
peers too) on float32 host arrays: `epoch()` is one pass of fastmnist's `train_epoch` (the batches of
`recipe.batch_size`, or the full batch, a remainder that does not fill a batch dropped; the rows shuffled
each epoch when `recipe.shuffle`), returning (summed loss, number correct), and `evaluate(X, y)` gives the
accuracy without dropout. What they share with fastmnist: the network (branches with their activations,
biases or none), the initialisation scheme (normal with variance gain / inputs per branch, or uniform in
[-init_scale, init_scale]; zero biases), the loss (mean softmax cross-entropy, or seed 000's squared error
whose gradient is (out - onehot) / n), per-unit inverted dropout (one mask per unit per step, kept units
scaled by 1 / keep), the L2 term (gradient factor / rows * W per unit, with the recipe's schedule), and the
optimisers (Adam with bias correction, the Adam-like update without it, SGD) with the recipe's lr, betas,
eps and per-epoch lr decay. What differs: the random draws (init, shuffles, masks) come from each
framework's own generator.

PyTorch: an nn.Sequential of nn.Linear and activation modules for a plain stack of layers (`fast`, the
784-256-128-10 network), an nn.Module of branches with dropout masks otherwise; torch.optim.Adam / SGD where
the recipe's optimiser is one (the Adam-like update is a small hand-written torch.optim.Optimizer),
autograd, an eager loop over minibatches gathered by indexing the data tensor with a permutation (a
DataLoader's per-sample collation would be slower). JAX: pure functions, jax.grad, the
optimiser written out with tree_map (the peers extra does not add optax), and an epoch as one jax.jit'd
lax.scan over the batches, so Python dispatches once per epoch.

Threads: every implementation gets threads(), the CPUs this process may run on unless
FASTMNIST_PEERS_THREADS says otherwise (`limit_threads`): Numba and OpenBLAS start that many by default;
torch gets torch.set_num_threads(threads()) with one inter-op thread; XLA's CPU client sizes its intra-op
pool to the CPUs this process may run on (sched_getaffinity) and has no setting for another count except one
thread (XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1, which limit_threads(1)
sets). JAX_PLATFORMS=cpu is set unless already set.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import os
import sys
import time

import numpy as np

IMPLEMENTATIONS = ("numba-cpu", "numpy", "torch", "jax")     # fastmnist's two CPU backends, then the peers
PEERS = ("torch", "jax")
# workload -> (preset or a name of RECIPES, training rows: None for all of its split's, or the first N)
WORKLOADS = {
    "fast_epoch": ("fast", None),                    # one epoch of minibatches over all 60,000 images
    "branchnet_step": ("branchnet", None),           # one full-batch step on 50,000 images
    "seed000_epoch": ("grokking-3layer", None),      # one epoch of per-sample SGD over 1,000 images
    "mlp_epoch": ("mlp-256-128", None),              # one epoch of a network written with fastmnist.mlp
}
# rows of each workload in untimed runs (the test command): the same code paths on less data
SMOKE_ROWS = {"fast_epoch": 1024, "branchnet_step": 2000, "seed000_epoch": 200, "mlp_epoch": 1024}
# networks that are no preset: 784 -> ReLU 256 -> ReLU 128 -> softmax 10, Adam lr 0.006, shuffled minibatches of
# 128 over all 60,000 images (the rest of `fast`), the network a user writes after the presets (issue 28)
RECIPES = {
    "mlp-256-128": lambda fastmnist: fastmnist.mlp([256, 128], "relu", optimizer="adam", lr=0.006, batch_size=128),
}

SUPPORTED_LOSSES = ("softmax_ce", "mse")
SUPPORTED_OPTIMIZERS = ("adam", "adam_like", "sgd")


def cpus() -> int:
    """The CPUs this process may run on: the threads Numba, OpenBLAS and XLA start by default."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def threads() -> int:
    """The threads every implementation is given: FASTMNIST_PEERS_THREADS, or cpus()."""
    chosen = os.environ.get("FASTMNIST_PEERS_THREADS", "").strip()
    return max(1, int(chosen)) if chosen else cpus()


XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def limit_threads(n: int):
    """Gives every implementation `n` threads from now on: Numba's kernels (numba.set_num_threads, for the
    calling thread), the BLAS numpy uses (threadpoolctl), torch (at its setup) and, for n = 1, XLA (its flags,
    read when JAX starts; XLA has no setting for another count). Returns a function restoring Numba's and the
    BLAS's counts."""
    import numba
    from threadpoolctl import threadpool_limits
    os.environ["FASTMNIST_PEERS_THREADS"] = str(n)
    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    blas = threadpool_limits(limits=n, user_api="blas")
    if n == 1 and XLA_ONE_THREAD not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + XLA_ONE_THREAD).strip()

    def restore():
        numba.set_num_threads(before)
        blas.restore_original_limits()

    return restore


def xla_threads() -> int:
    return 1 if XLA_ONE_THREAD in os.environ.get("XLA_FLAGS", "") else cpus()


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing(peer: str) -> str | None:
    """Why `peer` ("torch" or "jax") cannot run here, or None when it can."""
    try:
        if peer == "torch":
            import torch  # noqa: F401
        elif peer == "jax":
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
            import jax  # noqa: F401
        else:
            return f"unknown peer {peer!r}"
    except ImportError as exc:
        return f"{peer} is not installed ({exc}); pip install 'fastmnist[peers]'"
    return None


def check_supported(recipe):
    """Raises NotImplementedError for the recipe settings the peers do not implement."""
    problems = []
    if recipe.loss not in SUPPORTED_LOSSES:
        problems.append(f"loss {recipe.loss}")
    if recipe.optimizer.kind not in SUPPORTED_OPTIMIZERS:
        problems.append(f"optimizer {recipe.optimizer.kind}")
    if recipe.uses_dropout() and recipe.dropout != "unit":
        problems.append(f"{recipe.dropout} dropout")
    if recipe.repeat_update:
        problems.append("repeat_update")
    if recipe.loss == "softmax_ce" and recipe.loss_eps > 1e-6:
        problems.append(f"loss_eps {recipe.loss_eps} (the peers use the library cross-entropy, without it)")
    if problems:
        raise NotImplementedError(f"the peers do not implement {', '.join(problems)} (recipe {recipe.name!r})")


def layer_specs(recipe):
    """Per layer: (inputs, units, bias, segments [(start, stop, activation)], per-unit init gain, per-unit keep
    probability or None, per-unit L2 factor or None), as float64 numpy vectors."""
    out = []
    for n_in, layer in zip(recipe.layer_inputs(), recipe.layers):
        per_unit = {attr: np.concatenate([np.full(b.units, getattr(b, attr), np.float64) for b in layer.branches])
                    for attr in ("init_gain", "keep_prob", "l2")}
        keep = per_unit["keep_prob"] if np.any(per_unit["keep_prob"] < 1) else None
        l2 = per_unit["l2"] if np.any(per_unit["l2"] != 0) else None
        out.append((n_in, layer.units, layer.bias, layer.segments(), per_unit["init_gain"], keep, l2))
    return out


def init_weights(recipe, draw_normal, draw_uniform):
    """Host float32 (inputs, units) weights by the recipe's scheme, drawing with the framework's generator."""
    weights = []
    for n_in, units, _, _, gain, _, _ in layer_specs(recipe):
        if recipe.init == "uniform":
            s = recipe.init_scale
            W = draw_uniform((n_in, units)) * (2 * s) - s
        else:
            W = draw_normal((n_in, units)) * np.sqrt(gain / n_in)[None, :]
        weights.append(np.asarray(W, np.float32))
    return weights


def batches(recipe, rows) -> tuple[int, int]:
    """(batch size, number of batches) of one epoch over `rows` rows."""
    batch = recipe.batch_size or rows
    return batch, rows // batch


def matmul_flop(recipe, rows) -> float:
    """Floating-point operations of the matrix products of one epoch over `rows` rows (a multiply-add is 2):
    forward, the weight gradients, and the input gradients of every layer but the first."""
    batch, steps = batches(recipe, rows)
    shapes = [(n_in, units) for n_in, units, *_ in layer_specs(recipe)]
    per_row = sum(2 * k * n * (2 if li == 0 else 3) for li, (k, n) in enumerate(shapes))
    return float(per_row * batch * steps)


# -- PyTorch -------------------------------------------------------------------------------------------

def torch_setup():
    import torch
    if torch.get_num_threads() != threads():
        torch.set_num_threads(threads())
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:            # already set, or parallel work already ran in this process
        pass
    return torch


class TorchRunner:
    name = "torch"

    def __init__(self, recipe, X, y, seed=None):
        torch = self.torch = torch_setup()
        from torch import nn
        import torch.nn.functional as F
        check_supported(recipe)
        self.recipe, self.F = recipe, F
        self.gen = torch.Generator().manual_seed(recipe.seed if seed is None else seed)
        self.X = torch.from_numpy(np.ascontiguousarray(X, np.float32))
        self.y = torch.from_numpy(np.asarray(y, np.int64))
        specs = layer_specs(recipe)
        weights = init_weights(recipe, lambda s: torch.randn(s, generator=self.gen, dtype=torch.float64).numpy(),
                               lambda s: torch.rand(s, generator=self.gen, dtype=torch.float64).numpy())
        self.model, self.linears = recipe_mlp(nn, F, specs, weights)
        self.keep = [None if k is None else torch.tensor(k, dtype=torch.float32) for *_, k, _ in specs]
        self.plain = isinstance(self.model, nn.Sequential)      # then no layer has dropout
        self.l2 = [None if c is None else torch.tensor(c, dtype=torch.float32) for *_, c in specs]
        opt = recipe.optimizer
        params = list(self.model.parameters())
        if opt.kind == "adam":
            self.opt = torch.optim.Adam(params, lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps)
        elif opt.kind == "sgd":
            self.opt = torch.optim.SGD(params, lr=opt.lr)
        else:
            self.opt = AdamLike(torch)(params, lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps)
        self.iteration = 0

    def _loss(self, out, yb):
        """(the mean loss to differentiate, the summed loss to report)."""
        if self.recipe.loss == "softmax_ce":
            mean = self.F.cross_entropy(out, yb)
            return mean, mean.detach() * out.shape[0]
        diff = out - self.F.one_hot(yb, out.shape[1]).to(out.dtype)
        total = (diff * diff).sum()
        return total / (2 * out.shape[0]), total.detach()

    def _l2_term(self, rows):
        terms = [0.5 / rows * (c[:, None] * layer.weight * layer.weight).sum()
                 for c, layer in zip(self.l2, self.linears) if c is not None]
        return sum(terms) if terms else None

    def epoch(self, decay=True):
        torch, recipe = self.torch, self.recipe
        n = self.X.shape[0]
        batch, steps = batches(recipe, n)
        order = torch.randperm(n, generator=self.gen) if recipe.shuffle else None
        total = torch.zeros(())
        correct = torch.zeros((), dtype=torch.int64)
        self.model.train()
        for i in range(steps):
            if order is not None:
                idx = order[i * batch:(i + 1) * batch]
                xb, yb = self.X[idx], self.y[idx]
            else:
                xb, yb = self.X[i * batch:(i + 1) * batch], self.y[i * batch:(i + 1) * batch]
            if self.plain:
                out = self.model(xb)
            else:
                masks = [None if k is None else (torch.rand(k.shape, generator=self.gen) < k).float() / k
                         for k in self.keep]
                out = self.model(xb, masks)
            loss, summed = self._loss(out, yb)
            l2 = self._l2_term(batch)
            if l2 is not None:
                loss = loss + l2
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += summed
            correct += (out.detach().argmax(1) == yb).sum()
        self._after_epoch(decay)
        return float(total), int(correct)

    def _after_epoch(self, decay):
        multiplier = self.recipe.l2_multiplier(self.iteration)
        if multiplier != 1.0:
            self.l2 = [None if c is None else c * multiplier for c in self.l2]
        if decay and self.recipe.lr_decay != 1.0:
            for group in self.opt.param_groups:
                group["lr"] = self.recipe.lr_at(self.iteration + 1)
        self.iteration += 1

    def evaluate(self, X, y) -> float:
        torch = self.torch
        self.model.eval()
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(X, np.float32)))
            return int((out.argmax(1) == torch.from_numpy(np.asarray(y, np.int64))).sum()) / len(y)


def recipe_mlp(nn, F, specs, weights):
    """(the model, its nn.Linear layers) of the recipe's dense layers, initialised with `weights`. A plain stack
    (one activation per layer, no dropout) is the nn.Sequential of Linear and activation modules a PyTorch user
    writes; otherwise an nn.Module whose layers apply each branch's activation to its slice of units and take
    the dropout masks."""
    import torch

    linears = []
    for (n_in, units, bias, *_), W in zip(specs, weights):
        layer = nn.Linear(n_in, units, bias=bias)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(W.T))
            if bias:
                layer.bias.zero_()
        linears.append(layer)
    if all(len(segments) == 1 and keep is None for _, _, _, segments, _, keep, _ in specs):
        modules = {"relu": nn.ReLU, "tanh": nn.Tanh, "identity": None}
        stack = []
        for layer, (_, _, _, segments, *_) in zip(linears, specs):
            stack.append(layer)
            if modules[segments[0][2]] is not None:
                stack.append(modules[segments[0][2]]())
        return nn.Sequential(*stack), linears

    acts = {"relu": F.relu, "tanh": torch.tanh, "identity": lambda z: z}

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(linears)
            self.segments = [[(a, b, acts[act]) for a, b, act in segments] for _, _, _, segments, *_ in specs]

        def forward(self, x, masks=None):
            for li, (layer, segments) in enumerate(zip(self.layers, self.segments)):
                z = layer(x)
                if len(segments) == 1:
                    x = segments[0][2](z)
                else:
                    x = torch.cat([act(z[:, a:b]) for a, b, act in segments], dim=1)
                if masks is not None and masks[li] is not None:
                    x = x * masks[li]
            return x

    return MLP(), linears


def AdamLike(torch):
    class AdamLikeOptimizer(torch.optim.Optimizer):
        """Adam without bias correction: v = b1 v + (1 - b1) g, s = b2 s + (1 - b2) g^2,
        p -= lr * v / (sqrt(s) + eps) (seed 004's update)."""

        def __init__(self, params, lr, betas, eps):
            super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

        @torch.no_grad()
        def step(self):
            for group in self.param_groups:
                b1, b2 = group["betas"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["v"], state["s"] = torch.zeros_like(p), torch.zeros_like(p)
                    v, s = state["v"], state["s"]
                    v.mul_(b1).add_(p.grad, alpha=1 - b1)
                    s.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                    p.addcdiv_(v, s.sqrt().add_(group["eps"]), value=-group["lr"])

    return AdamLikeOptimizer


# -- JAX -----------------------------------------------------------------------------------------------

def jax_setup():
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    return jax


class JaxRunner:
    name = "jax"

    def __init__(self, recipe, X, y, seed=None):
        jax = self.jax = jax_setup()
        import jax.numpy as jnp
        check_supported(recipe)
        self.recipe, self.jnp = recipe, jnp
        specs = layer_specs(recipe)
        key = jax.random.PRNGKey(recipe.seed if seed is None else seed)
        self.params, self.opt_state, self.key = jax.jit(self._make_init(specs))(key)
        self.X, self.y = jnp.asarray(np.asarray(X, np.float32)), jnp.asarray(np.asarray(y, np.int32))
        self.lr = recipe.optimizer.lr
        self.l2 = [None if c is None else np.asarray(c, np.float32) for *_, c in specs]
        self.iteration = 0
        self._epoch = jax.jit(self._make_epoch(specs), donate_argnums=(0, 1))
        self._predict = jax.jit(lambda params, X: self._forward(specs, params, X, None).argmax(1))

    def _make_init(self, specs):
        jax, jnp, recipe = self.jax, self.jnp, self.recipe

        def init(key):
            key, *keys = jax.random.split(key, len(specs) + 1)
            params = []
            for (n_in, units, bias, _, gain, _, _), k in zip(specs, keys):
                if recipe.init == "uniform":
                    s = recipe.init_scale
                    W = jax.random.uniform(k, (n_in, units), minval=-s, maxval=s)
                else:
                    W = jax.random.normal(k, (n_in, units)) * np.sqrt(gain / n_in).astype(np.float32)
                params.append((W, jnp.zeros(units, jnp.float32) if bias else None))
            zeros = [jax.tree_util.tree_map(jnp.zeros_like, params) for _ in range(2)]
            return params, (zeros[0], zeros[1], jnp.zeros((), jnp.int32)), key

        return init

    @staticmethod
    def _forward(specs, params, x, masks):
        import jax.numpy as jnp
        acts = {"relu": lambda z: jnp.maximum(z, 0), "tanh": jnp.tanh, "identity": lambda z: z}
        for li, ((W, b), (_, _, _, segments, *_)) in enumerate(zip(params, specs)):
            z = x @ W
            if b is not None:
                z = z + b
            if len(segments) == 1:
                x = acts[segments[0][2]](z)
            else:
                x = jnp.concatenate([acts[act](z[:, a:c]) for a, c, act in segments], axis=1)
            if masks is not None and masks[li] is not None:
                x = x * masks[li]
        return x

    def _make_epoch(self, specs):
        jax, jnp, recipe = self.jax, self.jnp, self.recipe
        opt = recipe.optimizer
        keeps = [None if k is None else np.asarray(k, np.float32) for *_, k, _ in specs]
        rows = self.X.shape[0]
        batch, steps = batches(recipe, rows)
        forward = self._forward

        def loss_fn(params, xb, yb, masks, l2):
            out = forward(specs, params, xb, masks)
            if recipe.loss == "softmax_ce":
                logp = jax.nn.log_softmax(out)
                summed = -jnp.take_along_axis(logp, yb[:, None], axis=1).sum()
                loss = summed / batch
            else:
                diff = out - jax.nn.one_hot(yb, out.shape[1], dtype=out.dtype)
                summed = (diff * diff).sum()
                loss = summed / (2 * batch)
            for (W, _), c in zip(params, l2):
                if c is not None:
                    loss = loss + 0.5 / batch * (c * W * W).sum()
            return loss, (summed, (out.argmax(1) == yb).sum())

        grad_fn = jax.grad(loss_fn, has_aux=True)

        def update(params, state, grads, lr):
            if opt.kind == "sgd":
                return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads), state
            v, s, t = state
            t = t + 1
            v = jax.tree_util.tree_map(lambda v, g: opt.beta1 * v + (1 - opt.beta1) * g, v, grads)
            s = jax.tree_util.tree_map(lambda s, g: opt.beta2 * s + (1 - opt.beta2) * g * g, s, grads)
            if opt.kind == "adam_like":
                params = jax.tree_util.tree_map(lambda p, v, s: p - lr * v / (jnp.sqrt(s) + opt.eps), params, v, s)
            else:
                c1, c2 = 1 - opt.beta1 ** t, 1 - opt.beta2 ** t
                params = jax.tree_util.tree_map(
                    lambda p, v, s: p - lr * (v / c1) / (jnp.sqrt(s / c2) + opt.eps), params, v, s)
            return params, (v, s, t)

        def epoch(params, state, X, y, key, lr, l2):
            if recipe.shuffle:      # each step gathers its rows of a fresh permutation
                key, k_perm = jax.random.split(key)
                xs = jax.random.permutation(k_perm, rows)[:batch * steps].reshape(steps, batch)
            else:                   # consecutive slices, no copy of the data
                xs = jnp.arange(steps) * batch

            def rows_of(idx):
                if recipe.shuffle:
                    return X[idx], y[idx]
                return (jax.lax.dynamic_slice_in_dim(X, idx, batch), jax.lax.dynamic_slice_in_dim(y, idx, batch))

            def step(carry, idx):
                params, state, key = carry
                key, k_mask = jax.random.split(key)
                mask_keys = jax.random.split(k_mask, len(keeps))
                masks = [None if k is None else jax.random.bernoulli(mk, k).astype(jnp.float32) / k
                         for k, mk in zip(keeps, mask_keys)]
                grads, (summed, correct) = grad_fn(params, *rows_of(idx), masks, l2)
                params, state = update(params, state, grads, lr)
                return (params, state, key), (summed, correct)

            (params, state, key), (losses, corrects) = jax.lax.scan(step, (params, state, key), xs)
            return params, state, key, losses.sum(), corrects.sum()

        return epoch

    def epoch(self, decay=True):
        self.params, self.opt_state, self.key, total, correct = self._epoch(
            self.params, self.opt_state, self.X, self.y, self.key, np.float32(self.lr), self.l2)
        total, correct = self.jax.block_until_ready((total, correct))
        multiplier = self.recipe.l2_multiplier(self.iteration)
        if multiplier != 1.0:
            self.l2 = [None if c is None else (c * multiplier).astype(np.float32) for c in self.l2]
        if decay:
            self.lr = self.recipe.lr_at(self.iteration + 1)
        self.iteration += 1
        return float(total), int(correct)

    def evaluate(self, X, y) -> float:
        pred = self._predict(self.params, self.jnp.asarray(np.asarray(X, np.float32)))
        return float(np.mean(np.asarray(pred) == np.asarray(y)))


# -- fastmnist, the same interface ------------------------------------------------------------------------

class FastmnistRunner:
    """fastmnist's own loop over a backend (what fastmnist.train does per iteration, without its reporting)."""

    def __init__(self, backend_name, recipe, X, y, seed=None):
        import fastmnist
        from fastmnist.training import build_net, init_params
        self.name = backend_name
        self.be = fastmnist.get_backend(backend_name)
        self.recipe = recipe if seed is None else recipe.with_overrides(seed=seed)
        self.rng = np.random.RandomState(self.recipe.seed)
        self.net = build_net(self.be, self.recipe, *init_params(self.recipe, self.rng), "float32")
        self.X, self.y = self.be.asarray(X, np.float32), self.be.asarray(y, np.int64)
        self.iteration = 0

    def epoch(self, decay=True):
        from fastmnist.training import _advance_l2
        order = self.rng.permutation(self.X.shape[0]) if self.recipe.shuffle else None
        total, correct = self.be.train_epoch(self.net, self.X, self.y, self.recipe.batch_size, self.rng, order)
        self.be.synchronize()
        _advance_l2(self.net, self.recipe.l2_multiplier(self.iteration))
        if decay:
            self.net.lr = self.recipe.lr_at(self.iteration + 1)
        self.iteration += 1
        return float(total), int(correct)

    def evaluate(self, X, y) -> float:
        _, correct = self.be.evaluate(self.net, self.be.asarray(X, np.float32), self.be.asarray(y, np.int64))
        return int(correct) / len(y)


def runner(name, recipe, X, y, seed=None):
    """A runner of `recipe` on float32 (X, y): name is a fastmnist backend, "torch" or "jax"."""
    if name == "torch":
        return TorchRunner(recipe, X, y, seed)
    if name == "jax":
        return JaxRunner(recipe, X, y, seed)
    return FastmnistRunner(name, recipe, X, y, seed)


def describe(name) -> dict:
    """What extra_info records about who ran: the peer, its version, its threads."""
    if name in ("torch", "jax"):
        info = {"peer": name, "peer_version": version(name), "threads": threads()}
        if name == "torch":
            torch = torch_setup()
            info.update(threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads())
        else:
            jax = jax_setup()
            info.update(threads=xla_threads(), jaxlib_version=version("jaxlib"), jax_backend=jax.default_backend(),
                        xla_flags=os.environ.get("XLA_FLAGS", ""))
        return info
    import numba
    from threadpoolctl import threadpool_info
    blas = max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=1)
    return {"peer": "fastmnist", "peer_version": version("fastmnist"), "backend": name,
            "threads": numba.get_num_threads() if name != "numpy" else blas, "blas_threads": blas}


# -- data, workloads, time to target ------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _split(split):
    from fastmnist import data
    return data.load_splits(split)


def to_float32(images) -> np.ndarray:
    """Pixels as float32 in [0, 1], as fastmnist's to_float makes them."""
    out = np.asarray(images).astype(np.float32)
    out /= 255
    return out


@functools.lru_cache(maxsize=None)
def training_data(split, rows=None):
    """(float32 images, int64 labels): the first `rows` (default all) training rows of fastmnist's split."""
    train = _split(split).train
    rows = len(train) if rows is None else rows
    return to_float32(train.images[:rows]), train.labels[:rows].astype(np.int64)


def workload(name, rows=None):
    """(recipe, X, y) of a workload of WORKLOADS, on its rows or the first `rows`."""
    import fastmnist
    preset, default_rows = WORKLOADS[name]
    recipe = RECIPES[preset](fastmnist) if preset in RECIPES else fastmnist.get_preset(preset)
    X, y = training_data(recipe.split, rows or default_rows)
    return recipe, X, y


def train_to_target(name, seed, preset="fast") -> dict:
    """Trains `preset` from scratch as fastmnist.train does (data read from the files, float32, every epoch
    followed by an evaluation of the test set) until the test accuracy reaches the recipe's target or its
    iterations run out. The clock runs from the call, so it covers reading the data, building the model and,
    for JAX, compiling. Returns time_to_target_s (None if not reached), epochs (1-based epoch reaching it),
    test_acc and curve [(elapsed s, test accuracy)]. For a fastmnist backend it calls fastmnist.train."""
    from fastmnist import data, get_preset, train
    data._parse.cache_clear()              # every run reads the files, as a new process would
    recipe = get_preset(preset).with_overrides(seed=seed)
    if name not in PEERS:
        result = train(recipe, backend=name, dtype="float32", progress=False)
        reached = result.target_iteration
        return {"time_to_target_s": result.timings.get("time_to_target_s"),
                "epochs": None if reached is None else reached + 1, "test_acc": result.final["test_acc"],
                "curve": [(row["elapsed_s"], row["test_acc"]) for row in result.history]}
    t0 = time.perf_counter()
    splits = data.load_splits(recipe.split)
    X, y = to_float32(splits.train.images), splits.train.labels.astype(np.int64)
    Xt, yt = to_float32(splits.test.images), splits.test.labels.astype(np.int64)
    run = runner(name, recipe, X, y)
    curve = []
    for it in range(recipe.iterations):
        run.epoch()
        acc = run.evaluate(Xt, yt)
        curve.append((time.perf_counter() - t0, acc))
        if recipe.target_accuracy is not None and acc >= recipe.target_accuracy:
            return {"time_to_target_s": curve[-1][0], "epochs": it + 1, "test_acc": acc, "curve": curve}
    return {"time_to_target_s": None, "epochs": None, "test_acc": curve[-1][1] if curve else None, "curve": curve}


def unavailable(name) -> str | None:
    """Why implementation `name` cannot run here (None when it can)."""
    if name in PEERS:
        return missing(name)
    import fastmnist
    info = {i.name: i for i in fastmnist.backends()}.get(name)
    if info is None:
        return f"fastmnist has no backend {name!r}"
    return None if info.available else f"{name}: {info.reason}"


# -- the script: alternating timings, validation ---------------------------------------------------------

def alternate(names, workloads, rounds):
    """Times one call of each implementation's workload in turn, round after round (the order rotating), so
    a change in the machine's load hits every implementation alike. Returns {workload: {name: [seconds]}}."""
    out = {}
    for w in workloads:
        recipe, X, y = workload(w)
        runs = {n: runner(n, recipe, X, y) for n in names}
        for run in runs.values():
            run.epoch(decay=False)                       # compiles; first touches
        times = {n: [] for n in names}
        for r in range(rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                runs[n].epoch(decay=False)
                times[n].append(time.perf_counter() - t0)
        out[w] = times
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="fastmnist against PyTorch and JAX, timed in alternation")
    parser.add_argument("names", nargs="*", default=list(IMPLEMENTATIONS), help="implementations (default: all)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, from " + ",".join(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--to-target", metavar="SEEDS", help="also train `fast` to its target with these seeds (1,2,3)")
    parser.add_argument("--threads", type=int, help="threads for every implementation (default: every CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        limit_threads(args.threads)
    names = []
    for n in args.names:
        why = unavailable(n)
        print(f"{n}: skipped, {why}" if why else f"{n}: {describe(n)}")
        if not why:
            names.append(n)
    for w, times in alternate(names, args.workloads.split(","), args.rounds).items():
        base = np.median(times["numba-cpu"]) if "numba-cpu" in times else None
        print(f"\n{w} ({args.rounds} rounds, medians):")
        for n, ts in times.items():
            ratio = f"  {np.median(ts) / base:.2f}x numba-cpu's" if base else ""
            print(f"  {n:10s} {np.median(ts):9.4f} s  (min {min(ts):.4f}, max {max(ts):.4f}){ratio}")
    if args.to_target:
        print("\nfast to its target (time from the call, epoch reaching it, test accuracy):")
        for seed in (int(s) for s in args.to_target.split(",")):
            for n in names:
                r = train_to_target(n, seed)
                t = r["time_to_target_s"]
                print(f"  seed {seed} {n:10s} " + (f"{t:8.2f} s  epoch {r['epochs']}" if t else "not reached")
                      + f"  test accuracy {r['test_acc']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
