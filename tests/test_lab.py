"""Every kernel-lab file (bench/lab/*.py) validates each of its versions against its reference on small
inputs (`--check`), so the lab cannot rot while the kernels it imports change."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "bench" / "lab"
FILES = sorted(p.name for p in LAB.glob("*.py") if p.name != "harness.py")
# The lab imports the fastmnist of this checkout, as the tests do (a lab file's own folder, not the root, starts
# its sys.path, so it would otherwise take an installed copy): the kernels it checks are the ones under test,
# and the compiled ones the tests left in Numba's cache serve it instead of being compiled again for another path.
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))


def test_the_lab_has_files():
    assert {"sparse_forward.py", "weight_grad.py", "head.py", "batch1_epoch.py", "minibatch_epoch.py"} <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_lab_file_validates_every_version(name):
    out = subprocess.run([sys.executable, str(LAB / name), "--check"], capture_output=True, text=True,
                         timeout=900, env=ENV)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert lines and all(line.endswith("ok") for line in lines), out.stdout
    assert any("float64" in line for line in lines) and any("float32" in line for line in lines)


def test_a_version_that_computes_something_else_fails_the_check(tmp_path):
    broken = tmp_path / "broken_lab.py"
    broken.write_text(f"""
import sys
sys.path.insert(0, {str(LAB)!r})
import numpy as np
from harness import run_main
CASES = {{"3x4": (3, 4)}}
REAL = (3, 4)
def inputs(shape, dtype, rng, real):
    return {{"a": rng.standard_normal(shape).astype(dtype)}}
def reference(d):
    return (d["a"] * 2,)
VERSIONS = {{"v1": lambda d, k: (lambda: (d["a"] * 2,)), "v2": lambda d, k: (lambda: (d["a"] * 2.001,)),
             "v3": lambda d, k: (lambda: (d["a"] * np.nan,))}}
run_main(globals())
""")
    out = subprocess.run([sys.executable, str(broken), "--check"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    verdicts = {line.split()[0]: line.split()[-1] for line in out.stdout.splitlines()}
    assert verdicts == {"v1": "ok", "v2": "FAIL", "v3": "FAIL"}
