"""`python -m fastmnist ...`: compare the backends, train, evaluate, list backends, sweep, report benchmarks."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
from pathlib import Path

from . import data, dispatch, interrupts, stdio
from .errors import FastMnistError, OutputError, RecipeError, TrainingDiverged, TrainingInterrupted
from .files import check_writable
from .formatting import count
from .model import load, model_path
from .networks import LAYERS_SYNTAX, mlp, parse_layers, shape_argument
from .recipes import NOTEBOOK_NAMES, PRESETS, Recipe
from .setting_targets import setting_targets
from .training import DTYPES, make_recipe, train


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _setting(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), parse_value(raw.strip(), key.strip())


def _grid_axis(text: str) -> tuple[str, list]:
    key, sep, raw = text.partition("=")
    values = [v.strip() for v in raw.split(",")]
    if not sep or not key.strip() or "" in values:
        raise argparse.ArgumentTypeError(f"expected KEY=V1,V2,..., got {text!r}")
    return key.strip(), [parse_value(v, key.strip()) for v in values]


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 1,2,3, got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {text!r}")
    return seeds


def _names(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",")]
    if "" in names:
        raise argparse.ArgumentTypeError(f"expected backend names like numpy,numba-cpu, got {text!r}")
    return names


def _layers(text: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    try:
        return parse_layers(text)
    except RecipeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# the settings whose values are words (a split, a loss, ...): their values are taken as written, never as
# numbers, True/False or None
TEXT_SETTINGS = frozenset({f.name for f in dataclasses.fields(Recipe) if f.type == "str"} - {"name", "description"}
                          | {"optimizer_kind"})


def parse_value(raw: str, key: str = ""):
    """The value of setting `key` as written on the command line: a word setting's (split, loss, init, ...)
    stays the text it is; any other's is '3' -> 3, '0.5' -> 0.5, 'true' -> True, 'none' -> None, and
    anything else stays a string (for the recipe's checks to refuse with the setting's name)."""
    if key in TEXT_SETTINGS:
        return raw
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastmnist", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("compare", help="train a preset on every backend and print one table against numpy / cupy")
    c.add_argument("--preset", default="fast", help=f"one of {', '.join(PRESETS)} (default fast)")
    c.add_argument("--backends", type=_names, metavar="A,B,...",
                   help="backends to run (default: all; numpy, and cupy on a GPU, always join as baselines)")
    c.add_argument("--seeds", type=_seeds, default=[1, 2, 3], metavar="1,2,3",
                   help="one run per seed on each backend (default 1,2,3); runs after a backend's first are warm")
    c.add_argument("--dtype", default="float32", choices=DTYPES)
    c.add_argument("--iterations", type=_count, help="override the preset's epoch (iteration) count")
    c.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="any recipe setting, as for train (repeatable)")
    c.add_argument("--data", help="directory with the MNIST files (default: $FASTMNIST_DATA, then the cache)")
    c.add_argument("--png", help="also draw test accuracy against wall time here (needs matplotlib)")
    c.add_argument("--json", help="also write the rows and every run to this JSON file")
    c.add_argument("--quiet", action="store_true", help="print only the table, not a line per run")

    t = sub.add_parser("train", help="train a preset and print its metrics")
    t.add_argument("--preset", default="fast", help=f"one of {', '.join(PRESETS)} (default fast)")
    t.add_argument("--backend", default="auto", help="backend name or auto (see `fastmnist backends`)")
    t.add_argument("--iterations", type=_count, help="override the preset's epoch (iteration) count")
    t.add_argument("--dtype", default="float32", choices=DTYPES)
    t.add_argument("--seed", type=_count, help="random seed (default: the preset's, as in its notebook)")
    t.add_argument("--lr", type=float, help="learning rate")
    t.add_argument("--keep-prob", type=float, help="keep probability of every hidden unit (dropout)")
    t.add_argument("--batch-size", type=_count, help="minibatch size (0 = full batch)")
    t.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="any other recipe setting, e.g. --set reg_fact_3=2.0 (repeatable)")
    t.add_argument("--data", help="directory with the MNIST files (default: $FASTMNIST_DATA, then the cache)")
    t.add_argument("--dataset", default="mnist", choices=data.DATASETS)
    t.add_argument("--out", help="save the trained model to this .npz file")
    t.add_argument("--quiet", action="store_true", help="no progress bar and no per-report lines")

    e = sub.add_parser("eval", help="evaluate a saved model on the test (and validation) images")
    e.add_argument("model")
    e.add_argument("--data", help="directory with the MNIST files")
    e.add_argument("--dataset", choices=data.DATASETS, help="the dataset to evaluate on (default: the model's)")
    e.add_argument("--history", action="store_true", help="also print the metrics reported during training")

    sub.add_parser("backends", help="list the backends and whether each can run here")

    w = sub.add_parser("sweep", help="train many configurations in parallel (Dask), results kept as they finish")
    w.add_argument("--preset", default="branchnet")
    w.add_argument("--grid", type=_grid_axis, action="append", default=[], metavar="KEY=V1,V2,...",
                   help="one axis of the grid (repeatable); the sweep runs every combination")
    w.add_argument("--backend", default="auto")
    w.add_argument("--iterations", type=_count)
    w.add_argument("--dtype", default="float32", choices=DTYPES)
    w.add_argument("--seed", type=_count)
    w.add_argument("--dataset", default="mnist", choices=data.DATASETS)
    w.add_argument("--scheduler", help="address of a running Dask scheduler (default: a local cluster)")
    w.add_argument("--out", default="sweep.jsonl", help="results file, one JSON line per finished run")
    w.add_argument("--resume", action="store_true", help="skip the configurations already in --out")

    for command in (c, t, w):
        command.add_argument("--layers", type=_layers, metavar="256,128",
                             help=f"train a network of these hidden layers instead of the preset's (fastmnist.mlp), "
                                  f"the preset giving every other setting: {LAYERS_SYNTAX} (relu by default; "
                                  f"relu, tanh, identity)")

    r = sub.add_parser("bench-report", help="turn pytest-benchmark JSON into a speed-up table")
    r.add_argument("json", nargs="+", metavar="[LABEL@]JSON",
                   help="pytest-benchmark JSON files; with several, each one's bars carry LABEL (default: its folder)")
    r.add_argument("--png", help="also draw the headline workloads' speed-ups here (needs matplotlib)")
    r.add_argument("--detail", action="store_true", help="draw every group's times instead, one panel per group")
    return p


def format_row(row: dict, recipe=None) -> str:
    """One history row in the notebooks' style: I:10 Train-Err:0.198 Train-Acc:0.94 Test-Err:...

    The seed presets keep their notebook's `I:` numbering, so that their lines read as the notebooks print
    them; other epoch-based recipes (`fast`) count epochs from 1 and add the time since train() began."""
    epochs = recipe is not None and recipe.unit == "epoch" and recipe.name not in NOTEBOOK_NAMES
    parts = [f"Epoch {row['iteration'] + 1}" if epochs else f"I:{row['iteration']}"]
    if row.get("train_err") != row["loss"]:
        parts.append(f"J:{row['loss']:.4f}")
    for name in ("train", "val", "test"):
        if f"{name}_acc" in row:
            label = name.capitalize()
            parts.append(f"{label}-Err:{_truncate(row[f'{name}_err'])} {label}-Acc:{round(row[f'{name}_acc'], 4)}")
    if epochs and "elapsed_s" in row:
        parts.append(f"({row['elapsed_s']:.1f} s)")
    return " ".join(parts)


def _truncate(x: float) -> str:
    """Three decimals, cut rather than rounded, as the notebooks' str(err)[0:5] prints them."""
    return f"{math.floor(x * 1000) / 1000:.3f}" if math.isfinite(x) else str(x)


# the train command's flags that set a recipe setting, and the setting each sets
SETTING_FLAGS = {"iterations": "--iterations", "seed": "--seed", "lr": "--lr", "keep_prob": "--keep-prob",
                 "batch_size": "--batch-size"}


# the commands' own arguments, which --set cannot name (they would collide with them)
COMMAND_OWN = {"preset", "backend", "backends", "seeds", "dtype", "data_path", "dataset", "status", "progress",
               "callback"}

# recipe settings a command sets itself, and the option that takes them instead of --set
COMMAND_SETTINGS = {"compare": {"seed": "--seeds"}}


def recipe_settings(args) -> dict:
    """The recipe settings the flags and every --set give, each given once (--batch-size 0: the full batch).

    Two of them that set the same part of the recipe under any names (--lr and --set learning_rate, hidden
    and units_1, --keep-prob and keep_prob_11) are refused as given twice, rather than one silently winning."""
    given = [(key, getattr(args, key, None), flag) for key, flag in SETTING_FLAGS.items()
             if getattr(args, key, None) is not None]
    given = [(key, (value or None) if key == "batch_size" else value, flag) for key, value, flag in given]
    base = PRESETS.get(args.preset)
    own = COMMAND_SETTINGS.get(args.command, {})
    settings, source, targets = {}, {}, {}
    for key, value, flag in given + [(key, value, "--set") for key, value in args.set]:
        if flag == "--set" and key in COMMAND_OWN:
            raise RecipeError(f"--set {key}: not a recipe setting; use {args.command}'s own option for it")
        parts = setting_targets(base, key)
        for name, option in own.items():
            if parts & setting_targets(base, name):
                raise RecipeError(f"--set {key}: {args.command} sets {name} itself; use its {option} option")
        earlier = next((k for k in targets if targets[k] & parts), None)
        if earlier is not None:
            raise RecipeError(f"{earlier} is given twice ({source[earlier]} and {flag}"
                              + (f" as {key}" if key != earlier else "") + ")")
        settings[key], source[key], targets[key] = value, flag, parts
    return settings


def network(args, settings: dict) -> tuple:
    """(what to train, the settings still to apply to it): the preset and `settings`, or with --layers the
    network fastmnist.mlp builds on the preset with `settings` already applied."""
    if args.layers is None:
        return args.preset, settings
    aliases = NOTEBOOK_NAMES.get(args.preset, {})
    for key in settings:
        name = aliases.get(key, key)
        if shape_argument(name):
            spelled = f" as {key}" if name != key else ""
            raise RecipeError(f"{name} is given twice (--layers and --set{spelled})")
    sizes, activations = args.layers
    return mlp(sizes, activations, base=args.preset, **settings), {}


def _cmd_train(args) -> int:
    preset, settings = network(args, recipe_settings(args))
    recipe = make_recipe(preset, **settings)
    out = model_path(args.out) if args.out else None
    if out is not None:
        check_writable(out)
    from tqdm.auto import tqdm

    def show(row):
        if not args.quiet:
            tqdm.write(format_row(row, recipe))

    def status(text):
        if not args.quiet:
            tqdm.write(text, file=sys.stderr)

    try:
        result, interrupted = train(recipe, backend=args.backend, dtype=args.dtype,
                                    progress=not args.quiet and sys.stderr.isatty(), callback=show,
                                    data_path=args.data, dataset=args.dataset, status=status), None
    except TrainingInterrupted as stop:     # Ctrl-C, SIGTERM, ...: the model trained so far is kept
        result, interrupted = stop.result, stop
    saved = None
    if out is not None:     # saved before anything more is printed: an output gone cannot cost the model
        try:
            with interrupts.signals_held():
                saved = keep_model(result.model, out)
        except KeyboardInterrupt as again:      # it waited until the model was saved
            print(f"fastmnist: {interrupts.cause(interrupts.signal_number(again))}; the model is saved in {saved}",
                  file=sys.stderr)
            return interrupts.exit_status(again)
    print(result.summary())
    if saved is not None:
        print(f"saved {saved}")
    if interrupted is not None:
        print(f"fastmnist: {interrupted}" + (f"; the model trained so far is saved in {saved}" if saved else ""),
              file=sys.stderr)
        return interrupts.exit_status(interrupted)
    return 0


def keep_model(model, out: Path) -> Path:
    """Saves `model` to `out`; should that fail, to a new file in the temporary directory, then raises an
    OutputError that says where the model is."""
    return keep_output(model.save, out, f"fastmnist-{model.recipe.name}-", ".npz", "the model")


def keep_output(write, out: Path, prefix: str, suffix: str, what: str = "it") -> Path:
    """write(out), the path written; should it fail, write(a new file in the temporary directory), then an
    OutputError that says where the output is: the work that made it is never thrown away."""
    try:
        return write(out)
    except OutputError as exc:
        fd, rescue = tempfile.mkstemp(prefix=prefix, suffix=suffix)
        os.close(fd)
        try:
            rescue = write(rescue)
        except OutputError as again:
            raise OutputError(f"{exc}; nor could {what} be saved to {rescue}: {again}") from None
        verb = "were" if what.endswith("s") else "was"
        raise OutputError(f"{exc}; {what} {verb} saved to {rescue} instead") from None


def _cmd_eval(args) -> int:
    model = load(args.model)
    meta = model.meta
    trained_on = meta.get("dataset", "mnist")      # files saved before models recorded it are all MNIST's
    dataset = args.dataset or trained_on
    splits = data.load_splits(model.recipe.split, dataset, args.data)
    if dataset != trained_on:
        print(f"fastmnist: note: the model was trained on {trained_on}, evaluated here on {dataset}", file=sys.stderr)
    print(f"{args.model}: recipe {model.recipe.name} ({trained_on}), "
          f"trained on {meta.get('backend', '?')} ({meta.get('dtype', '?')})"
          + (f" for {count(meta['iterations_done'], model.recipe.unit)}" if "iterations_done" in meta else "")
          + (f" in {meta['timings']['train_s']:.1f} s" if "train_s" in meta.get("timings", {}) else ""))
    if args.history:
        rows = meta.get("history")
        if rows is None:
            print("(this file holds no training history: it was saved before fastmnist kept one)")
        for row in rows or []:
            print(format_row(row, model.recipe))
    for name, split in (("val", splits.val), ("test", splits.test)):
        if split is not None:
            print(f"{name} accuracy {model.accuracy(split.images, split.labels):.4f} ({len(split)} images)")
    return 0


def _cmd_backends(args) -> int:
    from .training import planned_path

    infos = dispatch.backends()
    width = max(len(i.name) for i in infos)
    indent = " " * (width + 7)
    for i in infos:
        status = "available" if i.available else f"unavailable: {i.reason}"
        print(f"{i.name:<{width}}  {i.device:<3}  {status}\n{indent}{i.description}")
        if i.available:
            backend = dispatch.get_backend(i.name)
            for name, recipe in PRESETS.items():
                print(f"{indent}  {name:<17} {planned_path(backend, recipe)}")
    print(f"auto -> {dispatch.resolve_name('auto')}")
    return 0


def _cmd_sweep(args) -> int:
    from .sweeps import read_results, sweep, table
    grid = {}
    for key, values in args.grid:
        if key in grid:
            raise RecipeError(f"the grid axis {key} is given twice (--grid)")
        grid[key] = values
    try:
        records = sweep(network(args, {})[0], grid, backend=args.backend, iterations=args.iterations,
                        client=args.scheduler, out=args.out, dtype=args.dtype, seed=args.seed, resume=args.resume,
                        progress=sys.stderr.isatty(), dataset=args.dataset)
    except KeyboardInterrupt as exc:        # Ctrl-C, SIGTERM, ...: every finished run is already on disk
        kept = len(read_results(args.out))
        print(f"fastmnist: {interrupts.cause(interrupts.signal_number(exc))}; the {kept} finished runs are kept "
              f"in {args.out}: run the same command with --resume to run the rest", file=sys.stderr)
        return interrupts.exit_status(exc)
    print(table(read_results(args.out)))
    failed = sum(r["status"] != "ok" for r in records)
    print(f"{len(records)} runs this time, {failed} failed; all results in {args.out}")
    return 1 if records and failed == len(records) else 0


def _cmd_compare(args) -> int:
    from .charts import check_chart
    from .comparison import check_plotting, compare

    # every output is checked before minutes of training, not after
    json_out = Path(args.json) if args.json else None
    if json_out is not None:
        if json_out.is_dir():
            raise OutputError(f"cannot write {json_out}: it is a directory")
        check_writable(json_out)
    png_out = None
    if args.png:
        check_plotting()
        png_out = check_chart(args.png)

    def status(text):
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    preset, overrides = network(args, recipe_settings(args))
    rows = compare(preset, backends=args.backends, seeds=args.seeds, dtype=args.dtype, data_path=args.data,
                   status=status, **overrides)
    # the files first: an output gone away while the table is printed cannot cost them
    written, failed = [], []
    with interrupts.signals_held():
        for what, out, write, suffix in (("rows", json_out, rows.write_json, ".json"),
                                         ("chart", png_out, rows.write_png, ".png")):
            if out is not None:
                try:
                    written.append(f"{what} written to "
                                   f"{keep_output(write, out, 'fastmnist-compare-', suffix, f'the {what}')}")
                except OutputError as exc:
                    failed.append(exc)
    print(rows.table(), end="")
    for line in written:
        print(line)
    for exc in failed:
        print(f"fastmnist: error: {exc}", file=sys.stderr)
    return 2 if failed else 0


def _cmd_bench_report(args) -> int:
    from .bench_report import render
    print(render(args.json, args.png, detail=args.detail))
    return 0


COMMANDS = {"compare": _cmd_compare, "train": _cmd_train, "eval": _cmd_eval, "backends": _cmd_backends,
            "bench-report": _cmd_bench_report, "sweep": _cmd_sweep}


def main(argv=None) -> int:
    with stdio.guarded_streams() as streams, interrupts.termination_signals_raise():
        return streams.final_status(_run(argv))


def _run(argv) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except TrainingDiverged as exc:
        print(f"fastmnist: {exc}", file=sys.stderr)
        return 1
    except FastMnistError as exc:
        print(f"fastmnist: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:    # Ctrl-C, SIGTERM, ... (a reader gone away ends quietly, as SIGPIPE does)
        if interrupts.signal_number(exc) != interrupts.SIGPIPE:
            print(f"fastmnist: {interrupts.cause(interrupts.signal_number(exc))}", file=sys.stderr)
        return interrupts.exit_status(exc)
