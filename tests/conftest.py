import os
from pathlib import Path

# Tests read the real MNIST files beside the repository unless FASTMNIST_DATA says otherwise (made absolute,
# since some tests run subprocesses elsewhere); a missing file makes the tests that need it fail, never skip.
_default = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
os.environ["FASTMNIST_DATA"] = str(Path(os.environ.get("FASTMNIST_DATA", _default)).resolve())
