"""Single-key gets from many connections at once: memd answers the lone gets
that one epoll pass reads with one store call (server.py, TextProtocol.lone_get).
Each connection must still get exactly its own reply, and the counters must
come out as memcached's do.  Run against both servers."""

from __future__ import annotations

import socket
import time

CONNS = 40


def _connect(server, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(server.address, timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    return socks


def _read_reply(s: socket.socket, expected_len: int) -> bytes:
    got = b""
    while len(got) < expected_len and not got.endswith(b"END\r\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _stats(server) -> dict[str, int]:
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(b"stats\r\n")
        got = b""
        while not got.endswith(b"END\r\n"):
            got += s.recv(65536)
    return {k.decode(): int(v) for _, k, v in (line.split(b" ", 2) for line in got.split(b"\r\n")
                                            if line.startswith(b"STAT ")) if v.isdigit()}


def test_lone_gets_from_many_connections_each_get_their_own_reply(any_server, key_prefix):
    keys = [f"{key_prefix}{i}".encode() for i in range(CONNS)]
    values = {}
    with socket.create_connection(any_server.address, timeout=5) as s:
        for i, k in enumerate(keys):
            if i % 4 == 3:
                continue                                     # never stored: a miss
            value = b"v%d-" % i * (1 + i * 7)                # lengths differ per key
            exptime = b"-1" if i % 8 == 5 else b"0"          # expired at once: a miss
            s.sendall(b"set %s %d %s %d\r\n%s\r\n" % (k, i, exptime, len(value), value))
            assert s.recv(100) == b"STORED\r\n"
            if exptime == b"0":
                values[k] = (i, value)
    expected = []
    for k in keys:
        if k in values:
            flags, value = values[k]
            expected.append(b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (k, flags, len(value), value))
        else:
            expected.append(b"END\r\n")
    before = _stats(any_server)
    socks = _connect(any_server, CONNS)
    try:
        for round_no in range(5):
            # every connection's request is on its way before any reply is read,
            # so the server finds many of them ready in one pass
            order = list(range(CONNS))[round_no % 2::2] + list(range(CONNS))[1 - round_no % 2::2]
            for i in order:
                socks[i].sendall(b"get %s\r\n" % keys[i])
            for i in order:
                assert _read_reply(socks[i], len(expected[i])) == expected[i], (round_no, i)
    finally:
        for s in socks:
            s.close()
    after = _stats(any_server)
    hits = 5 * len(values)
    assert after["cmd_get"] - before["cmd_get"] == 5 * CONNS
    assert after["get_hits"] - before["get_hits"] == hits
    assert after["get_misses"] - before["get_misses"] == 5 * CONNS - hits


def test_a_get_line_that_arrives_as_a_value_block_is_stored_as_data(any_server, key_prefix):
    key = key_prefix.encode() + b"k"
    with socket.create_connection(any_server.address, timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"set %s 0 0 9\r\n" % key)
        time.sleep(0.05)                      # the value block comes in a read of its own
        s.sendall(b"get abc\r\n")
        time.sleep(0.05)
        s.sendall(b"\r\n")
        assert s.recv(100) == b"STORED\r\n"
        s.sendall(b"get %s\r\n" % key)
        assert _read_reply(s, 100) == b"VALUE %s 0 9\r\nget abc\r\n\r\nEND\r\n" % key


def _read_exactly(s: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def test_a_connection_that_sends_again_within_a_pass_keeps_its_replies_in_order(
        any_server, key_prefix):
    # Each connection sends a get, a set and a get of its own key as three
    # separate segments, all connections' first gets before any set: a pass
    # that looks for more ready sockets before replying finds the later
    # segments of connections it has already read (they must wait for the
    # next pass), next to connections it has not.  Each connection must see
    # the old value, STORED, then the new value, whatever came in which pass.
    conns, rounds = 30, 12
    keys = [f"{key_prefix}o{i}".encode() for i in range(conns)]
    socks = _connect(any_server, conns)

    def value(i: int, r: int) -> bytes:
        return b"%d.%d" % (i, r) * (1 + (i + r) % 5)

    def hit(i: int, r: int) -> bytes:
        return b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (keys[i], len(value(i, r)), value(i, r))

    try:
        for r in range(rounds):
            for i, s in enumerate(socks):
                s.sendall(b"get %s\r\n" % keys[i])
            for i, s in enumerate(socks):
                v = value(i, r)
                s.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (keys[i], len(v), v))
            for i, s in enumerate(socks):
                s.sendall(b"get %s\r\n" % keys[i])
            for i, s in enumerate(socks):
                before = hit(i, r - 1) if r else b"END\r\n"
                expected = before + b"STORED\r\n" + hit(i, r)
                assert _read_exactly(s, len(expected)) == expected, (r, i)
    finally:
        for s in socks:
            s.close()
