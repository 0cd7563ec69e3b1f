"""Model files read only what fastmnist writes, every size checked before it is read, every meta field typed."""

import json
import os
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastmnist
from fastmnist import model_file
from fastmnist.errors import ModelFileError
from fastmnist.model import _checksum

CWD = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def model():
    return fastmnist.train("grokking-3layer", backend="numpy", iterations=1, hidden=8, progress=False).model


def members(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def forged(model, tmp_path, change=lambda a: None, extra=None):
    """The model's file with `change(arrays)` applied and its checksum recomputed, as a forger would, plus
    `extra(zipfile)` writing members of its own."""
    arrays = members(model.save(tmp_path / "m.npz"))
    change(arrays)
    weights = {k: v for k, v in arrays.items() if k[0] in "Wb" and k[1:].isdigit()}
    arrays["checksum"] = np.array(_checksum(str(arrays["recipe"]), str(arrays["meta"]), weights))
    out = tmp_path / "forged.npz"
    np.savez(out, **arrays)
    if extra is not None:
        with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_DEFLATED) as z:
            extra(z)
    return out


def load_error(path) -> str:
    with pytest.raises(ModelFileError) as info:
        fastmnist.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def peak_while(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# -- bombs: sizes are checked before anything is read --------------------------------------------------------

def test_an_extra_member_inflating_to_64_mib_is_refused_unread(model, tmp_path):
    def bomb(z):
        with z.open("extra.npy", "w", force_zip64=True) as f:
            zeros = bytes(1 << 20)
            for _ in range(64):
                f.write(zeros)

    path = forged(model, tmp_path, extra=bomb)
    assert path.stat().st_size < 1 << 20
    messages = []
    peak = peak_while(lambda: messages.append(load_error(path)))
    assert "members fastmnist does not write ('extra.npy')" in messages[0]
    assert peak < 8 << 20, f"loading peaked at {peak / 2**20:.0f} MiB"


def npy_header(shape, dtype="<f4") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


@pytest.mark.parametrize("shape, words", [
    ((10**12,), "its W0 has shape (1000000000000,), expected (784, 8)"),
    ((784, 10**10), "its W0 has shape (784, 10000000000), expected (784, 8)"),
])
def test_a_parameter_whose_header_claims_terabytes_is_refused_before_any_allocation(model, tmp_path, shape, words):
    def change(arrays):
        arrays.pop("W0")

    path = forged(model, tmp_path, change, extra=lambda z: z.writestr("W0.npy", npy_header(shape) + bytes(64)))
    assert words in load_error(path)


def test_a_recipe_forged_to_a_network_larger_than_the_machine_is_refused_before_its_parameters(model, tmp_path):
    def change(arrays):
        recipe = json.loads(str(arrays["recipe"]))
        recipe["layers"][0]["branches"][0]["units"] = 10**11
        arrays["recipe"] = np.array(json.dumps(recipe))
        arrays.pop("W0"), arrays.pop("W1")

    def claims(z):
        z.writestr("W0.npy", npy_header((784, 10**11)) + bytes(64))
        z.writestr("W1.npy", npy_header((10**11, 10)) + bytes(64))

    message = load_error(forged(model, tmp_path, change, extra=claims))
    assert "its recipe's network needs" in message and "this machine has" in message


@pytest.mark.parametrize("change, words", [
    (lambda a: a.update(W0=a["W0"][:4]), "its W0 has shape (4, 8), expected (784, 8)"),
    (lambda a: a.update(W0=np.array(["x"] * 8)), "its W0 holds <U1 values"),
    (lambda a: a.update(b0=np.zeros(8, np.float32)), "layer 0 bias does not match the recipe"),
    (lambda a: a.update(W7=np.zeros(3, np.float32)), "it holds W7, which recipe 'grokking-3layer' has no place for"),
    (lambda a: a.update(recipe=np.array(3)), "its recipe holds int64 values"),
    (lambda a: a.update(meta=np.array("x" * 20_000 + "{}")), "its meta claims shape () of <U20002: 80,008 bytes, "
                                                             "more than the 65,536 this file may hold"),
])
def test_members_of_the_wrong_kind_or_size_are_one_line(model, tmp_path, monkeypatch, change, words):
    monkeypatch.setitem(model_file.TEXT_LIMITS, "meta", 1 << 16)
    assert words in load_error(forged(model, tmp_path, change))


def test_a_member_shorter_than_its_header_says_is_one_line(model, tmp_path):
    def change(arrays):
        arrays.pop("W1")

    path = forged(model, tmp_path, change, extra=lambda z: z.writestr("W1.npy", npy_header((8, 10)) + bytes(100)))
    assert "its W1 is 228 bytes long, but its header says 448" in load_error(path)


def test_a_fifo_or_a_device_is_not_read_as_a_model(tmp_path):
    fifo = tmp_path / "m.npz"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        with pytest.raises(ModelFileError, match="no such model file|not a regular file"):
            fastmnist.load(path)


# -- nested or wrongly typed JSON ----------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("change, words", [
    (lambda a: a.update(meta=np.array(DEEP)), "its meta is nested too deeply"),
    (lambda a: a.update(meta=np.array('{"x": ' + DEEP + "}")), "its meta is nested too deeply"),
    (lambda a: a.update(recipe=np.array(DEEP)), "not a valid recipe description: maximum recursion depth"),
])
def test_deeply_nested_json_is_one_line(model, tmp_path, change, words):
    assert words in load_error(forged(model, tmp_path, change))


def meta_change(**fields):
    def change(arrays):
        meta = json.loads(str(arrays["meta"]))
        for key, value in fields.items():
            part, _, field = key.partition("__")
            if field:
                meta[part][field] = value
            else:
                meta[part] = value
        arrays["meta"] = np.array(json.dumps(meta))
    return change


@pytest.mark.parametrize("fields, words", [
    (dict(history=[1, 2]), "its meta.history[0] must be a report row (a JSON object), got 1"),
    (dict(history={"a": 1}), "its meta.history must be a list of report rows, got {'a': 1}"),
    (dict(history=[{"iteration": 0}]), "its meta.history[0] lacks 'loss'"),
    (dict(history=[{"iteration": "0", "loss": 1.0}]), "its meta.history[0].iteration must be a non-negative integer"),
    (dict(history=[{"iteration": 0, "loss": 1.0, "test_acc": "x", "test_err": 1}]),
     "its meta.history[0].test_acc must be a number, got 'x'"),
    (dict(history=[{"iteration": 0, "loss": 1.0, "test_acc": 0.5}]), "has test_acc but no test_err"),
    (dict(timings__train_s="x"), "its meta.timings.train_s must be a number, got 'x'"),
    (dict(timings=[1]), "its meta.timings must be a JSON object, got [1]"),
    (dict(iterations_done=True), "its meta.iterations_done must be a non-negative integer, got True"),
    (dict(iterations_done=-1), "its meta.iterations_done must be a non-negative integer, got -1"),
    (dict(dataset=["mnist"]), "its meta.dataset must be text, got ['mnist']"),
    (dict(backend=None), "its meta.backend must be text, got None"),
    (dict(final=[1]), "its meta.final must be a report row (a JSON object), got [1]"),
    (dict(interrupted="yes"), "its meta.interrupted must be true or false, got 'yes'"),
])
def test_a_meta_field_of_the_wrong_type_is_one_line(model, tmp_path, fields, words):
    assert words in load_error(forged(model, tmp_path, meta_change(**fields)))


def test_eval_of_a_file_with_a_forged_meta_is_one_line_and_status_2(model, tmp_path):
    path = forged(model, tmp_path, meta_change(history=[1, 2]))
    r = subprocess.run([sys.executable, "-m", "fastmnist", "eval", str(path), "--history"], capture_output=True,
                       text=True, cwd=CWD, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "meta.history[0] must be a report row" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_saved_model_still_loads_whole(model, tmp_path):
    loaded = fastmnist.load(model.save(tmp_path / "m.npz"))
    assert loaded.meta == json.loads(json.dumps(model.meta))
    assert all(np.array_equal(a, b) for a, b in zip(loaded.weights, model.weights))
