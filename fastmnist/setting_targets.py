"""Which part of a recipe a setting sets, under any of its names, so that one part set twice is refused.

`lr`, `learning_rate` and a notebook's `alpha` all set the optimizer's learning rate; `hidden` and
`units_1` the first hidden branch's units; `keep_prob` every hidden branch's keep probability, and
`keep_prob_11` one of them. Rather than a list of synonyms to keep up to date, a setting's parts are found
by applying it to the recipe with a marker value and seeing where the marker lands.
"""

from __future__ import annotations

import dataclasses

from .errors import RecipeError


class _Marker:
    """A value no setting holds: where an override writes it shows where that override writes."""


def setting_targets(recipe, key: str) -> frozenset:
    """The parts of `recipe` that setting `key` sets ({"optimizer.lr"} for lr, learning_rate and alpha).
    A name the recipe does not take is its own part (the recipe's checks refuse it when it is applied)."""
    if recipe is None:
        return frozenset({key})
    marker = _Marker()
    try:
        changed = recipe._override(key, marker)
    except RecipeError:
        return frozenset({key})
    return frozenset(path for path, value in _leaves(changed, "") if value is marker) or frozenset({key})


def check_distinct(recipe, keys) -> None:
    """Raises RecipeError if two of the settings `keys` set the same part of `recipe` (one would silently
    undo the other)."""
    seen = {}
    for key in keys:
        parts = setting_targets(recipe, key)
        earlier = next((k for k, p in seen.items() if p & parts), None)
        if earlier is not None:
            raise RecipeError(f"{earlier} and {key} set the same setting of recipe {recipe.name!r}; give one of them")
        seen[key] = parts


def _leaves(value, path: str):
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _leaves(getattr(value, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(value, tuple):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}.{i}")
    else:
        yield path, value
