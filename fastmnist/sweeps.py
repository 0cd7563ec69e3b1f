"""Many trainings at once on a Dask cluster (a local one by default), each result kept as it finishes."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import dispatch
from .data import DATASETS
from .errors import RecipeError, SweepError
from .files import check_writable, os_reason
from .reading import NotARegularFile, check_regular
from .scheduler_check import check_scheduler
from .setting_targets import setting_targets
from .recipes import Recipe
from .sweep_results import append_record, check_same_sweep, drop_torn_tail, read_results, table
from .training import check_dtype, make_recipe

__all__ = ["sweep", "expand_grid", "config_key", "read_results", "table", "run_one"]


# One worker per core, so each worker's BLAS, OpenMP and Numba pools get one thread: no oversubscription.
SINGLE_THREADED = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                          "NUMBA_NUM_THREADS")}


def expand_grid(grid) -> list[dict]:
    """{"a": [1, 2], "b": [3]} -> [{"a": 1, "b": 3}, {"a": 2, "b": 3}]; a list of dicts is taken as it is.
    An axis may be a list, tuple, range or NumPy array; NumPy scalars become Python numbers."""
    if isinstance(grid, dict):
        keys = list(grid)
        values = [_axis(v) for v in grid.values()]
        return [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    if isinstance(grid, (list, tuple)) and all(isinstance(c, dict) for c in grid):
        return [{k: _plain(v) for k, v in c.items()} for c in grid]
    raise RecipeError("grid must be a dict of lists or a list of override dicts")


def _axis(values) -> list:
    if isinstance(values, np.ndarray):
        values = values.tolist() if values.ndim else [values.item()]
    if not isinstance(values, (list, tuple, range)):
        values = [values]
    return [_plain(v) for v in values]


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def config_key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def sweep_settings(base: Recipe, backend: str, dtype: str, dataset: str) -> dict:
    """What a sweep is, apart from its grid; every record carries it."""
    return {"preset": base.name, "iterations": base.iterations, "seed": base.seed, "backend": backend,
            "dtype": dtype, "dataset": dataset, "preset_recipe": _digest(base.to_json())}


def plan_runs(base: Recipe, configs: list[dict], settings: dict, iterations=None, seed=None) -> list[tuple]:
    """(record header, recipe) for each distinct run of the grid, every recipe checked; the header names
    the configuration, the sweep and the run (a digest of what it trains, however the grid spells it)."""
    runs, seen = [], set()
    for config in configs:
        for name, value in (("iterations", iterations), ("seed", seed)):
            given = value is not None and next((key for key in config if setting_targets(base, key)
                                                & setting_targets(base, name)), None)
            if given:
                raise RecipeError(f"{name} is set twice: by {name}= and by the grid"
                                  + (f" as {given}" if given != name else ""))
        recipe = make_recipe(base, **config)
        what = json.loads(recipe.to_json())
        run = _digest(json.dumps({"recipe": what, "backend": settings["backend"], "dtype": settings["dtype"],
                                  "dataset": settings["dataset"]}, sort_keys=True))
        if run not in seen:
            seen.add(run)
            runs.append(({"config": config, "key": config_key(config), "run": run, "sweep": settings,
                          "recipe": what}, recipe))
    return runs


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_one(header: dict, recipe: Recipe, backend: str, dtype: str, dataset: str) -> dict:
    """Train one configuration; any failure becomes part of the record instead of an exception."""
    from .training import train

    record = {**header, "host": socket.gethostname(), "pid": os.getpid(), "threads": _threads()}
    start = time.perf_counter()
    try:
        result = train(recipe, backend=backend, dtype=dtype, progress=False, dataset=dataset)
        record.update(status="ok", metrics=result.final, history=result.history, backend=result.backend,
                      timings=result.timings)
    except Exception as exc:  # noqa: BLE001  (recorded, so that one bad configuration does not stop the sweep)
        record.update(status="error", error=f"{type(exc).__name__}: {exc}", backend=backend)
    record["time_s"] = time.perf_counter() - start
    return record


def _threads() -> dict:
    import numba
    from threadpoolctl import threadpool_info
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    return {"numba": numba.get_num_threads(), "blas": max(blas, default=1)}


def sweep(preset="branchnet", grid=None, backend="auto", iterations=None, client=None, out="sweep.jsonl", *,
          dtype="float32", seed=None, resume=False, progress=True, dataset="mnist") -> list[dict]:
    """Run one training per configuration of `grid` and return their records (also appended to `out`).

    With no `client` a LocalCluster with one single-threaded worker process per core runs them and is
    closed at the end; `client` may be a dask.distributed Client or a scheduler address. With `resume`,
    the runs already recorded in `out` are skipped; `out` must hold runs of this same sweep (preset,
    iterations, seed, backend, dtype, dataset). Every setting is checked before any cluster starts.
    """
    base = make_recipe(preset, iterations, seed)
    dtype = check_dtype(dtype)
    dispatch.check_known(backend)     # known by name: whether it can run is for the workers to say
    if dataset not in DATASETS:
        raise RecipeError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    settings = sweep_settings(base, backend, dtype, dataset)
    runs = plan_runs(base, expand_grid(grid or [{}]), settings, iterations, seed)
    out = Path(out)
    _check_results_file(out)
    if not resume and out.exists():
        raise SweepError(f"{out} exists: pass resume=True (--resume) to continue it, or choose another file")
    check_writable(out)
    done = set()
    if resume:
        records = read_results(out)
        check_same_sweep(out, records, settings)
        done = {r["run"] for r in records}
        try:
            torn = drop_torn_tail(out)
        except OSError as exc:
            raise SweepError(f"cannot write {out}: {os_reason(exc)}") from None
        if torn:
            tqdm.write(f"fastmnist: {out}: dropped a half-written last line; its run is done again", file=sys.stderr)
    todo = [(header, recipe) for header, recipe in runs if header["run"] not in done]
    if not todo:
        return []

    from dask.distributed import as_completed

    client, own = _connect(client)
    records, interrupted = [], False
    try:
        futures = [client.submit(run_one, header, recipe, backend, dtype, dataset, pure=False)
                   for header, recipe in todo]
        with open(out, "ab", buffering=0) as f, \
                tqdm(total=len(futures), desc="sweep", unit="run", disable=not progress) as bar:
            for future in as_completed(futures):
                record = future.result()
                try:
                    append_record(f, record)
                except OSError as exc:      # a full disk: every record before this one is kept whole
                    interrupted = True
                    raise SweepError(f"cannot write {out}: {os_reason(exc)}; the {len(read_results(out))} "
                                     f"finished runs are kept in it: make room and run the same command with "
                                     f"--resume to run the rest") from None
                records.append(record)
                bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        # after Ctrl-C the runs in flight are abandoned: what Dask logs about them while it closes would
        # only bury the one line the caller prints
        with _logs_silenced("distributed", interrupted):
            for closable in own:
                closable.close()
    return records


def _check_results_file(out: Path) -> None:
    """Results go to a regular file: a FIFO would block the reading of --resume, /dev/null cannot be synced."""
    try:
        check_regular(out)
    except NotARegularFile as exc:
        raise SweepError(f"{out} is {exc.kind}, not a regular file: sweep results are kept in a regular file; "
                         f"choose another --out") from None


# how long to try to reach a scheduler given by address before saying it cannot be reached
CONNECT_TIMEOUT_S = 10


def _connect(client):
    """(a Client, [what this sweep made and must close]) for `client`: None (a LocalCluster of single-threaded
    worker processes), a scheduler address, or a Client."""
    from dask.distributed import Client, LocalCluster

    if client is None:
        # The worker processes inherit the ignored Ctrl-C: it ends the sweep here rather than each worker with
        # a traceback. Their own logs are not shown: a run that fails raises its error here, in the sweep, and
        # what a worker logs otherwise is about its scheduler going away as the sweep ends (after Ctrl-C, a
        # worker whose heartbeat meets the closed scheduler logs an error with a traceback, which would bury
        # the one line the sweep prints). No dashboard, and the scheduler's HTTP server on any free local port
        # rather than a busy 8787.
        with _ctrl_c_ignored():
            cluster = LocalCluster(n_workers=os.cpu_count() or 1, threads_per_worker=1, processes=True,
                                   dashboard_address=None, env=SINGLE_THREADED, silence_logs=logging.CRITICAL,
                                   scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})
        client = Client(cluster)
        return client, [client, cluster]
    if isinstance(client, str):
        check_scheduler(client, CONNECT_TIMEOUT_S)      # a server that is not a Dask scheduler would hang Dask
        try:
            client = Client(client, timeout=CONNECT_TIMEOUT_S)
        except (OSError, ValueError, TypeError, MemoryError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise SweepError(f"cannot reach the Dask scheduler at {client!r}: {reason}") from None
        return client, [client]
    return client, []


@contextmanager
def _ctrl_c_ignored():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _logs_silenced(name: str, silenced: bool):
    logger = logging.getLogger(name)
    level = logger.level
    if silenced:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
