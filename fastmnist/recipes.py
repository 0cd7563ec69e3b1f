"""Declarative descriptions of the networks and how they are trained, and the seeds' presets.

A recipe is plain data: it can be written to JSON, stored inside a saved model and rebuilt from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, replace

from .errors import RecipeError

ACTIVATIONS = ("relu", "tanh", "identity")
LOSSES = ("mse", "softmax_ce")
OPTIMIZERS = ("sgd", "adam_like", "adam")
DROPOUT_KINDS = ("element", "unit")
INITS = ("uniform", "normal")
SPLITS = ("first-1000", "50k-10k-10k", "full")
L2_SCHEDULES = ("constant", "sqrt-growth")


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
    def hidden_layers(self) -> tuple[Layer, ...]:
        return self.layers[:-1]

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

    def l2_multiplier(self, iteration: int) -> float:
        """Factor applied to every L2 factor after the update of `iteration` (seed 004's schedule)."""
        if self.l2_schedule == "sqrt-growth" and iteration % self.l2_every == 0:
            return math.sqrt(iteration / self.l2_every + 2) / 2
        return 1.0

    # -- validation -------------------------------------------------------------------------------
    def validate(self) -> "Recipe":
        def check(ok, message):
            if not ok:
                raise RecipeError(f"recipe {self.name!r}: {message}")

        check(len(self.layers) >= 1, "needs at least one layer")
        check(self.layers[-1].units == self.classes,
              f"the last layer has {self.layers[-1].units} units, expected {self.classes}")
        for li, layer in enumerate(self.layers):
            check(len(layer.branches) >= 1, f"layer {li} has no branches")
            for b in layer.branches:
                tag = f"layer {li} branch {b.name or '?'}"
                check(isinstance(b.units, int) and b.units >= 1, f"{tag}: units must be a positive integer, got {b.units!r}")
                check(b.activation in ACTIVATIONS, f"{tag}: unknown activation {b.activation!r}; choose from {', '.join(ACTIVATIONS)}")
                check(_finite(b.keep_prob) and 0 < b.keep_prob <= 1, f"{tag}: keep probability must be in (0, 1], got {b.keep_prob!r}")
                check(_finite(b.l2) and b.l2 >= 0, f"{tag}: L2 factor must be >= 0, got {b.l2!r}")
        check(all(b.keep_prob == 1 for b in self.layers[-1].branches), "the output layer cannot use dropout")
        check(self.loss in LOSSES, f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        check(self.optimizer.kind in OPTIMIZERS, f"unknown optimizer {self.optimizer.kind!r}; choose from {', '.join(OPTIMIZERS)}")
        check(_finite(self.optimizer.lr) and self.optimizer.lr > 0, f"learning rate must be positive, got {self.optimizer.lr!r}")
        check(0 <= self.optimizer.beta1 < 1 and 0 <= self.optimizer.beta2 < 1, "betas must be in [0, 1)")
        check(self.optimizer.eps > 0, f"optimizer eps must be positive, got {self.optimizer.eps!r}")
        check(self.batch_size is None or (isinstance(self.batch_size, int) and self.batch_size >= 1),
              f"batch size must be a positive integer or None (full batch), got {self.batch_size!r}")
        check(isinstance(self.iterations, int) and self.iterations >= 0, f"iterations must be a non-negative integer, got {self.iterations!r}")
        check(isinstance(self.eval_every, int) and self.eval_every >= 1, f"eval_every must be a positive integer, got {self.eval_every!r}")
        check(self.split in SPLITS, f"unknown split {self.split!r}; choose from {', '.join(SPLITS)}")
        check(self.init in INITS, f"unknown init {self.init!r}; choose from {', '.join(INITS)}")
        check(self.dropout in DROPOUT_KINDS, f"unknown dropout kind {self.dropout!r}; choose from {', '.join(DROPOUT_KINDS)}")
        check(self.l2_schedule in L2_SCHEDULES, f"unknown L2 schedule {self.l2_schedule!r}")
        check(_finite(self.lr_decay) and 0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        check(self.target_accuracy is None or (_finite(self.target_accuracy) and 0 < self.target_accuracy <= 1),
              f"target_accuracy must be in (0, 1] or None, got {self.target_accuracy!r}")
        check(self.train_metrics in ("running", "eval"), f"train_metrics must be 'running' or 'eval', got {self.train_metrics!r}")
        check(isinstance(self.seed, int) and self.seed >= 0, f"seed must be a non-negative integer, got {self.seed!r}")
        return self

    # -- overrides --------------------------------------------------------------------------------
    def with_overrides(self, **overrides) -> "Recipe":
        """A copy with some settings changed; see `override_names()` for what can be set."""
        recipe = self
        for key, value in overrides.items():
            recipe = recipe._override(key, value)
        return recipe.validate()

    def override_names(self) -> list[str]:
        names = [f.name for f in dataclasses.fields(self) if f.name not in ("name", "description", "layers", "optimizer")]
        names += ["lr", "learning_rate", "beta1", "beta2", "eps", "optimizer_kind", "keep_prob", "hidden"]
        for layer in self.layers:
            for b in layer.branches:
                if b.name:
                    names += [f"keep_prob_{b.name}", f"reg_fact_{b.name}", f"units_{b.name}"]
        return names + [alias for alias in NOTEBOOK_NAMES.get(self.name, {}) if alias not in names]

    def _override(self, key: str, value) -> "Recipe":
        key = NOTEBOOK_NAMES.get(self.name, {}).get(key, key)
        opt_keys = {"lr": "lr", "learning_rate": "lr", "beta1": "beta1", "beta2": "beta2", "eps": "eps", "optimizer_kind": "kind"}
        if key in opt_keys:
            return replace(self, optimizer=replace(self.optimizer, **{opt_keys[key]: value}))
        if key == "keep_prob":
            return self._map_branches(lambda li, b: replace(b, keep_prob=value) if li < len(self.layers) - 1 else b)
        if key == "hidden":
            if len(self.layers) != 2 or len(self.layers[0].branches) != 1:
                raise RecipeError(f"recipe {self.name!r}: 'hidden' applies only to single-hidden-layer recipes; use units_<branch>")
            return self._map_branches(lambda li, b: replace(b, units=value) if li == 0 else b)
        for prefix, attr in (("keep_prob_", "keep_prob"), ("reg_fact_", "l2"), ("units_", "units")):
            if key.startswith(prefix):
                name = key[len(prefix):]
                if not any(b.name == name for layer in self.layers for b in layer.branches):
                    break
                return self._map_branches(lambda li, b: replace(b, **{attr: value}) if b.name == name else b)
        if key in {f.name for f in dataclasses.fields(self)} and key not in ("layers", "optimizer"):
            return replace(self, **{key: value})
        raise RecipeError(f"unknown setting {key!r} for recipe {self.name!r}; valid: {', '.join(self.override_names())}")

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
        except (ValueError, TypeError, KeyError) as exc:
            raise RecipeError(f"not a valid recipe description: {exc}") from None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


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
