"""Reading the files a user names: regular files only, and never more than the reader expects.

A FIFO, a device or a socket is refused before anything is read from it (reading a FIFO would wait for a
writer, /dev/zero never ends). Sizes written inside a file (an .npy header's shape, a zip member's length)
are checked against what the reader expects before any memory is set aside for them, so a small file that
claims or inflates to gigabytes is refused instead of filling the memory.
"""

from __future__ import annotations

import io
import math
import os
import stat

import numpy as np

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class NotARegularFile(OSError):
    """`path` exists but is not a regular file (os_reason shows it as "not a regular file (a FIFO): 'path'")."""

    def __init__(self, path, kind: str):
        super().__init__(0, f"not a regular file ({kind})", str(path))
        self.kind = kind


def kind_of(mode: int) -> str:
    """'a regular file', 'a FIFO', 'a character device', ... for an st_mode."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def check_regular(path) -> None:
    """Raises NotARegularFile if `path` exists (following links) and is anything but a regular file; a path
    that does not exist, or cannot be looked at, is left to whatever opens it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise NotARegularFile(path, kind_of(mode))


def open_regular(path):
    """`path` opened for reading in binary, or NotARegularFile; opened without blocking, so that a FIFO is
    refused at once rather than waited on, and checked on the open file itself, so that a file swapped for
    a FIFO after a check is refused too."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(path, kind_of(mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_exactly(f, n: int, into: memoryview | None = None) -> memoryview:
    """`n` bytes of the binary stream `f` (into `into` if given), or EOFError if it ends before; never asks
    `f` for more than `n`."""
    view = into if into is not None else memoryview(bytearray(n))
    done = 0
    while done < n:
        got = f.readinto(view[done:n])
        if not got:
            raise EOFError(f"ended after {done} of {n} bytes")
        done += got
    return view[:n]


class NpyError(ValueError):
    """An .npy stream that is not one, or whose header does not fit what the reader expects."""


def read_npy(f, size: int, *, max_bytes: int, expected_shape=None, kinds: str = "biufc") -> np.ndarray:
    """The array in the .npy stream `f`, which holds `size` bytes (a zip member's stated length).

    The header is read first and checked (no object dtype, a dtype of one of `kinds`, the shape
    `expected_shape` when given, at most `max_bytes` of data, and exactly `size` bytes in all) before any
    memory is set aside for the data; then exactly the data's bytes are read, never more."""
    prefix = f.read(min(size, 1 << 16))
    head = io.BytesIO(prefix)
    try:
        version = np.lib.format.read_magic(head)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0,
                  (3, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            raise NpyError(f"unsupported .npy version {version}")
        shape, fortran, dtype = reader(head, max_header_size=10_000)
    except NpyError:
        raise
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise NpyError(f"not an .npy array ({' '.join(str(exc).split())[:200]})") from None
    if dtype.hasobject or dtype.kind not in kinds or dtype.fields is not None or dtype.subdtype is not None:
        raise NpyError(f"holds {dtype} values")
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
        raise NpyError(f"has shape {tuple(shape)}, expected {tuple(expected_shape)}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise NpyError(f"claims shape {tuple(shape)} of {dtype}: {nbytes:,} bytes, more than the {max_bytes:,} "
                       f"this file may hold")
    header = head.tell()
    if size != header + nbytes:
        raise NpyError(f"is {size:,} bytes long, but its header says {header + nbytes:,}")
    buffer = bytearray(nbytes)
    view = memoryview(buffer)
    have = len(prefix) - header
    view[:have] = prefix[header:]
    try:
        read_exactly(f, nbytes - have, view[have:])
    except EOFError as exc:
        raise NpyError(f"is cut short: {exc}") from None
    array = np.frombuffer(buffer, dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
