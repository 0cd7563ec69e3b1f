"""Where a chart asked for at a path is written, checked before any work, and writing it whole."""

from __future__ import annotations

from pathlib import Path

from .errors import OutputError
from .files import check_writable, os_reason, write_atomically


def chart_path(path) -> Path:
    """`path`, with ".png" added when it has no suffix (as matplotlib would add it); a folder, or a suffix
    matplotlib has no format for, is an OutputError."""
    path = Path(path)
    if path.is_dir() or not path.name:
        raise OutputError(f"cannot write {path}: it is a directory")
    if not path.suffix:
        return path.with_name(path.name + ".png")
    formats = _formats()
    if formats is not None and path.suffix[1:].lower() not in formats:
        raise OutputError(f"cannot write {path}: matplotlib draws no {path.suffix} charts "
                          f"(choose from {', '.join('.' + f for f in sorted(formats))})")
    return path


def check_chart(path) -> Path:
    """The chart_path of `path`, checked as a file that can be written; before any work is done."""
    path = chart_path(path)
    check_writable(path)
    return path


def save_figure(fig, path, dpi: int) -> Path:
    """Writes the matplotlib figure `fig` to chart_path(path), whole or not at all; returns the path."""
    path = chart_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda f: fig.savefig(f, format=path.suffix[1:].lower(), dpi=dpi))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {os_reason(exc)}") from None
    return path


def _formats():
    """The file formats matplotlib writes, or None without matplotlib (then there is no chart to check)."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return None
    return set(FigureCanvasBase.get_supported_filetypes())
