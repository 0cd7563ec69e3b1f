"""fastmnist: small neural networks on MNIST from hand-written Numba CPU and CUDA kernels."""

import os

# OpenBLAS's idle workers spin for about 2**28 cycles after each product, taking a core from the compiled
# kernel that runs next (on 2 cores: branchnet's numba-cpu step 270-280 ms with the default, 215-230 ms with
# 4). OpenBLAS reads this when numpy loads it, so it only takes effect when fastmnist is imported first;
# a value already set is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from . import backends as _builtin_backends  # noqa: E402,F401  (registers the built-in backends)
from .dispatch import backends, get_backend, register
from .errors import (BackendUnavailable, DataError, FastMnistError, ModelFileError, RecipeError,
                     TrainingDiverged)
from .model import Model, load
from .recipes import PRESETS, Recipe, get_preset
from .sweep import sweep
from .train import TrainResult, train

__version__ = "0.1.0"

__all__ = ["train", "sweep", "load", "backends", "get_backend", "register", "Model", "TrainResult", "Recipe",
           "PRESETS", "get_preset", "FastMnistError", "DataError", "RecipeError", "BackendUnavailable",
           "TrainingDiverged", "ModelFileError"]
