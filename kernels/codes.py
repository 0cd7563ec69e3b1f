"""The integer codes the compiled kernels, numba-cpu's and numba-cuda's alike, use for the activations, the
losses and the optimisers a Net names by string.

Plain integers, so that a kernel's `code == RELU` compares against a constant Numba folds into the compiled
code (CPU and CUDA, the simulator included), and plain NumPy: this module imports no compiler.
"""

from __future__ import annotations

import numpy as np

IDENTITY, RELU, TANH = 0, 1, 2
ACTIVATION_CODES = {"identity": IDENTITY, "relu": RELU, "tanh": TANH}

MSE, SOFTMAX_CE = 0, 1
LOSS_CODES = {"mse": MSE, "softmax_ce": SOFTMAX_CE}

SGD, ADAM_LIKE, ADAM = 0, 1, 2                      # ADAM_LIKE: seed 004's update, Adam without bias correction
OPTIMIZER_CODES = {"sgd": SGD, "adam_like": ADAM_LIKE, "adam": ADAM}


def activation_codes(segments, units: int, dtype=np.int32) -> np.ndarray:
    """One activation code per unit of a layer of `units` units, from its segments ((start, stop, activation),
    ...); units outside every segment are linear (IDENTITY). A new writable array of `dtype`."""
    codes = np.zeros(units, dtype)
    for start, stop, act in segments:
        if act not in ACTIVATION_CODES:
            raise ValueError(f"unknown activation {act!r}")
        if stop > units:
            raise ValueError(f"segments cover {stop} units, the layer has {units}")
        codes[start:stop] = ACTIVATION_CODES[act]
    return codes


__all__ = ["IDENTITY", "RELU", "TANH", "ACTIVATION_CODES", "MSE", "SOFTMAX_CE", "LOSS_CODES", "SGD", "ADAM_LIKE",
           "ADAM", "OPTIMIZER_CODES", "activation_codes"]
