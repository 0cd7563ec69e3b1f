"""The compiled CPU kernels at each vector width this host runs: kernel tests again, in a fresh process with
FASTMNIST_VECTOR_BYTES forcing 32- and then 64-byte vectors on every kernel (by default each kernel takes its
own width, kernels/cpu/simd.py's PREFERRED). test_cpu_simd.py covers the SIMD loops at every width in-process;
these runs cover the kernels built on them. A forced width compiles in memory, never into Numba's cache.

The default run checks each width-dependent kernel at each forced width that the rest of the tests run it at in
neither dtype, in one dtype (so every kernel meets the reference at every width, and in both dtypes at its own),
through the tests named for it in FOCUS, in one process per width. The exhaustive run (`--exhaustive`) runs
every kernel test file whole at each forced width."""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from fastmnist.kernels.cpu import simd

ROOT = Path(__file__).resolve().parent.parent
KERNEL_TESTS = ["tests/test_cpu_sparse.py", "tests/test_cpu_head.py", "tests/test_cpu_minibatch.py",
                "tests/test_cpu_repeat_epoch.py", "tests/test_cpu_backend.py", "tests/test_cpu_general_epoch.py"]
# The tests that check each width-dependent kernel (each key of simd.PREFERRED) against the reference.
FOCUS = {
    "sparse_forward": ["tests/test_cpu_sparse.py::test_sparse_forward_and_weight_gradient_match_the_dense_layer"],
    "weight_grad": ["tests/test_cpu_sparse.py::test_weight_gradient_from_column_blocks_matches_the_dense_layer",
                    "tests/test_cpu_sparse.py::test_sparse_step_full_batch_matches_reference"],
    "batch1_epoch": ["tests/test_cpu_sparse.py::test_batch1_epoch_matches_reference",
                     "tests/test_cpu_repeat_epoch.py::test_repeated_update_epoch_matches_the_reference_loop"],
    "head": ["tests/test_cpu_head.py::test_head_step_matches_the_composed_operations"],
    "minibatch_epoch": ["tests/test_cpu_minibatch.py::test_minibatch_epoch_matches_reference",
                        "tests/test_cpu_minibatch.py::test_one_hidden_layer_evaluation_matches_reference"],
    "dense_small": ["tests/test_cpu_backend.py::test_small_and_blas_dense_paths_agree_with_the_reference"],
}
FORCED = [w for w in (32, 64) if w <= simd.HOST_VECTOR_BYTES]


def run_at_width(vbytes, *pytest_args, env=None):
    env = dict(env or os.environ, FASTMNIST_VECTOR_BYTES=str(vbytes))
    probe = subprocess.run([sys.executable, "-c", "from fastmnist.kernels.cpu import simd; "
                            "print(simd.VECTOR_BYTES, simd.CACHE, sorted({simd.width(k) for k in simd.PREFERRED}))"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert probe.stdout.split() == [str(vbytes), "False", f"[{vbytes}]"], probe.stdout + probe.stderr
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *pytest_args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    return out.stdout


def focus_at(vbytes) -> tuple[list[str], str]:
    """(test ids, -k expression): FOCUS's tests for each kernel that runs at `vbytes` in neither dtype by default,
    in one dtype, float64 and float32 in turn over such kernels: every kernel then meets the reference at every
    width once, and in both dtypes at its own widths (the exhaustive run adds every other dtype x width)."""
    tests, terms = [], []
    needing = [k for k in FOCUS if all(simd.width(k, np.dtype(d)) != vbytes for d in ("float32", "float64"))]
    for n, kernel in enumerate(needing):
        dtype = ("float64", "float32")[n % 2]
        for test_id in FOCUS[kernel]:
            tests.append(test_id)
            terms.append(f"({test_id.split('::')[1]} and {dtype})")
    return sorted(set(tests)), " or ".join(terms)


def test_every_width_dependent_kernel_has_its_tests_named():
    assert set(FOCUS) == set(simd.PREFERRED)
    for ids in FOCUS.values():
        for test_id in ids:
            path, name = test_id.split("::")
            assert path in KERNEL_TESTS and f"def {name}(" in (ROOT / path).read_text(), test_id


class Background:
    """The focused runs, started one after the other in a thread as soon as the session has collected its tests
    (tests/conftest.py), so that they compile on a second core while this process tests the rest. Each uses a
    Numba cache directory of its own: Numba's on-disk cache index has no lock across processes. Work buffers
    are poisoned there as in every test (tests/conftest.py sets the variable only while a test runs)."""

    def __init__(self, widths):
        self.outcome, self.done = {}, {w: threading.Event() for w in widths}
        threading.Thread(target=self._run_all, args=(list(widths),), daemon=True).start()

    def _run_all(self, widths):
        for vbytes in widths:
            cache = tempfile.mkdtemp(prefix=f"fastmnist-width{vbytes}-")
            env = dict(os.environ, NUMBA_CACHE_DIR=cache, FASTMNIST_POISON_SCRATCH="1")
            try:
                tests, expression = focus_at(vbytes)
                if tests:      # pytest exits 5 when -k selects nothing: that fails too
                    run_at_width(vbytes, *tests, "-k", expression, env=env)
                self.outcome[vbytes] = bool(tests)
            except BaseException as error:  # noqa: BLE001  (handed to the test, which raises it)
                self.outcome[vbytes] = error
            finally:
                shutil.rmtree(cache, ignore_errors=True)
                self.done[vbytes].set()

    def result(self, vbytes, timeout=3000):
        assert self.done[vbytes].wait(timeout), f"the run at {vbytes} bytes did not finish in {timeout} s"
        outcome = self.outcome[vbytes]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


RUNS = {}      # width -> the Background running it


def start_in_background(widths) -> dict:
    widths = [w for w in widths if w not in RUNS]
    if widths:
        runs = Background(widths)
        RUNS.update((w, runs) for w in widths)
    return RUNS


@pytest.mark.parametrize("vbytes", FORCED)
def test_each_kernel_passes_its_tests_at_a_forced_width(vbytes):
    # started when the session finished collecting (tests/conftest.py), else now
    if not start_in_background([vbytes])[vbytes].result(vbytes):
        pytest.skip(f"every width-dependent kernel already ran at {vbytes} bytes in both dtypes")


@pytest.mark.exhaustive
@pytest.mark.parametrize("vbytes", FORCED)
def test_the_kernel_test_files_pass_whole_at_a_forced_width(vbytes):
    run_at_width(vbytes, "--exhaustive", *KERNEL_TESTS)


def test_a_forced_width_must_be_one_the_kernels_know():
    env = dict(os.environ, FASTMNIST_VECTOR_BYTES="48")
    out = subprocess.run([sys.executable, "-c", "import fastmnist.kernels.cpu.simd"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "FASTMNIST_VECTOR_BYTES must be one of 16, 32, 64" in out.stderr
