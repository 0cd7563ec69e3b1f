"""Type and range checks for single settings.

Each check returns the value as a plain Python bool, int, float or str (NumPy scalars are taken as the
numbers they are) or raises RecipeError with one line naming the setting, what it must be, and the value.
"""

from __future__ import annotations

import math
import numbers
import re

import numpy as np

from .errors import RecipeError

# a rule is "positive", "non-negative" or an interval such as "in (0, 1]" or "in [0, 4294967295]"
_WORDS = {"positive": (0, False, math.inf, False), "non-negative": (0, True, math.inf, False)}
_INTERVAL = re.compile(r"in ([\[(])([^,]+), ([^\])]+)([\])])")


def number(value, setting: str, what: str, rule: str, *, optional: bool = False) -> float | None:
    """A finite real number obeying `rule` (None too if `optional`), as a float."""
    if value is None and optional:
        return None
    if not isinstance(value, numbers.Real) or _is_bool(value):
        _fail(setting, what, "a number or None" if optional else "a number", value)
    as_float = float(value)
    if not (math.isfinite(as_float) and _obeys(as_float, rule)):
        _fail(setting, what, rule, value)
    return as_float


def integer(value, setting: str, what: str, rule: str, *, optional: bool = False, note: str = "") -> int | None:
    """An integer obeying `rule` (None too if `optional`), as an int; `note` says where the rule comes from."""
    if value is None and optional:
        return None
    if not isinstance(value, numbers.Integral) or _is_bool(value):
        _fail(setting, what, "an integer or None" if optional else "an integer", value)
    as_int = int(value)
    if not _obeys(as_int, rule):
        _fail(setting, what, f"{rule} ({note})" if note else rule, value)
    return as_int


def flag(value, setting: str, what: str) -> bool:
    if not _is_bool(value):
        _fail(setting, what, "True or False", value)
    return bool(value)


def text(value, setting: str, what: str) -> str:
    if not isinstance(value, str):
        _fail(setting, what, "text", value)
    return str(value)


def choice(value, setting: str, what: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise RecipeError(f"{setting}: unknown {what} {shown(value)}; choose from {', '.join(choices)}")
    return str(value)


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def _obeys(value, rule: str) -> bool:
    if rule in _WORDS:
        low, low_closed, high, high_closed = _WORDS[rule]
    else:
        m = _INTERVAL.fullmatch(rule)
        if m is None:
            raise ValueError(f"not a rule: {rule!r}")
        low, high = float(m.group(2)), float(m.group(3))
        low_closed, high_closed = m.group(1) == "[", m.group(4) == "]"
    above = value >= low if low_closed else value > low
    below = value <= high if high_closed else value < high
    return above and below


def _fail(setting: str, what: str, should: str, value):
    raise RecipeError(f"{setting}: {what} must be {should}, got {shown(value)}")


def shown(value) -> str:
    """The value as a user wrote it: 0.5, 'text', True, None (NumPy scalars without their type's name)."""
    if isinstance(value, np.generic):
        value = value.item()
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
