"""The compiled CPU kernels at each vector width this host runs: the kernel tests again, in a fresh process with
FASTMNIST_VECTOR_BYTES forcing 32- and then 64-byte vectors on every kernel (by default each kernel takes its
own width, kernels/cpu/simd.py's PREFERRED). test_cpu_simd.py covers the SIMD loops at every width in-process;
these runs cover the kernels built on them. A forced width compiles in memory, never into Numba's cache."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastmnist.kernels.cpu import simd

ROOT = Path(__file__).resolve().parent.parent
KERNEL_TESTS = ["tests/test_cpu_sparse.py", "tests/test_cpu_head.py", "tests/test_cpu_minibatch.py",
                "tests/test_cpu_repeat_epoch.py", "tests/test_cpu_backend.py"]


@pytest.mark.parametrize("vbytes", [w for w in (32, 64) if w <= simd.HOST_VECTOR_BYTES])
def test_the_kernel_tests_pass_at_a_forced_width(vbytes):
    env = dict(os.environ, FASTMNIST_VECTOR_BYTES=str(vbytes))
    probe = subprocess.run([sys.executable, "-c", "from fastmnist.kernels.cpu import simd; "
                            "print(simd.VECTOR_BYTES, simd.CACHE, sorted({simd.width(k) for k in simd.PREFERRED}))"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert probe.stdout.split() == [str(vbytes), "False", f"[{vbytes}]"], probe.stdout + probe.stderr
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *KERNEL_TESTS],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_a_forced_width_must_be_one_the_kernels_know():
    env = dict(os.environ, FASTMNIST_VECTOR_BYTES="48")
    out = subprocess.run([sys.executable, "-c", "import fastmnist.kernels.cpu.simd"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "FASTMNIST_VECTOR_BYTES must be one of 16, 32, 64" in out.stderr
