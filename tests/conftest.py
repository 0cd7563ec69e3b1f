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
