"""Whatever the CLI meets in files and on the network is a one-line error, said before the wait."""

import http.server
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

from fastmnist import cli, data
from fastmnist.errors import DataError

CWD = os.path.dirname(os.path.abspath(__file__))


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fastmnist", *args], capture_output=True, text=True, cwd=CWD,
                          env={**os.environ, **(env or {})}, timeout=300)


# -- data files that cannot be read ----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["open", "is_file", "stat"])
def test_a_data_file_or_folder_that_cannot_be_read_is_one_line(tmp_path, monkeypatch, capsys, method):
    monkeypatch.setenv("FASTMNIST_CACHE", str(tmp_path / "cache"))
    data._parse.cache_clear()
    owner = os if method == "open" else pathlib.Path      # data files are opened with os.open (reading.py)
    real = getattr(owner, method)

    def denied(self, *args, **kwargs):
        if str(self).startswith(os.environ["FASTMNIST_DATA"]):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(owner, method, denied)
    status = cli.main(["train", "--preset", "grokking-3layer", "--backend", "numpy", "--iterations", "1", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot read" in err and "Permission denied" in err and "mnist" in err


# -- bench-report ------------------------------------------------------------------------------------------

def bench_file(tmp_path, **change):
    entry = {"group": "g/cpu", "name": "test_x[numpy-float32]", "param": "numpy-float32",
             "params": {"backend_name": "numpy"}, "extra_info": {"backend": "numpy", "device": "cpu"},
             "stats": {"mean": 1e-3, "median": 1e-3}}
    entry.update(change)
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"benchmarks": [entry]}))
    return path


@pytest.mark.parametrize("change, words", [
    (dict(extra_info=["backend", "numpy"]), "its extra_info is not a JSON object"),
    (dict(extra_info="numpy"), "its extra_info is not a JSON object"),
    (dict(name=5), "lacks its name or its mean/median times"),
    (dict(params=[1]), "its params is not a JSON object"),
    (dict(group=3), "its group is not text"),
    (dict(param=3), "its param is not text"),
])
def test_bench_report_on_an_odd_entry_is_one_line(tmp_path, change, words):
    r = run("bench-report", str(bench_file(tmp_path, **change)))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bench_report_png_that_cannot_be_written_is_one_line_before_rendering(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    r = run("bench-report", str(bench_file(tmp_path)), "--png", str(blocker / "chart.png"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"cannot write {blocker / 'chart.png'}" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stdout == ""


# -- downloads ---------------------------------------------------------------------------------------------

class Mirrors:
    """Two local HTTP mirrors started by the test: one that accepts and never answers, one that answers 404."""

    def __init__(self):
        self.release = threading.Event()
        release = self.release

        class Silent(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                release.wait(30)

            def log_message(self, *args):
                pass

        class Missing(Silent):
            def do_GET(self):
                self.send_error(404, "Not Found", "no such file on this mirror")

        self.servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) for handler in (Silent, Missing)]
        for server in self.servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def urls(self, path):
        return tuple(f"http://127.0.0.1:{s.server_address[1]}/{path}/" for s in self.servers)

    def close(self):
        self.release.set()
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def mirrors():
    m = Mirrors()
    yield m
    m.close()


def test_a_download_says_what_it_waits_for_gives_up_in_time_and_keeps_each_reason_whole(tmp_path, monkeypatch,
                                                                                        capsys, mirrors):
    long_path = "mirror/" + "a-very-long-directory-name/" * 6 + "mnist"
    monkeypatch.setitem(data.MIRRORS, "mnist", mirrors.urls(long_path))
    monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT_S", 1)
    monkeypatch.setenv("FASTMNIST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTMNIST_DATA", raising=False)
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        data.load_arrays("mnist")
    assert time.monotonic() - start < 20
    err = capsys.readouterr().err
    for url in mirrors.urls(long_path):
        assert f"downloading {url}train-images-idx3-ubyte.gz" in err
    message = str(info.value)
    assert "\n" not in message
    assert f"for url: {mirrors.urls(long_path)[1]}train-images-idx3-ubyte.gz" in message, "the reason is cut off"
    assert "timed out" in message.lower()
