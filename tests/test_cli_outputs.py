"""The CLI never trains for nothing: outputs are checked before training, a model is kept even when its
destination fails, and a model is evaluated on the dataset it was trained on."""

import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import fastmnist
from fastmnist import cli
from fastmnist.errors import OutputError

CWD = os.path.dirname(os.path.abspath(__file__))
TRAIN = ["train", "--preset", "grokking-3layer", "--backend", "numpy", "--iterations", "1", "--quiet"]


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fastmnist", *args], capture_output=True, text=True, cwd=CWD,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.parametrize("where", ["under a file", "a directory", "a directory without .npz", "."])
def test_an_out_that_cannot_be_written_is_refused_before_training(tmp_path, where):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    out = {"under a file": blocker / "m.npz", "a directory": tmp_path / "m.npz",
           "a directory without .npz": tmp_path / "runs", ".": "."}[where]
    if where.startswith("a directory"):
        out.mkdir()
    r = run(*TRAIN, "--out", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and f"cannot write {out}" in r.stderr
    assert "I:0" not in r.stdout and " epoch" not in r.stdout, "nothing was trained"


def test_a_model_whose_out_fails_after_training_is_saved_elsewhere_and_the_user_told(tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs" / "m.npz"
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "rescue"))
    (tmp_path / "rescue").mkdir()
    real_save = fastmnist.Model.save

    def save(self, path):
        if os.fspath(path) == os.fspath(out):
            raise OutputError(f"cannot write {out}: No space left on device")
        return real_save(self, path)

    monkeypatch.setattr(fastmnist.Model, "save", save)
    status = cli.main([*TRAIN, "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    kept = list((tmp_path / "rescue").glob("fastmnist-grokking-3layer-*.npz"))
    assert len(kept) == 1 and f"the model was saved to {kept[0]} instead" in err
    assert "No space left on device" in err
    assert fastmnist.load(kept[0]).meta["iterations_done"] == 1


# -- the dataset a model was trained on --------------------------------------------------------------------

def fake_fashion(directory, n_train=30, n_test=7):
    """Four IDX files of random images: structurally valid Fashion-MNIST files that are not MNIST's."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for name, a, magic in ((f"{prefix}-images-idx3-ubyte", images, 2051),
                               (f"{prefix}-labels-idx1-ubyte", labels, 2049)):
            header = struct.pack(f">{1 + a.ndim}i", magic, *a.shape)
            (directory / f"{name}.gz").write_bytes(gzip.compress(header + a.tobytes()))
    return directory


def test_eval_uses_the_dataset_the_model_was_trained_on(tmp_path):
    fashion = fake_fashion(tmp_path / "fashion")
    out = tmp_path / "f.npz"
    r = run(*TRAIN, "--dataset", "fashion-mnist", "--data", str(fashion), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert fastmnist.load(out).meta["dataset"] == "fashion-mnist"
    e = run("eval", str(out), "--data", str(fashion))
    assert e.returncode == 0, e.stderr
    assert "test accuracy" in e.stdout and "(7 images)" in e.stdout and "fashion-mnist" in e.stdout


def test_eval_on_another_dataset_than_the_model_was_trained_on_says_so(tmp_path):
    fashion = fake_fashion(tmp_path / "fashion")
    out = tmp_path / "f.npz"
    assert run(*TRAIN, "--dataset", "fashion-mnist", "--data", str(fashion), "--out", str(out)).returncode == 0
    e = run("eval", str(out), "--dataset", "mnist")
    assert e.returncode == 0, e.stderr
    assert "(10000 images)" in e.stdout
    assert "note: the model was trained on fashion-mnist, evaluated here on mnist" in e.stderr
