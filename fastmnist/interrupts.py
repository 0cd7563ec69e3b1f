"""Ctrl-C during training: the first asks the loop to stop after the iteration it is in, so that the work
done so far is kept whole; a second interrupts at once, as Ctrl-C always does."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

from tqdm.auto import tqdm


class StopRequest:
    requested: bool = False


@contextmanager
def ctrl_c_stops_after_the_iteration():
    """Yields a StopRequest whose `requested` the first Ctrl-C sets. Only Python's own Ctrl-C handler in the
    main thread is replaced: elsewhere (other threads, a program with its own handler) nothing changes."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield request
        return

    def first_then_at_once(signum, frame):
        if request.requested:
            raise KeyboardInterrupt
        request.requested = True
        tqdm.write("fastmnist: stopping after this iteration to keep the model trained so far "
                   "(Ctrl-C again stops at once)", file=sys.stderr)

    signal.signal(signal.SIGINT, first_then_at_once)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
