"""One client cannot bloat or stall the node (issue 12, points 1-3).

Each test plays a hostile or merely slow client against a running memd and
asserts the figure the node holds it to: bytes held for the connection (the
node's own accounting, `stats` read_buf_bytes and response_obj_bytes), RSS
per byte held, or that another client is answered while a dump is still
going.  Sizes are small so the file runs in seconds; tools/bounds_probe.py
measures the same at full size beside memcached.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

import wire
from memd.node import Node, NodeSettings
from memd.protocol import protocol_for
from memd.protocol.wire import PREAUTH_INPUT, PREAUTH_OUTPUT

BOUND = 1 << 20                 # --max-conn-output the tests run with
READ = 256 * 1024               # the server's largest single read


def rss(server) -> int:
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def stats(server, auth: bytes = b"") -> dict[str, str]:
    with wire.connect(server) as c:
        if auth:
            assert c.request(auth) == b"STORED\r\n"
        text = c.exchange(b"stats\r\n").data.decode()
    return {p[1]: p[2] for p in (l.split(" ", 2) for l in text.splitlines()) if p[0] == "STAT"}


def held(server, auth: bytes = b"") -> tuple[int, int]:
    s = stats(server, auth)
    return int(s["read_buf_bytes"]), int(s["response_obj_bytes"])


def settle(server, auth: bytes = b"", rounds: int = 40) -> tuple[int, int]:
    """The node's buffer figures once they stop changing (the node has read
    what it will read)."""
    last = None
    for _ in range(rounds):
        now = held(server, auth)
        if now == last:
            return now
        last = now
        time.sleep(0.1)
    return last


# -- output ------------------------------------------------------------------------------


def test_unread_pipelined_gets_hold_at_most_the_bound_plus_one_value(memd_server_factory):
    server = memd_server_factory("--max-conn-output", str(BOUND))
    value = 250_000
    with wire.connect(server) as c:
        assert c.request(b"set big 0 0 %d\r\n%s\r\n" % (value, b"v" * value)) == b"STORED\r\n"
    before = rss(server)
    # 3,000 gets in one write ask for 750 MB of replies; the client never reads
    hog = socket.create_connection(server.address)
    hog.sendall(b"get big\r\n" * 3000)
    held_in, queued = settle(server)
    # the socket buffers took some; the node holds the rest of the input
    # unparsed and no more than the bound plus one value of replies
    assert queued <= BOUND + value + 1024
    assert held_in <= 3000 * 9
    assert rss(server) - before < 64 << 20
    # another client is served meanwhile
    with wire.connect(server) as other:
        assert other.request(b"get big\r\n").startswith(b"VALUE big 0 250000\r\n")
    # and the hog gets every reply once it reads
    hog.settimeout(30)
    want = 3000 * (len(b"VALUE big 0 250000\r\n") + value + 2 + 5)
    got = 0
    while got < want:
        data = hog.recv(1 << 20)
        assert data
        got += len(data)
    assert got == want
    hog.close()


def test_one_multiget_asking_for_many_copies_of_a_value_is_bounded():
    # sans-IO: one command whose replies are far over the bound is answered
    # in steps, each at most the bound plus one value
    node = Node(NodeSettings(conn_output_limit=BOUND))
    proto = protocol_for(node, ord("s"))
    value = 100_000
    proto.feed(b"set k 0 0 %d\r\n%s\r\n" % (value, b"x" * value))
    chunks = proto.receive(b"get " + b"k " * 2000 + b"\r\nversion\r\n")
    steps = 1
    total = sum(map(len, chunks))
    assert total <= BOUND + value + 64
    while proto.blocked:
        step = proto.resume()
        size = sum(map(len, step))
        assert size <= BOUND + value + 64
        total += size
        steps += 1
        chunks = step
    assert steps > 100
    assert b"".join(chunks).endswith(b"END\r\nVERSION 1.6.18-memd-0.1.0\r\n") or \
        b"".join(chunks).endswith(b"\r\n")
    assert total == 2000 * (len(b"VALUE k 0 100000\r\n") + value + 2) + 5 + \
        len(b"VERSION %s\r\n" % node.version.encode())


def test_a_read_of_junk_before_authentication_gets_a_small_output_bound():
    node = Node()
    node.auth = object()             # any authenticator: the bound depends only on its presence
    proto = protocol_for(node, ord("x"))
    chunks = proto.receive(b"\n" * 4096)
    assert sum(map(len, chunks)) <= PREAUTH_OUTPUT + 64
    assert proto.held_bytes() <= 4096


# -- input -------------------------------------------------------------------------------


def test_a_value_sent_a_byte_per_send_costs_about_a_byte_of_rss_per_byte(memd_server_factory):
    server = memd_server_factory()
    conns = [socket.create_connection(server.address) for _ in range(100)]
    for c in conns:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    size = 3000
    for i, c in enumerate(conns):
        c.sendall(b"set trickle%d 0 0 100000\r\n" % i)
    settle(server)
    before = rss(server)
    # round robin: each connection's next byte arrives after 99 others, so
    # the node reads (almost) every byte on its own
    for _ in range(size):
        for c in conns:
            c.send(b"v")
    held_in, _ = settle(server)
    sent = size * len(conns)
    grown = rss(server) - before
    assert grown <= 4 * sent + (4 << 20), f"RSS grew {grown} bytes for {sent} bytes held"
    assert held_in >= sent                       # the node holds what it was sent...
    assert held_in <= sent * 1.25 + 64 * len(conns)   # ...in about one byte each
    for c in conns:
        c.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and held(server)[0]:
        time.sleep(0.1)
    assert held(server) == (0, 0)


def test_a_line_trickled_a_byte_at_a_time_is_held_in_one_buffer():
    proto = protocol_for(Node(), ord("g"))
    line = b"get " + b"k" * 200 + b" " + b"j" * 200
    for i in range(len(line)):
        assert proto.receive(line[i:i + 1]) == []
    assert proto.held_bytes() == len(line)
    assert len(proto.rbuf.data) == len(line)     # one buffer, not a list of reads
    assert proto.feed(b"\r\n") == b"END\r\n"
    assert proto.held_bytes() == 0


@pytest.fixture
def auth_server(tmp_path, memd_server_factory):
    f = tmp_path / "auth"
    f.write_text("alice:secret\n")
    return memd_server_factory("--auth-file", str(f))


AUTH = b"set x 0 0 12\r\nalice secret\r\n"


def test_a_binary_sasl_body_trickled_before_login_is_refused_early(auth_server):
    body = 2_800_000
    header = struct.pack(">BBHBBHIIQ", 0x80, 0x21, 5, 0, 0, 0, 5 + body, 0, 0)
    with wire.connect(auth_server) as c:
        c.send(header + b"PLAIN")
        for _ in range(200):
            try:
                c.sock.send(b"\0" * 100)
            except OSError:
                break
        reply = c.read_until_close(timeout=5)
    assert reply.data[24:] == b"Auth failure."
    assert reply.closed
    assert held(auth_server, AUTH)[0] <= PREAUTH_INPUT


def test_a_text_line_trickled_before_login_is_cut_at_a_few_kib(auth_server):
    with wire.connect(auth_server) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.send(b"get ")
        closed = False
        for _ in range(8000):
            try:
                c.sock.send(b"k")
            except OSError:
                closed = True
                break
        assert held(auth_server, AUTH)[0] <= PREAUTH_INPUT
        reply = c.read_until_close(timeout=5)
    assert closed or reply.closed


# -- long walks --------------------------------------------------------------------------


def test_a_metadump_read_as_fast_as_it_comes_lets_another_client_in(memd_server_factory):
    ITEMS = 40_000
    server = memd_server_factory()
    with wire.connect(server, timeout=60) as c:
        c.sock.sendall(b"".join(b"set dump%06d 0 0 10 noreply\r\n0123456789\r\n" % i
                                for i in range(ITEMS)))
        assert c.request(b"version\r\n", timeout=60).startswith(b"VERSION")
    dumper = socket.create_connection(server.address)
    dumper.sendall(b"lru_crawler metadump all\r\n")
    first = dumper.recv(65536)
    assert first.startswith(b"key=")
    done = threading.Event()
    tail = [first]

    def read_dump():
        while not b"".join(tail[-2:]).endswith(b"END\r\n"):
            data = dumper.recv(1 << 20)
            if not data:
                break
            tail.append(data)
        done.set()

    reader = threading.Thread(target=read_dump, daemon=True)
    reader.start()
    with wire.connect(server) as other:
        reply = other.request(b"get dump000007\r\n")
        answered_during_dump = not done.is_set()
    assert reply == b"VALUE dump000007 0 10\r\n0123456789\r\nEND\r\n"
    assert answered_during_dump, "the other client waited for the whole dump"
    reader.join(30)
    assert done.is_set()
    assert b"".join(tail).count(b"\n") == ITEMS + 1
    dumper.close()


def test_a_cachedump_streams_in_steps():
    node = Node()
    proto = protocol_for(node, ord("s"))
    for i in range(5000):
        proto.feed(b"set k%05d 0 0 1\r\nx\r\n" % i)
    chunks = proto.receive(b"stats cachedump 1 0\r\nversion\r\n")
    assert proto.blocked and b"ITEM" not in b"".join(chunks)
    steps = []
    while proto.blocked:
        steps.append(b"".join(proto.resume()))
    dump = b"".join(steps)
    assert len(steps) >= 3
    assert dump.count(b"ITEM ") == 5000
    assert dump.endswith(b"END\r\nVERSION %s\r\n" % node.version.encode())


@pytest.mark.parametrize("recent_mb", [0, 64])
def test_the_reply_size_the_protocol_counts_is_what_it_replies(recent_mb):
    # the server joins or splits a reply by the size the protocol counted on
    # the way (taken_bytes) instead of adding the chunks up again: that count
    # must be exact whatever path produced the chunks
    node = Node(NodeSettings(recent_replies_mb=recent_mb))
    proto = protocol_for(node, ord("s"))
    for i in range(50):
        proto.feed(b"set k%d %d 0 %d\r\n%s\r\n" % (i, i * 1000, i, b"v" * i))
    reads = [
        b"get k1\r\n", b"get k1\r\nget k2\r\nget nope\r\n",
        b"get " + b" ".join(b"k%d" % i for i in range(60)) + b"\r\n",
        b"gets k3 k4 nope\r\n", b"get k5\r\nset k6 0 0 1\r\nx\r\nget k6 k7\r\n",
        b"gets " + b" ".join(b"k%d" % i for i in range(50)) + b"\r\n",
    ]
    for _ in range(3):          # again, once the replies come from recent replies
        for data in reads:
            chunks = proto.receive(data)
            assert proto.taken_bytes in (-1, sum(map(len, chunks)))
            if data.startswith((b"get k", b"gets k")) and b"set" not in data:
                assert proto.taken_bytes == sum(map(len, chunks)), data
