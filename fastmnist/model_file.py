"""Reading a model file: only the members fastmnist writes, each size checked before it is read.

A model file is an .npz archive (a zip of .npy members): `format`, `version`, `recipe` (JSON), `meta`
(JSON), `checksum` and the parameters `W0`, `b0`, `W1`, ... Anything else in the archive is refused
unread; the text members are read only up to a size limit, the recipe is read before the parameters so
that each parameter's header is checked against the shape the recipe gives it before its data are read,
and the whole network must fit in this machine's memory. The checksum (SHA-256 of the recipe, meta and
parameters) is unkeyed: it catches accidental damage, not a deliberate edit whose author recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import re
import zipfile

import numpy as np

from . import checks, memory
from .errors import ModelFileError, RecipeError
from .reading import NpyError, open_regular, read_npy
from .recipes import Recipe

FORMAT = "fastmnist-model"
VERSION = 1
# the most each text member may hold (bytes of its .npy data: 4 per character)
TEXT_LIMITS = {"format": 1 << 10, "version": 1 << 10, "checksum": 1 << 10, "recipe": 1 << 22, "meta": 1 << 28}
_PARAMETER = re.compile(r"[Wb](0|[1-9][0-9]*)")


def checksum(recipe_json: str, meta_json: str, arrays: dict) -> str:
    h = hashlib.sha256()
    h.update(recipe_json.encode())
    h.update(meta_json.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def read(path) -> tuple[Recipe, list, list, dict]:
    """(recipe, weights, biases, meta) of the model file at `path`, or ModelFileError saying what is wrong
    (without the path: the caller adds it)."""
    try:
        with open_regular(path) as f:
            if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):      # how every zip archive, so every .npz, begins
                raise ModelFileError("not a fastmnist model file (not an .npz archive)")
            f.seek(0)
            with zipfile.ZipFile(f) as z:
                return _read_archive(z)
    except OSError as exc:
        from .files import os_reason
        raise ModelFileError(f"cannot be read ({os_reason(exc)})") from None
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise ModelFileError(f"not a fastmnist model file ({' '.join(str(exc).split())[:200]})") from None


def _read_archive(z: zipfile.ZipFile):
    members = {info.filename: info for info in z.infolist()}
    names = {name[:-4] for name in members if name.endswith(".npy")}
    if "format" not in names or _text(z, members, "format") != FORMAT:
        raise ModelFileError(f"not a fastmnist model file (no '{FORMAT}' marker)")
    for key in ("version", "recipe", "meta", "checksum"):
        if key not in names:
            raise ModelFileError(f"the file lacks {key!r}: it is damaged or was not written by fastmnist")
    version = _member(z, members, "version", max_bytes=TEXT_LIMITS["version"], kinds="biufcU")
    if version.shape != () or version.dtype.kind not in "iu" or int(version) != VERSION:
        raise ModelFileError(f"model format version {checks.shown(version.tolist())} is not supported "
                             f"(expected {VERSION})")
    recipe_json, meta_json = _text(z, members, "recipe"), _text(z, members, "meta")
    recipe = _recipe(recipe_json)
    shapes = expected_parameters(recipe)
    foreign = sorted(set(members) - {f"{name}.npy" for name in ("format", "version", "recipe", "meta", "checksum")}
                     - {f"{name}.npy" for name in shapes})
    if foreign:
        stray = [name[:-4] for name in foreign if name.endswith(".npy") and _PARAMETER.fullmatch(name[:-4])]
        if stray:
            raise ModelFileError(f"it holds {stray[0]}, which recipe {recipe.name!r} has no place for")
        raise ModelFileError(f"it holds members fastmnist does not write ({', '.join(map(repr, foreign[:3]))}"
                             + (", ..." if len(foreign) > 3 else "") + "): it was altered")
    need, have = 8 * memory.parameter_count(recipe), memory.machine_bytes()
    if need > have:
        raise ModelFileError(f"its recipe's network needs {memory.gib(need)} of memory for its parameters; "
                             f"this machine has {memory.gib(have)}")
    arrays = {}
    for name, shape in shapes.items():
        if f"{name}.npy" not in members:
            if name.startswith("W"):
                raise ModelFileError(f"missing array {name!r}")
            continue
        arrays[name] = _member(z, members, name, max_bytes=8 * int(np.prod(shape)), shape=shape)
    if _text(z, members, "checksum") != checksum(recipe_json, meta_json, arrays):
        raise ModelFileError("checksum mismatch: the file was altered or damaged")
    meta = checked_meta(_json(meta_json, "meta"))
    n = len(recipe.layers)
    return recipe, [arrays[f"W{i}"] for i in range(n)], [arrays.get(f"b{i}") for i in range(n)], meta


def expected_parameters(recipe: Recipe) -> dict[str, tuple]:
    """{"W0": (784, 40), "b0": (40,), ...}: the parameters `recipe` has, and their shapes."""
    shapes = {}
    for i, (n_in, layer) in enumerate(zip(recipe.layer_inputs(), recipe.layers)):
        shapes[f"W{i}"] = (n_in, layer.units)
        shapes[f"b{i}"] = (layer.units,)      # a bias the recipe lacks is refused by Model's checks
    return shapes


def _member(z, members, name, *, max_bytes, shape=None, kinds="biufc") -> np.ndarray:
    info = members[f"{name}.npy"]
    try:
        with z.open(info) as f:
            return read_npy(f, info.file_size, max_bytes=max_bytes, expected_shape=shape, kinds=kinds)
    except NpyError as exc:
        raise ModelFileError(f"its {name} {exc}") from None


def _text(z, members, name) -> str:
    value = _member(z, members, name, max_bytes=TEXT_LIMITS[name], shape=(), kinds="U")
    return str(value)


def _json(text: str, what: str):
    try:
        return json.loads(text)
    except RecursionError:
        raise ModelFileError(f"its {what} is nested too deeply to be a fastmnist {what}") from None
    except ValueError:
        raise ModelFileError(f"its {what} is not JSON describing the training") from None


def _recipe(text: str) -> Recipe:
    try:
        return Recipe.from_json(text)
    except RecipeError as exc:
        raise ModelFileError(str(exc)) from None


# -- the meta a model file carries: every field the package reads, checked for its type -------------------

_TEXT_FIELDS = ("backend", "dtype", "dataset", "path")
_ROW_NUMBERS = re.compile(r".*_(acc|err)|loss|elapsed_s")


def checked_meta(meta) -> dict:
    """`meta` if every field fastmnist reads from it has the type it writes, else ModelFileError naming the
    field: a forged or damaged meta fails here in one line, not as a TypeError where it is used."""
    if not isinstance(meta, dict):
        raise ModelFileError("its meta is not JSON describing the training")
    for name in _TEXT_FIELDS:
        if name in meta and not isinstance(meta[name], str):
            _bad(f"meta.{name}", "text", meta[name])
    if "iterations_done" in meta and not _is_int(meta["iterations_done"]):
        _bad("meta.iterations_done", "a non-negative integer", meta["iterations_done"])
    if "interrupted" in meta and not isinstance(meta["interrupted"], bool):
        _bad("meta.interrupted", "true or false", meta["interrupted"])
    if "timings" in meta:
        if not isinstance(meta["timings"], dict):
            _bad("meta.timings", "a JSON object", meta["timings"])
        for key, value in meta["timings"].items():
            if not _is_number(value):
                _bad(f"meta.timings.{key}", "a number", value)
    if "history" in meta:
        if not isinstance(meta["history"], list):
            _bad("meta.history", "a list of report rows", meta["history"])
        for i, row in enumerate(meta["history"]):
            _check_row(row, f"meta.history[{i}]")
    if meta.get("final"):
        _check_row(meta["final"], "meta.final")
    return meta


def _check_row(row, where: str) -> None:
    if not isinstance(row, dict):
        _bad(where, "a report row (a JSON object)", row)
    for key in ("iteration", "loss"):
        if key not in row:
            raise ModelFileError(f"its {where} lacks {key!r}")
    if not _is_int(row["iteration"]):
        _bad(f"{where}.iteration", "a non-negative integer", row["iteration"])
    for key, value in row.items():
        if _ROW_NUMBERS.fullmatch(key) and not _is_number(value):
            _bad(f"{where}.{key}", "a number", value)
        if key.endswith("_acc") and f"{key[:-4]}_err" not in row:
            raise ModelFileError(f"its {where} has {key} but no {key[:-4]}_err")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _bad(where: str, should: str, value):
    try:
        shown = checks.shown(value)
    except RecursionError:
        shown = f"a {type(value).__name__} nested too deeply to show"
    raise ModelFileError(f"its {where} must be {should}, got {shown}")
