"""The exceptions fastmnist raises for problems the user can fix."""

import signal


class FastMnistError(Exception):
    """Base class: a one-line message naming the problem."""


class DataError(FastMnistError):
    """A data file is missing, corrupt or fails its checksum."""


class RecipeError(FastMnistError, ValueError):
    """A recipe, preset or override is invalid."""


class BackendUnavailable(FastMnistError):
    """The requested backend is unknown or cannot run here."""


class BackendMisconfigured(BackendUnavailable):
    """A backend cannot run because of a setting the user made (an environment variable), not for want of a
    device or a package: `auto` says so rather than silently taking a slower backend."""


class TrainingDiverged(FastMnistError):
    """The loss became NaN or infinite; `history` holds the metrics recorded before it did."""

    def __init__(self, message: str, history: list | None = None):
        super().__init__(message)
        self.history = list(history or [])


class ModelFileError(FastMnistError):
    """A saved model file is foreign, damaged, or altered without its (unkeyed) checksum being recomputed."""


class OutputError(FastMnistError):
    """An output file (a model, sweep results, a chart) cannot be written where it was asked for."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or another signal asking the process to end: `signum`) stopped training after a whole
    iteration; `result` is the TrainResult trained so far.

    A KeyboardInterrupt, not a FastMnistError: code that catches errors (`except Exception`) must not
    swallow the user's Ctrl-C, and code that does not look for the result stops as on any Ctrl-C."""

    def __init__(self, result, signum: int | None = None):
        from .interrupts import cause

        self.signum = signum or signal.SIGINT
        super().__init__(f"{cause(self.signum)} after iteration {result.model.meta.get('iterations_done', 0) - 1}")
        self.result = result


class SweepError(FastMnistError):
    """A sweep cannot go on: its results file belongs to another sweep or is not one, or its scheduler
    cannot be reached."""
