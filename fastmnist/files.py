"""Writing a file so that readers see the old version or the new one, never a part-written one."""

from __future__ import annotations

import os
import stat
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
    tmp = one_write_name(path, "tmp")
    old = _regular_file_status(path)
    try:
        # a new file gets the umask's permissions, like any file the user makes; one that replaces a file
        # gets that file's (a chmod 600 model stays private), and is private until it has them
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     0o666 if old is None else 0o600)
        with open(fd, "wb") as f:
            if old is not None:
                _take_mode_and_owner(fd, old)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    sync_directory(path.parent)


def _regular_file_status(path: Path):
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status if stat.S_ISREG(status.st_mode) else None


def _take_mode_and_owner(fd: int, old: os.stat_result) -> None:
    """The permission bits of the file being replaced, and its owner and group where this process may set
    them (a file root saves over stays its owner's)."""
    try:
        if hasattr(os, "fchown") and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            os.fchown(fd, old.st_uid, old.st_gid)
    except OSError:
        pass
    try:
        os.fchmod(fd, stat.S_IMODE(old.st_mode) & 0o777)    # after fchown, which may clear some bits
    except (OSError, AttributeError):       # a file system without Unix permissions keeps what it has
        pass


def one_write_name(path: Path, kind: str) -> Path:
    """A hidden name beside `path` for one write ('.NAME.<pid>.<hex>.<kind>'), unique to the call. NAME is
    cut short where the whole would pass the file system's limit on a name, so that any name the system
    takes for `path` itself can be written."""
    tag = f".{os.getpid()}.{uuid.uuid4().hex}.{kind}"
    room = _longest_name(path.parent) - len(tag) - 1
    name = os.fsencode(path.name)
    if len(name) > room:
        name = name[:max(room, 1)]
    return path.with_name(f".{os.fsdecode(name)}{tag}")


def _longest_name(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


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
        probe = one_write_name(path, "probe")
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
