"""How much memory this machine has, and how much a training needs: a recipe that cannot fit is refused
in one line before anything is allocated (rather than a MemoryError, or the kernel's OOM killer, later)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .data import TRAIN_ROWS
from .errors import RecipeError

TEST_ROWS = 10_000


def machine_bytes() -> int:
    """The memory this process may use: the machine's physical memory, or its control group's limit where
    that is lower (a container)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):       # not POSIX: nothing to compare with
        return 1 << 62
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text()[:32].strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def parameter_count(recipe) -> int:
    """Weights and biases of the recipe's network (Python integers: no overflow, whatever the sizes)."""
    return sum(n_in * layer.units + (layer.units if layer.bias else 0)
               for n_in, layer in zip(recipe.layer_inputs(), recipe.layers))


def training_bytes(recipe, dtype) -> int:
    """A lower estimate of the memory train() needs for `recipe` at its peak, on any backend: the images as
    floats and the parameters with the optimizer's state in `dtype` throughout, plus the larger of what
    comes and goes: the parameters drawn in float64 (the draw and its scaled copy), or one step's gradients
    and batch activations. (The reference backends also hold an evaluation chunk of 8,192 rows of every
    layer; the compiled ones need less, so it is left out.)"""
    size = np.dtype(dtype).itemsize
    params = parameter_count(recipe)
    state = 2 if recipe.optimizer.kind != "sgd" else 0
    units = sum(layer.units for layer in recipe.layers)
    train_rows = TRAIN_ROWS[recipe.split]
    images = (60_000 if recipe.split == "50k-10k-10k" else train_rows) + TEST_ROWS     # 50k-10k-10k: val too
    held = size * (images * recipe.inputs + (1 + state) * params)
    passing = max(2 * 8 * params,                                                   # drawing the parameters
                  size * (params + 2 * (recipe.batch_size or train_rows) * units))  # a step
    return held + passing


def gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def check_training_fits(recipe, dtype) -> None:
    """Raises RecipeError, naming the sizes, when training `recipe` cannot fit in this machine's memory."""
    need, have = training_bytes(recipe, dtype), machine_bytes()
    if need > have:
        layers = " -> ".join(str(layer.units) for layer in recipe.layers)
        raise RecipeError(f"recipe {recipe.name!r} ({recipe.inputs} -> {layers}, {parameter_count(recipe):,} "
                          f"parameters) needs at least {gib(need)} of memory to train in {np.dtype(dtype).name}; "
                          f"this machine has {gib(have)}")
