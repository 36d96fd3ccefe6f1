"""The binary protocol, sans-IO: frames in, frames out, no sockets.

Each test feeds request frames to a BinaryProtocol on a fresh Node and reads
the response frames back.  The expected statuses and bodies are memcached
1.6.18's (checked against it in test_binary_differential.py); these tests pin
them down without a server, and cover what a differential test cannot
(bodies trickling in byte by byte, the swallow of a refused value).

The frame helpers here are also used by the differential and auth tests.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import pytest

from memd.node import Node, NodeSettings
from memd.protocol import binary as b
from memd.protocol import protocol_for

HEADER = struct.Struct(">BBHBBHIIQ")


def frame(opcode: int, key: bytes = b"", extras: bytes = b"", value: bytes = b"", *,
          cas: int = 0, opaque: int = 0, magic: int = 0x80, keylen: int | None = None,
          extlen: int | None = None, bodylen: int | None = None) -> bytes:
    """A request frame; the length fields can be overridden to make bad ones."""
    kl = len(key) if keylen is None else keylen
    el = len(extras) if extlen is None else extlen
    bl = len(key) + len(extras) + len(value) if bodylen is None else bodylen
    return HEADER.pack(magic, opcode, kl, el, 0, 0, bl, opaque, cas) + extras + key + value


def set_extras(flags: int = 0, exptime: int = 0) -> bytes:
    return struct.pack(">II", flags, exptime)


def incr_extras(delta: int = 1, initial: int = 0, exptime: int = 0) -> bytes:
    return struct.pack(">QQI", delta, initial, exptime)


def sasl_plain(user: bytes, password: bytes, authzid: bytes = b"") -> bytes:
    return frame(b.SASL_AUTH, b"PLAIN", value=authzid + b"\0" + user + b"\0" + password)


@dataclass
class Resp:
    magic: int
    opcode: int
    status: int
    datatype: int
    extras: bytes
    key: bytes
    value: bytes
    opaque: int
    cas: int


def parse(data: bytes) -> tuple[list[Resp], bytes]:
    """Response frames in ``data``, and any incomplete tail."""
    out = []
    pos = 0
    while len(data) - pos >= 24:
        magic, op, kl, el, dt, status, bl, opaque, cas = HEADER.unpack_from(data, pos)
        if len(data) - pos < 24 + bl:
            break
        body = data[pos + 24:pos + 24 + bl]
        out.append(Resp(magic, op, status, dt, body[:el], body[el:el + kl], body[el + kl:],
                        opaque, cas))
        pos += 24 + bl
    return out, data[pos:]


class Auth:
    def __init__(self, users):
        self.users = users

    def check(self, user, password):
        return self.users.get(user) == password


def make(auth=None, **settings) -> b.BinaryProtocol:
    node = Node(NodeSettings(**settings))
    node.auth = auth
    return protocol_for(node, 0x80)


def talk(proto, data: bytes) -> list[Resp]:
    resps, rest = parse(proto.feed(data))
    assert rest == b""
    return resps


# -- basics ------------------------------------------------------------------------

def test_first_byte_0x80_picks_the_binary_protocol():
    assert isinstance(make(), b.BinaryProtocol)


def test_set_then_get_returns_flags_value_and_cas():
    p = make()
    [r] = talk(p, frame(b.SET, b"k", set_extras(7), b"hello", opaque=42))
    assert (r.magic, r.opcode, r.status, r.opaque) == (0x81, b.SET, 0, 42)
    assert r.cas and r.value == b""
    [g] = talk(p, frame(b.GET, b"k", opaque=43))
    assert (g.status, g.extras, g.key, g.value, g.cas, g.opaque) == \
        (0, struct.pack(">I", 7), b"", b"hello", r.cas, 43)
    [gk] = talk(p, frame(b.GETK, b"k"))
    assert gk.key == b"k" and gk.value == b"hello"


def test_miss_bodies_match_memcached():
    p = make()
    [g, gk] = talk(p, frame(b.GET, b"nope") + frame(b.GETK, b"nope"))
    assert (g.status, g.value, g.key) == (b.KEY_ENOENT, b"Not found", b"")
    # GETK's miss carries the key and no text
    assert (gk.status, gk.value, gk.key) == (b.KEY_ENOENT, b"", b"nope")


def test_quiet_gets_are_silent_on_miss_and_answer_hits():
    p = make()
    talk(p, frame(b.SET, b"k", set_extras(), b"v"))
    resps = talk(p, frame(b.GETQ, b"miss") + frame(b.GETKQ, b"miss") + frame(b.GETKQ, b"k")
                 + frame(b.NOOP))
    assert [(r.opcode, r.key, r.value) for r in resps] == [(b.GETKQ, b"k", b"v"), (b.NOOP, b"", b"")]


def test_quiet_stores_are_silent_on_success_but_report_errors():
    p = make()
    resps = talk(p, frame(b.SETQ, b"k", set_extras(), b"v") + frame(b.ADDQ, b"k", set_extras(), b"v")
                 + frame(b.REPLACEQ, b"zz", set_extras(), b"v") + frame(b.APPENDQ, b"zz", value=b"x")
                 + frame(b.DELETEQ, b"k") + frame(b.DELETEQ, b"k") + frame(b.NOOP))
    assert [(r.opcode, r.status, r.value) for r in resps] == [
        (b.ADDQ, b.KEY_EEXISTS, b"Data exists for key."),
        (b.REPLACEQ, b.KEY_ENOENT, b"Not found"),
        (b.APPENDQ, b.NOT_STORED, b"Not stored."),
        (b.DELETEQ, b.KEY_ENOENT, b"Not found"),
        (b.NOOP, 0, b""),
    ]


def test_cas_on_set_and_delete():
    p = make()
    [r] = talk(p, frame(b.SET, b"k", set_extras(), b"v"))
    [bad] = talk(p, frame(b.SET, b"k", set_extras(), b"w", cas=r.cas + 100))
    assert (bad.status, bad.cas) == (b.KEY_EEXISTS, 0)
    [good] = talk(p, frame(b.SET, b"k", set_extras(), b"w", cas=r.cas))
    assert good.status == 0 and good.cas != r.cas
    [nf] = talk(p, frame(b.SET, b"nope", set_extras(), b"w", cas=5))
    assert nf.status == b.KEY_ENOENT
    [d] = talk(p, frame(b.DELETE, b"k", cas=r.cas))
    assert d.status == b.KEY_EEXISTS
    [d] = talk(p, frame(b.DELETE, b"k", cas=good.cas))
    assert d.status == 0


def test_incr_creates_with_initial_unless_expiry_is_all_ones():
    p = make()
    resps = talk(p, frame(b.INCR, b"n", incr_extras(5, 10)) + frame(b.INCR, b"n", incr_extras(5, 10))
                 + frame(b.DECR, b"n", incr_extras(100, 0)) + frame(b.INCR, b"m", incr_extras(1, 1, 0xFFFFFFFF)))
    assert [(r.status, r.value) for r in resps] == [
        (0, struct.pack(">Q", 10)), (0, struct.pack(">Q", 15)), (0, struct.pack(">Q", 0)),
        (b.KEY_ENOENT, b"Not found")]
    talk(p, frame(b.SET, b"s", set_extras(), b"abc"))
    [r] = talk(p, frame(b.INCR, b"s", incr_extras()))
    assert (r.status, r.value) == (b.DELTA_BADVAL, b"Non-numeric server-side value for incr or decr")


def test_incr_wraps_at_64_bits():
    p = make()
    talk(p, frame(b.SET, b"n", set_extras(), b"18446744073709551615"))
    [r] = talk(p, frame(b.INCR, b"n", incr_extras(2)))
    assert r.value == struct.pack(">Q", 1)


def test_touch_returns_flags_only_and_gat_returns_the_value():
    p = make()
    talk(p, frame(b.SET, b"k", set_extras(9), b"v"))
    [t, g, gk] = talk(p, frame(b.TOUCH, b"k", struct.pack(">I", 100))
                      + frame(b.GAT, b"k", struct.pack(">I", 100))
                      + frame(b.GATK, b"k", struct.pack(">I", 100)))
    assert (t.extras, t.value) == (struct.pack(">I", 9), b"")
    assert (g.value, gk.key, gk.value) == (b"v", b"k", b"v")
    assert talk(p, frame(b.GATQ, b"zz", struct.pack(">I", 1))) == []


def test_flush_version_noop_and_quit():
    p = make()
    talk(p, frame(b.SET, b"k", set_extras(), b"v"))
    [f] = talk(p, frame(b.FLUSH))
    assert f.status == 0
    [g] = talk(p, frame(b.GET, b"k"))
    assert g.status == b.KEY_ENOENT
    [v] = talk(p, frame(b.VERSION))
    assert v.value.startswith(b"1.6.18")
    assert talk(p, frame(b.QUITQ)) == [] and p.closed


def test_stat_sends_one_packet_per_stat_and_an_empty_terminator():
    p = make()
    resps = talk(p, frame(b.STAT, opaque=7))
    assert all(r.opcode == b.STAT and r.opaque == 7 for r in resps)
    assert resps[-1].key == b"" and resps[-1].value == b""
    names = [r.key for r in resps[:-1]]
    assert b"pid" in names and b"curr_items" in names
    [nf] = talk(p, frame(b.STAT, b"bogus"))
    assert (nf.status, nf.value) == (b.KEY_ENOENT, b"Not found")
    resps = talk(p, frame(b.STAT, b"settings"))
    assert resps[0].key == b"maxbytes"
    assert [r.key for r in talk(p, frame(b.STAT, b"reset"))] == [b""]


def test_unknown_opcode_and_verbosity():
    p = make()
    [r] = talk(p, frame(0x50) + frame(b.NOOP)[:0])
    assert (r.status, r.value) == (b.UNKNOWN_COMMAND, b"Unknown command")
    [r] = talk(p, frame(b.VERBOSITY, extras=struct.pack(">I", 1)))
    assert r.status == b.UNKNOWN_COMMAND


# -- malformed frames -------------------------------------------------------------------

def test_bad_magic_closes_without_a_reply():
    p = make()
    assert talk(p, frame(b.GET, b"k", magic=0x81)) == []
    assert p.closed


def test_bad_magic_loses_replies_memcached_had_not_flushed():
    p = make()
    resps = talk(p, frame(b.SET, b"a", set_extras(), b"v") + frame(b.NOOP)
                 + frame(b.SET, b"b", set_extras(), b"v") + b"\x00" * 24)
    assert [r.opcode for r in resps] == [b.SET, b.NOOP]
    assert p.closed


def test_key_longer_than_body_is_unknown_command_and_closes():
    p = make()
    [r] = talk(p, frame(b.GET, b"abc", bodylen=2))
    assert r.status == b.UNKNOWN_COMMAND and p.closed


@pytest.mark.parametrize("req", [
    frame(b.GET, b"k", b"1234"),                       # extras on a get
    frame(b.GET, b""),                                  # no key
    frame(b.SET, b"k", b"1234", b"v"),                  # 4 extras on a set
    frame(b.INCR, b"k", b"x" * 8),                      # short incr extras
    frame(b.NOOP, b"k"),
    frame(b.TOUCH, b"k"),
    frame(b.GET, b"k" * 251),                           # key over 250
])
def test_wrong_shapes_get_invalid_arguments_and_close(req):
    p = make()
    [r] = talk(p, req + frame(b.NOOP))
    assert (r.status, r.value) == (b.EINVAL, b"Invalid arguments")
    assert p.closed


def test_too_large_value_is_swallowed_without_buffering():
    p = make()
    big = 2 << 20
    head = frame(b.SET, b"k", set_extras(), bodylen=1 + 8 + big)
    resps = talk(p, head)
    assert [(r.status, r.value) for r in resps] == [(b.E2BIG, b"Too large.")]
    chunk = b"x" * 65536
    for _ in range(big // len(chunk)):
        assert p.feed(chunk) == b""
        assert p.held_bytes() == 0           # nothing kept
    [n] = talk(p, frame(b.NOOP))
    assert n.opcode == b.NOOP


def test_too_large_set_drops_the_old_value():
    p = make()
    talk(p, frame(b.SET, b"k", set_extras(), b"old"))
    talk(p, frame(b.SET, b"k", set_extras(), b"x" * (2 << 20)))
    [g] = talk(p, frame(b.GET, b"k"))
    assert g.status == b.KEY_ENOENT


def test_value_trickling_in_one_byte_at_a_time():
    p = make()
    data = frame(b.SET, b"key", set_extras(3), b"v" * 5000, opaque=9) + frame(b.GET, b"key")
    out = b""
    for i in range(len(data)):
        out += p.feed(data[i:i + 1])
    [s, g] = parse(out)[0]
    assert s.opaque == 9 and g.value == b"v" * 5000


def test_large_value_in_many_reads_is_gathered_in_linear_time():
    p = make()
    value = b"z" * (1000 * 1000)
    data = frame(b.SET, b"big", set_extras(), value)
    t0 = time.perf_counter()
    for i in range(0, len(data), 100):
        p.feed(data[i:i + 100])
    elapsed = time.perf_counter() - t0
    [g] = talk(p, frame(b.GET, b"big"))
    assert g.value == value
    assert elapsed < 2.0      # quadratic joining of 10,000 chunks of 1 MB takes far longer


# -- SASL ---------------------------------------------------------------------------------

def test_without_auth_sasl_is_an_unknown_command():
    p = make()
    resps = talk(p, frame(b.SASL_LIST) + sasl_plain(b"a", b"b") + frame(b.NOOP))
    assert [r.status for r in resps] == [b.UNKNOWN_COMMAND, b.UNKNOWN_COMMAND, 0]


def test_commands_before_auth_get_auth_error_and_close():
    p = make(Auth({b"alice": b"secret"}))
    [v, r] = talk(p, frame(b.VERSION) + frame(b.GET, b"k"))
    assert v.status == 0
    assert (r.status, r.value) == (b.AUTH_ERROR, b"Auth failure.") and p.closed


def test_sasl_plain_success_failure_and_two_step():
    auth = Auth({b"alice": b"secret"})
    p = make(auth)
    [m] = talk(p, frame(b.SASL_LIST))
    assert m.value == b"PLAIN"
    [bad] = talk(p, sasl_plain(b"alice", b"wrong"))
    assert (bad.status, bad.value) == (b.AUTH_ERROR, b"Auth failure.") and not p.closed
    [ok, n] = talk(p, sasl_plain(b"alice", b"secret") + frame(b.NOOP))
    assert (ok.status, ok.value, n.status) == (0, b"Authenticated", 0)

    p = make(auth)
    [c, ok] = talk(p, frame(b.SASL_AUTH, b"PLAIN")
                   + frame(b.SASL_STEP, b"PLAIN", value=b"\0alice\0secret"))
    assert (c.status, c.value) == (b.AUTH_CONTINUE, b"")
    assert (ok.opcode, ok.status) == (b.SASL_STEP, 0)


@pytest.mark.parametrize("message", [
    b"alicesecret", b"alice\0secret", b"\0alice\0secret\0", b"bob\0alice\0secret",
    b"\0\0secret", b"\0alice\0",
])
def test_malformed_plain_messages_fail(message):
    p = make(Auth({b"alice": b"secret"}))
    [r] = talk(p, frame(b.SASL_AUTH, b"PLAIN", value=message))
    assert r.status == b.AUTH_ERROR


def test_unknown_mechanism_and_long_mechanism_name():
    p = make(Auth({b"alice": b"secret"}))
    [r] = talk(p, frame(b.SASL_AUTH, b"CRAM-MD5", value=b"x"))
    assert r.status == b.AUTH_ERROR
    [r] = talk(p, frame(b.SASL_AUTH, b"P" * 33, value=b"\0alice\0secret"))
    assert r.status == b.EINVAL and not p.closed
