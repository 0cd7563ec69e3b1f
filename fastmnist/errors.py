"""The exceptions fastmnist raises for problems the user can fix."""


class FastMnistError(Exception):
    """Base class: a one-line message naming the problem."""


class DataError(FastMnistError):
    """A data file is missing, corrupt or fails its checksum."""


class RecipeError(FastMnistError, ValueError):
    """A recipe, preset or override is invalid."""


class BackendUnavailable(FastMnistError):
    """The requested backend is unknown or cannot run here."""


class TrainingDiverged(FastMnistError):
    """The loss became NaN or infinite; `history` holds the metrics recorded before it did."""

    def __init__(self, message: str, history: list | None = None):
        super().__init__(message)
        self.history = list(history or [])


class ModelFileError(FastMnistError):
    """A saved model file is foreign, damaged or tampered with."""


class OutputError(FastMnistError):
    """An output file (a model, sweep results, a chart) cannot be written where it was asked for."""
