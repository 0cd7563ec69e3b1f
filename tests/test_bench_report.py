import json
import subprocess
import sys
import textwrap

import pytest

from fastmnist.bench_report import render
from fastmnist.errors import FastMnistError


def entry(group, test, backend, rest, median, mean=None, device=None, **extra):
    param = f"{backend}-{rest}"
    return {"group": group, "name": f"{test}[{param}]", "fullname": f"bench/x.py::{test}[{param}]",
            "param": param, "params": {"backend_name": backend, "dtype": rest.split("-")[0]},
            "extra_info": {"backend": backend, "device": device or group.rsplit("/", 1)[-1], **extra},
            "stats": {"min": median / 2, "max": median * 2, "mean": mean or median, "median": median,
                      "stddev": 0.0, "rounds": 5, "iterations": 1}}


RESULTS = {
    "machine_info": {"node": "box", "python_version": "3.11.7", "cpu": {"brand_raw": "Test CPU", "count": 2}},
    "datetime": "2026-11-23T00:00:00", "version": "5.3.1",
    "benchmarks": [
        entry("kernels/dense_forward/cpu", "test_dense_forward", "numpy", "float32-b100-784x192", 2e-3, 2.5e-3,
              gflops=15.05),
        entry("kernels/dense_forward/cpu", "test_dense_forward", "numba-cpu", "float32-b100-784x192", 5e-4,
              gflops=60.2, fma_share=0.2567, gbps=40.0, l1_share=0.1, l2_share=0.35),
        entry("kernels/dense_forward/cpu", "test_dense_forward", "numba-cpu", "float64-b1-784x40", 3e-6),
        entry("kernels/dense_forward/gpu", "test_dense_forward", "cupy", "float32-b100-784x192", 1e-4),
        entry("kernels/dense_forward/gpu", "test_dense_forward", "numba-cuda", "float32-b100-784x192", 2.5e-5),
        entry("steps/train_step/cpu", "test_train_step", "numba-cpu", "float32-branchnet", 0.1),
        entry("steps/train_step/cpu", "test_train_step", "numpy", "float32-branchnet", 0.3),
    ],
}


def sections(text):
    """{group: {(case, backend): cells}} from the Markdown report."""
    out, group, case = {}, None, None
    for line in text.splitlines():
        if line.startswith("### "):
            group = line[4:].strip()
            out[group] = {}
        elif group and line.startswith("| ") and not line.startswith("| case"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            case = cells[0] or case
            out[group][(case, cells[1])] = cells
    return out


@pytest.fixture
def results_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(RESULTS))
    return path


def test_speedups_against_the_cpu_and_gpu_baselines(results_file):
    table = sections(render(results_file))
    cpu = table["kernels/dense_forward/cpu"]
    assert cpu[("float32-b100-784x192", "numpy")][2:5] == ["2.5 ms", "2 ms", "1.00x"]
    assert cpu[("float32-b100-784x192", "numba-cpu")][2:5] == ["500 µs", "500 µs", "4.00x"]
    gpu = table["kernels/dense_forward/gpu"]
    assert gpu[("float32-b100-784x192", "numba-cuda")][4] == "4.00x"  # against cupy, not numpy
    assert table["steps/train_step/cpu"][("float32-branchnet", "numba-cpu")][4] == "3.00x"


def test_baseline_listed_first_and_missing_baseline_shown_as_a_dash(results_file):
    table = sections(render(results_file))
    # numba-cpu comes first in the file
    assert list(table["steps/train_step/cpu"]) == [("float32-branchnet", "numpy"), ("float32-branchnet", "numba-cpu")]
    cpu = table["kernels/dense_forward/cpu"]
    assert cpu[("float64-b1-784x40", "numba-cpu")][4] == "–"


def test_extra_info_columns_and_machine(results_file):
    text = render(results_file)
    assert "Test CPU (2 logical cores)" in text and "2026-11-23" in text
    cpu = sections(text)["kernels/dense_forward/cpu"]
    assert cpu[("float32-b100-784x192", "numba-cpu")][5:10] == ["60.2", "25.7%", "40", "10.0%", "35.0%"]
    assert cpu[("float32-b100-784x192", "numpy")][5:10] == ["15.1", "", "", "", ""]
    assert "GFLOP/s" not in text.split("### steps/train_step/cpu")[1]


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such benchmark results file"),
    ("{not json", "not valid JSON"),
    ('{"results": []}', "no 'benchmarks' list"),
    ('{"benchmarks": [{"name": "test_x", "stats": {}}]}', "lacks its name or its mean/median"),
], ids=["missing", "not-json", "no-benchmarks-list", "no-times"])
def test_bad_files_raise_one_line_errors(tmp_path, content, message):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(FastMnistError, match=message) as info:
        render(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_chart_written_when_matplotlib_is_installed(results_file, tmp_path):
    png = tmp_path / "out" / "chart.png"
    text = render(results_file, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Chart written to {png}" in text


def test_chart_without_matplotlib_is_reported_not_raised(results_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    png = tmp_path / "chart.png"
    text = render(results_file, png)
    assert "matplotlib is not installed" in text and not png.exists()
    assert "### kernels/dense_forward/cpu" in text


def test_reads_a_real_pytest_benchmark_file(tmp_path):
    bench = tmp_path / "test_tiny.py"
    bench.write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.parametrize("backend_name", ["numpy", "numba-cpu"])
        @pytest.mark.parametrize("n", [10], ids=["b10"])
        def test_sum(benchmark, backend_name, n):
            benchmark.group = "kernels/sum/cpu"
            benchmark.extra_info.update(backend=backend_name, device="cpu")
            benchmark(sum, range(n if backend_name == "numpy" else 1))
    """))
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(bench),
                           "--benchmark-min-rounds=3", "--benchmark-max-time=0.01", f"--benchmark-json={out}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = sections(render(out))["kernels/sum/cpu"]
    assert set(rows) == {("b10", "numpy"), ("b10", "numba-cpu")}
    assert rows[("b10", "numpy")][4] == "1.00x" and rows[("b10", "numba-cpu")][4].endswith("x")


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_default_chart_is_one_compact_figure_of_the_headline_speedups(results_file, tmp_path):
    from fastmnist.bench_report import _headline, _read, _result
    results = [_result(b, results_file) for b in _read(results_file)["benchmarks"]]
    bars = [(label, r.backend, round(speedup, 6)) for label, r, speedup in _headline(results)]
    assert bars == [("train_step float32-branchnet", "numba-cpu", 3.0)]     # kernels are detail, not headline
    headline, detail = tmp_path / "headline.png", tmp_path / "detail.png"
    render(results_file, headline)
    render(results_file, detail, detail=True)
    assert png_size(headline)[1] < 300 < png_size(detail)[1]


def test_no_headline_workloads_points_to_the_detail_chart(tmp_path):
    path = tmp_path / "kernels.json"
    path.write_text(json.dumps({**RESULTS, "benchmarks": RESULTS["benchmarks"][:5]}))
    text = render(path, tmp_path / "chart.png")
    assert "no headline workload" in text and "--detail" in text
    assert not (tmp_path / "chart.png").exists()


def test_several_files_are_labelled_by_their_label_or_folder(results_file, tmp_path):
    other = tmp_path / "h100" / "bench.json"
    other.parent.mkdir()
    other.write_text(json.dumps(RESULTS))
    text = render([f"epyc@{results_file}", other])
    assert "### epyc: steps/train_step/cpu" in text and "### h100: steps/train_step/cpu" in text
    assert sections(text)["h100: steps/train_step/cpu"][("float32-branchnet", "numba-cpu")][4] == "3.00x"
    png = tmp_path / "both.png"
    render([f"epyc@{results_file}", other], png)
    assert png_size(png)[1] < 300


# -- malformed files: one line, never a traceback or a "nan" figure ------------------------------------

@pytest.mark.parametrize("doc, words", [
    ({"benchmarks": [], "machine_info": "x"}, "its machine_info is not a JSON object"),
    ({"benchmarks": [], "machine_info": {"cpu": [1]}}, "its machine_info.cpu is not a JSON object"),
    ({"benchmarks": [], "datetime": 7}, "its datetime is not text"),
    ({"benchmarks": [entry("g/cpu", "t", "numpy", "x", float("nan"), 1.0)]}, "its median time is nan s, not a time"),
    ({"benchmarks": [entry("g/cpu", "t", "numpy", "x", -1.0, 1.0)]}, "its median time is -1 s, not a time"),
    ({"benchmarks": [entry("g/cpu", "t", "numpy", "x", 1.0, mean=float("inf"))]}, "its mean time is inf s"),
    ({"benchmarks": [{**entry("g/cpu", "t", "numpy", "x", 1.0), "stats": {"mean": "1", "median": 1}}]},
     "lacks its name or its mean/median times"),
    ({"benchmarks": [{**entry("g/cpu", "t", "numpy", "x", 1.0), "stats": {"mean": 10 ** 400, "median": 1}}]},
     "lacks its name or its mean/median times"),
    ({"benchmarks": [entry("g/cpu", "t", "numpy", "x", 1.0, device=["cpu"])]}, "backend and device are not text"),
])
def test_a_malformed_results_file_is_one_line(tmp_path, doc, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(FastMnistError, match="bad.json: ") as info:
        render(path)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_deeply_nested_json_is_one_line(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"benchmarks": [], "machine_info": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(FastMnistError, match="nested too deeply"):
        render(path)


def test_a_zero_baseline_time_gives_no_speedup(tmp_path):
    path = tmp_path / "zero.json"
    path.write_text(json.dumps({"benchmarks": [entry("g/cpu", "t", "numpy", "x", 0.0),
                                               entry("g/cpu", "t", "numba-cpu", "x", 1e-3)]}))
    rows = sections(render(path))["g/cpu"]
    assert rows[("x", "numba-cpu")][4] == "–" and rows[("x", "numpy")][3] == "0 ns"


def _any_json():
    from hypothesis import strategies as st
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def _benchmark_docs():
    """Files shaped like pytest-benchmark's, any field of which may be any JSON instead."""
    from hypothesis import strategies as st
    anything = _any_json()
    number = st.floats() | st.integers(-10, 10) | anything
    stats = st.fixed_dictionaries({"mean": number, "median": number}) | anything
    text = st.sampled_from(["numpy", "numba-cpu", "cupy", "steps/epoch/cpu", "time_to_98/x"]) | anything
    bench = st.fixed_dictionaries({"name": st.text(max_size=8) | anything, "stats": stats},
                                  optional={"group": text, "param": text, "extra_info": anything
                                            | st.fixed_dictionaries({"backend": text, "device": text}),
                                            "params": anything | st.fixed_dictionaries({"backend_name": text})})
    return st.fixed_dictionaries({"benchmarks": st.lists(bench, max_size=4) | anything},
                                 optional={"machine_info": anything, "datetime": anything, "version": anything})


def test_any_file_gives_a_report_or_one_line(tmp_path):
    from hypothesis import HealthCheck, example, given, settings

    path = tmp_path / "any.json"

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_benchmark_docs())
    @example({"benchmarks": [{"name": "\n", "stats": {"mean": 0.0, "median": -1.0}}]})    # found by CI's draw
    def check(doc):
        path.write_text(json.dumps(doc))
        try:
            text = render(path)
        except FastMnistError as exc:
            assert "\n" not in str(exc)
            return
        assert " nan " not in text and "nanx" not in text and "inf " not in text

    check()


# -- the chart's path ----------------------------------------------------------------------------------

@pytest.mark.parametrize("given, written", [("chart", "chart.png"), ("chart.png", "chart.png"),
                                            ("chart.svg", "chart.svg")])
def test_the_chart_is_written_where_the_report_says(results_file, tmp_path, given, written):
    text = render(results_file, tmp_path / given, detail=True)
    assert f"Chart written to {tmp_path / written}." in text and (tmp_path / written).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"results.json", written})


@pytest.mark.parametrize("given, words", [("adir", "it is a directory"), ("chart.xyz", "matplotlib draws no .xyz")])
def test_a_chart_path_that_cannot_be_written_is_refused_before_reading(tmp_path, given, words):
    (tmp_path / "adir").mkdir()
    with pytest.raises(FastMnistError, match=words):
        render(tmp_path / "missing.json", tmp_path / given)


def test_a_path_with_an_at_sign_is_a_path_and_a_label_is_cut_at_the_first(tmp_path):
    folder = tmp_path / "user@host"
    folder.mkdir()
    path = folder / "r@1.json"
    path.write_text(json.dumps(RESULTS))
    assert "### steps/train_step/cpu" in render(path)
    text = render([path, f"epyc@{path}"])
    assert "### user@host: steps/train_step/cpu" in text and "### epyc: steps/train_step/cpu" in text
