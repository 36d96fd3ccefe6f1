"""Raw-socket exchanges with a memcached-protocol server.

A text-protocol reply has no length prefix, so "the reply is complete" is
found out by appending a sentinel command whose reply cannot occur otherwise:
`mn\\r\\n` (meta no-op) answers `MN\\r\\n`, and both memcached and memd support
it.  Everything the server wrote before that `MN\\r\\n` is the reply to the bytes
we sent.  Commands that close the connection (quit, over-long lines) are read
until EOF instead.  Every read is bounded by a short deadline, so a server that
hangs fails a test instead of hanging it.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

SENTINEL = b"mn\r\n"
SENTINEL_REPLY = b"MN\r\n"
DEFAULT_TIMEOUT = 2.0


@dataclass(frozen=True)
class Reply:
    """What a server wrote back, and how the exchange ended.

    closed: the server closed the connection (EOF) before the sentinel reply.
    timed_out: neither the sentinel reply nor EOF came within the deadline.
    """

    data: bytes
    closed: bool = False
    timed_out: bool = False

    def __str__(self) -> str:
        tail = " <closed>" if self.closed else (" <timed out>" if self.timed_out else "")
        return f"{self.data!r}{tail}"


class Connection:
    """A blocking socket to one server with bounded reads."""

    def __init__(self, address: tuple[str, int], timeout: float = DEFAULT_TIMEOUT):
        self.address = address
        self.timeout = timeout
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.closed = False

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- sending -----------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def dribble(self, data: bytes, pause: float = 0.0005) -> None:
        """Send one byte per write, as a person at a telnet prompt would."""
        for i in range(len(data)):
            self.sock.sendall(data[i : i + 1])
            if pause:
                time.sleep(pause)

    # -- receiving ---------------------------------------------------------

    def read_until(self, suffix: bytes, timeout: float | None = None) -> Reply:
        """Read until the buffer ends with `suffix`, EOF, or the deadline."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        buf = bytearray()
        while not buf.endswith(suffix):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Reply(bytes(buf), timed_out=True)
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return Reply(bytes(buf), timed_out=True)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
                return Reply(bytes(buf), closed=True)
            buf += chunk
        return Reply(bytes(buf))

    def read_until_close(self, timeout: float | None = None) -> Reply:
        """Read everything until the server closes the connection."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        buf = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Reply(bytes(buf), timed_out=True)
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return Reply(bytes(buf), timed_out=True)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
                return Reply(bytes(buf), closed=True)
            buf += chunk

    def read_for(self, seconds: float) -> Reply:
        """Read whatever arrives within `seconds` (for replies of unknown end)."""
        r = self.read_until_close(timeout=seconds)
        if r.timed_out:
            return Reply(r.data)
        return r

    # -- request/reply -----------------------------------------------------

    def exchange(self, data: bytes, timeout: float | None = None) -> Reply:
        """Send `data` followed by the sentinel; return the reply to `data`.

        The sentinel's own reply is stripped.  If the server closed the
        connection or did not answer the sentinel in time, the Reply says so
        and carries whatever arrived.
        """
        try:
            self.sock.sendall(data + SENTINEL)
        except (BrokenPipeError, ConnectionResetError):
            self.closed = True
            return Reply(b"", closed=True)
        r = self.read_until(SENTINEL_REPLY, timeout)
        if r.closed or r.timed_out:
            return r
        return Reply(r.data[: -len(SENTINEL_REPLY)])

    def request(self, data: bytes, timeout: float | None = None) -> bytes:
        """exchange() for well-formed commands: returns the bytes, fails loudly."""
        r = self.exchange(data, timeout)
        if r.closed or r.timed_out:
            raise AssertionError(f"no complete reply to {data[:200]!r}: {r}")
        return r.data

    def send_until_close(self, data: bytes, timeout: float | None = None) -> Reply:
        """Send `data` (no sentinel) and read until the server hangs up."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.closed = True
            return Reply(b"", closed=True)
        return self.read_until_close(timeout)


def connect(server, timeout: float = DEFAULT_TIMEOUT) -> Connection:
    """Open a Connection to anything with an `.address` (host, port)."""
    address = server.address if hasattr(server, "address") else server
    return Connection(address, timeout)


def exchange(server, data: bytes, timeout: float = DEFAULT_TIMEOUT) -> Reply:
    """One-shot: fresh connection, send `data`, read its reply, close."""
    with connect(server, timeout) as c:
        return c.exchange(data, timeout)
