"""bench/peaks.py measures this machine's peaks: every figure positive and finite, the FMA peak near what the
CPU model allows, caches faster than memory; and achieved() turns a benchmark's work into shares of them.
The bounds are loose on purpose: the machine is shared and timings are noisy."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import peaks


@pytest.fixture(scope="module")
def measured():
    return peaks.measure()


def test_every_figure_is_positive_and_finite(measured):
    rates = [k for k in measured if "gfmas" in k or "gbps" in k or "clock" in k]
    assert len(rates) >= 9
    for key in rates:
        value = measured[key]
        if value is None and key.startswith("theory_") or key == "nominal_clock_ghz" and value is None:
            continue            # a CPU not in FMA_UNITS, or no /proc/cpuinfo
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    assert measured["cores"] >= 1 and measured["vector_bytes"] in (16, 32, 64)


def test_the_fma_peak_is_near_the_cpu_models(measured):
    per_cycle = measured["theory_fma_per_cycle_float32"]
    if per_cycle is None:
        pytest.skip(f"no FMA table entry for {measured['cpu']}")
    got = measured["fma_gfmas_per_core_float32"]
    # against the clock this run measured (noise in either probe moves the ratio, hence the wide band) ...
    assert 0.25 < got / measured["theory_fma_gfmas_per_core_float32"] < 1.5, measured
    # ... and against any clock a core can run at
    assert per_cycle * 0.5 < got < per_cycle * 6.0, measured
    assert measured["fma_gfmas_per_core_float64"] < got
    assert 1.0 < measured["clock_ghz_from_fma_latency"] < 6.5


def test_caches_are_faster_than_memory(measured):
    assert measured["l2_gbps_per_core"] > measured["memory_gbps_per_core"]
    assert measured["l1_gbps_per_core"] > measured["memory_gbps_per_core"]
    assert measured["l2_gbps_per_core"] > 2 * min(measured["memory_gbps_per_core"], measured["memory_gbps_all_cores"])


def test_achieved_shares():
    fake = {"cores": 2, "fma_gfmas_per_core_float32": 50.0, "fma_gfmas_all_cores_float32": 90.0,
            "l1_gbps_per_core": 400.0, "l2_gbps_per_core": 100.0, "memory_gbps_per_core": 20.0,
            "memory_gbps_all_cores": 30.0}
    one = peaks.achieved(0.5, flop=50e9, nbytes=5e9, peaks=fake)
    assert one == pytest.approx({"gfmas": 50.0, "fma_share": 1.0, "gbps": 10.0, "l1_share": 0.025,
                                 "l2_share": 0.1, "memory_share": 0.5})
    both = peaks.achieved(1.0, flop=90e9, cores=2, peaks=fake)
    assert both == pytest.approx({"gfmas": 45.0, "fma_share": 0.5})


def test_script_prints_and_writes_json(measured, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(peaks, "measure", lambda: dict(measured))
    out = tmp_path / "peaks.json"
    assert peaks.main(["--json", str(out)]) == 0
    assert "GFMA/s" in capsys.readouterr().out
    assert json.loads(out.read_text()) == measured
