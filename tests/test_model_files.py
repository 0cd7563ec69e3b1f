"""Model files: written whole even by threads at once, and every bad file a one-line ModelFileError."""

import json
import threading
import tracemalloc

import numpy as np
import pytest

import fastmnist
from fastmnist import data
from fastmnist.errors import FastMnistError, ModelFileError
from fastmnist.files import write_atomically
from fastmnist.model import Model, _checksum


@pytest.fixture(scope="module")
def model():
    return fastmnist.train("grokking-3layer", backend="numpy", iterations=1, hidden=8, progress=False).model


def test_threads_writing_one_path_leave_one_whole_version(tmp_path):
    path = tmp_path / "f.bin"
    payloads = [bytes([i]) * 3_000_000 for i in range(8)]
    errors = []

    def write(payload):
        try:
            for _ in range(3):
                write_atomically(path, lambda f: [f.write(payload[i:i + 65536]) for i in range(0, len(payload), 65536)])
        except Exception as exc:     # noqa: BLE001  (any failure of a writer is what this test looks for)
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert path.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"], "no temporary file is left behind"


def test_threads_saving_one_model_path_leave_a_model_that_loads(model, tmp_path):
    path = tmp_path / "m.npz"
    errors = []

    def save():
        try:
            for _ in range(5):
                model.save(path)
        except Exception as exc:     # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=save) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert np.array_equal(fastmnist.load(path).weights[0], model.weights[0])


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, fail)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_written_file_is_flushed_to_disk_before_it_replaces_the_old(tmp_path, monkeypatch):
    import os
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.fstat(fd).st_size) or real_fsync(fd))
    write_atomically(tmp_path / "f.bin", lambda f: f.write(b"12345"))
    assert 5 in synced


def test_a_saved_model_keeps_the_umask_permissions(model, tmp_path):
    import os
    import stat
    old = os.umask(0o022)
    try:
        path = model.save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# -- reading model files ------------------------------------------------------------------------------

def rewrite(model, tmp_path, change):
    """The model's file with `change(arrays)` applied, its checksum (if left) recomputed as a forger would."""
    path = model.save(tmp_path / "m.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    if {"checksum", "recipe", "meta"} <= set(arrays):
        weights = {k: v for k, v in arrays.items() if k[0] in "Wb" and k[1:].isdigit()}
        arrays["checksum"] = np.array(_checksum(str(arrays["recipe"]), str(arrays["meta"]), weights))
    out = tmp_path / "forged.npz"
    np.savez(out, **arrays)
    return out


@pytest.mark.parametrize("change, words", [
    (lambda a: a.pop("recipe"), "lacks 'recipe'"),
    (lambda a: a.pop("checksum"), "lacks 'checksum'"),
    (lambda a: a.pop("meta"), "lacks 'meta'"),
    (lambda a: a.update(version=np.array("one")), "model format version 'one' is not supported (expected 1)"),
    (lambda a: a.update(version=np.array(2)), "model format version 2 is not supported (expected 1)"),
    (lambda a: a.update(W0=a["W0"].astype(np.int64)),
     "W0 holds int64 numbers; a model's parameters are float32 or float64"),
    (lambda a: a.update(W0=a["W0"].astype(np.complex64)), "W0 holds complex64 numbers"),
    (lambda a: a.update(W0=a["W0"].astype(np.float16)), "W0 holds float16 numbers"),
    (lambda a: a.update(W1=a["W1"].astype(np.float64)), "parameters mix float32 and float64"),
    (lambda a: a.update(meta=np.array("{not json")), "its meta is not JSON"),
    (lambda a: a.update(recipe=np.array(json.dumps({"name": "x"}))), "not a valid recipe description"),
])
def test_a_damaged_or_forged_model_file_is_a_model_file_error(model, tmp_path, change, words):
    path = rewrite(model, tmp_path, change)
    with pytest.raises(ModelFileError) as info:
        fastmnist.load(path)
    assert words in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_text_file_is_not_a_model_and_the_message_says_so_plainly(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("hello\n")
    with pytest.raises(ModelFileError) as info:
        fastmnist.load(path)
    message = str(info.value)
    assert "not a fastmnist model file" in message and "not an .npz archive" in message
    assert "pickle" not in message and "unsafely" not in message


def test_a_model_in_memory_with_integer_weights_is_refused(model):
    with pytest.raises(ModelFileError, match="int64"):
        Model(model.recipe, [w.astype(np.int64) for w in model.weights], model.biases)


# -- predicting -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0, 784), (0, 28, 28)])
def test_predicting_no_images_gives_no_labels(model, shape):
    images = np.zeros(shape, np.uint8)
    assert model.predict(images).shape == (0,)
    assert model.predict_proba(images).shape == (0, 10)
    assert model.scores(images.astype(np.float32)).shape == (0, 10)


def test_a_ragged_list_of_images_is_a_fastmnist_error(model):
    with pytest.raises(FastMnistError, match="images must be an array"):
        model.predict([[0] * 784, [0] * 783])


def test_predict_works_in_chunks_and_needs_little_more_memory_than_its_input(model):
    images = np.concatenate([data.load_splits("first-1000").test.images] * 5)        # 50,000 uint8 images
    expected = np.concatenate([model.predict(images[i:i + 1000]) for i in range(0, len(images), 1000)])
    tracemalloc.start()
    try:
        labels = model.predict(images)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert labels.shape == expected.shape and (labels == expected).mean() > 0.999
    assert peak < images.nbytes, f"predict's peak {peak / 2**20:.0f} MiB for {images.nbytes / 2**20:.0f} MiB of images"


def test_saving_over_a_model_keeps_its_permissions_and_a_new_one_gets_the_umasks(model, tmp_path, monkeypatch):
    import os
    import stat
    path = model.save(tmp_path / "m.npz")
    os.chmod(path, 0o600)
    modes = []
    real_fsync = os.fsync

    def fsync(fd):          # the data reach the temporary file only once it is private
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    old = os.umask(0o022)
    try:
        model.save(path)
        other = model.save(tmp_path / "new.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and modes[0] == 0o600
    assert stat.S_IMODE(other.stat().st_mode) == 0o644
    assert fastmnist.load(path).meta == model.meta


def test_a_name_as_long_as_the_system_allows_can_be_saved(model, tmp_path):
    import os
    from fastmnist.files import check_writable
    longest = os.pathconf(tmp_path, "PC_NAME_MAX")
    path = tmp_path / ("m" * (longest - len(".npz")) + ".npz")
    check_writable(path)
    assert model.save(path) == path and fastmnist.load(path).meta == model.meta
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary or probe file is left"


def test_load_reads_a_model_by_the_name_it_was_saved_under(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert model.save("m").name == "m.npz"
    assert fastmnist.load("m").meta == model.meta
    (tmp_path / "m").write_bytes(b"not a model")     # a file of that very name is the one meant
    with pytest.raises(ModelFileError, match="not an .npz archive"):
        fastmnist.load("m")
    with pytest.raises(ModelFileError, match=r"^nothing: no such model file \(nor nothing.npz\)$"):
        fastmnist.load("nothing")
