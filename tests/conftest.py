"""Settings for the unit tests only (the benchmarks in bench/ run without them)."""

import pytest


@pytest.fixture(autouse=True)
def poisoned_scratch(monkeypatch):
    """Every float work buffer the CPU kernels allocate with simd.aligned_empty or simd.scratch starts as NaN,
    here and in the subprocesses a test starts: a kernel that reads a buffer before writing it then fails its
    comparison with the reference every time, instead of only when the memory it is handed happens to hold NaN."""
    from fastmnist.kernels.cpu import simd

    simd.poison_work_buffers(monkeypatch.setattr)
    monkeypatch.setenv("FASTMNIST_POISON_SCRATCH", "1")


FORCED_WIDTH_TEST = "test_each_kernel_passes_its_tests_at_a_forced_width"


def pytest_collection_finish(session):
    """Starts the forced vector-width runs the session will check (tests/test_vector_widths.py) at once, in other
    processes, so that they compile while this one runs the other tests."""
    items = [item for item in session.items if getattr(item, "originalname", "") == FORCED_WIDTH_TEST]
    if items:
        items[0].module.start_in_background([item.callspec.params["vbytes"] for item in items])
