"""How long Numba spends compiling while something runs (a training), and a call when it starts compiling.

Used by the training loop to tell a user why nothing happens for a while and to report `compile_s`; it
watches every Numba-compiled kernel, CPU and CUDA, and knows nothing of what is shown to the user.
"""

from __future__ import annotations

import sys
import threading
import time


class CompileWatch:
    """Measures the time Numba spends compiling in this thread while a training runs, and calls `on_start`
    when the first compilation begins, so that a user is told why nothing happens for a while.

    Numba announces a compilation only on a cache miss ("numba:compile" events): loading a kernel from its
    on-disk cache is not counted. Nested compilations (a kernel compiling the functions it calls) count
    once. Nothing is watched when Numba has not been imported (the reference backends never import it)."""

    def __init__(self, on_start=None):
        self.on_start, self.seconds, self.started = on_start, 0.0, False
        self._depth, self._t0, self._thread, self._listener = 0, 0.0, threading.get_ident(), None

    def __enter__(self):
        if "numba" in sys.modules:
            from numba.core import event

            watch = self

            class Listener(event.Listener):
                def on_start(self, ev):
                    watch._begin()

                def on_end(self, ev):
                    watch._end()

            self._listener = Listener()
            event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        if self._listener is not None:
            from numba.core import event
            event.unregister("numba:compile", self._listener)
            self._listener = None

    def _begin(self):
        if threading.get_ident() != self._thread:
            return
        if self._depth == 0:
            self._t0 = time.perf_counter()
            if not self.started:
                self.started = True
                if self.on_start is not None:
                    self.on_start()
        self._depth += 1

    def _end(self):
        if threading.get_ident() != self._thread or self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._t0


__all__ = ["CompileWatch"]
