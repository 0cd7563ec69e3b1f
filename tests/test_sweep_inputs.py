"""sweep --scheduler and --out: what is not a Dask scheduler or a regular file is one line, in bounded time."""

import http.server
import os
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time

import pytest

from fastmnist.errors import SweepError
from fastmnist.scheduler_check import check_scheduler
from fastmnist.sweeps import read_results

SWEEP = ["sweep", "--preset", "grokking-dropout", "--backend", "numpy", "--iterations", "1", "--grid", "hidden=8"]


def sweep_cli(*args, cwd, timeout=60):
    """The sweep command in a fresh process, its scheduler deadline cut to 1 s; (status, stderr, seconds)."""
    code = ("import sys; from fastmnist import cli, sweeps; sweeps.CONNECT_TIMEOUT_S = 1; "
            "raise SystemExit(cli.main(sys.argv[1:]))")
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code, *SWEEP, *args], capture_output=True, text=True, cwd=cwd,
                       timeout=timeout)
    return r.returncode, r.stderr, time.monotonic() - start


class Server:
    """A TCP server on 127.0.0.1 that answers each connection with `handle(socket)`, in threads."""

    def __init__(self, handle):
        self.stop = threading.Event()
        stop = self.stop

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                handle(self.request, stop)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"tcp://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def random_bytes(peer, stop):
    try:
        while not stop.is_set():
            peer.sendall(os.urandom(4096))
            time.sleep(0.01)
    except OSError:
        pass


def silent(peer, stop):
    stop.wait(30)


def length_then_silence(peer, stop):
    peer.sendall(struct.pack("Q", 58))
    stop.wait(30)


def closes(peer, stop):
    pass


def huge_length(peer, stop):
    peer.sendall(struct.pack("Q", 2**61) + b"x" * 100)
    stop.wait(30)


@pytest.mark.parametrize("handle, words", [
    (random_bytes, "it is not one: it began its answer with"),
    (huge_length, "it is not one: it began its answer with"),
    (silent, "it accepted the connection but sent no Dask handshake within 1 s"),
    (length_then_silence, "it accepted the connection but sent no Dask handshake within 1 s"),
    (closes, "it closed the connection without sending a Dask handshake"),
])
def test_a_server_that_is_not_a_dask_scheduler_is_one_line_in_bounded_time(tmp_path, handle, words):
    server = Server(handle)
    try:
        status, err, seconds = sweep_cli("--scheduler", server.address, "--out", str(tmp_path / "s.jsonl"),
                                         cwd=tmp_path)
    finally:
        server.close()
    assert status == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"cannot reach the Dask scheduler at '{server.address}': {words}" in err
    assert seconds < 30 and not (tmp_path / "s.jsonl").exists()


def test_an_http_server_is_not_taken_for_a_scheduler(tmp_path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.server_address[1]}"
    try:
        status, err, seconds = sweep_cli("--scheduler", address, "--out", str(tmp_path / "s.jsonl"), cwd=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "sent no Dask handshake within 1 s" in err and seconds < 30


def test_a_real_scheduler_passes_the_check():
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None,
                      scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"}) as cluster:
        check_scheduler(cluster.scheduler_address, 5)
        check_scheduler(cluster.scheduler_address.removeprefix("tcp://"), 5)


def test_a_closed_port_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SweepError, match=f"cannot reach the Dask scheduler at 'tcp://127.0.0.1:{port}'"):
        check_scheduler(f"tcp://127.0.0.1:{port}", 2)


# -- --out must be a regular file ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "devnull", "directory"])
@pytest.mark.parametrize("resume", [True, False])
def test_sweep_out_that_is_not_a_regular_file_is_refused_before_it_is_read(tmp_path, kind, resume):
    out = {"fifo": tmp_path / "fifo", "devnull": "/dev/null", "directory": tmp_path / "dir"}[kind]
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "directory":
        out.mkdir()
    words = {"fifo": "is a FIFO", "devnull": "is a character device", "directory": "is a directory"}[kind]
    status, err, _ = sweep_cli("--out", str(out), *(["--resume"] if resume else []), cwd=tmp_path, timeout=30)
    assert status == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{out} {words}, not a regular file" in err


def test_reading_results_from_a_fifo_does_not_wait(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(SweepError, match="not a regular file \\(a FIFO\\)"):
        read_results(fifo)


def test_a_results_line_nested_too_deeply_is_one_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(SweepError, match="line 1 is nested too deeply"):
        read_results(path)
