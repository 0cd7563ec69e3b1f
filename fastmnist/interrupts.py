"""The signals that ask a process to end, and what fastmnist does with them.

Ctrl-C (SIGINT), SIGTERM (what kill, timeout, systemd, docker and batch schedulers send), SIGHUP (the
terminal went away), SIGXCPU (a CPU-time limit was reached) and a reader of the output that went away (a
broken pipe, taken as SIGPIPE) all mean "stop". During training the first asks the loop to stop after the
iteration it is in, so that the work done so far is kept whole; a second stops at once.

Python raises KeyboardInterrupt on Ctrl-C. The command line makes the others raise `Terminated`, a
KeyboardInterrupt too (`termination_signals_raise`), so that everything that handles Ctrl-C handles them
alike; the process then exits with 128 + the signal's number, as a shell reports a process it ended.
A real SIGPIPE stays ignored, as Python sets it, so that sockets report a closed peer as an error: only a
broken pipe on the standard streams counts (fastmnist.stdio calls `deliver(SIGPIPE)`).

This module imports only the standard library: fastmnist/__init__.py uses it before its slow imports.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

TERMINATING = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGXCPU")
                    if hasattr(signal, name))
SIGPIPE = getattr(signal, "SIGPIPE", 13)


class Terminated(KeyboardInterrupt):
    """A signal other than SIGINT that asks the process to end, raised where Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(cause(signum))
        self.signum = signum


def signal_number(exc: BaseException) -> int:
    """The signal a KeyboardInterrupt stands for: its `signum`, or SIGINT (Ctrl-C)."""
    return getattr(exc, "signum", None) or signal.SIGINT


def exit_status(exc: BaseException) -> int:
    """128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM, 141 for a broken pipe."""
    return 128 + signal_number(exc)


def cause(signum: int) -> str:
    """'interrupted', 'terminated by SIGTERM', 'the reader of the output went away (SIGPIPE)'."""
    if signum == signal.SIGINT:
        return "interrupted"
    if signum == SIGPIPE:
        return "the reader of the output went away (SIGPIPE)"
    return f"terminated by {_name(signum)}"


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# -- while the package imports ------------------------------------------------------------------------

def _exit_quietly(signum, frame):
    # At once, not by an exception: an exception raised in the middle of an import can come out as another
    # (numpy's C code turns one in a module it imports into an ImportError). Nothing is written yet to flush.
    try:
        os.write(2, f"fastmnist: {cause(signum)}\n".encode())
    except OSError:
        pass
    os._exit(128 + signum)


def exit_quietly_until_ready() -> None:
    """Until the command line takes over, Ctrl-C or a termination signal ends the process with one line and
    128 + the signal's number instead of a traceback from whatever was being imported. A signal that is
    ignored (SIGHUP under nohup, SIGINT in a background job) stays ignored."""
    if not _in_main_thread():
        return
    for signum in TERMINATING:
        if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(signum, _exit_quietly)


# -- the command line ----------------------------------------------------------------------------------

def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextmanager
def termination_signals_raise():
    """Within the block SIGTERM, SIGHUP and SIGXCPU raise Terminated in the main thread, as Ctrl-C raises
    KeyboardInterrupt (which it does again if exit_quietly_until_ready had changed it). Signals that are
    ignored or have a handler of the program's own are left alone; elsewhere than the main thread nothing
    changes."""
    if not _in_main_thread():
        yield
        return
    previous = {}
    for signum in TERMINATING:
        handler = signal.getsignal(signum)
        if handler is _exit_quietly or (handler is signal.SIG_DFL and signum != signal.SIGINT):
            previous[signum] = signal.signal(
                signum, signal.default_int_handler if signum == signal.SIGINT else _raise_terminated)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# -- training ------------------------------------------------------------------------------------------

class StopRequest:
    requested: bool = False
    signum: int | None = None        # the signal that asked to stop


# the handlers of the training loops in progress in the main thread, innermost last
_loops: list = []


@contextmanager
def stop_after_the_iteration():
    """Yields a StopRequest whose `requested` (and `signum`) the first stopping signal sets; a second raises
    at once. Only Python's own Ctrl-C handler, and the handlers termination_signals_raise installs, are
    replaced, in the main thread: elsewhere (other threads, a program with its own handlers) nothing
    changes."""
    request = StopRequest()
    if not _in_main_thread():
        yield request
        return

    def first_then_at_once(signum, frame):
        if request.requested:
            if signum == getattr(signal, "SIGXCPU", None):
                return      # the kernel repeats it every second of CPU time until the hard limit's SIGKILL
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)
        request.requested, request.signum = True, signum
        again = {signal.SIGINT: "Ctrl-C again stops at once", SIGPIPE: ""}.get(
            signum, f"a second {_name(signum)} stops at once")
        notice(f"fastmnist: {cause(signum)}: stopping after this iteration to keep the model trained so far"
               + (f" ({again})" if again else ""))

    taken = {}
    for signum in TERMINATING:
        handler = signal.getsignal(signum)
        if handler is _raise_terminated or (signum == signal.SIGINT and handler is signal.default_int_handler):
            taken[signum] = signal.signal(signum, first_then_at_once)
    _loops.append(first_then_at_once)
    try:
        yield request
    finally:
        _loops.remove(first_then_at_once)
        for signum, handler in taken.items():
            signal.signal(signum, handler)


ctrl_c_stops_after_the_iteration = stop_after_the_iteration      # its name before it took other signals


def deliver(signum: int) -> None:
    """Acts in the main thread as if `signum` had arrived: a training loop in progress stops after its
    iteration (a second time, at once); with none, Terminated is raised here."""
    if _loops:
        _loops[-1](signum, None)
    else:
        raise Terminated(signum)


@contextmanager
def signals_held():
    """Within the block a stopping signal waits (a model being saved is saved whole); the first that came is
    raised when it ends."""
    if not _in_main_thread():
        yield
        return
    came = []
    previous = {}
    for signum in TERMINATING:
        handler = signal.getsignal(signum)
        if callable(handler):
            previous[signum] = signal.signal(signum, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if came:
        previous[came[0]](came[0], None)


def notice(text: str) -> None:
    """One line to stderr, clear of any progress bar; never fails (stderr may be closed or gone, or in the
    middle of a write this call interrupts)."""
    if sys.stderr is None:
        return
    try:
        from tqdm.auto import tqdm
        tqdm.write(text, file=sys.stderr)
    except Exception:  # noqa: BLE001 - a notice must never fail: stderr may be closed or mid-write
        pass
