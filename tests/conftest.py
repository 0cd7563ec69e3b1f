"""Settings for the unit tests only (the benchmarks in bench/ run without them)."""

import os
import signal

import pytest

from fastmnist import dispatch
from fastmnist.kernels.reference import ReferenceBackend


@pytest.fixture(autouse=True)
def poisoned_scratch(monkeypatch):
    """Every float work buffer the CPU kernels allocate with simd.aligned_empty or simd.scratch starts as NaN,
    here and in the subprocesses a test starts: a kernel that reads a buffer before writing it then fails its
    comparison with the reference every time, instead of only when the memory it is handed happens to hold NaN."""
    from fastmnist.kernels.cpu import simd

    simd.poison_work_buffers(monkeypatch.setattr)
    monkeypatch.setenv("FASTMNIST_POISON_SCRATCH", "1")


@pytest.fixture(autouse=True)
def subprocesses_are_not_xdist_workers(monkeypatch):
    """A pytest that a test starts (the benchmarks' sizing, the forced widths) is a session of its own, not a
    pytest-xdist worker: pytest-benchmark would take it for one and refuse to time."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


FORCED_WIDTH_TEST = "test_each_kernel_passes_its_tests_at_a_forced_width"


def pytest_collection_finish(session):
    """Starts the forced vector-width runs the session will check (tests/test_vector_widths.py) at once, in other
    processes, so that they compile while this one runs the other tests. Under pytest-xdist every worker collects
    every test, so none starts them early: each run is a test like the others there, which the root conftest puts
    first so that the workers take one each at the start."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    items = [item for item in session.items if getattr(item, "originalname", "") == FORCED_WIDTH_TEST]
    if items:
        items[0].module.start_in_background([item.callspec.params["vbytes"] for item in items])


class SignalBackend(ReferenceBackend):
    """The reference backend, which sends this process the given signals in the middle of given epochs."""

    def __init__(self, name, sends):
        super().__init__(name=name)
        self.sends, self.epochs = sends, 0       # {epoch: [signal, ...]}

    def train_epoch(self, net, X, labels, batch_size, rng, order=None):
        epoch, self.epochs = self.epochs, self.epochs + 1
        half = X.shape[0] // 2
        first = super().train_epoch(net, X[:half], labels[:half], batch_size, rng)
        for signum in self.sends.get(epoch, []):
            signal.raise_signal(signum)
        second = super().train_epoch(net, X[half:], labels[half:], batch_size, rng)
        return first[0] + second[0], first[1] + second[1]


@pytest.fixture
def signal_backend():
    made = []

    def use(sends):
        name = f"signal-test-{len(made)}"
        dispatch.register(name, lambda: SignalBackend(name, sends), "test")
        made.append(name)
        return name
    yield use
    for name in made:
        dispatch.unregister(name)
