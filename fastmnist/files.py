"""Writing a file so that readers see the old version or the new one, never a part-written one."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from .errors import OutputError


def write_atomically(path: Path, write) -> None:
    """Calls write(binary file) on a new temporary file beside `path`, then renames it over `path`.

    The temporary file's name is unique to this call, so threads and processes writing the same path at
    once each rename a whole file of their own (the last rename wins). The data reach the disk before the
    rename, so a machine that loses power afterwards has the new file, not an empty one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:      # created with the umask's permissions, like any file the user makes
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Makes a rename in `directory` durable where the system allows it (not on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable(path: Path) -> None:
    """Raises OutputError, before any work is done, unless write_atomically can write `path`: its folder
    exists or can be made and takes new files, and `path` itself is not a folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.probe")
        with open(probe, "xb"):
            pass
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {os_reason(exc)}") from None


def os_reason(exc: OSError) -> str:
    """An OSError in a few words: "Permission denied: 'runs/m.npz'"."""
    if exc.strerror and exc.filename:
        return f"{exc.strerror}: {str(exc.filename)!r}"
    return exc.strerror or str(exc)
