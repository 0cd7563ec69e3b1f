"""fastmnist: small neural networks on MNIST from hand-written Numba CPU and CUDA kernels."""

import os
import sys
from pathlib import Path

from . import interrupts as _interrupts, stdio as _stdio   # the standard library only: quick to import

# Run as a command (`python -m fastmnist`, the `fastmnist` script), the process is made safe before the slow
# imports below: closed standard streams point at /dev/null, and Ctrl-C or a termination signal ends it with
# one line instead of a traceback from the module being imported (fastmnist.cli takes over once it runs).
if _stdio.run_as_command():
    _stdio.reopen_closed_descriptors()
    _interrupts.exit_quietly_until_ready()

# OpenBLAS's idle workers spin for about 2**28 cycles after each product, taking a core from the compiled
# kernel that runs next (docs/backends.md). OpenBLAS reads this when numpy loads it, so it only takes
# effect when fastmnist is imported first; a value already set is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def _bind_source_kernels():
    """In a source checkout (this package imported from the repository, not from an install), the kernels
    live in ../kernels: bind them as fastmnist.kernels, as an installed wheel lays them out."""
    here = Path(__file__).resolve().parent
    source = here.parent / "kernels"
    if (here / "kernels").is_dir() or not (source / "__init__.py").is_file() or __name__ + ".kernels" in sys.modules:
        return
    import importlib.util

    spec = importlib.util.spec_from_file_location(__name__ + ".kernels", source / "__init__.py",
                                                  submodule_search_locations=[str(source)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    globals()["kernels"] = module                  # as the import system binds a loaded submodule


_bind_source_kernels()

from . import builtin_backends as _builtin_backends  # noqa: E402,F401  (registers the built-in backends)
from .comparison import Comparison, compare  # noqa: E402
from .dispatch import backends, get_backend, register, unregister  # noqa: E402
from .errors import (BackendUnavailable, DataError, FastMnistError, ModelFileError, OutputError,  # noqa: E402
                     RecipeError, TrainingDiverged)
from .kernels.interface import Backend, Net  # noqa: E402
from .model import Model, load  # noqa: E402
from .networks import mlp  # noqa: E402
from .recipes import PRESETS, Recipe, get_preset  # noqa: E402
from .sweeps import sweep  # noqa: E402
from .training import TrainResult, train  # noqa: E402

__version__ = "0.1.0"

__all__ = ["train", "compare", "Comparison", "sweep", "mlp", "load", "backends", "get_backend", "register",
           "unregister", "Backend", "Net", "Model", "TrainResult", "Recipe", "PRESETS", "get_preset",
           "FastMnistError", "DataError", "RecipeError", "BackendUnavailable", "TrainingDiverged", "ModelFileError",
           "OutputError"]
