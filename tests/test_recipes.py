import pytest

from fastmnist import PRESETS, RecipeError, get_preset
from fastmnist.recipes import Recipe


def test_presets_carry_the_seeds_settings():
    g = get_preset("grokking-3layer")
    assert (g.layers[0].units, g.optimizer.lr, g.iterations, g.batch_size, g.seed) == (40, 0.005, 350, 1, 1)
    d = get_preset("grokking-dropout")
    assert (d.layers[0].units, d.iterations, d.layers[0].branches[0].keep_prob, d.dropout) == (100, 300, 0.5, "element")
    b = get_preset("grokking-batch")
    assert (b.batch_size, b.optimizer.lr, b.repeat_update) == (100, 0.001, True)
    assert "batch_size times" in b.description
    n = get_preset("branchnet")
    assert [br.units for layer in n.layers for br in layer.branches] == [128, 64, 48, 10]
    assert [br.activation for br in n.layers[0].branches] == ["relu", "tanh"]
    assert all(br.keep_prob == 0.8 for layer in n.layers[:-1] for br in layer.branches)
    assert [br.l2 for layer in n.layers for br in layer.branches] == [1.19, 1.05, 1.07, 2.22]
    assert (n.optimizer.kind, n.optimizer.eps, n.iterations, n.batch_size) == ("adam_like", 1e-7, 10000, None)


def test_l2_schedule_starts_at_iteration_0():
    n = get_preset("branchnet")
    assert n.l2_multiplier(0) == pytest.approx(2 ** 0.5 / 2)
    assert n.l2_multiplier(1) == 1.0
    assert n.l2_multiplier(3000) == pytest.approx(5 ** 0.5 / 2)


def test_lr_at_is_the_decayed_rate_of_each_iteration_and_a_pure_function():
    fast = get_preset("fast")
    assert fast.lr_decay < 1 and fast.lr_at(0) == fast.optimizer.lr
    lr = fast.optimizer.lr
    for iteration in range(1, 40):
        lr *= fast.lr_decay                     # as the loop applied the decay before lr_at: bit for bit
        assert fast.lr_at(iteration) == lr
        assert fast.lr_at(iteration) == pytest.approx(fast.optimizer.lr * fast.lr_decay ** iteration, rel=1e-13)
    assert fast.lr_at(5) == fast.lr_at(5) and fast == get_preset("fast")     # no state kept or changed
    other = fast.with_overrides(lr=0.01, lr_decay=0.5)
    assert [other.lr_at(i) for i in range(4)] == [0.01, 0.005, 0.0025, 0.00125]
    long = fast.with_overrides(lr=0.003, lr_decay=0.999)    # asked out of order, far along: the same products
    want = [0.003]
    for _ in range(5000):
        want.append(want[-1] * 0.999)
    assert [long.lr_at(i) for i in (5000, 17, 4999, 0)] == [want[5000], want[17], want[4999], 0.003]
    flat = get_preset("branchnet")
    assert flat.lr_decay == 1.0 and {flat.lr_at(i) for i in (0, 1, 9999)} == {flat.optimizer.lr}


def test_recipe_round_trips_through_json():
    for recipe in PRESETS.values():
        assert Recipe.from_json(recipe.to_json()) == recipe


def test_overrides_by_seed_names():
    n = get_preset("branchnet").with_overrides(keep_prob_12=0.85, reg_fact_3=1.5, lr=0.01)
    assert n.layers[0].branches[1].keep_prob == 0.85 and n.layers[0].branches[0].keep_prob == 0.8
    assert n.layers[2].branches[0].l2 == 1.5 and n.optimizer.lr == 0.01
    k = get_preset("branchnet").with_overrides(keep_prob=0.9)
    assert all(b.keep_prob == 0.9 for layer in k.layers[:-1] for b in layer.branches)
    assert get_preset("grokking-3layer").with_overrides(hidden=64).layers[0].units == 64


@pytest.mark.parametrize("override, words", [
    ({"keep_prob": 0.0}, "keep probability"),
    ({"keep_prob": 1.5}, "keep probability"),
    ({"lr": 0}, "learning rate"),
    ({"lr": -1e-3}, "learning rate"),
    ({"iterations": -1}, "iterations"),
    ({"batch_size": 0}, "batch size"),
    ({"nonsense": 1}, "unknown setting"),
    ({"optimizer_kind": "rmsprop"}, "unknown optimizer"),
])
def test_bad_overrides_are_rejected_with_a_named_problem(override, words):
    with pytest.raises(RecipeError, match=words):
        get_preset("branchnet").with_overrides(**override)


def test_unknown_preset():
    with pytest.raises(RecipeError, match="unknown preset 'x'; choose from grokking-3layer"):
        get_preset("x")


def test_corrupt_recipe_json():
    with pytest.raises(RecipeError, match="not a valid recipe"):
        Recipe.from_json('{"name": 3}')


def test_fast_preset_trains_shuffled_minibatches_with_adam():
    import fastmnist
    recipe = get_preset("fast")
    assert (recipe.optimizer.kind, recipe.shuffle, recipe.split, recipe.target_accuracy) == ("adam", True, "full", 0.98)
    result = fastmnist.train("fast", backend="numpy", iterations=1, hidden=64, batch_size=500, progress=False)
    assert [r["iteration"] for r in result.history] == [0]
    assert result.final["test_acc"] > 0.9 and result.final["train_acc"] > 0.85
    other = fastmnist.train("fast", backend="numpy", iterations=1, hidden=64, batch_size=500, seed=1, progress=False)
    assert other.final["train_err"] != result.final["train_err"]


@pytest.mark.parametrize("preset", ["grokking-3layer", "grokking-dropout", "grokking-batch"])
def test_seed_000_presets_take_the_notebooks_names(preset):
    r = get_preset(preset).with_overrides(alpha=0.01, hidden_size=64, iterations=20)
    assert (r.optimizer.lr, r.layers[0].units, r.iterations) == (0.01, 64, 20)
    preset_iterations = get_preset(preset).iterations
    assert get_preset(preset).with_overrides(lr=0.01, hidden=64) == r.with_overrides(iterations=preset_iterations)


def test_branchnet_takes_seed_004s_names():
    r = get_preset("branchnet").with_overrides(
        learn_rate=0.002, iter=500, keep_prob_11=0.9, keep_prob_12=0.85, keep_prob_2=0.95, reg_fact_11=1.1,
        reg_fact_12=1.0, reg_fact_2=1.2, reg_fact_3=1.5, beta1=0.8, beta2=0.99, epsilon=1e-6)
    assert (r.optimizer.lr, r.iterations, r.optimizer.beta1, r.optimizer.beta2, r.optimizer.eps) == (
        0.002, 500, 0.8, 0.99, 1e-6)
    assert [b.keep_prob for layer in r.layers[:-1] for b in layer.branches] == [0.9, 0.85, 0.95]
    assert [b.l2 for layer in r.layers for b in layer.branches] == [1.1, 1.0, 1.2, 1.5]
    assert r.loss_eps == get_preset("branchnet").loss_eps     # the notebook's epsilon is the optimiser's


def test_an_unknown_name_lists_the_valid_ones_with_the_notebooks():
    with pytest.raises(RecipeError,
                       match="unknown setting 'alfa' for recipe 'grokking-3layer'; valid: .*lr.*alpha, hidden_size"):
        get_preset("grokking-3layer").with_overrides(alfa=0.1)
    with pytest.raises(RecipeError,
                       match="unknown setting 'learning' for recipe 'branchnet'; valid: .*learn_rate, iter, epsilon"):
        get_preset("branchnet").with_overrides(learning=0.1)
    with pytest.raises(RecipeError, match="unknown setting 'alpha' for recipe 'fast'"):   # not a notebook's preset
        get_preset("fast").with_overrides(alpha=0.1)


def test_epoch_and_iteration_units():
    assert [PRESETS[n].unit for n in PRESETS] == ["epoch", "epoch", "epoch", "iteration", "epoch"]
    assert get_preset("branchnet").with_overrides(batch_size=100).unit == "epoch"
