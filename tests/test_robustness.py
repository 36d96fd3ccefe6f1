"""Hostile input: memd must answer or hang up, never raise, never buffer
without bound, and keep serving well-behaved clients meanwhile.

Two levels:

* sans-IO: hypothesis feeds raw and command-shaped bytes, split at random
  points, to the protocol objects ``protocol_for`` builds (text, meta,
  binary).  Every ``feed`` must return bytes, and what a protocol keeps
  between feeds must stay under the parser's bounds.
* sockets: a running memd (127.0.0.1 only) gets garbage on text, meta and
  binary connections in parallel with a client whose set/get results are
  checked; slow-loris and connection floods must be cut off.

Bounded: the whole file runs in well under a minute.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from memd.node import Node, NodeSettings
from memd.protocol import protocol_for
from memd.protocol import text as text_mod
from tools.fuzz import ITEM_MAX, held_bound, held_bytes

# the parser-bound checks are the fuzzer's own (tools/fuzz.py)
HELD_BOUND = held_bound()


def feed_in_pieces(proto, data: bytes, cuts: list[int]) -> bytes:
    """Feed ``data`` split at ``cuts`` as the server would (non-empty reads,
    nothing after the protocol asked to close); check every reply and bound."""
    replies = []
    pos = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]:
        if proto.closed:
            break
        chunk = data[pos:cut]
        pos = cut
        if not chunk:
            continue
        reply = proto.feed(chunk)
        assert isinstance(reply, (bytes, bytearray)), type(reply)
        assert held_bytes(proto) <= HELD_BOUND + len(chunk)
        replies.append(bytes(reply))
    return b"".join(replies)


# A node shared by the hypothesis examples: state left by one example (items,
# a pending CAS, a changed memory limit) is more input for the next.
SHARED = Node(NodeSettings(enable_shutdown=False))

TOKENS = [
    b"get", b"gets", b"gat", b"gats", b"bget", b"set", b"add", b"replace", b"append",
    b"prepend", b"cas", b"delete", b"incr", b"decr", b"touch", b"flush_all", b"version",
    b"verbosity", b"stats", b"items", b"slabs", b"settings", b"conns", b"reset", b"detail",
    b"dump", b"sizes", b"cache_memlimit", b"config", b"quit", b"shutdown", b"lru_crawler",
    b"metadump", b"slabs reassign", b"watch", b"mn", b"mg", b"ms", b"md", b"ma", b"me",
    b"k", b"key", b"a", b"0", b"1", b"2", b"5", b"10", b"-1", b"-2147483649", b"4294967295",
    b"4294967296", b"18446744073709551615", b"18446744073709551616", b"2147483647",
    b"1048576", b"99999999999999999999", b"0x10", b"1e3", b"noreply", b"v", b"t", b"f",
    b"c", b"s", b"h", b"l", b"O", b"q", b"b", b"T1", b"T-1", b"N30", b"R5", b"MS", b"ME",
    b"MA", b"MP", b"MR", b"MI", b"MD", b"M", b"Mz", b"O123", b"a2V5", b"!!!", b"I", b"E5",
    b"D5", b"J13", b"S3", b"S-1", b"S99999999999", b"\x00", b"\xff\xfe", b"k" * 251,
    b"k" * 250, b"HTTP/1.1", b"GET", b"/", b"x",
]
SEPS = [b" ", b"  ", b"\r\n", b"\n", b"\r", b"", b"\t"]


@hs.composite
def command_soup(draw):
    """Command-shaped bytes: tokens, numbers and separators in random order,
    sometimes followed by a data block of a plausible or wrong length."""
    parts = []
    for _ in range(draw(hs.integers(1, 12))):
        n = draw(hs.integers(1, 8))
        for _ in range(n):
            parts.append(draw(hs.sampled_from(TOKENS)))
            parts.append(draw(hs.sampled_from(SEPS[:2] + [b" "] * 4)))
        parts.append(draw(hs.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r\n\r\n", b""])))
        if draw(hs.booleans()):
            parts.append(draw(hs.binary(max_size=40)))
            parts.append(draw(hs.sampled_from([b"\r\n", b"", b"\n"])))
    return b"".join(parts)


def cuts_for(data_strategy):
    return data_strategy.flatmap(
        lambda d: hs.tuples(hs.just(d), hs.lists(hs.integers(0, max(len(d), 1)), max_size=20)))


FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(cuts_for(hs.binary(max_size=3000)))
def test_text_protocol_survives_random_bytes(case):
    data, cuts = case
    proto = protocol_for(SHARED, ord("g") if not data or data[0] == 0x80 else data[0])
    feed_in_pieces(proto, data, cuts)


@FAST
@given(cuts_for(command_soup()))
def test_text_and_meta_commands_survive_malformed_arguments(case):
    data, cuts = case
    if not data or data[0] == 0x80:
        data = b"x" + data
    proto = protocol_for(SHARED, data[0])
    feed_in_pieces(proto, data, cuts)


@FAST
@given(cuts_for(command_soup()))
def test_a_fresh_node_survives_command_soup(case):
    # a fresh node too: some paths only run on an empty store
    data, cuts = case
    if not data or data[0] == 0x80:
        data = b"x" + data
    proto = protocol_for(Node(), data[0])
    feed_in_pieces(proto, data, cuts)


BINARY_OPCODES = list(range(0x00, 0x26)) + [0x20, 0x21, 0x22, 0x23, 0x83, 0xFF]


@hs.composite
def binary_frames(draw):
    """Binary request frames whose header fields disagree with their bodies."""
    frames = []
    for _ in range(draw(hs.integers(1, 6))):
        opcode = draw(hs.sampled_from(BINARY_OPCODES))
        extlen = draw(hs.sampled_from([0, 4, 8, 20, 255]))
        keylen = draw(hs.sampled_from([0, 1, 3, 250, 251, 65535]))
        body = draw(hs.binary(max_size=300))
        declared = draw(hs.sampled_from([len(body), max(0, len(body) - 1), len(body) + 1,
                                         extlen + keylen, 0, 0xFFFFFFFF, 1 << 20, 24]))
        magic = draw(hs.sampled_from([0x80, 0x80, 0x80, 0x81, 0x00]))
        datatype = draw(hs.sampled_from([0, 0, 1, 0xFF]))
        header = struct.pack(">BBHBBHIIQ", magic, opcode, keylen, extlen, datatype,
                             draw(hs.integers(0, 0xFFFF)), declared,
                             draw(hs.integers(0, 0xFFFFFFFF)), draw(hs.integers(0, 2**64 - 1)))
        frames.append(header + body)
    return b"".join(frames)


@FAST
@given(cuts_for(binary_frames()))
def test_binary_protocol_survives_inconsistent_frames(case):
    data, cuts = case
    data = b"\x80" + data[1:] if data else b"\x80"
    proto = protocol_for(SHARED, 0x80)
    feed_in_pieces(proto, data, cuts)


@FAST
@given(cuts_for(hs.binary(max_size=2000)))
def test_binary_protocol_survives_random_bytes(case):
    data, cuts = case
    proto = protocol_for(SHARED, 0x80)
    feed_in_pieces(proto, b"\x80" + data, cuts)


# -- bounds, with inputs too large for hypothesis ------------------------------------------


def stream(proto, chunks) -> int:
    """Feed chunks until the protocol closes; return the largest amount held."""
    peak = 0
    for chunk in chunks:
        if proto.closed:
            break
        assert isinstance(proto.feed(chunk), (bytes, bytearray))
        peak = max(peak, held_bytes(proto))
    return peak


def test_a_long_line_without_newline_closes_the_connection():
    # memcached hangs up on 2 KB without a newline (unless it is a get)
    proto = protocol_for(Node(), ord("s"))
    peak = stream(proto, [b"set " + b"k" * 100] + [b"x" * 512] * 100)
    assert proto.closed
    assert peak <= text_mod.LINE_MAX + 1024


def test_an_endless_get_line_is_cut_at_the_multiget_bound():
    proto = protocol_for(Node(), ord("g"))
    peak = stream(proto, [b"get "] + [b"key " * 16384] * 200)     # 12 MB offered
    assert proto.closed
    assert peak <= text_mod.GET_LINE_MAX + 65536


def test_a_huge_declared_value_is_refused_and_never_buffered():
    proto = protocol_for(Node(), ord("s"))
    reply = proto.feed(b"set k 0 0 2147483000\r\n")
    assert reply == b"SERVER_ERROR object too large for cache\r\n"
    peak = stream(proto, [os.urandom(65536)] * 80)                  # 5 MB of "value"
    assert peak < 4096
    assert not proto.closed


def test_a_value_trickled_in_small_reads_is_held_once():
    # a 1 MB value over 1 KB reads: held bytes grow to the value size, no more
    proto = protocol_for(Node(), ord("s"))
    size = ITEM_MAX - 1024
    proto.feed(b"set big 0 0 %d\r\n" % size)
    data = b"v" * size + b"\r\n"
    peak = stream(proto, [data[i:i + 1024] for i in range(0, len(data), 1024)])
    assert peak <= size + 2
    assert proto.feed(b"get big\r\n").startswith(b"VALUE big 0 %d\r\n" % size)


def test_a_line_trickled_one_byte_at_a_time_costs_linear_time():
    # h11's lesson: re-scanning the whole partial line on every byte is O(n^2)
    proto = protocol_for(Node(), ord("g"))
    line = b"get " + b"k " * 100_000 + b"\r\n"
    started = time.monotonic()
    for i in range(len(line)):
        proto.feed(line[i:i + 1])
        if proto.closed:
            break
    assert time.monotonic() - started < 10
    assert held_bytes(proto) <= 1


def test_a_binary_frame_declaring_four_gigabytes_is_not_allocated():
    proto = protocol_for(Node(), 0x80)
    header = struct.pack(">BBHBBHIIQ", 0x80, 0x01, 1, 8, 0, 0, 0xFFFFFFFF, 0, 0)
    peak = stream(proto, [header] + [os.urandom(65536)] * 40)
    assert peak <= HELD_BOUND


# -- over sockets, against a running memd ------------------------------------------------------


def _recv_exact_reply(sock, buf: bytearray, done) -> bytearray:
    while not done(buf):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        buf += chunk
    return buf


class GoodClient:
    """A well-behaved client: every value it reads must be the last one it wrote."""

    def __init__(self, port: int, seed: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.rng = random.Random(seed)
        self.written: dict[bytes, tuple[int, bytes]] = {}
        self.ops = 0
        self.failures: list[str] = []

    def step(self) -> None:
        rng = self.rng
        key = b"good:%d" % rng.randrange(200)
        if rng.random() < 0.5 or key not in self.written:
            value = os.urandom(rng.choice([0, 1, 10, 100, 1000, 5000, 20000]))
            flags = rng.randrange(1 << 32)
            self.sock.sendall(b"set %s %d 0 %d\r\n%s\r\n" % (key, flags, len(value), value))
            reply = _recv_exact_reply(self.sock, bytearray(), lambda b: b.endswith(b"\r\n"))
            if reply != b"STORED\r\n":
                self.failures.append(f"set {key!r}: {bytes(reply[:80])!r}")
            else:
                self.written[key] = (flags, value)
        else:
            flags, value = self.written[key]
            expect = b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (key, flags, len(value), value)
            self.sock.sendall(b"get %s\r\n" % key)
            reply = _recv_exact_reply(self.sock, bytearray(),
                                      lambda b: len(b) >= len(expect) or b.endswith(b"END\r\n"))
            if reply != expect:
                self.failures.append(f"get {key!r}: {bytes(reply[:80])!r}")
        self.ops += 1

    def close(self) -> None:
        self.sock.close()


def _hostile_payload(rng: random.Random, kind: str) -> bytes:
    if kind == "binary":
        head = struct.pack(">BBHBBHIIQ", 0x80, rng.randrange(256), rng.randrange(65536),
                           rng.randrange(256), rng.randrange(256), 0,
                           rng.choice([0, 8, 100, 1 << 20, 0xFFFFFFFF, rng.randrange(1 << 32)]),
                           0, 0)
        return head + rng.randbytes(rng.randrange(200))
    if kind == "raw":
        return rng.randbytes(rng.randrange(1, 3000))
    # text or meta soup, minus what would legitimately disturb the good client
    vocab = [t for t in TOKENS if t not in (b"flush_all", b"cache_memlimit", b"shutdown")]
    if kind == "meta":
        vocab = [b"mg", b"ms", b"md", b"ma", b"me", b"mn"] * 5 + vocab
    parts = []
    for _ in range(rng.randrange(1, 40)):
        parts.append(rng.choice(vocab))
        parts.append(rng.choice([b" ", b" ", b" ", b"\r\n", b"\n", b""]))
    return b"".join(parts)


def _hostile_worker(port: int, seed: int, kinds: list[str], stop: threading.Event,
                    counts: dict) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        kind = rng.choice(kinds)
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            counts["connect_errors"] = counts.get("connect_errors", 0) + 1
            time.sleep(0.01)
            continue
        try:
            s.settimeout(0.05)
            first = b"\x80" if kind == "binary" else b""
            s.sendall(first + _hostile_payload(rng, kind))
            for _ in range(rng.randrange(0, 4)):
                s.sendall(_hostile_payload(rng, kind))
                try:
                    s.recv(65536)
                except OSError:
                    pass
            if rng.random() < 0.5:
                # abrupt disconnect: RST instead of FIN
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass            # the server hung up on us: allowed
        finally:
            s.close()
        counts[kind] = counts.get(kind, 0) + 1


def _alive_and_answering(node) -> bool:
    if not node.alive():
        return False
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
        s.sendall(b"version\r\n")
        return s.recv(100).startswith(b"VERSION ")


def test_garbage_on_many_connections_does_not_disturb_a_well_behaved_client(
        memd_server_factory):
    node = memd_server_factory()
    kinds = ["text", "meta", "raw", "binary"]
    stop = threading.Event()
    counts: dict = {}
    workers = [threading.Thread(target=_hostile_worker,
                                args=(node.port, seed, kinds, stop, counts), daemon=True)
               for seed in range(6)]
    good = GoodClient(node.port, seed=42)
    for w in workers:
        w.start()
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            good.step()
    finally:
        stop.set()
        for w in workers:
            w.join(10)
        good.close()
    assert good.failures == []
    assert good.ops > 100
    assert sum(v for k, v in counts.items() if k in kinds) > 50, counts
    assert _alive_and_answering(node)
    assert "Traceback" not in node.stderr_text(), node.stderr_text()


def test_a_binary_connection_never_takes_the_node_down(memd_server_factory):
    node = memd_server_factory()
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
        s.sendall(b"\x80\x01\x00\x00" + b"\x00" * 20)
        s.settimeout(1)
        try:
            s.recv(100)
        except OSError:
            pass
    time.sleep(0.3)
    assert _alive_and_answering(node)


def _trickled_until_closed(node, first: bytes, trickle: bytes, seconds: float) -> bool:
    """Send ``first``, then ``trickle`` a byte per 100 ms; True if the node closed us."""
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
        s.sendall(first)
        s.settimeout(0.05)
        started = time.monotonic()
        for i in range(len(trickle)):
            try:
                s.sendall(trickle[i:i + 1])
                if s.recv(100) == b"":
                    return True
            except socket.timeout:
                pass
            except OSError:
                return True
            time.sleep(0.1)
            if time.monotonic() - started > seconds:
                break
    return False


def test_slow_loris_is_closed_by_the_idle_timeout(memd_server_factory):
    node = memd_server_factory("--idle-timeout", "1")
    assert _trickled_until_closed(node, b"", b"get " + b"k" * 200, 6), \
        "a slow-loris trickling one byte per 100 ms was not closed"
    assert _alive_and_answering(node)


def test_a_value_trickled_a_byte_at_a_time_is_closed_by_the_idle_timeout(
        memd_server_factory, memcached_server_factory):
    # Only a completed command counts as activity in memd.  memcached 1.6.18
    # checks the idle timeout only on connections waiting for a command, so it
    # keeps one that is reading a value's body forever; memd differs on purpose
    # (one trickled value per connection would otherwise pin -I bytes for good).
    first = b"set k 0 0 100000\r\n"
    node = memd_server_factory("--idle-timeout", "1")
    assert _trickled_until_closed(node, first, b"x" * 100, 6)
    assert _alive_and_answering(node)
    oracle = memcached_server_factory("-o", "idle_timeout=1")
    assert not _trickled_until_closed(oracle, first, b"x" * 100, 3.5)


def test_an_idle_connection_is_closed_by_the_idle_timeout(memd_server_factory):
    node = memd_server_factory("--idle-timeout", "1")
    with socket.create_connection(("127.0.0.1", node.port), timeout=6) as s:
        s.sendall(b"version\r\n")
        assert s.recv(100).startswith(b"VERSION")
        started = time.monotonic()
        assert s.recv(100) == b""          # closed by the server, not by our timeout
        assert time.monotonic() - started < 4


def test_a_connection_flood_beyond_the_limit_is_refused_and_the_good_client_works(
        memd_server_factory):
    node = memd_server_factory("-c", "20")
    good = GoodClient(node.port, seed=7)
    flood = []
    refused = 0
    try:
        good.step()
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", node.port), timeout=5)
            flood.append(s)
        time.sleep(0.3)
        for s in flood:
            s.settimeout(0.02)     # the refused ones already have their reply
            try:
                data = s.recv(100)
            except socket.timeout:
                continue                        # accepted and waiting for a command
            if data == b"ERROR Too many open connections\r\n":
                refused += 1
        assert refused >= 40 - 19
        for _ in range(50):
            good.step()
        assert good.failures == []
    finally:
        for s in flood:
            s.close()
        good.close()
    # once the flood is gone, new clients get in again
    time.sleep(0.3)
    assert _alive_and_answering(node)
