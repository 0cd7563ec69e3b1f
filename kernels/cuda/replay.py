"""Replaying a captured training step: the per-step values a step reads on the device, and CUDA graphs.

A fused step launches a few dozen kernels and library calls; from Python each launch costs tens of
microseconds on the host, more than most of these kernels run. So the numba-cuda backends capture one
step into a CUDA graph and replay it. A graph replays its kernels with the arguments they were captured
with, so everything that changes from step to step (dropout keys, the optimiser's step-dependent scales
and learning rate, the scheduled L2 coefficients) is read by the kernels from one device buffer, which a
single asynchronous copy refreshes before each replay.
"""

from __future__ import annotations

import numpy

from .optim import HYPER_SIZE

RING = 32           # pinned staging slots: the host may run this many steps ahead of the device


class StepValues:
    """Device buffer of the values that change between steps, with typed kernel views of its parts:
    `keys` (uint64, (n_keys, 2)), `hyper` (float64, the update's), `l2[layer]` (dtype, or None)."""

    def __init__(self, be, n_keys: int, l2_units: list, dtype):
        xp = be.xp
        parts, offset = [], 0
        for count, dt in [(2 * max(n_keys, 1), numpy.uint64), (HYPER_SIZE, numpy.float64)] + \
                         [(u or 0, dtype) for u in l2_units]:
            parts.append((offset, count, numpy.dtype(dt)))
            offset += -(-count * numpy.dtype(dt).itemsize // 8) * 8
        self.nbytes = offset
        self.device = xp.zeros(offset, numpy.uint8)
        self.be, self._parts, self._l2_units = be, parts, l2_units
        typed = self._typed(self.device)
        self.keys, self.hyper = be._dev(typed[0].reshape(-1, 2)), be._dev(typed[1])
        self.l2 = [None if not u else be._dev(t) for u, t in zip(l2_units, typed[2:])]
        if be.simulated:
            self._slots = [self.device]         # the simulator's device memory is host memory
        else:
            import cupy

            self._slots = [numpy.frombuffer(cupy.cuda.alloc_pinned_memory(offset), numpy.uint8, offset)
                           for _ in range(RING)]
        self._events = [None] * len(self._slots)
        self._next = 0

    def _typed(self, buf):
        return [buf[o:o + c * dt.itemsize].view(dt) for o, c, dt in self._parts]

    def write(self, keys, hyper, l2):
        """Stages host values into the next slot (waiting until the device has read it last time)."""
        i = self._next
        if self._events[i] is not None:
            self._events[i].synchronize()
        typed = self._typed(self._slots[i])
        typed[0].reshape(-1, 2)[:len(keys)] = keys
        typed[1][:] = hyper
        for units, part, values in zip(self._l2_units, typed[2:], l2):
            if units:
                part[:] = 0 if values is None else values
        return i

    def upload(self, slot: int, cupy_stream):
        """Copies a staged slot to the device on `cupy_stream`, in order with the work queued there."""
        if self.be.simulated:
            return
        from cupy.cuda import runtime

        runtime.memcpyAsync(self.device.data.ptr, self._slots[slot].ctypes.data, self.nbytes,
                            runtime.memcpyHostToDevice, cupy_stream.ptr)
        self._events[slot] = cupy_stream.record()
        self._next = (slot + 1) % len(self._slots)


class Replayer:
    """Captures `enqueue()` (the kernel launches of one step) into a CUDA graph on a side stream and replays
    it in order with the caller's current stream. Any failure to capture turns replay off for good: the
    steps then run launch by launch, as they do under the simulator."""

    def __init__(self, be):
        import cupy

        self.be, self.cupy = be, cupy
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.enabled = True
        self.failure = ""
        self.capturing = False
        self._blas = None

    @property
    def blas(self):
        """cuBLAS on a handle bound to the capture stream (see cuda_blas), made at the first capture."""
        if self._blas is None:
            from .blas import Blas

            self._blas = Blas(self.stream)
        return self._blas

    def capture(self, enqueue):
        """The graph of what enqueue() queues, or None (and replay off) if it cannot be captured. Memory that
        CuPy allocates during the capture (a library call's temporaries) bypasses its pool and lives as
        long as the graph: the pool would hand it to other arrays while replays still write it."""
        cupy, be, stream = self.cupy, self.be, self.stream
        saved = be.stream, be.cupy_stream
        be.stream, be.cupy_stream = be._cuda.external_stream(stream.ptr), stream
        kept = []
        if be.captures_blas:
            self.blas                   # made before capture: creating a handle cannot be captured

        def allocate(size):
            kept.append(cupy.cuda.memory.MemoryPointer(cupy.cuda.memory.Memory(size), 0))
            return kept[-1]

        graph = None
        try:
            with stream, cupy.cuda.using_allocator(allocate):
                stream.begin_capture()
                self.capturing = True
                try:
                    enqueue()
                finally:
                    self.capturing = False
                    graph = stream.end_capture()
        except Exception as exc:  # noqa: BLE001  (capture is an optimisation: never let it stop training)
            self.enabled, self.failure = False, f"{type(exc).__name__}: {exc}"
            return None
        finally:
            be.stream, be.cupy_stream = saved
        return graph, kept

    def replay(self, captured, upload):
        """upload(stream) queues the step's values; then the graph; both after the caller's queued work."""
        current = self.cupy.cuda.get_current_stream()
        self.stream.wait_event(current.record())
        upload(self.stream)
        captured[0].launch(stream=self.stream)
        current.wait_event(self.stream.record())
