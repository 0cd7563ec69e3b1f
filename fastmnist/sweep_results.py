"""A sweep's results file: one JSON record per finished run, each appended whole and flushed to disk.

Every record says which sweep it belongs to (`sweep`: preset, iterations, seed, backend, dtype, dataset and
the preset's recipe) and which run it is (`run`: a digest of the run's full recipe, backend, dtype and
dataset), so that resuming skips exactly the runs already done and refuses another sweep's file. A last line
cut off mid-write (a machine that lost power) is not a record: reading skips it and appending drops it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .checks import shown
from .errors import SweepError
from .files import os_reason
from .reading import open_regular

REQUIRED = ("key", "status")


def read_results(path) -> list[dict]:
    """The records of a results file (none if it does not exist)."""
    return _read(Path(path))[0]


def _read(path: Path) -> tuple[list[dict], int]:
    """(records, bytes of the file up to the end of its last whole record)."""
    if not path.exists():
        return [], 0
    try:
        with open_regular(path) as f:        # never a FIFO (it would block) or a device
            raw = f.read()
    except OSError as exc:
        raise SweepError(f"{path}: cannot be read ({os_reason(exc)})") from None
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise SweepError(f"{path}: not a sweep results file (not text)") from None
    records, whole = [], len(raw)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        last = number == len(lines)         # a line not ended by a newline: maybe cut off mid-write
        try:
            record = json.loads(line)
        except RecursionError:
            raise SweepError(f"{path}: line {number} is nested too deeply to be a sweep record") from None
        except json.JSONDecodeError:
            if last:
                whole = len(raw) - len(line.encode("utf-8"))
                break
            raise SweepError(f"{path}: line {number} is not JSON (not a sweep results file?)") from None
        if not isinstance(record, dict) or any(key not in record for key in REQUIRED):
            raise SweepError(f"{path}: line {number} is not a sweep record (no {' or '.join(REQUIRED)})")
        records.append(record)
    return records, whole


def drop_torn_tail(path: Path) -> bool:
    """Cuts a half-written last line off `path` and ends it with a newline, ready for appending; True if a
    line was cut off."""
    if not path.exists():
        return False
    _, whole = _read(path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        if whole < size:
            f.truncate(whole)
        if whole:
            f.seek(whole - 1)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
    return whole < size


def append_record(f, record: dict) -> None:
    """Writes one record as one line of the unbuffered binary file `f` (opened with buffering=0) and waits
    until it is on disk. Should that fail (a full disk), the part of the line written is cut off again, so
    that the file still ends with a whole record, and the OSError is raised."""
    line = memoryview((json.dumps(record, default=float) + "\n").encode("utf-8"))
    end = f.seek(0, os.SEEK_END)
    try:
        while line:
            line = line[f.write(line):]        # an unbuffered write may write part of what it is given
        os.fsync(f.fileno())
    except OSError:
        try:
            f.truncate(end)
        except OSError:
            pass
        raise


def check_same_sweep(path: Path, records: list[dict], settings: dict) -> None:
    """Raises SweepError unless every record belongs to the sweep `settings` describe."""
    for record in records:
        theirs = record.get("sweep")
        if not isinstance(theirs, dict) or "run" not in record:
            raise SweepError(f"{path}: its records do not say which sweep they belong to (written by an older "
                             f"fastmnist); --resume continues only the same sweep: choose another --out")
        for name, value in settings.items():
            if theirs.get(name) != value:
                what = ("its preset's settings differ from this sweep's" if name == "preset_recipe" else
                        f"its {name} is {shown(theirs.get(name))}, this sweep's is {shown(value)}")
                raise SweepError(f"{path} holds another sweep: {what}; --resume continues only the same sweep: "
                                 f"choose another --out")


def table(records: list[dict]) -> str:
    """The records as a text table, best validation (or test) accuracy first."""
    def score(r):
        m = r.get("metrics") or {}
        return m.get("val_acc", m.get("test_acc", -1.0))

    lines = [f"{'val_acc':>8} {'test_acc':>8} {'time_s':>7}  configuration"]
    for r in sorted(records, key=score, reverse=True):
        m = r.get("metrics") or {}
        time_s = r.get("time_s", float("nan"))
        if r["status"] == "ok":
            val = f"{m['val_acc']:.4f}" if "val_acc" in m else "-"
            lines.append(f"{val:>8} {m.get('test_acc', 0):>8.4f} {time_s:>7.1f}  {r['key']}")
        else:
            lines.append(f"{'failed':>8} {'':>8} {time_s:>7.1f}  {r['key']}  {r.get('error', '')}")
    return "\n".join(lines)
