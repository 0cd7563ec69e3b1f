"""How counts and durations read in what fastmnist prints (training summaries, the CLI, compare's table)."""

from __future__ import annotations


def count(n: int, unit: str) -> str:
    """'1 epoch', '3 epochs', '10000 iterations'."""
    return f"{n} {unit}" + ("" if n == 1 else "s")


def duration(seconds: float) -> str:
    """'612 ms', '1.25 s', '95.3 s'."""
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:.0f} s"


__all__ = ["count", "duration"]
