"""Data files: the IDX header is checked first, and nothing past the size it gives is read or decompressed."""

import gzip
import os
import struct
import time
import tracemalloc

import pytest

from fastmnist import data
from fastmnist.errors import DataError
from fastmnist.reading import NotARegularFile, open_regular
from test_data import write_dataset

LABELS = "train-labels-idx1-ubyte"


def gzip_bomb(path, head: bytes, mib: int):
    """`head` followed by `mib` MiB of zeros, gzip-compressed (about 1 KiB per MiB), written in pieces."""
    zeros = bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(head)
        for _ in range(mib):
            f.write(zeros)


def load_measured(directory):
    data._parse.cache_clear()
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(DataError) as info:
            data.load_arrays("fashion-mnist", directory, download=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return str(info.value), peak, time.monotonic() - start


@pytest.mark.parametrize("head, words", [
    (b"", "wrong magic number 0, expected 2049 for labels"),                         # zeros all the way
    (struct.pack(">2i", 2049, 12), "trailing bytes, header says 12 payload bytes, file has more"),
    (struct.pack(">2i", 2049, 2**31 - 1), "header says 2147483647 labels; an MNIST file holds at most 60000"),
    (struct.pack(">2i", 2049, -5), "header says -5 labels"),
])
def test_a_gzip_bomb_is_refused_having_decompressed_no_more_than_its_header_allows(tmp_path, head, words):
    write_dataset(tmp_path)
    path = tmp_path / f"{LABELS}.gz"
    gzip_bomb(path, head, 64)
    assert path.stat().st_size < 1 << 20
    message, peak, seconds = load_measured(tmp_path)
    assert words in message and str(path) in message and "\n" not in message
    assert peak < 4 << 20, f"peak {peak / 2**20:.0f} MiB"
    assert seconds < 5


@pytest.mark.parametrize("head, words", [
    (b"\0" * 8, "wrong magic number 0"),
    (struct.pack(">2i", 2049, 12), "trailing bytes, header says 12 payload bytes, file has 42949672952"),
    (struct.pack(">2i", 2049, 10**9), "header says 1000000000 labels"),
])
def test_a_40_gb_sparse_plain_file_is_refused_without_reading_it(tmp_path, head, words):
    write_dataset(tmp_path)
    (tmp_path / f"{LABELS}.gz").unlink()
    path = tmp_path / LABELS
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(40 * 2**30)
    message, peak, seconds = load_measured(tmp_path)
    assert words in message and str(path) in message
    assert peak < 4 << 20 and seconds < 5


def test_the_real_files_still_load_and_match_their_checksums(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTMNIST_CACHE", str(tmp_path))      # no decoded copies: the files themselves are decoded
    data._parse.cache_clear()
    train, test = data.load_arrays("mnist")
    assert train.images.shape == (60_000, 784) and test.labels.shape == (10_000,)
    data._parse.cache_clear()


def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(NotARegularFile, match="not a regular file \\(a FIFO\\)"):
        open_regular(fifo)
    with pytest.raises(NotARegularFile, match="a character device"):
        open_regular("/dev/zero")


def test_a_decoded_copy_that_claims_more_than_a_file_holds_is_decoded_again(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMNIST_CACHE", str(tmp_path / "cache"))
    data._parse.cache_clear()
    path = next(p for p in data._files_in(__import__("pathlib").Path(os.environ["FASTMNIST_DATA"])).values()
                if "t10k-labels" in p.name).resolve()
    st = path.stat()
    stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    _, digest = data._parse(path, "labels", stamp)
    copy = data.default_cache_dir() / "decoded" / f"{digest}.npy"
    header = repr({"descr": "|u1", "fortran_order": False, "shape": (10**12,)}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    copy.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(16))
    assert data._load_decoded(path, "labels", stamp) is None


def test_a_mirror_that_sends_without_end_is_cut_off_at_the_download_limit(tmp_path, monkeypatch):
    import http.server
    import threading

    class Endless(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(4096):            # 64 MiB at most, should the limit not hold
                    self.wfile.write(os.urandom(16384))
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setitem(data.MIRRORS, "mnist", (f"http://127.0.0.1:{server.server_address[1]}/",))
    monkeypatch.setattr(data, "DOWNLOAD_LIMIT", 1 << 20)
    monkeypatch.setenv("FASTMNIST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTMNIST_DATA", raising=False)
    try:
        with pytest.raises(DataError, match="the server sent more than 1,048,576 bytes"):
            data.load_arrays("mnist")
    finally:
        server.shutdown()
        server.server_close()
    assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) <= 1 << 20
