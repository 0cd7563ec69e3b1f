"""Settings every test and benchmark needs, made before any of them imports numba or reads data."""

import os
from pathlib import Path

# The real MNIST files beside the repository unless FASTMNIST_DATA says otherwise (made absolute, since some
# tests run subprocesses elsewhere); a missing file makes the tests that need it fail, never skip.
_default = Path(__file__).resolve().parent.parent / "shared" / "data" / "mnist"
os.environ["FASTMNIST_DATA"] = str(Path(os.environ.get("FASTMNIST_DATA", _default)).resolve())

# numba-cuda kernels run in numba-cuda's CPU simulator unless a real GPU is asked for (FASTMNIST_REAL_GPU=1).
# numba.cuda reads the variable when it is first imported, so it is set here, before anything imports it.
if os.environ.get("FASTMNIST_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
