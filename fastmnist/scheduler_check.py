"""Whether a tcp:// address is a Dask scheduler, found out within a time limit and without trusting the answer.

Dask's client waits without limit for the scheduler's handshake once the connection is made, and allocates
whatever length the first eight bytes it receives give: an HTTP server (which waits for a request) hangs it,
a server that sends random bytes makes it ask for exabytes. A scheduler sends its handshake first, as soon
as a connection is accepted: one small msgpack message. So before Dask connects, this reads that message
itself, under a deadline and a size limit, and checks that it is one.
"""

from __future__ import annotations

import socket
import struct
import time

from .errors import SweepError

HANDSHAKE_LIMIT = 1 << 16       # bytes: a scheduler's handshake is under a hundred


class NotAScheduler(Exception):
    """What the peer did instead of greeting as a Dask scheduler."""


def check_scheduler(address: str, timeout: float) -> None:
    """Raises SweepError, within about `timeout` seconds, unless the tcp:// scheduler `address` (or host:port)
    greets as a Dask scheduler. Other schemes (tls://, ...) and addresses it cannot parse are left to Dask."""
    try:
        from distributed.comm.addressing import parse_address, parse_host_port
        scheme, location = parse_address(address, strict=False)
        if scheme != "tcp":
            return
        host, port = parse_host_port(location)
    except (ValueError, TypeError):
        return
    try:
        _greeting(host, port, timeout)
    except NotAScheduler as exc:
        raise SweepError(f"cannot reach the Dask scheduler at {address!r}: {exc}") from None
    except OSError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SweepError(f"cannot reach the Dask scheduler at {address!r}: {reason}") from None


def _greeting(host: str, port: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as peer:
        head = _receive(peer, 8, deadline, timeout)
        (length,) = struct.unpack("Q", head)         # as Dask frames a message: its length, in native order
        if not 0 < length <= HANDSHAKE_LIMIT:
            raise NotAScheduler(f"it is not one: it began its answer with {head!r}, not a Dask handshake")
        body = _receive(peer, length, deadline, timeout)
    try:
        import msgpack
        from distributed.protocol.utils import unpack_frames

        frames, buffers = unpack_frames(body, partial=True)
        greeting = msgpack.loads(frames[0], raw=False) if frames and not buffers else None
    except Exception:           # whatever the bytes are, they are not a handshake  # noqa: BLE001
        greeting = None
    if not isinstance(greeting, dict) or "python" not in greeting:
        raise NotAScheduler("it is not one: its first message is not a Dask handshake")
    return greeting


def _receive(peer: socket.socket, n: int, deadline: float, timeout: float) -> bytes:
    data = b""
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise NotAScheduler(f"it accepted the connection but sent no Dask handshake within {timeout:g} s "
                                f"(a Dask scheduler sends one at once: is this another kind of server?)")
        peer.settimeout(left)
        try:
            chunk = peer.recv(n - len(data))
        except TimeoutError:
            continue
        if not chunk:
            raise NotAScheduler("it closed the connection without sending a Dask handshake")
        data += chunk
    return data
