"""Declarative descriptions of the networks and how they are trained, and the seeds' presets.

A recipe is plain data: it can be written to JSON, stored inside a saved model and rebuilt from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from dataclasses import dataclass, field, replace

from . import checks
from .data import TRAIN_ROWS
from .errors import RecipeError

ACTIVATIONS = ("relu", "tanh", "identity")
LOSSES = ("mse", "softmax_ce")
OPTIMIZERS = ("sgd", "adam_like", "adam")
DROPOUT_KINDS = ("element", "unit")
INITS = ("uniform", "normal")
SPLITS = ("first-1000", "50k-10k-10k", "full")
L2_SCHEDULES = ("constant", "sqrt-growth")
TRAIN_METRICS = ("running", "eval")


@dataclass(frozen=True)
class Branch:
    """A group of a layer's units sharing one activation, L2 factor and keep probability."""

    units: int
    activation: str = "relu"
    name: str = ""
    l2: float = 0.0
    keep_prob: float = 1.0
    init_gain: float = 2.0


@dataclass(frozen=True)
class Layer:
    """A dense layer; its units are the concatenation of its branches' units."""

    branches: tuple[Branch, ...]
    bias: bool = True

    @property
    def units(self) -> int:
        return sum(b.units for b in self.branches)

    def segments(self) -> tuple[tuple[int, int, str], ...]:
        """(start, stop, activation) for each branch, in unit order."""
        out, start = [], 0
        for b in self.branches:
            out.append((start, start + b.units, b.activation))
            start += b.units
        return tuple(out)


@dataclass(frozen=True)
class Optimizer:
    kind: str = "sgd"
    lr: float = 0.005
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


# lr * decay * decay * ..., one multiplication at a time, kept per (lr, decay): a run asks for every iteration in
# turn, and forming each product afresh would cost a number of multiplications quadratic in the run's length
_DECAYED: dict[tuple[float, float], list[float]] = {}
_DECAYED_LOCK = threading.Lock()


def _decayed(lr: float, decay: float, iteration: int) -> float:
    with _DECAYED_LOCK:
        products = _DECAYED.setdefault((lr, decay), [lr])
        while len(products) <= iteration:
            products.append(products[-1] * decay)
        return products[iteration]


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    layers: tuple[Layer, ...]
    loss: str = "softmax_ce"
    loss_eps: float = 0.0
    optimizer: Optimizer = field(default_factory=Optimizer)
    batch_size: int | None = None
    iterations: int = 100
    split: str = "50k-10k-10k"
    init: str = "normal"
    init_scale: float = 0.1
    dropout: str = "unit"
    l2_schedule: str = "constant"
    l2_every: int = 1000
    repeat_update: bool = False
    shuffle: bool = False
    lr_decay: float = 1.0
    target_accuracy: float | None = None
    seed: int = 0
    eval_every: int = 10
    train_metrics: str = "running"
    inputs: int = 784
    classes: int = 10

    @property
    def unit(self) -> str:
        """What one of `iterations` is: "epoch" (a pass over the training images in batches) or, for a
        full-batch recipe, "iteration" (one step)."""
        return "iteration" if self.batch_size is None else "epoch"

    def layer_inputs(self) -> list[int]:
        return [self.inputs] + [layer.units for layer in self.layers[:-1]]

    def uses_dropout(self) -> bool:
        return any(b.keep_prob < 1 for layer in self.layers for b in layer.branches)

    def uses_l2(self) -> bool:
        return any(b.l2 != 0 for layer in self.layers for b in layer.branches)

    def lr_at(self, iteration: int) -> float:
        """The learning rate of `iteration` (counted from 0; iteration 0 takes the optimiser's lr): the lr
        multiplied by lr_decay once per iteration before it. The product is formed one multiplication at a
        time, as the loop used to apply the decay, because lr * lr_decay ** iteration differs from it in the
        last bits for most decays (and a run's numbers with it)."""
        lr = self.optimizer.lr
        if self.lr_decay == 1.0:
            return lr
        return _decayed(lr, self.lr_decay, iteration)

    def l2_multiplier(self, iteration: int) -> float:
        """Factor applied to every L2 factor after the update of `iteration` (seed 004's schedule)."""
        if self.l2_schedule == "sqrt-growth" and iteration % self.l2_every == 0:
            return math.sqrt(iteration / self.l2_every + 2) / 2
        return 1.0

    # -- validation -------------------------------------------------------------------------------
    def validate(self) -> "Recipe":
        """This recipe with every setting checked for type and range, NumPy scalars made plain Python numbers
        and lists tuples; RecipeError names the first bad setting. Every way of making a recipe (presets,
        overrides, train(), sweeps, model files) goes through here, so no bad value reaches a kernel."""
        try:
            return _checked(self)
        except RecipeError as exc:
            raise RecipeError(f"recipe {checks.shown(self.name)}: {exc}") from None

    # -- overrides --------------------------------------------------------------------------------
    def with_overrides(self, /, **overrides) -> "Recipe":
        """A copy with some settings changed; see `override_names()` for what can be set. Two settings that set
        the same part (lr and learning_rate, hidden and units_1) are refused rather than one undoing the other."""
        from .setting_targets import check_distinct
        check_distinct(self, overrides)
        recipe = self
        for key, value in overrides.items():
            recipe = recipe._override(key, value)
        return recipe.validate()

    def override_names(self) -> list[str]:
        names = [f.name for f in dataclasses.fields(self)
                 if f.name not in ("name", "description", "layers", "optimizer")]
        names += ["lr", "learning_rate", "beta1", "beta2", "eps", "optimizer_kind", "keep_prob", "hidden"]
        for layer in self.layers:
            for b in layer.branches:
                if b.name:
                    names += [f"keep_prob_{b.name}", f"reg_fact_{b.name}", f"units_{b.name}"]
        return names + [alias for alias in NOTEBOOK_NAMES.get(self.name, {}) if alias not in names]

    def _override(self, key: str, value) -> "Recipe":
        key = NOTEBOOK_NAMES.get(self.name, {}).get(key, key)
        opt_keys = {"lr": "lr", "learning_rate": "lr", "beta1": "beta1", "beta2": "beta2", "eps": "eps",
                    "optimizer_kind": "kind"}
        if key in opt_keys:
            return replace(self, optimizer=replace(self.optimizer, **{opt_keys[key]: value}))
        if key == "keep_prob":
            return self._map_branches(lambda li, b: replace(b, keep_prob=value) if li < len(self.layers) - 1 else b)
        if key == "hidden":
            if len(self.layers) != 2 or len(self.layers[0].branches) != 1:
                raise RecipeError(f"recipe {self.name!r}: 'hidden' applies only to single-hidden-layer recipes; "
                                  "use units_<branch>")
            return self._map_branches(lambda li, b: replace(b, units=value) if li == 0 else b)
        for prefix, attr in (("keep_prob_", "keep_prob"), ("reg_fact_", "l2"), ("units_", "units")):
            if key.startswith(prefix):
                name = key[len(prefix):]
                if not any(b.name == name for layer in self.layers for b in layer.branches):
                    break
                return self._map_branches(lambda li, b: replace(b, **{attr: value}) if b.name == name else b)
        if key in {f.name for f in dataclasses.fields(self)} and key not in ("layers", "optimizer"):
            return replace(self, **{key: value})
        raise RecipeError(f"unknown setting {key!r} for recipe {self.name!r}; "
                          f"valid: {', '.join(self.override_names())}")

    def _map_branches(self, fn) -> "Recipe":
        layers = tuple(replace(layer, branches=tuple(fn(li, b) for b in layer.branches))
                       for li, layer in enumerate(self.layers))
        return replace(self, layers=layers)

    # -- serialisation ----------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        try:
            d = json.loads(text)
            d["layers"] = tuple(Layer(branches=tuple(Branch(**b) for b in layer["branches"]), bias=layer["bias"])
                                for layer in d["layers"])
            d["optimizer"] = Optimizer(**d["optimizer"])
            return cls(**d).validate()
        except RecipeError:
            raise
        except (ValueError, TypeError, KeyError, RecursionError) as exc:      # RecursionError: nested too deeply
            raise RecipeError(f"not a valid recipe description: {exc}") from None


def _checked(recipe: Recipe) -> Recipe:
    optimizer = recipe.optimizer
    if not isinstance(optimizer, Optimizer):
        raise RecipeError(f"optimizer: must be an Optimizer, got {checks.shown(optimizer)}")
    split = checks.choice(recipe.split, "split", "split", SPLITS)
    checked = replace(
        recipe,
        name=checks.text(recipe.name, "name", "name"),
        description=checks.text(recipe.description, "description", "description"),
        layers=_checked_layers(recipe.layers),
        loss=checks.choice(recipe.loss, "loss", "loss", LOSSES),
        loss_eps=checks.number(recipe.loss_eps, "loss_eps", "loss_eps", "non-negative"),
        optimizer=Optimizer(
            kind=checks.choice(optimizer.kind, "optimizer_kind", "optimizer", OPTIMIZERS),
            lr=checks.number(optimizer.lr, "lr", "learning rate", "positive"),
            beta1=checks.number(optimizer.beta1, "beta1", "beta1", "in [0, 1)"),
            beta2=checks.number(optimizer.beta2, "beta2", "beta2", "in [0, 1)"),
            eps=checks.number(optimizer.eps, "eps", "optimizer eps", "positive")),
        # a batch larger than the training set would leave no full batch to train on
        batch_size=checks.integer(recipe.batch_size, "batch_size", "batch size", f"in [1, {TRAIN_ROWS[split]}]",
                                  optional=True, note=f"the training images of split {split!r}"),
        iterations=checks.integer(recipe.iterations, "iterations", "iterations", "non-negative"),
        split=split,
        init=checks.choice(recipe.init, "init", "init", INITS),
        init_scale=checks.number(recipe.init_scale, "init_scale", "init_scale", "positive"),
        dropout=checks.choice(recipe.dropout, "dropout", "dropout kind", DROPOUT_KINDS),
        l2_schedule=checks.choice(recipe.l2_schedule, "l2_schedule", "L2 schedule", L2_SCHEDULES),
        l2_every=checks.integer(recipe.l2_every, "l2_every", "l2_every", "positive"),
        repeat_update=checks.flag(recipe.repeat_update, "repeat_update", "repeat_update"),
        shuffle=checks.flag(recipe.shuffle, "shuffle", "shuffle"),
        lr_decay=checks.number(recipe.lr_decay, "lr_decay", "lr_decay", "in (0, 1]"),
        target_accuracy=checks.number(recipe.target_accuracy, "target_accuracy", "target_accuracy", "in (0, 1]",
                                      optional=True),
        seed=checks.integer(recipe.seed, "seed", "seed", f"in [0, {2**32 - 1}]"),   # numpy's RandomState range
        eval_every=checks.integer(recipe.eval_every, "eval_every", "eval_every", "positive"),
        train_metrics=checks.choice(recipe.train_metrics, "train_metrics", "train_metrics", TRAIN_METRICS),
        inputs=checks.integer(recipe.inputs, "inputs", "inputs", "positive"),
        classes=checks.integer(recipe.classes, "classes", "classes", "positive"),
    )
    output = checked.layers[-1]
    if output.units != checked.classes:
        raise RecipeError(f"layers: the last layer has {output.units} units, expected classes={checked.classes}")
    if any(b.keep_prob != 1 for b in output.branches):
        raise RecipeError("layers: the output layer cannot use dropout")
    return checked


def _checked_layers(layers) -> tuple[Layer, ...]:
    if not isinstance(layers, (tuple, list)) or not layers:
        raise RecipeError(f"layers: a recipe needs a tuple of at least one Layer, got {checks.shown(layers)}")
    out = []
    for li, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise RecipeError(f"layers: layer {li} must be a Layer, got {checks.shown(layer)}")
        if not isinstance(layer.branches, (tuple, list)) or not layer.branches:
            raise RecipeError(f"layers: layer {li} needs a tuple of at least one Branch, got "
                              f"{checks.shown(layer.branches)}")
        branches = tuple(_checked_branch(b, li, bi) for bi, b in enumerate(layer.branches))
        out.append(replace(layer, branches=branches, bias=checks.flag(layer.bias, f"bias_{li}", "bias")))
    return tuple(out)


def _checked_branch(branch, li: int, bi: int) -> Branch:
    if not isinstance(branch, Branch):
        raise RecipeError(f"layers: layer {li} branch {bi} must be a Branch, got {checks.shown(branch)}")
    name = checks.text(branch.name, f"layer {li} branch {bi} name", "a branch name")

    def setting(prefix):   # the override that sets it: keep_prob_11, reg_fact_3, units_2 ...
        return f"{prefix}_{name}" if name else f"layer {li} branch {bi} {prefix}"

    return replace(
        branch,
        units=checks.integer(branch.units, setting("units"), "units", "positive"),
        activation=checks.choice(branch.activation, setting("activation"), "activation", ACTIVATIONS),
        name=name,
        l2=checks.number(branch.l2, setting("reg_fact"), "L2 factor", "non-negative"),
        keep_prob=checks.number(branch.keep_prob, setting("keep_prob"), "keep probability", "in (0, 1]"),
        init_gain=checks.number(branch.init_gain, setting("init_gain"), "initialisation gain", "positive"),
    )


# -- the seeds' presets ---------------------------------------------------------------------------

def _grokking(name, description, hidden, iterations, *, keep_prob=1.0, batch_size=1, lr=0.005, repeat=False):
    return Recipe(
        name=name,
        description=description,
        layers=(Layer((Branch(hidden, "relu", "1", keep_prob=keep_prob),), bias=False),
                Layer((Branch(10, "identity", "2"),), bias=False)),
        loss="mse",
        optimizer=Optimizer("sgd", lr=lr),
        batch_size=batch_size,
        iterations=iterations,
        split="first-1000",
        init="uniform",
        init_scale=0.1,
        dropout="element",
        repeat_update=repeat,
        seed=1,
        eval_every=10,
        train_metrics="running",
    )


PRESETS: dict[str, Recipe] = {
    r.name: r.validate()
    for r in (
        _grokking("grokking-3layer",
                  "Seed 000: 784 -> ReLU 40 -> 10, mean squared error, per-sample SGD (alpha 0.005) on the "
                  "first 1,000 training images, 350 iterations.", 40, 350),
        _grokking("grokking-dropout",
                  "Seed 000 with dropout: hidden 100, a 0/1 mask per element scaled by 2 in the forward pass "
                  "(the gradient is masked but not rescaled, as in the notebook), 300 iterations.",
                  100, 300, keep_prob=0.5),
        _grokking("grokking-batch",
                  "Seed 000 batch gradient descent: batch 100, alpha 0.001, element dropout, 300 iterations. "
                  "Reproduces the notebook's loop, which applies each batch's update batch_size times "
                  "(repeat_update=True); pass repeat_update=False for the corrected single update.",
                  100, 300, keep_prob=0.5, batch_size=100, lr=0.001, repeat=True),
        Recipe(
            name="branchnet",
            description="Seed 004: 784 -> [ReLU 128 | tanh 64] -> ReLU 48 -> softmax 10, He/Xavier init, L2 with "
                        "the growing sqrt schedule (from i = 0), per-unit inverted dropout with keep_prob 0.8 on "
                        "all three hidden branches (as the notebook's training cell passes), Adam-like update "
                        "without bias correction (eps 10e-8), full batch of 50,000, 10,000 iterations.",
            layers=(
                Layer((Branch(128, "relu", "11", l2=1.19, keep_prob=0.8, init_gain=2.0),
                       Branch(64, "tanh", "12", l2=1.05, keep_prob=0.8, init_gain=2.0))),
                Layer((Branch(48, "relu", "2", l2=1.07, keep_prob=0.8, init_gain=1.0),)),
                Layer((Branch(10, "identity", "3", l2=2.22, init_gain=2.0),)),
            ),
            loss="softmax_ce",
            loss_eps=10e-8,
            optimizer=Optimizer("adam_like", lr=0.001, beta1=0.9, beta2=0.999, eps=10e-8),
            batch_size=None,
            iterations=10000,
            split="50k-10k-10k",
            init="normal",
            dropout="unit",
            l2_schedule="sqrt-growth",
            l2_every=1000,
            seed=4,
            eval_every=50,
            train_metrics="eval",
        ),
        Recipe(
            name="fast",
            description="Time to 98%: 784 -> ReLU 320 -> softmax 10, Adam with bias correction (lr 0.006, x0.4 per "
                        "epoch), minibatches of 128 shuffled each epoch over all 60,000 training images; the "
                        "10,000 test images are evaluated after every epoch and training stops at 98% test "
                        "accuracy (at most 10 epochs).",
            layers=(Layer((Branch(320, "relu", "1", init_gain=2.0),)),
                    Layer((Branch(10, "identity", "2", init_gain=1.0),))),
            loss="softmax_ce",
            optimizer=Optimizer("adam", lr=0.006, beta1=0.9, beta2=0.999, eps=1e-8),
            batch_size=128,
            iterations=10,
            split="full",
            init="normal",
            shuffle=True,
            lr_decay=0.4,       # docs/presets.md: how the schedule was chosen and when each seed reaches 98%
            target_accuracy=0.98,
            seed=0,
            eval_every=1,
            train_metrics="running",
        ),
    )
}


# Each seed preset's settings under its notebook's own names (beside fastmnist's), keyed by preset. Names the
# notebooks share with fastmnist (iterations, batch_size, beta1, beta2, keep_prob_11, reg_fact_3, ...) need
# no entry. Seed 004's `epsilon` is the one its train_model passes to Adam_step (its loss keeps 10e-8).
_SEED_000 = {"alpha": "lr", "hidden_size": "hidden"}
NOTEBOOK_NAMES: dict[str, dict[str, str]] = {
    "grokking-3layer": _SEED_000,
    "grokking-dropout": _SEED_000,
    "grokking-batch": _SEED_000,
    "branchnet": {"learn_rate": "lr", "iter": "iterations", "epsilon": "eps"},
}


def get_preset(name: str) -> Recipe:
    try:
        return PRESETS[name]
    except KeyError:
        raise RecipeError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
