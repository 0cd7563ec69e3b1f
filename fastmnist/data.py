"""MNIST and Fashion-MNIST as uint8 arrays: find, download, verify, parse and split the IDX files."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import os
import struct
import sys
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy
import pooch

from fastmnist.errors import DataError
from fastmnist.files import os_reason, write_atomically
from fastmnist.reading import NpyError, open_regular, read_npy

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DATASETS = ("mnist", "fashion-mnist")
SPLITS = ("first-1000", "50k-10k-10k", "full")
TRAIN_ROWS = {"first-1000": 1000, "50k-10k-10k": 50_000, "full": 60_000}     # training images per split

MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
GZ_MD5 = {
    "mnist": dict(zip(FILES, (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ))),
    "fashion-mnist": dict(zip(FILES, (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79",
        "bb300cfdad3c16e7a12a480ee83cd310",
    ))),
}
CONTENT_MD5 = {
    "mnist": dict(zip(FILES, (
        "6bbc9ace898e44ae57da46a324031adb",
        "a25bea736e30d166cdddb491f175f624",
        "2646ac647ad5339dbf082846283269ea",
        "27ae3e4e09519cfbb04c329615203637",
    ))),
    "fashion-mnist": {},
}

_IDX = {"images": (2051, 3), "labels": (2049, 1)}
DOWNLOAD_TIMEOUT_S = 15     # a mirror that sends nothing for this long is given up for the next


@dataclass(frozen=True, eq=False)
class Split:
    """One labelled set: images (N, 784) and labels (N,), both read-only uint8."""

    images: numpy.ndarray
    labels: numpy.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, eq=False)
class Splits:
    name: str
    train: Split
    val: Split | None
    test: Split


def default_cache_dir() -> Path:
    """$FASTMNIST_CACHE if set, else the per-user cache directory pooch picks for "fastmnist"."""
    return Path(os.environ.get("FASTMNIST_CACHE") or pooch.os_cache("fastmnist"))


def load_arrays(dataset: str = "mnist", path: str | os.PathLike | None = None, *,
                download: bool = True) -> tuple[Split, Split]:
    """The 60,000 training and 10,000 test examples of `dataset`.

    Files (each `NAME` or `NAME.gz`) are taken from the first of: the `path` directory, $FASTMNIST_DATA,
    the cache directory (downloaded into it if absent and `download`). A place that is named but lacks
    the files is an error, never a reason to look further.

    Every file is checked for structure (gzip stream, IDX magic, 28x28 dims, payload length, labels 0..9,
    matching counts). MNIST files are also checked against the known MD5 of their uncompressed content,
    wherever they came from. Fashion-MNIST has no known uncompressed checksum, so local Fashion-MNIST
    files get only the structural checks (downloads are checked by pooch against the mirror's .gz MD5);
    they are, however, refused if they turn out to be the MNIST files.
    """
    _check_name("dataset", dataset, DATASETS)
    try:
        found = _locate(dataset, path, download)
        return _load_pair(dataset, found, "train"), _load_pair(dataset, found, "t10k")
    except OSError as exc:      # an unreadable file or folder
        raise DataError(f"cannot read {dataset} data: {os_reason(exc)}") from None


def load_splits(split: str = "50k-10k-10k", dataset: str = "mnist", path: str | os.PathLike | None = None, *,
                download: bool = True) -> Splits:
    """Train, val and test sets of `dataset`, loaded as by `load_arrays`.

    "first-1000": the first 1,000 training examples, no val; "50k-10k-10k": the first 50,000 training
    examples train, the last 10,000 validate; "full": all 60,000 train, no val. Test is always the 10,000
    test examples.
    """
    _check_name("split", split, SPLITS)
    train, test = load_arrays(dataset, path, download=download)
    rows = TRAIN_ROWS[split]
    if split == "first-1000":
        return Splits(split, _take(train, slice(None, rows)), None, test)
    if split == "50k-10k-10k":
        return Splits(split, _take(train, slice(None, rows)), _take(train, slice(rows, None)), test)
    return Splits(split, train, None, test)


def _check_name(what: str, name: str, valid: tuple[str, ...]) -> None:
    if name not in valid:
        raise DataError(f"unknown {what} {name!r}; valid: {', '.join(valid)}")


def _take(split: Split, rows: slice) -> Split:
    return Split(split.images[rows], split.labels[rows])


def _files_in(directory: Path) -> dict[str, Path]:
    found = {}
    for name in FILES:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                found[name] = candidate
                break
    return found


def _locate(dataset: str, path, download: bool) -> dict[str, Path]:
    for directory, place in ((path, "path argument"), (os.environ.get("FASTMNIST_DATA"), "FASTMNIST_DATA")):
        if directory:
            found = _files_in(Path(directory))
            missing = [name for name in FILES if name not in found]
            if missing:
                raise _not_found(dataset, [f"{place} {directory} (missing {', '.join(missing)})"])
            return found

    cache = default_cache_dir() / dataset
    found = _files_in(cache)
    missing = [name for name in FILES if name not in found]
    if not missing:
        return found
    reason = "download=False"
    if download:
        try:
            return found | {name: _download(dataset, name, cache) for name in missing}
        except DataError as exc:
            reason = f"download failed: {exc}"
    raise _not_found(dataset, ["no path argument", "FASTMNIST_DATA not set", f"cache {cache} ({reason})"])


def _not_found(dataset: str, places: list[str]) -> DataError:
    return DataError(f"{dataset} data not found: need {', '.join(FILES)} (plain or .gz); "
                     f"searched {'; '.join(places)}; set FASTMNIST_DATA to a directory holding them")


def _download(dataset: str, name: str, cache: Path) -> Path:
    failures, mirrors = [], MIRRORS[dataset]
    for number, mirror in enumerate(mirrors, 1):
        url = f"{mirror}{name}.gz"
        print(f"fastmnist: downloading {url} (mirror {number} of {len(mirrors)}; gives up after "
              f"{DOWNLOAD_TIMEOUT_S} s without data)", file=sys.stderr, flush=True)
        try:
            return Path(pooch.retrieve(url, known_hash=f"md5:{GZ_MD5[dataset][name]}", path=cache,
                                       fname=f"{name}.gz", progressbar=False,
                                       downloader=CappedDownloader(DOWNLOAD_LIMIT, timeout=DOWNLOAD_TIMEOUT_S)))
        except Exception as exc:  # noqa: BLE001  (each mirror's failure is reported; the next one is tried)
            failures.append(f"{url}: {type(exc).__name__}: {' '.join(str(exc).split())}")
    raise DataError("; ".join(failures))


# the most a download may bring: the largest .gz of these datasets (Fashion-MNIST's training images) is 26 MB
DOWNLOAD_LIMIT = 64 << 20


class CappedDownloader(pooch.HTTPDownloader):
    """pooch's HTTP downloader, stopped once a server has sent more than `limit` bytes: a mirror that sends
    without end (or a small response that inflates) does not fill the disk before the MD5 check."""

    def __init__(self, limit: int, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit

    def __call__(self, url, output_file, pooch, check_only=False):
        if check_only:
            return super().__call__(url, output_file, pooch, check_only=True)
        with open(output_file, "w+b") if not hasattr(output_file, "write") else nullcontext(output_file) as f:
            return super().__call__(url, _Capped(f, self.limit), pooch)


class _Capped:
    def __init__(self, f, limit: int):
        self.f, self.limit, self.written = f, limit, 0

    def write(self, chunk):
        self.written += len(chunk)
        if self.written > self.limit:
            raise DataError(f"the server sent more than {self.limit:,} bytes, more than any of the files is")
        return self.f.write(chunk)

    def flush(self):
        self.f.flush()


def _load_pair(dataset: str, found: dict[str, Path], prefix: str) -> Split:
    images_name, labels_name = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    images = _read(dataset, found[images_name], images_name, "images")
    labels = _read(dataset, found[labels_name], labels_name, "labels")
    if len(images) != len(labels):
        raise DataError(f"{found[images_name]}: {len(images)} images but {found[labels_name]} has {len(labels)} labels")
    return Split(images, labels)


def _read(dataset: str, path: Path, name: str, kind: str) -> numpy.ndarray:
    resolved = path.resolve()
    st = resolved.stat()
    array, digest = _parse(resolved, kind, (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    expected = CONTENT_MD5[dataset].get(name)
    if expected and digest != expected:
        raise DataError(f"{path}: checksum mismatch, MD5 of uncompressed content expected {expected}, got {digest}")
    if not expected and digest == CONTENT_MD5["mnist"].get(name):
        raise DataError(f"{path}: this is the MNIST file, not {dataset}'s")
    return array


@functools.lru_cache(maxsize=16)
def _parse(path: Path, kind: str, stamp: tuple) -> tuple[numpy.ndarray, str]:
    """(array, MD5 of the uncompressed content) of one IDX file; `stamp` (size, times, inode) tells versions
    of the file apart, here and in the decoded copies kept in the cache directory."""
    found = _load_decoded(path, kind, stamp)
    if found is not None:
        return found
    array, digest = _decode(path, kind)
    _store_decoded(path, kind, stamp, array, digest)
    return array, digest


# Decompressing and hashing the training images takes a noticeable part of a short run (docs/performance.md).
# A file whose content has a known MD5 is therefore also kept decoded, as cache/decoded/<md5>.npy, with an index
# entry per version of the source file giving its MD5 and the CRC-32 of the array; a copy whose CRC-32 does not
# match is decoded again.
_KNOWN_MD5 = frozenset(md5 for sums in CONTENT_MD5.values() for md5 in sums.values())


def _index_entry(path: Path, kind: str, stamp: tuple) -> Path:
    key = hashlib.sha1(f"{path}|{kind}|{stamp}".encode()).hexdigest()
    return default_cache_dir() / "decoded" / f"{key}.json"


def _load_decoded(path: Path, kind: str, stamp: tuple):
    entry = _index_entry(path, kind, stamp)
    try:
        with open_regular(entry) as f:
            meta = json.loads(f.read(4096))
        digest = meta["md5"]
        if digest not in _KNOWN_MD5:            # only files of known content are kept: nothing else is read
            return None
        copy = entry.parent / f"{digest}.npy"
        with open_regular(copy) as f:
            array = read_npy(f, os.fstat(f.fileno()).st_size, max_bytes=MAX_ROWS * 28 * 28, kinds="u")
    except (OSError, ValueError, KeyError, TypeError, RecursionError, NpyError):
        return None
    shape_ok = array.ndim == 2 and array.shape[1] == 28 * 28 if kind == "images" else array.ndim == 1
    if array.dtype != numpy.uint8 or not shape_ok or zlib.crc32(array) != meta.get("crc32"):
        return None
    array.flags.writeable = False
    return array, digest


def _store_decoded(path: Path, kind: str, stamp: tuple, array: numpy.ndarray, digest: str) -> None:
    if digest not in _KNOWN_MD5:
        return
    entry = _index_entry(path, kind, stamp)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(entry.parent / f"{digest}.npy", lambda f: numpy.save(f, array, allow_pickle=False))
        write_atomically(entry, lambda f: f.write(json.dumps({"md5": digest, "crc32": zlib.crc32(array)}).encode()))
    except OSError:     # a read-only or full cache directory only costs the next load its decoding
        pass


# the most examples one IDX file of these datasets holds (the training files' 60,000): a header claiming
# more is refused before anything past it is read or decompressed
MAX_ROWS = 60_000


def _decode(path: Path, kind: str) -> tuple[numpy.ndarray, str]:
    """(array, MD5 of the uncompressed content) of one IDX file, plain or gzip: the header is read and
    checked first, then exactly the payload it gives, so that a file that claims or inflates to more than
    an MNIST file holds is refused having read no more than that."""
    magic, ndim = _IDX[kind]
    header = 4 * (1 + ndim)
    with open_regular(path) as plain:
        gz = plain.read(2) == b"\x1f\x8b"
        plain.seek(0)
        stream = gzip.GzipFile(fileobj=plain, mode="rb") if gz else plain
        try:
            head = stream.read(header)
            if len(head) < header:
                raise DataError(f"{path}: {len(head)} bytes, too short for the {header}-byte IDX header")
            got, *dims = struct.unpack(f">{1 + ndim}i", head)
            if got != magic:
                raise DataError(f"{path}: wrong magic number {got}, expected {magic} for {kind}")
            if kind == "images" and dims[1:] != [28, 28]:
                raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
            if not 0 <= dims[0] <= MAX_ROWS:
                raise DataError(f"{path}: header says {dims[0]} {kind}; an MNIST file holds at most {MAX_ROWS}")
            expected = math.prod(dims)
            if not gz:
                _check_length(path, os.fstat(plain.fileno()).st_size - header, expected)
            payload = stream.read(expected)
            _check_length(path, len(payload), expected)
            if stream.read(1):
                raise DataError(f"{path}: trailing bytes, header says {expected} payload bytes, file has more")
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            if not gz:
                raise
            raise DataError(f"{path}: truncated or corrupt gzip stream ({exc})") from None
    md5 = hashlib.md5(head)
    md5.update(payload)
    digest = md5.hexdigest()
    array = numpy.frombuffer(payload, numpy.uint8)
    if kind == "images":
        array = array.reshape(dims[0], 28 * 28)
    elif array.max(initial=0) > 9:
        raise DataError(f"{path}: label {array.max()} out of range 0..9")
    array.flags.writeable = False
    return array, digest


def _check_length(path: Path, payload: int, expected: int) -> None:
    if payload != expected:
        problem = "truncated" if payload < expected else "trailing bytes"
        raise DataError(f"{path}: {problem}, header says {expected} payload bytes, file has {payload}")
