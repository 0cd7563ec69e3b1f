"""fastmnist: small neural networks on MNIST from hand-written Numba CPU and CUDA kernels."""

from . import backends as _builtin_backends  # noqa: F401  (registers the built-in backends)
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
