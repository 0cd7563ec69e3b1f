"""One preset trained on every backend, side by side: `fastmnist.compare()` and `python -m fastmnist compare`.

numpy is always run, as the CPU baseline; cupy too when it is available, as the GPU baseline. Each backend
trains the preset once per seed, in this process. The first run of a backend (for a given code path and
dtype) in the process pays for what later runs get for free: loading its kernels from Numba's cache or
compiling them, and reading the data files. That run is reported on its own; the warm figures are the
medians of the other runs.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import dispatch
from .builtin_backends import BASELINES
from .charts import save_figure
from .errors import BackendUnavailable, FastMnistError, OutputError, RecipeError, TrainingDiverged
from .files import os_reason, write_atomically
from .formatting import count, duration
from .memory import check_training_fits
from .training import check_dtype, make_recipe, planned_path, train

DEFAULT_SEEDS = (1, 2, 3)

# (backend, path, dtype) of every run made by compare() in this process: a later run of the same finds its
# kernels loaded and the data files parsed, so it is warm.
_ran: set[tuple[str, str, str]] = set()


@dataclass
class Run:
    """One training of the preset on one backend."""

    seed: int
    first: bool              # the backend's first run in this process: kernels loaded or compiled, data read
    time_s: float            # time to the target from the train() call (inf if never reached), or total time
    reached: bool | None     # None when the recipe has no target
    step_s: float | None     # time per epoch (iteration) after the run's first; None for a first run of one step
    first_step_s: float      # the first epoch (iteration), including any compilation
    compile_s: float         # time Numba spent compiling during the run
    steps: int               # epochs (iterations) trained
    test_acc: float | None
    curve: list = field(default_factory=list)  # [elapsed s, test accuracy] at each report


@dataclass
class Row:
    """One backend's line of the table, with the runs it summarises."""

    backend: str
    device: str
    available: bool
    reason: str = ""         # why the backend is unavailable here, or why its runs failed
    path: str = ""           # the code path that trained (TrainResult.path)
    runs: list[Run] = field(default_factory=list)
    step_s: float | None = None      # medians over the warm runs
    time_s: float | None = None
    test_acc: float | None = None    # median final test accuracy over all runs
    reached: int | None = None       # runs that reached the target
    baseline: str | None = None      # the backend the speed-up is measured against
    speedup: float | None = None     # baseline's time_s / this row's time_s

    @property
    def first_run(self) -> Run | None:
        return next((r for r in self.runs if r.first), None)


class Comparison(list):
    """The rows of a comparison (a list of Row) and what they were measured on: `.recipe`, `.dtype`,
    `.seeds`, `.machine`; `.table()`, `.write_json(path)` and `.write_png(path)` present them."""

    def __init__(self, rows, recipe, dtype, seeds, machine_text):
        super().__init__(rows)
        self.recipe, self.dtype, self.seeds, self.machine = recipe, dtype, tuple(seeds), machine_text

    def table(self) -> str:
        return table(self)

    def write_json(self, path) -> Path:
        return write_json(self, path)

    def write_png(self, path) -> Path:
        return write_png(self, path)


def compare(preset="fast", backends=None, seeds=DEFAULT_SEEDS, dtype="float32", iterations=None, *,
            data_path=None, dataset="mnist", status=None, **overrides) -> Comparison:
    """Train `preset` once per seed on each backend (default: every registered one) and return one Row per
    backend: unavailable backends carry the reason, the others their runs, their warm medians and their
    speed-up against the baseline (numpy on the CPU, cupy on the GPU when it ran, numpy otherwise).

    numpy is always included, and cupy when it is available and a GPU backend is asked for. `status(text)`
    receives a line as each run finishes and the compiler notices of train(). `overrides` are recipe
    settings, as for train(). The rows come in a Comparison, a list that also prints them (`.table()`) and
    writes them (`.write_json(path)`, `.write_png(path)`).
    """
    dtype = check_dtype(dtype)
    seeds = _check_seeds(seeds)
    if "seed" in overrides:         # each run's seed comes from `seeds`: a seed override would be ignored
        raise RecipeError(f"seed={overrides['seed']!r}: compare trains once per seed of `seeds`; pass "
                          f"seeds=({overrides['seed']!r},) instead")
    recipe = make_recipe(preset, iterations, **overrides)       # a bad setting fails before any training
    for seed in seeds:                                          # and so does a bad seed, whichever it is
        make_recipe(recipe, seed=seed)
    check_training_fits(recipe, dtype)
    say = status or (lambda text: None)
    rows = []
    for info in _selected(backends):
        row = Row(info.name, info.device, info.available, info.reason)
        rows.append(row)
        if not info.available:
            continue
        be = dispatch.get_backend(info.name)
        row.path = planned_path(be, recipe, dtype)
        key = (info.name, row.path, dtype)
        for seed in seeds:
            first = key not in _ran
            try:
                result = train(recipe, backend=info.name, dtype=dtype, seed=seed, progress=False, data_path=data_path,
                               dataset=dataset, status=say)
            except (TrainingDiverged, BackendUnavailable) as exc:   # recorded; the other backends go on
                row.reason = f"failed on seed {seed}: {exc}"
                say(f"{info.name}: {row.reason}")
                break
            _ran.add(key)
            row.path = result.path
            row.runs.append(_run(result, seed, first))
            say(_describe(row, row.runs[-1], recipe))
    _summarise(rows, recipe)
    return Comparison(rows, recipe, dtype, seeds, machine())


def _check_seeds(seeds) -> tuple[int, ...]:
    seeds = tuple(seeds) if isinstance(seeds, (list, tuple)) else (seeds,)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise FastMnistError(f"seeds must be one or more non-negative integers, got {seeds!r}")
    return seeds


def _selected(names):
    """BackendInfo of the backends to run, baselines first on each device, the CPU before the GPU."""
    infos = {i.name: i for i in dispatch.backends()}
    if names is None:
        chosen = list(infos)
    else:
        chosen = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in chosen if n not in infos]
        if unknown:
            raise BackendUnavailable(f"unknown backend {unknown[0]!r}; choose from {', '.join(infos)}")
        devices = {infos[n].device for n in chosen}
        chosen.append("numpy")
        if "gpu" in devices and infos.get("cupy") and infos["cupy"].available:
            chosen.append("cupy")
    chosen = [n for n in dict.fromkeys(chosen) if n in infos]
    order = {"cpu": 0, "gpu": 1}
    return sorted((infos[n] for n in chosen),
                  key=lambda i: (order.get(i.device, 2), i.name != BASELINES.get(i.device), i.priority))


def _run(result, seed, first) -> Run:
    t = result.timings
    target = result.recipe.target_accuracy
    steps = result.final.get("iteration", -1) + 1
    if target is None:
        time_s, reached = t["total_s"], None
    else:
        reached = result.target_iteration is not None
        time_s = t["time_to_target_s"] if reached else math.inf
    step_s = t["per_iteration_s"] if steps > 1 or not first else None
    return Run(seed, first, time_s, reached, step_s, t["first_iteration_s"], t.get("compile_s", 0.0), steps,
               result.final.get("test_acc"), [[r["elapsed_s"], r["test_acc"]] for r in result.history
                                              if "test_acc" in r])


def _describe(row, run, recipe) -> str:
    what = f"{row.backend}, seed {run.seed}: {count(run.steps, recipe.unit)}"
    if run.test_acc is not None:
        what += f", test accuracy {run.test_acc:.4f}"
    if run.reached is not None:
        what += f", {_target(recipe)} " + (f"in {run.time_s:.2f} s" if run.reached else "not reached")
    else:
        what += f", {run.time_s:.2f} s"
    if run.first:
        what += " (first run in this process" + (f": {duration(run.compile_s)} compiling kernels)"
                                                 if run.compile_s else ")")
    return what


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _summarise(rows, recipe):
    for row in rows:
        warm = [r for r in row.runs if not r.first]
        # a first run's later epochs are warm too, so its per-epoch time counts when it has no warm sibling
        row.step_s = _median([r.step_s for r in warm] or [r.step_s for r in row.runs])
        time_s = _median([r.time_s for r in warm])
        row.time_s = time_s if time_s is not None and math.isfinite(time_s) else None
        row.test_acc = _median([r.test_acc for r in row.runs])
        if recipe.target_accuracy is not None and row.runs:
            row.reached = sum(bool(r.reached) for r in row.runs)
    timed = {r.backend: r for r in rows if r.time_s is not None}
    for row in rows:
        base = BASELINES.get(row.device)
        if base not in timed:
            base = "numpy"
        if row.time_s is not None and base in timed:
            row.baseline, row.speedup = base, timed[base].time_s / row.time_s


# -- output ------------------------------------------------------------------------------------------

def _target(recipe) -> str:
    return f"{recipe.target_accuracy:.0%} test accuracy" if recipe.target_accuracy is not None else ""


def table(rows: Comparison) -> str:
    """The Markdown table `python -m fastmnist compare` prints, with the notes that say what each column is."""
    recipe = rows.recipe
    unit = recipe.unit
    time_title = f"time to {recipe.target_accuracy:.0%}" if recipe.target_accuracy is not None else "total time"
    header = ["backend", "device", "path", f"per {unit}", time_title]
    if recipe.target_accuracy is not None:
        header.append("reached")
    header += ["test accuracy", "speed-up", "first run (compiling)"]
    lines = [f"{recipe.name}, {rows.dtype}, seeds {', '.join(map(str, rows.seeds))}: {rows.machine}", "",
             "| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * (len(header) - 3)]
    for row in rows:
        if not row.runs:
            cells = [row.backend, row.device, row.reason if row.available else f"unavailable: {_one_line(row.reason)}"]
            cells += ["–"] * (len(header) - 3)
        else:
            path = row.path + (f"; {_one_line(row.reason)}" if row.reason else "")     # a later seed failed
            cells = [row.backend, row.device, path, _time(row.step_s), _time(row.time_s)]
            if recipe.target_accuracy is not None:
                cells.append(f"{row.reached}/{len(row.runs)}")
            cells.append("–" if row.test_acc is None else f"{row.test_acc:.4f}")
            speedup = "–"
            if row.speedup is not None:
                speedup = f"{row.speedup:.2f}x" + ("" if row.baseline == BASELINES.get(row.device)
                                                  else f" vs {row.baseline}")
            cells += [speedup, _first(row.first_run)]
        lines.append("| " + " | ".join(cells) + " |")
    if recipe.target_accuracy is not None:
        what = f"{time_title}: from the train() call, data read included, to the evaluation that reached it"
    else:
        what = f"{time_title}: the whole train() call"
    lines += ["", f"Medians over the warm runs (each backend's runs after its first in this process). {what}. "
              f"First run: its {time_title}, with the time spent compiling kernels in brackets "
              "(it also loads cached kernels and reads the data files). Speed-up: the baseline's time / this "
              "backend's (numpy on the CPU, cupy on the GPU). –: no warm run"
              + (" reached the target." if recipe.target_accuracy is not None else ".")]
    return "\n".join(lines) + "\n"


def _one_line(text: str, limit: int = 90) -> str:
    """A reason fit for a table cell: one line, no pipes, cut at its first sentence when long."""
    text = " ".join(text.split()).replace("|", "/")
    if len(text) > limit and ". " in text:
        text = text[:text.index(". ") + 1]
    return text


def _time(seconds) -> str:
    return "–" if seconds is None else duration(seconds)


def _first(run) -> str:
    if run is None:
        return "– (kernels already loaded)"
    text = duration(run.time_s) if math.isfinite(run.time_s) else "target not reached"
    return text + (f" ({duration(run.compile_s)})" if run.compile_s else "")


def machine() -> str:
    """'2026-12-02, Linux x86_64, Intel(R) Xeon(R) Platinum 8481C (2 cores), Python 3.11.7'."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{datetime.date.today().isoformat()}, {platform.system()} {platform.machine()}, {cpu} "
            f"({os.cpu_count()} cores), Python {platform.python_version()}")


def write_json(rows: Comparison, path) -> Path:
    """The rows and their runs as JSON (an infinite time, a target never reached, is written as null)."""
    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [finite(v) for v in value]
        return value

    doc = {"preset": rows.recipe.name, "recipe": json.loads(rows.recipe.to_json()), "dtype": rows.dtype,
           "seeds": list(rows.seeds), "machine": rows.machine, "rows": [finite(asdict(row)) for row in rows]}
    text = json.dumps(doc, indent=1, default=str) + "\n"
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda f: f.write(text.encode()))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {os_reason(exc)}") from None
    return path


def check_plotting() -> None:
    """Raises a one-line FastMnistError when matplotlib is missing (before any training is spent)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise FastMnistError("--png needs matplotlib: pip install 'fastmnist[plots]'") from None


def write_png(rows: Comparison, path) -> Path:
    """Test accuracy against wall time, one line per backend: the run of median time (a warm one when there
    is one; a first run is marked as such in the legend). Returns the path written: `path`, with ".png"
    added when it has no suffix."""
    check_plotting()
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    recipe = rows.recipe
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, row in enumerate(r for r in rows if r.runs):
        warm = [r for r in row.runs if not r.first] or row.runs
        run = sorted(warm, key=lambda r: r.time_s)[(len(warm) - 1) // 2]
        xs, ys = zip(*run.curve) if run.curve else ((), ())
        label = f"{row.backend} ({row.path}, seed {run.seed}" + (", first run" if run.first else "") + ")"
        ax.plot(xs, ys, marker="o", markersize=3, color=f"C{i % 10}", label=label)
    if recipe.target_accuracy is not None:
        ax.axhline(recipe.target_accuracy, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda x, _: f"{x:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="both", labelsize=8)
    ax.set_xlabel("wall time from the train() call (s, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{recipe.name}, {rows.dtype}: {rows.machine}", fontsize=8, loc="left")
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path, dpi=100)


__all__ = ["compare", "Comparison", "Row", "Run", "table", "write_json", "write_png", "BASELINES"]
