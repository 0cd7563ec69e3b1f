"""fastmnist.train, the model it returns, saving and loading, and the backend registry."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastmnist
from fastmnist import data, dispatch
from fastmnist.errors import BackendUnavailable, FastMnistError, ModelFileError, TrainingDiverged
from fastmnist.kernels.reference import ReferenceBackend


@pytest.fixture(scope="module")
def result():
    return fastmnist.train("grokking-3layer", backend="numpy", dtype="float32", iterations=3, progress=False)


@pytest.fixture(scope="module")
def test_split():
    return data.load_splits("first-1000").test


def test_result_holds_model_history_and_timings(result):
    assert [r["iteration"] for r in result.history] == [0, 2]
    assert set(result.history[0]) >= {"loss", "train_err", "train_acc", "test_err", "test_acc", "elapsed_s"}
    assert result.timings["train_s"] > 0 and result.timings["per_iteration_s"] > 0
    assert result.backend == "numpy" and result.dtype == "float32"
    assert result.model.dtype == np.float32
    assert "grokking-3layer on numpy (float32, reference operations): 3 epochs;" in result.summary()
    assert result.path == "reference operations" and result.model.meta["path"] == result.path


def test_predict_accepts_uint8_float_and_square_images(result, test_split):
    images = test_split.images[:200]
    labels = result.model.predict(images)
    assert labels.shape == (200,) and labels.dtype.kind == "i"
    assert np.array_equal(labels, result.model.predict(images.reshape(200, 28, 28)))
    assert np.array_equal(labels, result.model.predict(images / 255.0))
    accuracy = (result.model.predict(test_split.images) == test_split.labels).mean()
    assert accuracy == pytest.approx(result.history[-1]["test_acc"], abs=1e-3)
    proba = result.model.predict_proba(images)
    assert proba.shape == (200, 10) and np.allclose(proba.sum(axis=1), 1)
    assert np.array_equal(proba.argmax(axis=1), labels)


@pytest.mark.parametrize("images, words", [
    (np.zeros((3, 785), np.uint8), "shape"),
    (np.zeros((3, 28, 27), np.uint8), "shape"),
    (np.zeros((3, 784), np.int32), "dtype int32"),
    (np.full((3, 784), 2.0), r"\[0, 1\]"),
    (np.full((3, 784), np.nan), "NaN"),
])
def test_predict_rejects_bad_images(result, images, words):
    with pytest.raises(FastMnistError, match=words):
        result.model.predict(images)


def test_save_and_load_round_trip(result, tmp_path, test_split):
    path = result.model.save(tmp_path / "m.npz")
    loaded = fastmnist.load(path)
    assert loaded.recipe == result.model.recipe
    assert loaded.meta["backend"] == "numpy"
    assert loaded.meta["history"] == result.history and loaded.meta["timings"] == result.timings
    assert np.array_equal(loaded.predict(test_split.images), result.model.predict(test_split.images))


def test_loading_a_tampered_file_fails(result, tmp_path):
    path = result.model.save(tmp_path / "m.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["W0"] = arrays["W0"] + np.float32(1e-3)
    np.savez(tmp_path / "t.npz", **arrays)
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        fastmnist.load(tmp_path / "t.npz")


@pytest.mark.parametrize("content, words", [
    (b"not a zip at all", "not a fastmnist model file"),
    (None, "no 'fastmnist-model' marker"),
])
def test_loading_a_foreign_file_fails(tmp_path, content, words):
    path = tmp_path / "f.npz"
    if content is None:
        np.savez(path, W0=np.zeros(3))
    else:
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match=words):
        fastmnist.load(path)


def test_loading_a_missing_file_fails(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        fastmnist.load(tmp_path / "absent.npz")


def test_divergence_names_the_iteration():
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at iteration 0") as info:
        fastmnist.train("grokking-3layer", backend="numpy", iterations=2, lr=1e6, progress=False)
    assert info.value.history == []


def test_callback_sees_rows_and_can_stop():
    seen = []
    result = fastmnist.train("grokking-3layer", backend="numpy", iterations=30, progress=False,
                             callback=lambda row: seen.append(row) or row["iteration"] >= 10)
    assert [r["iteration"] for r in seen] == [0, 10]
    assert result.stopped_early and result.model.recipe.iterations == 11


def test_same_seed_same_result_and_seed_changes_it():
    runs = [fastmnist.train("grokking-dropout", backend="numpy", iterations=1, seed=s, progress=False,
                            hidden=20).history[0]["test_acc"] for s in (5, 5, 6)]
    assert runs[0] == runs[1] != runs[2]


def test_backends_lists_each_with_availability():
    infos = {i.name: i for i in fastmnist.backends()}
    assert infos["numpy"].available and infos["numpy"].reason == ""
    for info in infos.values():
        assert info.available or info.reason


def test_unknown_and_unavailable_backends_say_why():
    with pytest.raises(BackendUnavailable, match="unknown backend 'tpu'"):
        fastmnist.train("grokking-3layer", backend="tpu", progress=False)
    dispatch.register("broken-test", lambda: (_ for _ in ()).throw(ImportError("libfoo.so missing")), "test")
    try:
        info = {i.name: i for i in fastmnist.backends()}["broken-test"]
        assert not info.available and info.reason == "libfoo.so missing"
        with pytest.raises(BackendUnavailable, match="'broken-test' is unavailable: libfoo.so missing"):
            dispatch.get_backend("broken-test")
    finally:
        dispatch.unregister("broken-test")
    assert "broken-test" not in dispatch.names()


def test_auto_takes_the_available_backend_of_highest_priority():
    infos = fastmnist.backends()
    assert [i.priority for i in infos] == sorted((i.priority for i in infos), reverse=True)
    expected = next(i.name for i in infos if i.available)
    assert dispatch.get_backend("auto").name == expected


class _Plain(ReferenceBackend):
    def __init__(self, name):
        super().__init__(name=name)


def test_a_registered_backend_of_higher_priority_becomes_auto():
    top = max(i.priority for i in fastmnist.backends())
    dispatch.register("first-test", lambda: _Plain("first-test"), "test", priority=top + 1)
    dispatch.register("second-test", lambda: _Plain("second-test"), "test", priority=top + 1)
    try:
        assert dispatch.get_backend("auto").name == "first-test"        # ties: the one registered first
        dispatch.register("first-test", lambda: (_ for _ in ()).throw(RuntimeError("gone")), "test",
                          priority=top + 1)
        assert dispatch.get_backend("auto").name == "second-test"       # the next one available
        result = fastmnist.train("grokking-3layer", backend="auto", iterations=1, progress=False)
        assert result.backend == "second-test"
    finally:
        dispatch.unregister("first-test")
        dispatch.unregister("second-test")
    assert dispatch.get_backend("auto").name not in ("first-test", "second-test")


def test_a_backend_object_lacking_part_of_the_contract_is_unavailable_with_the_reason():
    dispatch.register("partial-test", lambda: object(), "test")
    try:
        info = {i.name: i for i in fastmnist.backends()}["partial-test"]
        assert not info.available and "lacks asarray" in info.reason and "interface.Backend" in info.reason
    finally:
        dispatch.unregister("partial-test")


@pytest.mark.parametrize("name, device", [("auto", "cpu"), ("", "cpu"), ("x", "tpu")])
def test_register_refuses_bad_names_and_devices(name, device):
    with pytest.raises(ValueError):
        dispatch.register(name, object, "test", device=device)


def test_no_public_name_shadows_a_module():
    import importlib
    import pkgutil
    import types

    modules = {m.name for m in pkgutil.iter_modules(fastmnist.__path__) if not m.name.startswith("_")}
    assert {"training", "sweeps", "dispatch"} <= modules
    for name in fastmnist.__all__:
        assert name not in modules, name
    for name in modules:
        module = importlib.import_module(f"fastmnist.{name}")
        assert getattr(fastmnist, name) is module, name
        assert isinstance(module, types.ModuleType)


def test_bad_dtype():
    with pytest.raises(FastMnistError, match="unsupported dtype 'float16'"):
        fastmnist.train("grokking-3layer", backend="numpy", dtype="float16", progress=False)


def test_target_accuracy_stops_at_the_first_report_reaching_it():
    result = fastmnist.train("grokking-3layer", backend="numpy", dtype="float64", iterations=30, progress=False,
                             target_accuracy=0.7, eval_every=1)
    accs = [r["test_acc"] for r in result.history]
    assert accs[-1] >= 0.7 and all(a < 0.7 for a in accs[:-1])
    assert result.target_iteration == result.history[-1]["iteration"] >= 1
    assert 0 < result.timings["time_to_target_s"] <= result.timings["total_s"]
    assert "reached 70.00% test accuracy" in result.summary()


def test_lr_decay_changes_the_run():
    plain = fastmnist.train("grokking-3layer", backend="numpy", iterations=2, progress=False).final
    decayed = fastmnist.train("grokking-3layer", backend="numpy", iterations=2, lr_decay=0.5, progress=False).final
    assert plain["iteration"] == decayed["iteration"] == 1 and plain["train_err"] != decayed["train_err"]


@pytest.mark.parametrize("preset_value,expected", [(None, "4"), ("12", "12")])
def test_import_sets_openblas_thread_timeout_unless_the_user_did(preset_value, expected):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if preset_value is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = preset_value
    code = "import os, fastmnist; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_source_checkout_imports_its_kernels_as_fastmnist_kernels_and_never_as_kernels():
    code = ("import fastmnist, fastmnist.kernels.cpu.backend as b, fastmnist.kernels.cuda.fused_step as f; "
            "print(b.__file__); print(f.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for line in out.stdout.split():
        assert os.path.commonpath([line, os.path.join(ROOT, "kernels")]) == os.path.join(ROOT, "kernels")
    clash = subprocess.run([sys.executable, "-c", "import kernels"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert clash.returncode != 0 and "imports as fastmnist.kernels" in clash.stderr


def test_train_defaults_to_the_fast_preset_and_counts_its_epochs():
    result = fastmnist.train(backend="numpy", iterations=2, hidden=32, batch_size=2000, target_accuracy=0.5,
                             progress=False)
    assert result.recipe.name == "fast" and result.recipe.unit == "epoch"
    assert result.target_iteration == 0
    summary = result.summary()
    assert "fast on numpy (float32, reference operations): 1 epoch;" in summary
    assert "reached 50.00% test accuracy at epoch 1 after" in summary and "iteration" not in summary
    full_batch = fastmnist.train("branchnet", backend="numpy", iterations=1, progress=False)
    assert "branchnet on numpy (float32, reference operations): 1 iteration;" in full_batch.summary()
