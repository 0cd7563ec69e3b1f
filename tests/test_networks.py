"""fastmnist.mlp (a network in one line) and the command line's --layers."""

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastmnist
from fastmnist import cli
from fastmnist.errors import RecipeError
from fastmnist.networks import MAX_UNITS, parse_layers
from fastmnist.recipes import Branch, Layer, Optimizer

CWD = os.path.dirname(os.path.abspath(__file__))
TINY = dict(split="first-1000", iterations=1, target_accuracy=None, batch_size=100)   # 10 steps on 1,000 images


def by_hand(fast, *hidden, output_bias=True):
    """The recipe a user writes today with dataclasses.replace: `fast` with these hidden layers."""
    layers = tuple(Layer((Branch(units, act, str(i), keep_prob=keep, init_gain=2.0 if act == "relu" else 1.0),))
                   for i, (units, act, keep) in enumerate(hidden, start=1))
    return replace(fast, layers=layers + (Layer((Branch(10, "identity", str(len(hidden) + 1), init_gain=1.0),),
                                                bias=output_bias),))


def test_the_issues_network_equals_the_one_built_by_hand():
    fast = fastmnist.get_preset("fast")
    recipe = fastmnist.mlp([256, 128], "relu", optimizer="adam", lr=0.006, batch_size=128)
    expected = by_hand(fast, (256, "relu", 1.0), (128, "relu", 1.0))
    assert replace(recipe, name="", description="") == replace(expected, name="", description="")
    assert recipe.name == "mlp-256-128" and recipe == recipe.validate()
    assert recipe.description.startswith("784 -> ReLU 256 -> ReLU 128 -> softmax 10 (fastmnist.mlp), Adam lr 0.006, "
                                         "minibatches of 128")
    assert fastmnist.mlp([320]).layers == fast.layers         # the `fast` preset's own network
    assert fastmnist.Recipe.from_json(recipe.to_json()) == recipe


def test_activations_dropout_optimiser_and_settings_per_layer_and_from_the_base():
    grok = fastmnist.get_preset("grokking-dropout")
    recipe = fastmnist.mlp((64, 32, 16), ["tanh", "relu", "identity"], keep_prob=[0.5, 0.8, 1.0], optimizer="adam",
                           base="grokking-dropout", alpha=0.002, reg_fact_2=0.5, seed=7)
    expected = by_hand(grok, (64, "tanh", 0.5), (32, "relu", 0.8), (16, "identity", 1.0), output_bias=False)
    layers = [replace(layer, bias=False) for layer in expected.layers]      # the base's layers have no biases
    layers[1] = Layer((replace(layers[1].branches[0], l2=0.5),), bias=False)
    expected = replace(expected, layers=tuple(layers), seed=7, optimizer=replace(grok.optimizer, kind="adam", lr=0.002))
    assert replace(recipe, name="", description="") == replace(expected, name="", description="")
    assert recipe.name == "mlp-64tanh-32-16identity" and recipe.dropout == "element" and recipe.loss == "mse"
    assert "(keep 0.5)" in recipe.description and "the other settings from grokking-dropout" in recipe.description
    custom = Optimizer("sgd", lr=0.1)
    assert fastmnist.mlp([8], optimizer=custom, name="tiny").optimizer == custom
    assert fastmnist.mlp([8], name="tiny").name == "tiny"
    assert fastmnist.mlp([8], keep_prob=0.9).layers[0].branches[0].keep_prob == 0.9
    assert fastmnist.mlp([8], base=fastmnist.get_preset("branchnet")).optimizer.kind == "adam_like"


@pytest.mark.parametrize("kwargs, words", [
    (dict(layers=[]), "layers: must be a list of hidden layer widths"),
    (dict(layers="256"), "layers: must be a list of hidden layer widths"),
    (dict(layers=[256, 0]), "hidden layer 2: units must be in [1, 4096], got 0"),
    (dict(layers=[MAX_UNITS + 1]), f"units must be in [1, 4096], got {MAX_UNITS + 1}"),
    (dict(layers=[2.5]), "units must be an integer, got 2.5"),
    (dict(layers=[True]), "units must be an integer, got True"),
    (dict(layers=[8], activations="relu6"), "hidden layer 1: unknown activation 'relu6'"),
    (dict(layers=[8, 8], activations=["relu"]), "activations: 1 given for 2 hidden layers"),
    (dict(layers=[8], keep_prob=0), "keep probability must be in (0, 1], got 0"),
    (dict(layers=[8], keep_prob=float("nan")), "keep probability must be in (0, 1], got nan"),
    (dict(layers=[8], optimizer="rmsprop"), "optimizer: unknown optimizer 'rmsprop'"),
    (dict(layers=[8], base="nope"), "unknown preset 'nope'"),
    (dict(layers=[8], lr=-1), "lr: learning rate must be positive"),
    (dict(layers=[8], bogus=1), "unknown setting 'bogus'"),
    (dict(layers=[8], units_1=4), "units_1 is given twice"),
    (dict(layers=[8], hidden=4), "hidden is given twice"),
    (dict(layers=[8], keep_prob=0.5, keep_prob_1=0.4), "keep_prob_1 is given twice"),
    (dict(layers=[8], optimizer="sgd", optimizer_kind="adam"), "optimizer_kind is given twice"),
    (dict(layers=[8], base="grokking-3layer", alpha=0.1, lr=0.1), "lr is given twice (as alpha and as lr)"),
])
def test_bad_arguments_raise_one_line_naming_them(kwargs, words):
    with pytest.raises(RecipeError) as info:
        fastmnist.mlp(**kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("backend", ["numpy", "numba-cpu"])
def test_it_trains_on_the_cpu_backends_alike(backend):
    recipe = fastmnist.mlp([32, 16], ["relu", "tanh"], **TINY)
    result = fastmnist.train(recipe, backend=backend, progress=False)
    reference = fastmnist.train(recipe, backend="numpy", progress=False)
    assert result.backend == backend and len(result.history) == 1
    row, ref = result.history[0], reference.history[0]
    assert np.isfinite(row["loss"]) and row["loss"] == pytest.approx(ref["loss"], rel=1e-3)
    assert abs(row["test_acc"] - ref["test_acc"]) <= 0.01
    assert row["test_acc"] > 0.3           # ten steps from random weights: well above chance (0.1)
    assert result.summary().startswith(f"mlp-32-16tanh on {backend} (float32, ")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, MAX_UNITS), st.sampled_from(["relu", "tanh", "identity"]),
                          st.sampled_from([1.0, 0.5, 0.8])), min_size=1, max_size=5))
def test_any_stack_equals_the_one_built_by_hand_and_reads_back_from_its_text(hidden):
    sizes, acts, keeps = (list(column) for column in zip(*hidden))
    recipe = fastmnist.mlp(sizes, acts, keep_prob=keeps)
    expected = by_hand(fastmnist.get_preset("fast"), *hidden)
    assert replace(recipe, name="", description="") == replace(expected, name="", description="")
    assert parse_layers(",".join(f"{units}:{act}" for units, act in zip(sizes, acts))) == (tuple(sizes), tuple(acts))


def test_layers_text():
    assert parse_layers("256,128") == ((256, 128), ("relu", "relu"))
    assert parse_layers(" 256:relu , 128:tanh,10:identity") == ((256, 128, 10), ("relu", "tanh", "identity"))
    for text, words in [("", "expected sizes like"), ("256,,128", "expected sizes like"), ("256:", "expected sizes"),
                        ("25x", "'25x' is not a width"), ("2.5", "'2.5' is not a width"), ("0", "units must be in"),
                        ("256:gelu", "unknown activation 'gelu'"), ("5000", "units must be in [1, 4096]")]:
        with pytest.raises(RecipeError) as info:
            parse_layers(text)
        assert words in str(info.value), text


@pytest.mark.parametrize("command", ["train", "compare", "sweep"])
def test_each_command_builds_the_network_on_its_preset(command):
    args = cli.build_parser().parse_args([command, "--preset", "fast", "--layers", "256:relu,128:tanh"])
    preset, settings = cli.network(args, {"lr": 0.01} if command != "sweep" else {})
    expected = fastmnist.mlp([256, 128], ["relu", "tanh"], **({"lr": 0.01} if command != "sweep" else {}))
    assert preset == expected and settings == {}
    plain = cli.build_parser().parse_args([command])
    assert plain.layers is None and cli.network(plain, {"lr": 0.01}) == (plain.preset, {"lr": 0.01})


def run(*args):
    return subprocess.run([sys.executable, "-m", "fastmnist", *args], capture_output=True, text=True, cwd=CWD,
                          env=os.environ, timeout=300)


def test_train_and_compare_with_layers_on_the_command_line(tmp_path):
    out = tmp_path / "m.npz"
    r = run("train", "--layers", "32:tanh,16", "--backend", "numpy", "--iterations", "1", "--keep-prob", "0.9",
            "--set", "split=first-1000", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Epoch 1 ")
    assert "mlp-32tanh-16 on numpy (float32, reference operations): 1 epoch" in r.stdout
    model = fastmnist.load(out)
    assert [layer.units for layer in model.recipe.layers] == [32, 16, 10]
    assert [layer.branches[0].keep_prob for layer in model.recipe.layers] == [0.9, 0.9, 1.0]
    c = run("compare", "--layers", "16", "--backends", "numpy", "--seeds", "1", "--iterations", "1",
            "--set", "split=first-1000", "--quiet")
    assert c.returncode == 0, c.stderr
    assert c.stdout.startswith("mlp-16, float32, seeds 1:")
    r = run("train", "--layers", "64,0")                     # in a process of its own: no traceback
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "hidden layer 2: units must be" in r.stderr


@pytest.mark.parametrize("args, words", [
    (["train", "--layers", "256,0"], "argument --layers: hidden layer 2: units must be in [1, 4096], got 0"),
    (["compare", "--layers", "256:softsign"], "argument --layers: hidden layer 1: unknown activation 'softsign'"),
    (["sweep", "--layers", "256,,128"], "argument --layers: expected sizes like 256,128 or 256:relu,128:tanh"),
    (["train", "--layers", "1e9"], "'1e9' is not a width"),
    (["train", "--layers", "64", "--set", "hidden=32"], "hidden is given twice (--layers and --set)"),
    (["compare", "--layers", "64", "--set", "units_1=32"], "units_1 is given twice (--layers and --set)"),
    (["train", "--preset", "grokking-3layer", "--layers", "64", "--set", "hidden_size=32"],
     "hidden is given twice (--layers and --set as hidden_size)"),
    (["train", "--layers", "64", "--lr", "-1"], "lr: learning rate must be positive"),
])
def test_bad_layers_give_one_line_and_status_2_before_any_work(args, words, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    for module, name in (("training", "train"), ("comparison", "compare"), ("sweeps", "sweep")):
        monkeypatch.setattr(getattr(fastmnist, module), name, no_work)
    monkeypatch.setattr(cli, "train", no_work)
    try:
        status = cli.main(args)
    except SystemExit as stop:        # argparse's refusals
        status = stop.code
    err = capsys.readouterr().err
    assert status == 2 and words in err and len(err.strip().splitlines()) == 1, err
