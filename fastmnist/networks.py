"""`fastmnist.mlp`: a stack of dense layers in one line, as a validated Recipe, and the command line's
`--layers` text (256,128 or 256:relu,128:tanh) read into its sizes and activations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from . import checks
from .errors import RecipeError
from .recipes import ACTIVATIONS, NOTEBOOK_NAMES, OPTIMIZERS, Branch, Layer, Optimizer, Recipe, get_preset

# The widest hidden layer mlp() builds: a 4096 x 4096 layer with its gradient and Adam's two moments already
# takes half a gigabyte in float64; a wider one is far more likely a typing slip than a network for MNIST.
MAX_UNITS = 4096
LAYERS_SYNTAX = "sizes like 256,128 or 256:relu,128:tanh"
_OPTIMIZER_NAMES = {"adam": "Adam", "adam_like": "Adam-like (no bias correction)", "sgd": "SGD"}


def mlp(layers: Sequence[int], activations: str | Sequence[str] = "relu", *, keep_prob=None, optimizer=None,
        base: str | Recipe = "fast", name: str | None = None, **settings) -> Recipe:
    """The recipe of inputs -> `layers` hidden dense layers -> the classes, every other setting from `base`.

    `fastmnist.mlp([256, 128], lr=0.006, batch_size=128)` is 784 -> ReLU 256 -> ReLU 128 -> softmax 10 trained
    with the `fast` preset's Adam on minibatches of 128.

    layers       the hidden layers' widths, the input side first (at least one, each 1 to MAX_UNITS).
    activations  "relu", "tanh" or "identity" for every hidden layer, or one name per layer (default relu).
    keep_prob    dropout's keep probability, one number for every hidden layer or one per layer (default: no
                 dropout); which kind of dropout (per unit or per element) is `base`'s `dropout` setting.
    optimizer    "adam", "adam_like" or "sgd" (its lr, betas and eps stay `base`'s), or an Optimizer;
                 default `base`'s.
    base         a preset's name or a Recipe: the loss, optimiser, batch size, epochs, split, initialisation
                 scheme, shuffling, lr decay, target, seed, reports and whether layers have biases.
    name         the recipe's name (default "mlp-" and the widths, a layer's activation after its width
                 unless it is relu: mlp-256-128, mlp-256-128tanh).
    settings     any other setting by its name, as train() takes them: lr=0.006, batch_size=128 (None: the
                 full batch), dropout="unit", iterations=5, seed=1, target_accuracy=None, reg_fact_1=0.5 (L2
                 on hidden layer 1), keep_prob_2=0.9 ...; `base`'s notebook names too (alpha for lr).

    Hidden layer i's units form one branch named str(i) (so its settings are units_i, keep_prob_i, reg_fact_i),
    initialised with gain 2 (He) under relu and 1 otherwise; the output layer is identity, gain 1, and named
    for the next number. No L2 unless a reg_fact_i asks for it. Raises RecipeError naming the first bad
    argument; the recipe returned has passed Recipe.validate().
    """
    base = get_preset(base) if isinstance(base, str) else base
    if not isinstance(base, Recipe):
        raise RecipeError(f"base: must be a preset's name or a Recipe, got {checks.shown(base)}")
    base = base.validate()
    sizes, acts, keeps = checked_layers(layers, activations, keep_prob)
    settings = _canonical(settings, base, keep_prob is not None, optimizer is not None)
    hidden_bias, output_bias = base.layers[0].bias, base.layers[-1].bias
    hidden = tuple(Layer((Branch(units, act, str(i), keep_prob=keep, init_gain=2.0 if act == "relu" else 1.0),),
                         bias=hidden_bias)
                   for i, (units, act, keep) in enumerate(zip(sizes, acts, keeps), start=1))
    output = Layer((Branch(base.classes, "identity", str(len(sizes) + 1), init_gain=1.0),), bias=output_bias)
    if name is None:
        name = "mlp-" + "-".join(f"{units}{'' if act == 'relu' else act}" for units, act in zip(sizes, acts))
    recipe = replace(base, name=checks.text(name, "name", "name"), layers=hidden + (output,),
                     optimizer=_optimizer(optimizer, base.optimizer))
    recipe = recipe.with_overrides(**settings)
    if "description" not in settings:
        recipe = replace(recipe, description=describe(recipe, base.name))
    return recipe.validate()


def checked_layers(layers, activations="relu", keep_prob=None) -> tuple[tuple[int, ...], tuple[str, ...], tuple]:
    """(widths, activations, keep probabilities), one per hidden layer, each checked; RecipeError otherwise."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) == 0:
        raise RecipeError(f"layers: must be a list of hidden layer widths such as [256, 128], got "
                          f"{checks.shown(layers)}")
    n = len(layers)
    sizes = tuple(checks.integer(units, f"hidden layer {i}", "units", f"in [1, {MAX_UNITS}]")
                  for i, units in enumerate(layers, start=1))
    acts = _per_layer(activations, n, "activations", "an activation's name")
    acts = tuple(checks.choice(act, f"hidden layer {i}", "activation", ACTIVATIONS) for i, act in enumerate(acts, 1))
    keeps = _per_layer(1.0 if keep_prob is None else keep_prob, n, "keep_prob", "a keep probability")
    keeps = tuple(checks.number(keep, f"hidden layer {i}", "keep probability", "in (0, 1]")
                  for i, keep in enumerate(keeps, start=1))
    return sizes, acts, keeps


def _per_layer(value, n: int, setting: str, what: str) -> tuple:
    """`value` for each of n layers: one value for all, or a list or tuple of exactly n."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise RecipeError(f"{setting}: {len(value)} given for {n} hidden layers; give one for all or one per "
                              f"layer")
        return tuple(value)
    return (value,) * n


def _optimizer(optimizer, base: Optimizer) -> Optimizer:
    if optimizer is None:
        return base
    if isinstance(optimizer, Optimizer):
        return optimizer
    return replace(base, kind=checks.choice(optimizer, "optimizer", "optimizer", OPTIMIZERS))


def _canonical(settings: dict, base: Recipe, keep_prob_given: bool, optimizer_given: bool) -> dict:
    """`settings` under fastmnist's names (`base`'s notebook names resolved), refusing one set twice: by two
    of its names, or beside the argument of mlp() that sets it."""
    aliases = NOTEBOOK_NAMES.get(base.name, {})
    out, spelled = {}, {}
    for key, value in settings.items():
        name = aliases.get(key, key)
        if name in out:
            raise RecipeError(f"{name} is given twice (as {spelled[name]} and as {key})")
        owner = shape_argument(name)
        keep_prob_twice = name.startswith("keep_prob_") and keep_prob_given
        if owner or keep_prob_twice or (name == "optimizer_kind" and optimizer_given):
            argument = owner or ("keep_prob" if name.startswith("keep_prob_") else "optimizer")
            raise RecipeError(f"{name} is given twice (by mlp's {argument} and as {key})")
        out[name], spelled[name] = value, key
    return out


def shape_argument(name: str) -> str | None:
    """The argument of mlp() (or `--layers`) that already sets the setting `name` (fastmnist's name), if any:
    the hidden layers' widths."""
    return "layers" if name == "hidden" or name.startswith("units_") else None


def parse_layers(text: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The command line's `--layers` text, 256,128 or 256:relu,128:tanh (relu where none is given), as checked
    (widths, activations); RecipeError with one line otherwise."""
    sizes, acts = [], []
    for i, item in enumerate(str(text).split(","), start=1):
        size, _, act = (part.strip() for part in item.partition(":"))
        if not size or (":" in item and not act):
            raise RecipeError(f"expected {LAYERS_SYNTAX}, got {text!r}")
        try:
            sizes.append(int(size))
        except ValueError:
            raise RecipeError(f"hidden layer {i}: {size!r} is not a width; expected {LAYERS_SYNTAX}") from None
        acts.append(act or "relu")
    sizes, acts, _ = checked_layers(sizes, acts)
    return sizes, acts


def describe(recipe: Recipe, base_name: str) -> str:
    """One line: the network, its optimiser and batches, and where the other settings came from."""
    parts = [str(recipe.inputs)]
    for layer in recipe.layers[:-1]:
        branch = layer.branches[0]
        keep = f" (keep {branch.keep_prob:g})" if branch.keep_prob < 1 else ""
        parts.append(f"{'ReLU' if branch.activation == 'relu' else branch.activation} {layer.units}{keep}")
    parts.append(f"softmax {recipe.classes}" if recipe.loss == "softmax_ce" else f"{recipe.classes} (MSE)")
    opt = recipe.optimizer
    batches = "the full batch" if recipe.batch_size is None else f"minibatches of {recipe.batch_size}"
    return (f"{' -> '.join(parts)} (fastmnist.mlp), {_OPTIMIZER_NAMES[opt.kind]} lr {opt.lr:g}, {batches}; "
            f"the other settings from {base_name}.")
