import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pooch
import pytest

from fastmnist import data
from fastmnist.errors import DataError

SHARED = Path(os.environ.get("FASTMNIST_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")


@pytest.fixture
def mnist(monkeypatch):
    missing = [name for name in data.FILES if not (SHARED / f"{name}.gz").is_file() and not (SHARED / name).is_file()]
    assert not missing, f"real MNIST files missing from {SHARED}: {missing}"
    monkeypatch.setenv("FASTMNIST_DATA", str(SHARED))
    return data.load_arrays()


@pytest.fixture(autouse=True)
def isolated_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTMNIST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTMNIST_DATA", raising=False)
    return tmp_path / "cache"


def idx(array, magic=None):
    array = np.asarray(array, np.uint8)
    magic = magic or (2051 if array.ndim == 3 else 2049)
    return struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.tobytes()


def write(directory, name, content, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (f"{name}.gz" if gz else name)
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


def write_dataset(directory, n_train=12, n_test=5, gz=True, seed=0):
    """Four valid IDX files of random images; returns the contents as {name: array}."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, n, dtype=np.uint8)
    for name, array in arrays.items():
        write(directory, name, idx(array), gz)
    return arrays


def load_fashion(directory):
    return data.load_arrays("fashion-mnist", directory, download=False)


# The real MNIST files


def test_real_shapes_dtypes_and_labels(mnist):
    train, test = mnist
    assert train.images.shape == (60_000, 784) and test.images.shape == (10_000, 784)
    assert train.labels.shape == (60_000,) and test.labels.shape == (10_000,)
    for array in (train.images, train.labels, test.images, test.labels):
        assert array.dtype == np.uint8 and array.flags.c_contiguous and not array.flags.writeable
    assert len(train) == 60_000 and len(test) == 10_000
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_real_pixel_statistics(mnist):
    images = mnist[0].images
    mean = images.sum(dtype=np.uint64) / images.size / 255
    std = np.sqrt(np.square(images, dtype=np.uint16).sum(dtype=np.uint64) / images.size / 255**2 - mean**2)
    assert mean == pytest.approx(0.1307, abs=1e-4)
    assert std == pytest.approx(0.3081, abs=1e-4)


def test_arrays_are_read_only(mnist):
    with pytest.raises(ValueError):
        mnist[0].images[0, 0] = 1


def test_second_load_is_memoised(mnist):
    again = data.load_arrays()
    assert again[0].images is mnist[0].images and again[1].labels is mnist[1].labels


_DECODE = data._decode


def _fresh_load(monkeypatch, decode_calls):
    """load_arrays() past the in-process memo, recording which files had to be decoded from the IDX files."""
    data._parse.cache_clear()

    def spy(path, kind):
        decode_calls.append(path.name)
        return _DECODE(path, kind)

    monkeypatch.setattr(data, "_decode", spy)
    return data.load_arrays()


def test_known_files_are_kept_decoded_and_read_back(mnist, monkeypatch, isolated_cache):
    first_calls, second_calls = [], []
    first = _fresh_load(monkeypatch, first_calls)
    assert len(first_calls) == 4 and len(list((isolated_cache / "decoded").glob("*.npy"))) == 4
    second = _fresh_load(monkeypatch, second_calls)
    assert second_calls == []
    for a, b in zip(first, second):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
        assert not b.images.flags.writeable and not b.labels.flags.writeable


def test_a_damaged_decoded_copy_is_decoded_again(mnist, monkeypatch, isolated_cache):
    calls = []
    first = _fresh_load(monkeypatch, calls)
    labels_copy = isolated_cache / "decoded" / f"{data.CONTENT_MD5['mnist']['t10k-labels-idx1-ubyte']}.npy"
    raw = bytearray(labels_copy.read_bytes())
    raw[-1] = (raw[-1] + 1) % 10                     # still a valid label: only the CRC-32 can tell
    labels_copy.write_bytes(bytes(raw))
    calls.clear()
    again = _fresh_load(monkeypatch, calls)
    assert calls == ["t10k-labels-idx1-ubyte.gz"]
    assert np.array_equal(again[1].labels, first[1].labels)


def test_a_replaced_source_file_is_not_read_from_its_old_decoded_copy(mnist, monkeypatch, tmp_path):
    local = tmp_path / "mnist"
    local.mkdir()
    for name in data.FILES:
        (local / f"{name}.gz").write_bytes((SHARED / f"{name}.gz").read_bytes())
    monkeypatch.setenv("FASTMNIST_DATA", str(local))
    _fresh_load(monkeypatch, [])
    labels = np.array(mnist[1].labels)
    labels[0] = (labels[0] + 1) % 10
    (local / "t10k-labels-idx1-ubyte.gz").unlink()
    write(local, "t10k-labels-idx1-ubyte", idx(labels))
    data._parse.cache_clear()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: checksum mismatch"):
        data.load_arrays()


def test_a_cache_directory_that_cannot_be_written_only_costs_the_time(mnist, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")
    monkeypatch.setenv("FASTMNIST_CACHE", str(blocker))
    calls = []
    again = _fresh_load(monkeypatch, calls)
    assert len(calls) == 4 and blocker.is_file()
    assert np.array_equal(again[0].images, mnist[0].images) and np.array_equal(again[1].labels, mnist[1].labels)


def test_files_of_unknown_content_are_not_kept_decoded(tmp_path, isolated_cache):
    write_dataset(tmp_path / "fashion")
    load_fashion(tmp_path / "fashion")
    assert not (isolated_cache / "decoded").exists()


def test_splits(mnist):
    train, test = mnist
    first = data.load_splits("first-1000")
    assert (len(first.train), first.val, len(first.test)) == (1000, None, 10_000)
    assert np.array_equal(first.train.images, train.images[:1000])

    standard = data.load_splits()
    assert standard.name == "50k-10k-10k"
    assert (len(standard.train), len(standard.val), len(standard.test)) == (50_000, 10_000, 10_000)
    assert np.array_equal(standard.val.images, train.images[-10_000:])
    assert np.array_equal(standard.val.labels, train.labels[-10_000:])
    assert standard.val.images.flags.c_contiguous and standard.test.images is test.images

    full = data.load_splits("full")
    assert (len(full.train), full.val, len(full.test)) == (60_000, None, 10_000)


def test_fashion_refuses_the_mnist_files(mnist):
    with pytest.raises(DataError, match="MNIST file"):
        data.load_arrays("fashion-mnist")


# names


def test_unknown_names():
    with pytest.raises(DataError, match="mnist, fashion-mnist"):
        data.load_arrays("kmnist")
    with pytest.raises(DataError, match="first-1000, 50k-10k-10k, full"):
        data.load_splits("60k")


# Synthetic files


@pytest.mark.parametrize("gz", [True, False])
def test_synthetic_files_load(tmp_path, gz):
    arrays = write_dataset(tmp_path, gz=gz)
    train, test = load_fashion(tmp_path)
    assert np.array_equal(train.images, arrays["train-images-idx3-ubyte"].reshape(12, 784))
    assert np.array_equal(train.labels, arrays["train-labels-idx1-ubyte"])
    assert np.array_equal(test.images, arrays["t10k-images-idx3-ubyte"].reshape(5, 784))
    assert train.images.dtype == np.uint8 and not train.images.flags.writeable


def test_truncated_gzip(tmp_path):
    write_dataset(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="gzip") as error:
        load_fashion(tmp_path)
    assert str(path) in str(error.value)


def test_wrong_magic(tmp_path):
    arrays = write_dataset(tmp_path)
    path = write(tmp_path, "t10k-labels-idx1-ubyte", idx(arrays["t10k-labels-idx1-ubyte"], magic=2051))
    with pytest.raises(DataError, match="magic number 2051, expected 2049") as error:
        load_fashion(tmp_path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(("change", "problem"), [(lambda b: b[:-3], "truncated"), (lambda b: b + b"\0", "trailing")])
def test_wrong_length(tmp_path, change, problem):
    arrays = write_dataset(tmp_path, gz=False)
    path = write(tmp_path, "train-images-idx3-ubyte", change(idx(arrays["train-images-idx3-ubyte"])), gz=False)
    with pytest.raises(DataError, match=problem) as error:
        load_fashion(tmp_path)
    assert str(path) in str(error.value)


def test_count_mismatch(tmp_path):
    arrays = write_dataset(tmp_path)
    write(tmp_path, "t10k-labels-idx1-ubyte", idx(arrays["t10k-labels-idx1-ubyte"][:4]))
    with pytest.raises(DataError, match="5 images but .*t10k-labels-idx1-ubyte.gz has 4 labels"):
        load_fashion(tmp_path)


def test_bad_dims(tmp_path):
    write_dataset(tmp_path)
    path = write(tmp_path, "train-images-idx3-ubyte", idx(np.zeros((12, 28, 27))))
    with pytest.raises(DataError, match="28x27, expected 28x28") as error:
        load_fashion(tmp_path)
    assert str(path) in str(error.value)


def test_label_out_of_range(tmp_path):
    write_dataset(tmp_path)
    write(tmp_path, "train-labels-idx1-ubyte", idx(np.full(12, 10)))
    with pytest.raises(DataError, match="label 10 out of range"):
        load_fashion(tmp_path)


def test_mnist_checksum_mismatch(tmp_path):
    write_dataset(tmp_path)
    with pytest.raises(DataError, match="checksum mismatch.*expected 6bbc9ace898e44ae57da46a324031adb, got") as error:
        data.load_arrays("mnist", tmp_path, download=False)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in str(error.value)


def test_explicit_path_missing_files_does_not_fall_through(tmp_path, monkeypatch):
    write_dataset(tmp_path / "elsewhere")
    monkeypatch.setenv("FASTMNIST_DATA", str(tmp_path / "elsewhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="path argument .*empty") as error:
        load_fashion(tmp_path / "empty")
    assert "set FASTMNIST_DATA" in str(error.value)


def test_fastmnist_data_missing_files_does_not_fall_through(tmp_path, monkeypatch, isolated_cache):
    write_dataset(isolated_cache / "fashion-mnist")
    monkeypatch.setenv("FASTMNIST_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="FASTMNIST_DATA .*nowhere"):
        load_fashion(None)


def test_offline_error_names_everything(monkeypatch, isolated_cache):
    def offline(*args, **kwargs):
        raise ConnectionError("no network\nat all")

    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(DataError) as error:
        data.load_arrays()
    message = str(error.value)
    assert "\n" not in message
    for needle in (*data.FILES, "FASTMNIST_DATA not set", "set FASTMNIST_DATA", str(isolated_cache / "mnist")):
        assert needle in message


def test_download_goes_to_cache_and_is_found_there(tmp_path, monkeypatch, isolated_cache):
    arrays = write_dataset(tmp_path / "server")
    calls = []

    def fake_retrieve(url, known_hash, path, fname, progressbar=False, downloader=None):
        calls.append((url, known_hash))
        target = Path(path) / fname
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((tmp_path / "server" / fname).read_bytes())
        return str(target)

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    train, _ = data.load_arrays("fashion-mnist")
    assert np.array_equal(train.labels, arrays["train-labels-idx1-ubyte"])
    assert calls[0] == (data.MIRRORS["fashion-mnist"][0] + "train-images-idx3-ubyte.gz",
                        "md5:" + data.GZ_MD5["fashion-mnist"]["train-images-idx3-ubyte"])
    assert sorted(p.name for p in (isolated_cache / "fashion-mnist").iterdir()) == sorted(f"{n}.gz" for n in data.FILES)

    monkeypatch.setattr(pooch, "retrieve", None)
    assert np.array_equal(data.load_arrays("fashion-mnist")[0].labels, train.labels)


def test_download_tries_each_mirror(tmp_path, monkeypatch, isolated_cache):
    write_dataset(tmp_path / "server")
    monkeypatch.setitem(data.CONTENT_MD5, "mnist", {})
    tried = []

    def flaky_retrieve(url, known_hash, path, fname, progressbar=False, downloader=None):
        tried.append(url)
        if not url.startswith(data.MIRRORS["mnist"][-1]):
            raise ConnectionError("mirror down")
        target = Path(path) / fname
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((tmp_path / "server" / fname).read_bytes())
        return str(target)

    monkeypatch.setattr(pooch, "retrieve", flaky_retrieve)
    assert len(data.load_arrays()[0]) == 12
    assert tried[:3] == [mirror + "train-images-idx3-ubyte.gz" for mirror in data.MIRRORS["mnist"]]
