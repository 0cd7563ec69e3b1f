"""Every recipe setting is checked for type and range when the recipe is made, whichever way it is made
(overrides, fastmnist.train, the CLI, sweeps, model files), so that no bad value reaches a kernel."""

import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import fastmnist
from fastmnist import RecipeError, get_preset
from fastmnist.recipes import Recipe

# (preset, setting, bad value, words the one-line message must contain)
BAD = [
    ("branchnet", "lr", True, "lr: learning rate must be a number, got True"),
    ("branchnet", "lr", "0.1", "lr: learning rate must be a number, got '0.1'"),
    ("branchnet", "lr", None, "lr: learning rate must be a number, got None"),
    ("branchnet", "lr", math.nan, "learning rate must be positive, got nan"),
    ("branchnet", "lr", math.inf, "learning rate must be positive, got inf"),
    ("branchnet", "beta1", 1.0, "beta1: beta1 must be in [0, 1), got 1.0"),
    ("branchnet", "beta2", math.nan, "beta2: beta2 must be in [0, 1), got nan"),
    ("branchnet", "eps", math.inf, "eps: optimizer eps must be positive, got inf"),
    ("branchnet", "eps", 0, "eps: optimizer eps must be positive, got 0"),
    ("branchnet", "optimizer_kind", 3, "unknown optimizer 3; choose from sgd, adam_like, adam"),
    ("branchnet", "keep_prob_12", True, "keep_prob_12: keep probability must be a number, got True"),
    ("branchnet", "keep_prob", math.nan, "keep probability must be in (0, 1], got nan"),
    ("branchnet", "reg_fact_3", -1.0, "reg_fact_3: L2 factor must be non-negative, got -1.0"),
    ("branchnet", "reg_fact_3", math.inf, "reg_fact_3: L2 factor must be non-negative, got inf"),
    ("branchnet", "units_11", 2.5, "units_11: units must be an integer, got 2.5"),
    ("branchnet", "units_11", True, "units_11: units must be an integer, got True"),
    ("grokking-3layer", "hidden", "64", "units_1: units must be an integer, got '64'"),
    ("grokking-3layer", "hidden", 0, "units_1: units must be positive, got 0"),
    ("branchnet", "iterations", 1.5, "iterations: iterations must be an integer, got 1.5"),
    ("branchnet", "iterations", None, "iterations: iterations must be an integer, got None"),
    ("branchnet", "batch_size", True, "batch_size: batch size must be an integer or None, got True"),
    ("branchnet", "batch_size", 50_001, "batch size must be in [1, 50000] (the training images of split "
                                        "'50k-10k-10k'), got 50001"),
    ("grokking-3layer", "batch_size", 5000, "must be in [1, 1000]"),
    ("branchnet", "eval_every", 0, "eval_every: eval_every must be positive, got 0"),
    ("branchnet", "seed", 2**32, "seed: seed must be in [0, 4294967295], got 4294967296"),
    ("branchnet", "seed", -1, "seed: seed must be in [0, 4294967295], got -1"),
    ("branchnet", "seed", 1.0, "seed: seed must be an integer, got 1.0"),
    ("branchnet", "l2_every", 0, "l2_every: l2_every must be positive, got 0"),
    ("branchnet", "lr_decay", 0.0, "lr_decay: lr_decay must be in (0, 1], got 0.0"),
    ("branchnet", "target_accuracy", True, "target_accuracy: target_accuracy must be a number or None, got True"),
    ("branchnet", "target_accuracy", 1.5, "target_accuracy must be in (0, 1], got 1.5"),
    ("branchnet", "init_scale", -0.1, "init_scale: init_scale must be positive, got -0.1"),
    ("branchnet", "loss_eps", math.nan, "loss_eps: loss_eps must be non-negative, got nan"),
    ("branchnet", "shuffle", "yes", "shuffle: shuffle must be True or False, got 'yes'"),
    ("branchnet", "repeat_update", 1, "repeat_update: repeat_update must be True or False, got 1"),
    ("branchnet", "loss", "hinge", "loss: unknown loss 'hinge'; choose from mse, softmax_ce"),
    ("branchnet", "split", None, "split: unknown split None; choose from first-1000, 50k-10k-10k, full"),
    ("branchnet", "l2_schedule", "linear", "unknown L2 schedule 'linear'; choose from constant, sqrt-growth"),
    ("branchnet", "train_metrics", "both", "unknown train_metrics 'both'; choose from running, eval"),
    ("branchnet", "inputs", 0, "inputs: inputs must be positive, got 0"),
]


@pytest.mark.parametrize("preset, setting, value, words", BAD, ids=[f"{s}={v!r}" for _, s, v, _ in BAD])
def test_a_bad_setting_is_refused_with_one_line_naming_it(preset, setting, value, words):
    with pytest.raises(RecipeError) as info:
        get_preset(preset).with_overrides(**{setting: value})
    message = str(info.value)
    assert message.startswith(f"recipe {preset!r}: ") and words in message
    assert "\n" not in message


def test_numpy_scalars_are_taken_as_the_python_numbers_they_are():
    recipe = get_preset("branchnet").with_overrides(
        lr=np.float32(0.25), beta1=np.float64(0.5), units_11=np.int64(20), seed=np.uint32(7),
        eval_every=np.int16(3), batch_size=np.int32(100), shuffle=np.bool_(True), keep_prob=np.float16(0.5),
        target_accuracy=np.float32(0.5), iterations=np.int64(2))
    assert (recipe.optimizer.lr, recipe.optimizer.beta1, recipe.layers[0].branches[0].units) == (0.25, 0.5, 20)
    assert (recipe.seed, recipe.eval_every, recipe.batch_size, recipe.shuffle) == (7, 3, 100, True)
    assert recipe.iterations == 2 and recipe.target_accuracy == 0.5
    assert all(b.keep_prob == 0.5 for layer in recipe.layers[:-1] for b in layer.branches)
    for value in (recipe.optimizer.lr, recipe.seed, recipe.batch_size, recipe.shuffle, recipe.iterations,
                  recipe.layers[0].branches[0].units, recipe.layers[0].branches[0].keep_prob):
        assert type(value) in (int, float, bool), type(value)
    assert Recipe.from_json(recipe.to_json()) == recipe


def test_an_int_where_a_float_is_wanted_becomes_a_float():
    recipe = get_preset("branchnet").with_overrides(lr=1, reg_fact_3=2)
    assert type(recipe.optimizer.lr) is float and type(recipe.layers[2].branches[0].l2) is float


def test_a_recipe_built_by_hand_is_checked_too():
    base = get_preset("grokking-3layer")
    branch = dataclasses.replace(base.layers[0].branches[0], init_gain=-2.0)
    bad = dataclasses.replace(base, layers=(dataclasses.replace(base.layers[0], branches=(branch,)), base.layers[1]))
    with pytest.raises(RecipeError, match="init_gain_1: initialisation gain must be positive, got -2.0"):
        bad.validate()
    with pytest.raises(RecipeError, match="bias_0: bias must be True or False, got 'no'"):
        dataclasses.replace(base, layers=(dataclasses.replace(base.layers[0], bias="no"), base.layers[1])).validate()
    with pytest.raises(RecipeError, match="name: name must be text, got 3"):
        dataclasses.replace(base, name=3).validate()
    with pytest.raises(RecipeError, match="layers: layer 1 must be a Layer, got 'dense'"):
        dataclasses.replace(base, layers=(base.layers[0], "dense")).validate()


@pytest.mark.parametrize("settings, words", [
    (dict(lr=np.float32(-1)), "learning rate must be positive"),
    (dict(batch_size=5000), "batch size must be in [1, 1000]"),
    (dict(seed=2**32), "seed must be in [0, 4294967295]"),
    (dict(inputs=12), "inputs=12 does not fit mnist's 784 pixels per image"),
    (dict(iterations=1, callback=3), "callback must be callable or None, got 3"),
    (dict(dtype=None), "unsupported dtype None"),
    (dict(dtype=5), "unsupported dtype 5"),
])
def test_train_refuses_bad_settings_before_loading_any_data(monkeypatch, settings, words):
    def no_data(*args, **kwargs):
        raise AssertionError("data were loaded before the settings were checked")
    monkeypatch.setattr(fastmnist.data, "load_splits", no_data)
    with pytest.raises(fastmnist.FastMnistError) as info:
        fastmnist.train("grokking-3layer", backend="numpy", progress=False, **settings)
    assert words in str(info.value)


def test_train_takes_numpy_scalar_settings():
    result = fastmnist.train("grokking-3layer", backend="numpy", iterations=np.int64(1), seed=np.int32(3),
                             lr=np.float32(0.005), hidden=np.int64(8), progress=False)
    assert result.model.recipe.seed == 3 and result.model.recipe.layers[0].units == 8
    assert [row["iteration"] for row in result.history] == [0]


CWD = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("args, words", [
    (["--set", "iterations=1.5"], "iterations: iterations must be an integer, got 1.5"),
    (["--set", "shuffle=1"], "shuffle: shuffle must be True or False, got 1"),
    (["--lr", "nan"], "learning rate must be positive, got nan"),
    (["--seed", "4294967296"], "seed must be in [0, 4294967295]"),
    (["--batch-size", "5000"], "batch size must be in [1, 1000]"),
    (["--set", "l2_every=0"], "l2_every must be positive"),
])
def test_the_cli_refuses_bad_settings_with_one_line_and_status_2(args, words):
    r = subprocess.run([sys.executable, "-m", "fastmnist", "train", "--preset", "grokking-3layer", "--backend",
                        "numpy", *args], capture_output=True, text=True, cwd=CWD, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def run_train(*args):
    return subprocess.run([sys.executable, "-m", "fastmnist", "train", "--preset", "grokking-3layer", "--backend",
                           "numpy", "--quiet", *args], capture_output=True, text=True, cwd=CWD, timeout=300)


def test_the_cli_takes_iterations_and_seed_through_set_like_any_setting():
    r = run_train("--set", "iterations=1", "--set", "seed=3")
    assert r.returncode == 0, r.stderr
    assert ": 1 epoch;" in r.stdout


@pytest.mark.parametrize("args, words", [
    (["--iterations", "1", "--set", "iterations=2"], "iterations is given twice (--iterations and --set)"),
    (["--lr", "0.1", "--set", "lr=0.2"], "lr is given twice (--lr and --set)"),
    (["--set", "seed=1", "--set", "seed=2"], "seed is given twice (--set and --set)"),
    (["--set", "backend=numpy"], "--set backend: not a recipe setting; use train's own option for it"),
    (["--set", "preset=fast"], "--set preset: not a recipe setting; use train's own option for it"),
    (["--set", "alpha=0.01", "--lr", "0.02"], "lr is given twice (--lr and --set as alpha)"),
])
def test_the_cli_refuses_a_setting_given_twice_or_not_a_recipe_setting(args, words):
    r = run_train(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_model_file_goes_through_the_same_checks(tmp_path):
    import json

    from fastmnist.model import Model, _checksum

    model = fastmnist.train("grokking-3layer", backend="numpy", iterations=1, hidden=4, progress=False).model
    recipe = json.loads(model.recipe.to_json())
    recipe["seed"] = True       # a value the old checks let through: a bool taken for the number 1
    path = model.save(tmp_path / "m.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["recipe"] = np.array(json.dumps(recipe, sort_keys=True))
    weights = {k: v for k, v in arrays.items() if k[0] in "Wb" and k[1:].isdigit()}
    arrays["checksum"] = np.array(_checksum(str(arrays["recipe"]), str(arrays["meta"]), weights))
    np.savez(tmp_path / "forged.npz", **arrays)
    with pytest.raises(fastmnist.ModelFileError, match="seed: seed must be an integer, got True"):
        fastmnist.load(tmp_path / "forged.npz")
    with pytest.raises(RecipeError, match="seed: seed must be an integer, got True"):
        Model(dataclasses.replace(model.recipe, seed=True), model.weights, model.biases)


@pytest.mark.parametrize("name", ["self", "preset"])
def test_a_setting_named_like_a_parameter_is_an_unknown_setting(name):
    from fastmnist.training import make_recipe
    with pytest.raises(RecipeError, match=f"unknown setting '{name}'"):
        get_preset("branchnet").with_overrides(**{name: 1})
    with pytest.raises(RecipeError, match=f"unknown setting '{name}'"):
        make_recipe("branchnet", **{name: 1})
