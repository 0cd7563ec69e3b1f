"""Many trainings at once on a Dask cluster (a local one by default), each result kept as it finishes."""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from pathlib import Path

from .errors import FastMnistError, RecipeError
from .recipes import Recipe, get_preset


# One worker per core, so each worker's BLAS, OpenMP and Numba pools get one thread: no oversubscription.
SINGLE_THREADED = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                          "NUMBA_NUM_THREADS")}


def expand_grid(grid) -> list[dict]:
    """{"a": [1, 2], "b": [3]} -> [{"a": 1, "b": 3}, {"a": 2, "b": 3}]; a list of dicts is taken as it is."""
    if isinstance(grid, dict):
        keys = list(grid)
        values = [v if isinstance(v, (list, tuple)) else [v] for v in grid.values()]
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    if isinstance(grid, (list, tuple)) and all(isinstance(c, dict) for c in grid):
        return [dict(c) for c in grid]
    raise RecipeError("grid must be a dict of lists or a list of override dicts")


def config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def run_one(preset, config: dict, backend: str, dtype: str, iterations, seed) -> dict:
    """Train one configuration; any failure becomes part of the record instead of an exception."""
    from .training import train

    record = {"config": config, "key": config_key(config), "host": socket.gethostname(), "pid": os.getpid(),
              "threads": _threads()}
    start = time.perf_counter()
    try:
        result = train(preset, backend=backend, dtype=dtype, iterations=iterations, seed=seed, progress=False,
                       **config)
        record.update(status="ok", metrics=result.final, history=result.history, backend=result.backend,
                      timings=result.timings)
    except Exception as exc:  # recorded, so that one bad configuration does not stop the sweep
        record.update(status="error", error=f"{type(exc).__name__}: {exc}", backend=backend)
    record["time_s"] = time.perf_counter() - start
    return record


def _threads() -> dict:
    import numba
    from threadpoolctl import threadpool_info
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    return {"numba": numba.get_num_threads(), "blas": max(blas, default=1)}


def read_results(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise FastMnistError(f"{path}: line {number} is not JSON (not a sweep results file?)") from None
    return records


def sweep(preset="branchnet", grid=None, backend="auto", iterations=None, client=None, out="sweep.jsonl", *,
          dtype="float32", seed=None, resume=False, progress=True) -> list[dict]:
    """Run one training per configuration of `grid` and return their records (also appended to `out`).

    With no `client` a LocalCluster with one single-threaded worker process per core runs them and is
    closed at the end; `client` may be a dask.distributed Client or a scheduler address. With `resume`,
    configurations already recorded in `out` are skipped.
    """
    recipe = preset if isinstance(preset, Recipe) else get_preset(preset)
    configs = expand_grid(grid or [{}])
    for config in configs:  # fail before starting a cluster on a setting no configuration could use
        unknown = [k for k in config if k not in recipe.override_names()]
        if unknown:
            raise RecipeError(f"unknown setting {unknown[0]!r} for recipe {recipe.name!r}")
    out = Path(out)
    done = {r["key"] for r in read_results(out)} if resume else set()
    if not resume and out.exists():
        raise FastMnistError(f"{out} exists: pass resume=True (--resume) to continue it, or choose another file")
    todo = [c for c in configs if config_key(c) not in done]

    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    own_cluster = None
    if client is None:
        own_cluster = LocalCluster(n_workers=os.cpu_count() or 1, threads_per_worker=1, processes=True,
                                   dashboard_address=None, env=SINGLE_THREADED)
        client = Client(own_cluster)
    elif isinstance(client, str):
        client = Client(client)
    records = []
    try:
        futures = [client.submit(run_one, recipe, c, backend, dtype, iterations, seed, pure=False) for c in todo]
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f, tqdm(total=len(futures), desc="sweep", unit="run", disable=not progress) as bar:
            for future in as_completed(futures):
                record = future.result()
                f.write(json.dumps(record, default=float) + "\n")
                f.flush()
                records.append(record)
                bar.update(1)
    finally:
        if own_cluster is not None:
            client.close()
            own_cluster.close()
    return records


def table(records: list[dict]) -> str:
    """The records as a text table, best validation (or test) accuracy first."""
    def score(r):
        m = r.get("metrics") or {}
        return m.get("val_acc", m.get("test_acc", -1.0))

    lines = [f"{'val_acc':>8} {'test_acc':>8} {'time_s':>7}  configuration"]
    for r in sorted(records, key=score, reverse=True):
        m = r.get("metrics") or {}
        if r["status"] == "ok":
            val = f"{m['val_acc']:.4f}" if "val_acc" in m else "-"
            lines.append(f"{val:>8} {m.get('test_acc', 0):>8.4f} {r['time_s']:>7.1f}  {r['key']}")
        else:
            lines.append(f"{'failed':>8} {'':>8} {r['time_s']:>7.1f}  {r['key']}  {r['error']}")
    return "\n".join(lines)
