"""The command line's standard streams: closed ones stand in for /dev/null, and writing to them never costs
the work.

A write to stdout or stderr that fails (the reader of a pipe went away, a terminal that hung up, a full
disk behind a redirection, a stream closed with `2>&-`) drops that stream's further output instead of
raising inside training; a reader that went away counts as SIGPIPE (interrupts.deliver): training stops
after its iteration and keeps its model, and the command exits with status 141.

This module imports only the standard library: fastmnist/__init__.py uses it before its slow imports.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from . import interrupts


def run_as_command() -> bool:
    """True in `python -m fastmnist ...` and the `fastmnist` script, where the process is the command's;
    False in any other program, and in the processes a sweep's local cluster spawns (`python -c ...`), which
    inherit the script's sys.argv but not its command line."""
    argv = list(getattr(sys, "orig_argv", []))
    at = 1
    while at < len(argv):       # the interpreter's options, then what it runs
        arg = argv[at]
        if arg == "-m" or arg.startswith("-m"):
            return (argv[at + 1:at + 2] if arg == "-m" else [arg[2:]]) == ["fastmnist"]
        if arg in ("-c", "-") or arg.startswith("-c"):
            return False
        if not arg.startswith("-"):
            return Path(arg).name == "fastmnist"
        at += 2 if arg in ("-X", "-W", "--check-hash-based-pycs") else 1
    return False


def reopen_closed_descriptors() -> None:
    """Points each of file descriptors 0, 1 and 2 that is closed at /dev/null: a file opened later (a model
    being saved, a results file) would otherwise take its number, and anything written to stderr, by Python
    or by a library's C code, would land in that file."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        try:
            null = os.open(os.devnull, os.O_RDWR)
        except OSError:
            return
        if null != fd:
            os.dup2(null, fd)
            os.close(null)


class GuardedStream:
    """A text stream whose writes cannot fail: the first failure sends its further output nowhere (and
    points its file descriptor at /dev/null, so that Python's final flush cannot fail either) and is kept
    in `error`. A reader that went away (EPIPE) is delivered as SIGPIPE in the main thread."""

    def __init__(self, stream, line_flush: bool):
        self._stream, self._original, self._line_flush, self.error = stream, stream, line_flush, None

    def write(self, text: str) -> int:
        stream = self._stream
        if stream is not None:
            try:
                stream.write(text)
                if self._line_flush and "\n" in text:
                    stream.flush()      # a line a pipe's reader is waiting for, or never reads, is known now
            except (OSError, ValueError) as exc:        # ValueError: the stream was closed
                self._failed(exc)
        return len(text)

    def flush(self) -> None:
        if self._stream is not None:
            try:
                self._stream.flush()
            except (OSError, ValueError) as exc:
                self._failed(exc)

    def isatty(self) -> bool:
        try:
            return self._stream is not None and self._stream.isatty()
        except (OSError, ValueError):
            return False

    @property
    def reader_gone(self) -> bool:
        return isinstance(self.error, OSError) and self.error.errno in (errno.EPIPE,)

    def _failed(self, exc: Exception) -> None:
        stream, self._stream, self.error = self._stream, None, exc
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, stream.fileno())
            finally:
                os.close(null)
        except (OSError, ValueError, AttributeError):
            pass
        if self.reader_gone and threading.current_thread() is threading.main_thread():
            interrupts.deliver(interrupts.SIGPIPE)

    def __getattr__(self, name):        # encoding, fileno, ... of the stream it guards
        return getattr(self._original, name)


class Streams:
    """The guarded stdout and stderr of one command."""

    def __init__(self, stdout: GuardedStream, stderr: GuardedStream):
        self.stdout, self.stderr = stdout, stderr

    def final_status(self, status: int) -> int:
        """`status`, or 141 when a reader of the output went away, or 1 (said on stderr) when stdout could
        not be written for another reason, once the output is flushed."""
        try:
            self.stdout.flush()
        except KeyboardInterrupt:       # the reader went away at the last flush: said by the status below
            pass
        if status != 0:
            return status
        if self.stdout.reader_gone or self.stderr.reader_gone:
            return 128 + interrupts.SIGPIPE
        if self.stdout.error is not None:
            print(f"fastmnist: error: the output could not be written: {_reason(self.stdout.error)}",
                  file=sys.stderr)
            return 1
        return status


def _reason(exc: Exception) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__


@contextmanager
def guarded_streams():
    """sys.stdout and sys.stderr replaced by GuardedStreams within the block (a closed one by /dev/null);
    yields their Streams."""
    saved = sys.stdout, sys.stderr
    opened = []

    def usable(stream):
        if stream is None:
            stream = open(os.devnull, "w")
            opened.append(stream)
        return stream

    streams = Streams(GuardedStream(usable(sys.stdout), line_flush=True),
                      GuardedStream(usable(sys.stderr), line_flush=False))
    sys.stdout, sys.stderr = streams.stdout, streams.stderr
    try:
        yield streams
    finally:
        sys.stdout, sys.stderr = saved
        for stream in opened:
            stream.close()
