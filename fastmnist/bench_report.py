"""pytest-benchmark JSON in, a Markdown table per benchmark group out (and optionally a bar chart PNG).

Each row is one case (the benchmark's parameters without the backend) on one backend: its mean and
median time and its speed-up against the baseline backend on the same device (numpy on the CPU, cupy
on the GPU), computed from the medians. The chart shows the headline workloads' speed-ups (whole training
steps and epochs, time to 98%) in one compact figure; with `detail` it shows every group's times instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .builtin_backends import BASELINES
from .charts import check_chart, save_figure
from .errors import FastMnistError

# The groups whose speed-ups the default chart shows: what a training run spends its time in.
HEADLINE_GROUPS = ("steps/train_step", "steps/epoch", "time_to_98")
# extra_info keys shown as columns when a group has them.
# fma_share, l1_share and l2_share: the achieved rates as shares of this machine's peaks (bench/peaks.py) on the
# cores used.
EXTRA_COLUMNS = (("gflops", "GFLOP/s", "{:.3g}"), ("fma_share", "of FMA peak", "{:.1%}"), ("gbps", "GB/s", "{:.3g}"),
                 ("l1_share", "of L1 peak", "{:.1%}"),
                 ("l2_share", "of L2 peak", "{:.1%}"), ("compile_s", "compile s", "{:.3g}"))


@dataclass
class Result:
    group: str
    test: str
    param: str
    backend: str
    device: str
    mean: float
    median: float
    extra: dict = field(default_factory=dict)
    source: str = ""        # the file's label when a report reads several


def render(json_paths, png_path=None, detail=False) -> str:
    """The Markdown report of one or more pytest-benchmark JSON files; also writes a chart to `png_path` if
    given and matplotlib is installed (the text says so when it is not): the headline workloads' speed-ups,
    or with `detail` every group's median times. A path may be written LABEL@PATH; with several files each
    one's bars carry its label (by default the name of the folder holding it, e.g. the machine's)."""
    if png_path is not None:
        png_path = check_chart(png_path)
    sources = [json_paths] if isinstance(json_paths, (str, Path)) else list(json_paths)
    several = len(sources) > 1
    lines, results = [], []
    for source in sources:
        label, json_path = _label_and_path(str(source))
        doc = _read(Path(json_path))
        found = [_result(b, json_path) for b in doc["benchmarks"]]
        if several:
            for r in found:
                r.source = label
        results += found
        if lines:
            lines.append("")
        lines += [f"Benchmark results `{Path(json_path).name}`" + (f" ({label})" if several else "")
                  + f": {_describe_machine(doc)}", "",
                  "Times per call; speed-up = the baseline's median / this backend's median, against "
                  + " and ".join(f"{b} on the {d.upper()}" for d, b in BASELINES.items()) + "."]
        if not found:
            lines += ["", "No benchmarks in this file (was it written with timing disabled?)."]
        for group, rows in _by_group(found).items():
            lines += ["", f"### {group}", "", *_table(rows)]
    if png_path is not None:
        lines += ["", (_chart if detail else _headline_chart)(results, png_path)]
    return "\n".join(lines) + "\n"


# -- reading ---------------------------------------------------------------------------------------

def _label_and_path(source: str) -> tuple[str, str]:
    """'epyc@runs/a.json' -> ('epyc', 'runs/a.json'); a path that is a file as it is, '@' and all, and one
    without a label, are labelled by the folder holding them."""
    label, at, json_path = source.partition("@")
    if not at or Path(source).is_file():
        label, json_path = "", source
    return label or Path(json_path).resolve().parent.name, json_path


def _read(path: Path) -> dict:
    if not path.is_file():
        raise FastMnistError(f"{path}: no such benchmark results file")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FastMnistError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise FastMnistError(f"{path}: not a pytest-benchmark results file (its JSON is nested too deeply)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise FastMnistError(f"{path}: not a pytest-benchmark results file (no 'benchmarks' list)")
    machine = _field(doc, "machine_info", dict, "a JSON object", path) or {}
    for key in ("datetime", "version"):
        _field(doc, key, str, "text", path)
    for key in ("node", "python_version"):
        _field(machine, key, str, "text", path, "machine_info.")
    cpu = _field(machine, "cpu", dict, "a JSON object", path, "machine_info.") or {}
    _field(cpu, "brand_raw", str, "text", path, "machine_info.cpu.")
    return doc


def _field(doc: dict, key: str, kind, what: str, path, where: str = ""):
    """doc[key] when it is present and of `kind`, None when absent; anything else is a FastMnistError."""
    value = doc.get(key)
    if value is not None and not isinstance(value, kind):
        raise FastMnistError(f"{path}: its {where}{key} is not {what}")
    return value


def _shown(name: str) -> str:
    """A benchmark's name for a one-line message: as written, or quoted with its escapes when it holds a line
    break or another unprintable character."""
    return name if name.isprintable() else repr(name)


def _result(bench, path) -> Result:
    try:
        stats, name = bench["stats"], bench["name"]
        mean, median = _seconds(stats["mean"]), _seconds(stats["median"])
        if not isinstance(name, str):
            raise TypeError(name)
    except (KeyError, TypeError, ValueError, OverflowError):
        raise FastMnistError(f"{path}: a benchmark entry lacks its name or its mean/median times") from None
    for what, value in (("mean", mean), ("median", median)):
        if not (math.isfinite(value) and value >= 0):
            raise FastMnistError(f"{path}: benchmark {_shown(name)}: its {what} time is {value:g} s, not a time")
    for key, kind, what in (("extra_info", dict, "a JSON object"), ("params", dict, "a JSON object"),
                            ("group", str, "text"), ("param", str, "text")):
        if bench.get(key) is not None and not isinstance(bench[key], kind):
            raise FastMnistError(f"{path}: benchmark {_shown(name)}: its {key} is not {what}")
    extra = bench.get("extra_info") or {}
    params = bench.get("params") or {}
    backend = extra.get("backend") or params.get("backend_name") or params.get("jit_backend") or "?"
    group = bench.get("group") or name.split("[")[0]
    device = extra.get("device") or ("gpu" if group.rstrip("/").endswith("gpu") else "cpu")
    if not isinstance(backend, str) or not isinstance(device, str):
        raise FastMnistError(f"{path}: benchmark {_shown(name)}: its backend and device are not text")
    return Result(group, name.split("[")[0], _without_backend(bench.get("param") or "", backend), backend, device,
                  mean, median, extra)


def _seconds(value) -> float:
    """A time as JSON gives it: a number (not a bool, not text); TypeError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(value)
    return float(value)


def _without_backend(param: str, backend: str) -> str:
    """The id's components without the backend's: 'numba-cpu-float32-b100' -> 'float32-b100'."""
    return f"-{param}-".replace(f"-{backend}-", "-", 1).strip("-")


def _describe_machine(doc: dict) -> str:
    m = doc.get("machine_info") or {}
    cpu = m.get("cpu") or {}
    parts = [doc.get("datetime") or "date unknown"]
    if cpu.get("brand_raw"):
        parts.append(f"{cpu['brand_raw']} ({cpu.get('count', '?')} logical cores)")
    if m.get("node"):
        parts.append(f"host {m['node']}")
    if m.get("python_version"):
        parts.append(f"Python {m['python_version']}")
    if doc.get("version"):
        parts.append(f"pytest-benchmark {doc['version']}")
    return ", ".join(parts) + "."


# -- tables ----------------------------------------------------------------------------------------

def _by_group(results):
    groups = {}
    for r in results:
        groups.setdefault(f"{r.source}: {r.group}" if r.source else r.group, []).append(r)
    return dict(sorted(groups.items(), key=lambda item: (item[1][0].source, item[0])))


def _ordered(rows):
    """{case label: rows} with cases in order of first appearance; within a case the baseline first, then
    the others as found. The label is the parameters, prefixed by the test name where a group has several."""
    several = len({r.test for r in rows}) > 1
    cases = {}
    for r in rows:
        label = r.param or r.test
        if several and r.param:
            label = f"{r.test}[{r.param}]"
        cases.setdefault(label, []).append(r)
    for case_rows in cases.values():
        case_rows.sort(key=lambda r: r.backend != BASELINES.get(r.device))
    return cases


def _speedup(row, case_rows) -> str:
    base = next((r for r in case_rows if r.backend == BASELINES.get(row.device)), None)
    if base is None or row.median <= 0 or base.median <= 0:
        return "–"
    return f"{base.median / row.median:.2f}x"


def _table(rows) -> list[str]:
    extras = [(key, title, fmt) for key, title, fmt in EXTRA_COLUMNS
              if any(isinstance(r.extra.get(key), (int, float)) for r in rows)]
    header = ["case", "backend", "mean", "median", "speed-up", *[title for _, title, _ in extras]]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    for case, case_rows in _ordered(rows).items():
        for i, r in enumerate(case_rows):
            cells = [case if i == 0 else "", r.backend, _time(r.mean), _time(r.median), _speedup(r, case_rows)]
            cells += [_number(r.extra.get(key), fmt) for key, _, fmt in extras]
            out.append("| " + " | ".join(cells) + " |")
    return out


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _number(value, fmt) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) and math.isfinite(value) else ""


# -- charts ----------------------------------------------------------------------------------------

def _headline(results) -> list[tuple[str, Result, float]]:
    """(label, result, speed-up) for every non-baseline backend of the headline groups that has a baseline."""
    out = []
    for group, rows in _by_group(results).items():
        source, group = rows[0].source, rows[0].group
        if not group.startswith(HEADLINE_GROUPS):
            continue
        parts = group.split("/")
        name, suffix = ("time to 98%", f"-{parts[1]}") if parts[0] == "time_to_98" else (parts[1], "")
        name = f"{source}: {name}" if source else name
        for case, case_rows in _ordered(rows).items():
            for r in case_rows:
                base = next((b for b in case_rows if b.backend == BASELINES.get(r.device)), None)
                if base is None or r is base or r.median <= 0 or base.median <= 0:
                    continue
                out.append((f"{name} {case}{suffix}", r, base.median / r.median))
    return out


def _headline_chart(results, png_path: Path) -> str:
    bars = _headline(results)
    if not bars:
        return (f"No chart written to {png_path}: no headline workload "
                f"({', '.join(HEADLINE_GROUPS)}) with its baseline; --detail draws every group.")
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return f"No chart written to {png_path}: matplotlib is not installed (pip install 'fastmnist[plots]')."
    backends = list(dict.fromkeys(r.backend for _, r, _ in bars))
    colours = {b: f"C{(i + 1) % 10}" for i, b in enumerate(backends)}
    fig = Figure(figsize=(7.5, 1.2 + 0.26 * len(bars)), layout="constrained")
    ax = fig.subplots()
    for y, (label, r, speedup) in enumerate(bars):
        ax.barh(y, speedup, color=colours[r.backend], label=r.backend)
        ax.text(speedup, y, f" {speedup:.2f}x", va="center", fontsize=7)
    ax.set_yticks(range(len(bars)), [label for label, _, _ in bars], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlim(right=max(s for _, _, s in bars) * 3)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    devices = sorted({r.device for _, r, _ in bars})
    ax.set_xlabel("speed-up against " + " / ".join(f"{BASELINES[d]} ({d.upper()})" for d in devices)
                  + " (log scale)", fontsize=8)
    handles = {}
    for handle, label in zip(*ax.get_legend_handles_labels()):
        handles.setdefault(label, handle)
    ax.legend(handles.values(), handles.keys(), fontsize=7, loc="lower right")
    return f"Chart written to {save_figure(fig, png_path, dpi=100)}."


def _chart(results, png_path: Path) -> str:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return f"No chart written to {png_path}: matplotlib is not installed (pip install 'fastmnist[plots]')."
    if not results:
        return f"No chart written to {png_path}: the file holds no benchmarks."
    groups = _by_group(results)
    heights = [0.8 + 0.22 * len(rows) for rows in groups.values()]
    fig = Figure(figsize=(11, sum(heights) + 0.5), layout="constrained")
    axes = fig.subplots(len(groups), 1, squeeze=False, height_ratios=heights)[:, 0]
    backends = sorted(dict.fromkeys(r.backend for r in results), key=lambda b: b not in BASELINES.values())
    colours = {b: f"C{i % 10}" for i, b in enumerate(backends)}
    for ax, (group, rows) in zip(axes, groups.items()):
        labels, y = [], 0
        for case, case_rows in _ordered(rows).items():
            for r in case_rows:
                ax.barh(y, r.median, color=colours[r.backend], label=r.backend)
                y += 1
            labels.append((y - (len(case_rows) + 1) / 2, case))
        ax.set_yticks([pos for pos, _ in labels], [text for _, text in labels], fontsize=7)
        ax.invert_yaxis()
        positive = [r.median for r in rows if r.median > 0]
        if positive:
            ax.set_xscale("log")
            ax.set_xlim(left=10 ** math.floor(math.log10(min(positive))))
        ax.set_title(group, fontsize=9, loc="left")
        ax.set_xlabel("median time per call (s)", fontsize=8)
        handles = {}
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
        ax.legend(handles.values(), handles.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return f"Chart written to {save_figure(fig, png_path, dpi=90)}."
