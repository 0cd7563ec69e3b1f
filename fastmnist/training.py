"""The training loop: recipe in, trained model, metric history and timings out."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from . import data
from .dispatch import get_backend
from .errors import RecipeError, TrainingDiverged, TrainingInterrupted
from .formatting import count, duration
from .interrupts import ctrl_c_stops_after_the_iteration
from .kernels.compile_watch import CompileWatch
from .memory import check_training_fits
from .kernels.interface import Net
from .model import Model
from .recipes import Recipe, get_preset

DTYPES = ("float32", "float64")
PIXELS, CLASSES = 28 * 28, 10      # what every image of the datasets has, and how many labels there are


@dataclass
class TrainResult:
    model: Model
    history: list[dict]
    timings: dict
    recipe: Recipe
    backend: str
    dtype: str
    stopped_early: bool = field(default=False)
    target_iteration: int | None = None   # the iteration (epoch) whose evaluation reached target_accuracy
    path: str = ""                        # the code path that trained it, as the backend's epoch_path names it

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}

    def summary(self) -> str:
        f, unit = self.final, self.recipe.unit
        parts = [f"{self.recipe.name} on {self.backend} ({self.dtype}, {self.path}): "
                 f"{count(f.get('iteration', -1) + 1, unit)}"]
        for key in ("train_acc", "val_acc", "test_acc"):
            if f.get(key) is not None:
                parts.append(f"{key.replace('_acc', '')} accuracy {f[key]:.4f}")
        t = self.timings
        if self.target_iteration is not None:
            # epochs are counted from 1; iterations keep the notebooks' numbering (I:0 is the first)
            at = self.target_iteration + 1 if unit == "epoch" else self.target_iteration
            parts.append(f"reached {self.recipe.target_accuracy:.2%} test accuracy at {unit} {at} "
                         f"after {t['time_to_target_s']:.2f} s")
        steps = (f" ({duration(t['per_iteration_s'])} per {unit} after the first, which took "
                 f"{duration(t['first_iteration_s'])})" if f.get("iteration", 0) >= 1 else "")
        parts.append(f"{t['train_s']:.2f} s training{steps}, {t['total_s']:.2f} s in all"
                     + (f", {duration(t['compile_s'])} of it compiling kernels" if t.get("compile_s") else ""))
        return "; ".join(parts)


def make_recipe(preset, /, iterations=None, seed=None, **overrides) -> Recipe:
    """`preset` (a name or a Recipe) with `overrides` applied and every setting checked; None for iterations
    or seed keeps the preset's."""
    recipe = preset if isinstance(preset, Recipe) else get_preset(preset)
    if iterations is not None:
        overrides["iterations"] = iterations
    if seed is not None:
        overrides["seed"] = seed
    return recipe.with_overrides(**overrides)


def check_dtype(dtype) -> str:
    try:   # np.dtype(None) is float64: None is refused rather than taken for it
        name = dtype if isinstance(dtype, str) or dtype is None else np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise RecipeError(f"unsupported dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    return name


def check_fits_data(recipe: Recipe, dataset: str) -> None:
    """The recipe's input and output widths against the images' pixels and the labels' classes."""
    for setting, value, needed, what in (("inputs", recipe.inputs, PIXELS, "pixels per image"),
                                         ("classes", recipe.classes, CLASSES, "classes")):
        if value != needed:
            raise RecipeError(f"recipe {recipe.name!r}: {setting}={value} does not fit {dataset}'s {needed} {what}")


def init_params(recipe: Recipe, rng: np.random.RandomState):
    """Host float64 parameters, drawn from `rng` in the order each seed draws them."""
    weights, biases = [], []
    for n_in, layer in zip(recipe.layer_inputs(), recipe.layers):
        if recipe.init == "uniform":
            s = recipe.init_scale
            W = (2 * s) * rng.random_sample((n_in, layer.units)) - s
        else:
            W = np.concatenate([(rng.standard_normal((b.units, n_in)) * np.sqrt(b.init_gain / n_in)).T
                                for b in layer.branches], axis=1)
        weights.append(W)
        biases.append(np.zeros(layer.units) if layer.bias else None)
    return weights, biases


def build_net(backend, recipe: Recipe, weights, biases, dtype) -> Net:
    W = [backend.parameter(w, dtype) for w in weights]
    b = [None if v is None else backend.parameter(v, dtype) for v in biases]
    opt = recipe.optimizer
    net = Net(W, b, [layer.segments() for layer in recipe.layers], recipe.loss, recipe.loss_eps,
              opt.kind, opt.lr, opt.beta1, opt.beta2, opt.eps, recipe.dropout,
              keep=[_per_unit(layer, "keep_prob", 1.0) for layer in recipe.layers],
              l2=[_per_unit(layer, "l2", 0.0) for layer in recipe.layers],
              repeat_update=recipe.repeat_update)
    if opt.kind != "sgd":
        net.state = [(backend.parameter(np.zeros(p.shape), p.dtype), backend.parameter(np.zeros(p.shape), p.dtype))
                     for p in net.params()]
    else:
        net.state = [(None, None) for _ in net.params()]
    return net


def planned_path(backend, recipe: Recipe, dtype="float32") -> str:
    """The code path `backend` would train `recipe` with (its epoch_path for a freshly built net)."""
    net = build_net(backend, recipe, *init_params(recipe, np.random.RandomState(0)), check_dtype(dtype))
    return backend.epoch_path(net, data.TRAIN_ROWS[recipe.split], recipe.batch_size, recipe.shuffle)


def _per_unit(layer, attr, neutral):
    values = np.concatenate([np.full(b.units, getattr(b, attr), dtype=np.float64) for b in layer.branches])
    return None if np.all(values == neutral) else values


def train(preset="fast", backend="auto", dtype="float32", iterations=None, seed=None, progress=True,
          callback=None, *, data_path=None, dataset="mnist", status=None, **overrides) -> TrainResult:
    """Train a preset (or a Recipe) and return the model, the metric history and timings.

    `overrides` change recipe settings (e.g. lr=0.01, keep_prob=0.9, reg_fact_3=1.5, batch_size=100; each
    seed preset also takes its notebook's names, e.g. alpha=0.01). `callback(row)` is called with each
    history row; returning True stops training early. `status(text)` receives one-line notices (kernels
    being compiled, and how long that took); by default they are printed to stderr when `progress` is on.
    Ctrl-C stops training after the iteration it is in and raises TrainingInterrupted, whose `result` holds
    the model trained so far; a second Ctrl-C stops at once (other signals likewise where the program asks:
    fastmnist.interrupts).
    """
    t_start = time.perf_counter()
    recipe = make_recipe(preset, iterations, seed, **overrides)
    dtype = check_dtype(dtype)
    check_fits_data(recipe, dataset)
    check_training_fits(recipe, dtype)      # a network too large for this machine: one line, nothing allocated
    if callback is not None and not callable(callback):
        raise RecipeError(f"callback must be callable or None, got {callback!r}")
    be = get_backend(backend)
    if status is None:
        status = (lambda text: tqdm.write(text, file=sys.stderr)) if progress else (lambda text: None)
    watch = CompileWatch(lambda: status(f"{be.name}: compiling kernels (Numba keeps them in its on-disk cache, "
                                        "so later runs skip this)..."))
    with watch:
        return _train(recipe, be, dtype, progress, callback, data_path, dataset, status, watch, t_start)


def _train(recipe, be, dtype, progress, callback, data_path, dataset, status, watch, t_start) -> TrainResult:
    splits = data.load_splits(recipe.split, dataset, data_path)
    sets = {name: (be.to_float(s.images, dtype), be.asarray(s.labels, np.int64))
            for name, s in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if s is not None}
    t_data = time.perf_counter()

    rng = np.random.RandomState(recipe.seed)
    net = build_net(be, recipe, *init_params(recipe, rng), dtype)
    X, y = sets["train"]
    path = be.epoch_path(net, X.shape[0], recipe.batch_size, recipe.shuffle)
    batch = recipe.batch_size or X.shape[0]
    rows_used = (X.shape[0] // batch) * batch
    history, pending, eval_s, stopped, reached, first_s = [], [], 0.0, False, None, 0.0
    t_loop = time.perf_counter()

    bar = tqdm(total=recipe.iterations, desc=f"{recipe.name} [{be.name}]", unit=recipe.unit, disable=not progress,
               leave=False, dynamic_ncols=True)
    # divergence is detected and reported below; Ctrl-C stops after a whole iteration (TrainingInterrupted)
    with np.errstate(over="ignore", invalid="ignore"), ctrl_c_stops_after_the_iteration() as ctrl_c:
        try:
            for it in range(recipe.iterations):
                report = it % recipe.eval_every == 0 or it == recipe.iterations - 1
                penalty = _penalty(be, net) if report and recipe.uses_l2() else 0.0
                order = rng.permutation(X.shape[0]) if recipe.shuffle else None
                net.lr = recipe.lr_at(it)
                total, correct = be.train_epoch(net, X, y, recipe.batch_size, rng, order)
                pending.append(total)
                _advance_l2(net, recipe.l2_multiplier(it))
                if it == 0:
                    be.synchronize()
                    first_s = time.perf_counter() - t_loop
                bar.update(1)
                if ctrl_c.requested and not report:
                    report = True       # the iteration training stops after gets its row, as every last one does
                    # (its L2 term is taken after the update: the weights before it are gone)
                    penalty = _penalty(be, net) if recipe.uses_l2() else 0.0
                if not report:
                    continue
                t_eval = time.perf_counter()
                _check_finite(pending, it + 1 - len(pending), history)
                pending = []
                row = _metrics(be, net, recipe, sets, it, float(total) / rows_used, int(correct) / rows_used, penalty)
                row["elapsed_s"] = time.perf_counter() - t_start
                history.append(row)
                bar.set_postfix({k.replace("_acc", ""): f"{v:.4f}" for k, v in row.items() if k.endswith("_acc")},
                                refresh=False)
                eval_s += time.perf_counter() - t_eval
                if it == 0 and watch.started:      # the first report has compiled the evaluation kernels too
                    status(f"{be.name}: kernels compiled in {duration(watch.seconds)}")
                if (callback is not None and callback(dict(row))) or ctrl_c.requested:
                    stopped = True
                    break
                if recipe.target_accuracy is not None and row["test_acc"] >= recipe.target_accuracy:
                    reached = row
                    break
        finally:
            bar.close()
    interrupted = ctrl_c.requested
    be.synchronize()
    t_end = time.perf_counter()

    n_done = (history[-1]["iteration"] + 1) if history else 0
    train_s = t_end - t_loop - eval_s
    timings = {"data_s": t_data - t_start, "setup_s": t_loop - t_data, "train_s": train_s, "eval_s": eval_s,
               "total_s": t_end - t_start, "first_iteration_s": first_s, "compile_s": watch.seconds,
               "per_iteration_s": (train_s - first_s) / (n_done - 1) if n_done > 1 else train_s}
    meta = {"backend": be.name, "dtype": dtype, "dataset": dataset, "path": path, "iterations_done": n_done,
            "final": history[-1] if history else {}, "history": history, "timings": timings}
    if interrupted:
        meta["interrupted"] = True
    if reached is not None:
        timings["time_to_target_s"] = reached["elapsed_s"]
    model = Model(recipe.with_overrides(iterations=n_done) if stopped or reached else recipe,
                  [be.to_numpy(w) for w in net.weights],
                  [None if b is None else be.to_numpy(b) for b in net.biases], meta)
    result = TrainResult(model, history, timings, recipe, be.name, dtype, stopped,
                         None if reached is None else reached["iteration"], path)
    if interrupted:
        raise TrainingInterrupted(result, ctrl_c.signum)
    return result


def _metrics(be, net, recipe, sets, iteration, train_loss, train_acc, penalty) -> dict:
    """One history row: the step's loss (plus the L2 term) and error/accuracy on each evaluated set."""
    row = {"iteration": iteration, "loss": train_loss + float(penalty)}
    if recipe.train_metrics == "running":
        row["train_err"], row["train_acc"] = train_loss, train_acc
    for name, (X, y) in sets.items():
        if name == "train" and recipe.train_metrics == "running":
            continue
        total, correct = be.evaluate(net, X, y)
        row[f"{name}_err"], row[f"{name}_acc"] = float(total) / X.shape[0], int(correct) / X.shape[0]
    return row


def _penalty(be, net: Net) -> float:
    return sum(float(be.l2_penalty(W, seg, _branch_factors(f, seg)))
               for W, seg, f in zip(net.weights, net.segments, net.l2) if f is not None)


def _branch_factors(per_unit, segments):
    return [per_unit[start] for start, _, _ in segments]


def _advance_l2(net: Net, multiplier: float):
    if multiplier != 1.0:
        net.l2 = [None if f is None else f * multiplier for f in net.l2]


def _check_finite(losses, first_iteration, history):
    for offset, value in enumerate(losses):
        if not math.isfinite(float(value)):
            raise TrainingDiverged(f"training diverged: the loss became {float(value)} at iteration "
                                   f"{first_iteration + offset}", history)


__all__ = ["train", "TrainResult", "make_recipe", "init_params", "build_net", "planned_path"]
