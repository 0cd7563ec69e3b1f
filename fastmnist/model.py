"""A trained network: its recipe and parameters, prediction, and saving to / loading from .npz."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import model_file
from .errors import FastMnistError, ModelFileError, OutputError
from .files import os_reason, write_atomically
from .kernels.interface import Net
from .kernels.reference import ReferenceBackend
from .recipes import Recipe

FORMAT, VERSION = model_file.FORMAT, model_file.VERSION
_checksum = model_file.checksum
PARAMETER_DTYPES = (np.float32, np.float64)
PREDICT_ROWS = 2048     # images converted and scored at a time: predict needs little memory beyond its input
_host = ReferenceBackend()


class Model:
    def __init__(self, recipe: Recipe, weights: list, biases: list, meta: dict | None = None):
        self.recipe = recipe.validate()
        self.weights = [np.ascontiguousarray(w) for w in weights]
        self.biases = [None if b is None else np.ascontiguousarray(b) for b in biases]
        self.meta = dict(meta or {})
        self._check_shapes()
        self._check_dtypes()

    def _check_dtypes(self):
        named = [(f"{kind}{li}", a) for li, (W, b) in enumerate(zip(self.weights, self.biases))
                 for kind, a in (("W", W), ("b", b)) if a is not None]
        for name, a in named:
            if a.dtype not in PARAMETER_DTYPES:
                raise ModelFileError(f"{name} holds {a.dtype} numbers; a model's parameters are float32 or float64")
        kinds = sorted({str(a.dtype) for _, a in named})
        if len(kinds) > 1:
            raise ModelFileError(f"the parameters mix {' and '.join(kinds)}")

    def _check_shapes(self):
        layers = self.recipe.layers
        if len(self.weights) != len(layers) or len(self.biases) != len(layers):
            raise ModelFileError(f"model has {len(self.weights)} weight arrays but recipe {self.recipe.name!r} "
                                 f"has {len(layers)} layers")
        for li, (n_in, layer) in enumerate(zip(self.recipe.layer_inputs(), layers)):
            W, b = self.weights[li], self.biases[li]
            if W.shape != (n_in, layer.units):
                raise ModelFileError(f"layer {li} weights have shape {W.shape}, recipe needs {(n_in, layer.units)}")
            if (b is None) == layer.bias or (b is not None and b.shape != (layer.units,)):
                raise ModelFileError(f"layer {li} bias does not match the recipe")

    @property
    def dtype(self):
        return self.weights[0].dtype

    def _net(self) -> Net:
        return Net(self.weights, self.biases, [layer.segments() for layer in self.recipe.layers],
                   self.recipe.loss, self.recipe.loss_eps)

    # -- prediction -------------------------------------------------------------------------------
    def scores(self, images) -> np.ndarray:
        """Output-layer values (before any softmax), one row per image."""
        images = image_rows(images)
        net, out = self._net(), np.empty((len(images), self.recipe.classes), self.dtype)
        for start in range(0, len(images), PREDICT_ROWS):
            rows = slice(start, start + PREDICT_ROWS)
            out[rows] = _host.forward(net, as_inputs(images[rows], self.dtype))
        return out

    def predict_proba(self, images) -> np.ndarray:
        """Class probabilities: the softmax of the output layer (for mse recipes, a monotone map of the
        raw outputs whose argmax is the prediction)."""
        s = self.scores(images).astype(np.float64)
        e = np.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, images) -> np.ndarray:
        return self.scores(images).argmax(axis=1)

    def accuracy(self, images, labels) -> float:
        """The fraction of `images` predicted as `labels`: one integer label in 0..classes-1 per image."""
        images = image_rows(images)
        labels = label_vector(labels, len(images), self.recipe.classes)
        return float((self.predict(images) == labels).mean())

    # -- files ------------------------------------------------------------------------------------
    def _arrays(self) -> dict:
        out = {}
        for li, (W, b) in enumerate(zip(self.weights, self.biases)):
            out[f"W{li}"] = W
            if b is not None:
                out[f"b{li}"] = b
        return out

    def save(self, path) -> Path:
        """Writes the model to `path` (".npz" added if it lacks it) atomically; returns the path written."""
        path = model_path(path)
        recipe_json = self.recipe.to_json()
        meta_json = json.dumps(self.meta, sort_keys=True, default=str)
        arrays = self._arrays()
        header = {"format": np.array(FORMAT), "version": np.array(VERSION), "recipe": np.array(recipe_json),
                  "meta": np.array(meta_json), "checksum": np.array(_checksum(recipe_json, meta_json, arrays))}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, lambda f: np.savez(f, **header, **arrays))
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {os_reason(exc)}") from None
        return path


def model_path(path) -> Path:
    """Where Model.save(path) writes: `path`, with ".npz" added unless it ends so; a folder is an OutputError
    (rather than a file named after it beside it)."""
    path = Path(path)
    if path.is_dir() or not path.name:
        raise OutputError(f"cannot write {path}: it is a directory")
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    return path


def load(path) -> Model:
    """Load a model written by `Model.save`; a foreign or damaged file raises ModelFileError (model_file.py
    says what is checked; the checksum catches accidental damage, not a deliberate edit). `path` is read as
    save(path) wrote it: "m" finds "m.npz" when there is no file "m"."""
    path = _saved_path(Path(path))
    try:
        return _load(path)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None


def _saved_path(path: Path) -> Path:
    """`path` if it is a file, else the file save(path) writes (".npz" added) if that is one."""
    if path.is_file():
        return path
    saved = path.with_name(path.name + ".npz") if path.name and path.suffix != ".npz" else None
    if saved is not None and saved.is_file():
        return saved
    raise ModelFileError(f"{path}: no such model file" + (f" (nor {saved.name})" if saved is not None else ""))


def _load(path: Path) -> Model:
    recipe, weights, biases, meta = model_file.read(path)
    model = Model(recipe, weights, biases, meta)
    for a in weights + [b for b in biases if b is not None]:
        if not np.all(np.isfinite(a)):
            raise ModelFileError("parameters contain NaN or infinity")
    return model


def image_rows(images) -> np.ndarray:
    """Images as an (N, 784) array of uint8 or floats, unconverted, from (N, 784) or (N, 28, 28)."""
    try:
        a = np.asarray(images)
    except (ValueError, TypeError) as exc:
        raise FastMnistError(f"images must be an array of shape (N, 784) or (N, 28, 28): {exc}") from None
    if a.ndim == 3 and a.shape[1:] == (28, 28):
        a = a.reshape(a.shape[0], 784)
    if a.ndim != 2 or a.shape[1] != 784:
        raise FastMnistError(f"images must have shape (N, 784) or (N, 28, 28), got {a.shape}")
    if a.dtype != np.uint8 and a.dtype.kind != "f":
        raise FastMnistError(f"images must be uint8 (0..255) or floats in [0, 1], got dtype {a.dtype}")
    return a


def label_vector(labels, n: int, classes: int = 10) -> np.ndarray:
    """Labels as an (n,) integer array, checked as image_rows checks images: one label per image, integers
    in 0..classes-1, and at least one (an accuracy of no images is no number)."""
    try:
        a = np.asarray(labels)
    except (ValueError, TypeError) as exc:
        raise FastMnistError(f"labels must be an array of shape (N,): {exc}") from None
    if a.ndim != 1 or len(a) != n:
        raise FastMnistError(f"labels must have shape ({n},), one per image, got {a.shape}")
    if a.dtype.kind not in "iu":
        raise FastMnistError(f"labels must be integers 0..{classes - 1}, got dtype {a.dtype}")
    if n == 0:
        raise FastMnistError("no images to score: an accuracy needs at least one image and label")
    if a.min() < 0 or a.max() >= classes:
        raise FastMnistError(f"labels must lie in 0..{classes - 1}, got values in [{a.min()}, {a.max()}]")
    return a


def as_inputs(images, dtype=np.float32) -> np.ndarray:
    """Images as (N, 784) floats in [0, 1] from (N, 784) or (N, 28, 28), uint8 0..255 or floats in [0, 1]."""
    a = image_rows(images)
    if a.dtype == np.uint8:
        return (a / 255).astype(dtype)
    if a.size and not np.all(np.isfinite(a)):
        raise FastMnistError("images contain NaN or infinite values")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise FastMnistError(f"float images must lie in [0, 1], got values in [{a.min():g}, {a.max():g}] "
                             "(pass uint8 for 0..255)")
    return np.ascontiguousarray(a, dtype=dtype)
