"""Test accuracy against wall time for the `fast` preset, one line per run, one colour per backend.

    python bench/plot_time_to_target.py OUT.png RESULTS...

RESULTS are pytest-benchmark JSON files holding bench_time_to_target.py's runs and/or JSON files that
bench/gpu_train.py wrote (one run each, with its history); NOTE@PATH adds " (NOTE)" to the backend names
of PATH's runs (e.g. runs made with other recipe settings). Needs matplotlib (pip install '.[plots]').
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def curves(paths):
    """{backend: [[(seconds, test accuracy), ...] per run]}."""
    out = defaultdict(list)
    for arg in paths:
        note, _, path = arg.rpartition("@")
        suffix = f" ({note})" if note else ""
        with open(path) as f:
            doc = json.load(f)
        if "benchmarks" in doc:
            for bench in doc["benchmarks"]:
                info = bench.get("extra_info", {})
                out[info.get("backend", bench["name"]) + suffix].extend(info.get("curves", []))
        elif "history" in doc:
            out[doc["backend"] + suffix].append([(row["elapsed_s"], row["test_acc"]) for row in doc["history"]])
    return out


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (backend, runs) in zip(colours, sorted(curves(argv[2:]).items())):
        for n, run in enumerate(runs):
            t, acc = zip(*run)
            ax.plot(t, acc, marker="o", color=colour, alpha=0.85, label=backend if n == 0 else None)
    ax.axhline(0.98, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("wall time from the train() call (s, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.95, 0.99)
    ax.set_title("fast preset: test accuracy after each epoch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(argv[1], dpi=120)


if __name__ == "__main__":
    main(sys.argv)
