"""A barrier for compiled kernels that run on several Python threads at once (njit with nogil).

Numba's parallel loops (prange) fork and join a thread pool around every loop; a kernel with a few
synchronisation points per minibatch pays that many times per batch, and compiling the parallel loops is
slow. Instead such a kernel runs one compiled function per thread for the whole epoch, and the threads meet
at `wait`: a sense-reversing barrier on two int64 counters, with atomic instructions written as Numba
intrinsics (LLVM's atomicrmw / atomic load and store). A thread that waits spins briefly, then yields its
core to the operating system (sched_yield), so that a busy machine is not made busier.

Use: state = new_state(); in each of T threads, wait(state, T) at each meeting point. Kernels that use it
must not raise between meeting points (an exception in one thread would leave the others waiting), so they
are compiled with numpy's error model and no bounds checks.
"""

from __future__ import annotations

import platform
import sys

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
SPINS = 2000            # busy polls before each yield: a partner thread that is running arrives within them


COUNT, GENERATION = 0, 8       # the counters' indices: each on a cache line of its own


def new_state() -> np.ndarray:
    """The barrier's shared counters (threads arrived, generation), each alone on a 64-byte cache line: a line
    it shared with anything a thread writes while others spin on it would bounce between the cores."""
    buf = np.zeros(24 + 8, np.int64)
    start = (-buf.ctypes.data % 64) // 8
    return buf[start:start + 24]


def _slot(context, builder, array_type, array, index):
    ary = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer(context, builder, array_type, ary, [index])


def _check(state):
    if not (isinstance(state, types.Array) and state.dtype == types.int64 and state.ndim == 1 and state.layout == "C"):
        raise TypeError("barrier: the state must be a C-contiguous int64 vector")


@intrinsic
def atomic_add(typingctx, state, index, value):
    """state[index] += value atomically; returns the value before."""
    _check(state)
    sig = types.int64(state, types.intp, types.int64)

    def codegen(context, builder, signature, args):
        ptr = _slot(context, builder, signature.args[0], args[0], args[1])
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")

    return sig, codegen


@intrinsic
def atomic_load(typingctx, state, index):
    """state[index], read atomically (acquire)."""
    _check(state)
    sig = types.int64(state, types.intp)

    def codegen(context, builder, signature, args):
        return builder.load_atomic(_slot(context, builder, signature.args[0], args[0], args[1]), "acquire", 8)

    return sig, codegen


@intrinsic
def atomic_store(typingctx, state, index, value):
    """state[index] = value, written atomically (release)."""
    _check(state)
    sig = types.void(state, types.intp, types.int64)

    def codegen(context, builder, signature, args):
        builder.store_atomic(args[2], _slot(context, builder, signature.args[0], args[0], args[1]), "release", 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def pause(typingctx):
    """Tells the core that this is a spin-wait loop (x86 PAUSE); nothing elsewhere."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def yield_core(typingctx):
    """Gives the rest of this thread's time slice to another thread (POSIX sched_yield; nothing on Windows)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if sys.platform != "win32":
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def wait(state, threads):
    """Returns once `threads` threads have called wait on `state` since the last time it returned."""
    if threads <= 1:
        return
    generation = atomic_load(state, GENERATION)
    if atomic_add(state, COUNT, 1) == threads - 1:   # the last to arrive releases the others
        atomic_store(state, COUNT, 0)
        atomic_add(state, GENERATION, 1)
        return
    spins = 0
    while atomic_load(state, GENERATION) == generation:
        spins += 1
        if spins < SPINS:
            pause()
        else:
            yield_core()
            spins = 0
