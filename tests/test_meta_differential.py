"""Differential tests of the meta commands: memd against memcached 1.6.18.

Hypothesis generates sequences of mg/ms/md/ma/me lines (valid, malformed,
quiet pipelines closed by mn) mixed with classic set/get/gets/delete/incr;
the same bytes go to both servers and the replies must match byte for byte
after the normalisers below, each of which says why it exists.

Keeping the byte stream in step: an ms data block is built so that whatever
a server does with it (reads it, swallows it after a flag error, or treats it
as command lines after refusing the line) it ends on a line boundary, and its
bytes read as a line are never a command ("z..." lines answer ERROR).
"""

from __future__ import annotations

import base64
import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import servers
import wire

if not servers.memcached_available():
    pytest.skip(servers.MEMCACHED_MISSING, allow_module_level=True)

SETTINGS = dict(deadline=None, derandomize=False,
                suppress_health_check=list(HealthCheck))

# ---------------------------------------------------------------------------
# Normalisers


class CasMap:
    """CAS values: each server numbers writes from its own start (and the
    shared servers have seen other examples), so absolute values differ.  A
    CAS value is replaced by the index of its first sighting in the example;
    equal on one server must mean equal on the other.  ``resolve`` turns a
    symbolic reference from a generated command into this server's value."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def index(self, cas: bytes) -> bytes:
        if cas == b"0":                 # ms c on failure: a literal 0, not a CAS
            return b"0"
        if cas not in self.seen:
            self.seen.append(cas)
        return b"#%d" % self.seen.index(cas)

    def resolve(self, ref: int) -> bytes:
        if ref < 0 or not self.seen:
            return b"%d" % (-ref if ref < 0 else 1)
        return self.seen[ref % len(self.seen)]


_META_REPLY = re.compile(rb"^(VA \d+|HD|NS|EX|NF|EN)( .*)?$")
_ME = re.compile(rb"^ME (\S+) exp=(-?\d+) la=(\d+) cas=(\d+) (.*)$")


def normalise(data: bytes, cas: CasMap, value_lines: set) -> bytes:
    out = []
    lines = data.split(b"\r\n")
    skip_next = False
    for line in lines:
        if skip_next:                 # a value block: bytes, not flags
            out.append(line)
            skip_next = False
            continue
        m = _META_REPLY.match(line)
        if m:
            toks = line.split(b" ")
            start = 2 if toks[0] == b"VA" else 1
            for i in range(start, len(toks)):
                t = toks[i]
                if t[:1] == b"c" and t[1:].isdigit():
                    toks[i] = b"c" + cas.index(t[1:])
                elif t[:1] == b"t" and t[1:].isdigit():
                    # remaining TTL: a second may tick between the two servers
                    toks[i] = b"t<n>"
                elif t[:1] == b"l" and t[1:].isdigit():
                    # seconds since last access: time-dependent
                    toks[i] = b"l<n>"
            line = b" ".join(toks)
            skip_next = toks[0] == b"VA"
        elif line.startswith(b"ME "):
            m = _ME.match(line)
            if m:
                # exp/la are clock readings; cas is numbered per server
                exp = m.group(2) if m.group(2) == b"-1" else b"<n>"
                line = b"ME %s exp=%s la=<n> cas=%s %s" % (
                    m.group(1), exp, cas.index(m.group(4)), m.group(5))
        elif line.startswith(b"VALUE "):
            toks = line.split(b" ")
            if len(toks) == 5:
                toks[4] = cas.index(toks[4])
            line = b" ".join(toks)
            skip_next = True
        out.append(line)
    return b"\r\n".join(out)


# ---------------------------------------------------------------------------
# Generators

NAMES = [b"a", b"b", b"c", b"n"]
FLAG_WORDS = {
    "mg": [b"v", b"c", b"f", b"h", b"k", b"l", b"s", b"t", b"u", b"q", b"O1", b"Oab",
           b"T0", b"T100", b"N30", b"N0", b"R30", b"R200", b"E5", b"x", b"T-1", b"Tz"],
    "ms": [b"c", b"k", b"q", b"O7", b"F3", b"F-1", b"T0", b"T100", b"I", b"MS", b"ME",
           b"MA", b"MP", b"MR", b"Mx", b"MSS", b"E9", b"Fz", b"Cz", b"y"],
    "md": [b"q", b"k", b"O2", b"I", b"T30", b"x", b"Cz"],
    "ma": [b"v", b"c", b"t", b"k", b"q", b"O3", b"N0", b"N50", b"J7", b"D5",
           b"D18446744073709551615", b"MI", b"MD", b"M+", b"M-", b"Mx", b"T40", b"Dz", b"x"],
}


class Ctx:
    def __init__(self, prefix: bytes, cas: CasMap):
        self.prefix = prefix
        self.cas = cas


@st.composite
def meta_command(draw, quiet_ok=True):
    verb = draw(st.sampled_from(["mg", "mg", "ms", "ms", "md", "ma", "me"]))
    name = draw(st.sampled_from(NAMES))
    binary = draw(st.integers(0, 5)) == 0
    badkey = draw(st.integers(0, 30)) == 0
    words = list(draw(st.lists(st.sampled_from(FLAG_WORDS.get(verb, [b"b"])),
                               max_size=6, unique=True)))
    if not quiet_ok and b"q" in words:
        words.remove(b"q")
    cas_ref = None
    if verb in ("ms", "md", "ma") and draw(st.integers(0, 2)) == 0:
        cas_ref = draw(st.integers(-3, 8))      # negative: a literal small CAS
    if binary and verb != "me":
        words.append(b"b")
    if draw(st.integers(0, 25)) == 0 and words:
        words.append(words[0])                  # duplicate flag
    words = draw(st.permutations(words))
    value = b"z" * draw(st.sampled_from([0, 1, 2, 5, 20]))
    if verb == "ma" or (verb == "ms" and draw(st.booleans())):
        value = draw(st.sampled_from([b"0", b"10", b"99", b"18446744073709551615", b"z"]))
    length = len(value)
    if verb == "ms" and draw(st.integers(0, 12)) == 0:
        length = draw(st.sampled_from([len(value) + 1, max(0, len(value) - 1), -1, None]))

    def render(ctx: Ctx) -> bytes:
        key = ctx.prefix + name
        if badkey:
            key_tok = b"!!!!" if binary else b"k" * 251
        elif binary:
            key_tok = base64.b64encode(key)
        else:
            key_tok = key
        toks = [verb.encode(), key_tok]
        if verb == "me" and binary:
            toks.append(b"b")
        if verb == "ms":
            toks.append(b"zz" if length is None else b"%d" % length)
        toks += list(words)
        if cas_ref is not None:
            toks.append(b"C" + ctx.cas.resolve(cas_ref))
        line = b" ".join(toks) + b"\r\n"
        if verb == "ms":
            pad = 0 if length is None or length < 0 else max(0, length - len(value))
            line += value + b"\r\n" + (b"z" * pad + b"\r\n" if pad else b"")
        return line

    return render


@st.composite
def classic_command(draw):
    verb = draw(st.sampled_from(["set", "get", "gets", "delete", "incr"]))
    name = draw(st.sampled_from(NAMES))
    value = draw(st.sampled_from([b"zz", b"5", b"123", b""]))

    def render(ctx: Ctx) -> bytes:
        key = ctx.prefix + name
        if verb == "set":
            return b"set %s 4 0 %d\r\n%s\r\n" % (key, len(value), value)
        if verb == "incr":
            return b"incr %s 3\r\n" % key
        return b"%s %s\r\n" % (verb.encode(), key)

    return render


commands = st.lists(st.one_of(meta_command(), meta_command(), classic_command()),
                    min_size=1, max_size=12)

_prefixes = itertools.count()


def new_prefix() -> bytes:
    return b"md%d_%d_" % (id(_prefixes) % 1000, next(_prefixes))


def run(pair, cmds, pipelined=False):
    mc, md = pair
    prefix = new_prefix()
    ctxs = [Ctx(prefix, CasMap()), Ctx(prefix, CasMap())]
    with wire.connect(mc) as c1, wire.connect(md) as c2:
        conns = [c1, c2]
        if pipelined:
            sent = [b"".join(cmd(ctx) for cmd in cmds) for ctx in ctxs]
            replies = [c.exchange(s) for c, s in zip(conns, sent)]
            got = [normalise(r.data, ctx.cas, set()) for r, ctx in zip(replies, ctxs)]
            assert not replies[0].timed_out, f"memcached did not answer {sent[0]!r}"
            assert got[0] == got[1], f"sent {sent[0]!r}\nmemcached {got[0]!r}\nmemd      {got[1]!r}"
            return
        for cmd in cmds:
            sent = [cmd(ctx) for ctx in ctxs]
            replies = [c.exchange(s) for c, s in zip(conns, sent)]
            assert not replies[0].timed_out, f"memcached did not answer {sent[0]!r}"
            got = [normalise(r.data, ctx.cas, set()) for r, ctx in zip(replies, ctxs)]
            assert got[0] == got[1], f"sent {sent[0]!r}\nmemcached {got[0]!r}\nmemd      {got[1]!r}"
            assert replies[0].closed == replies[1].closed


@settings(max_examples=250, **SETTINGS)
@given(cmds=commands)
def test_meta_sequences_match_memcached(diff_pair, cmds):
    run(diff_pair, cmds)


@settings(max_examples=120, **SETTINGS)
@given(cmds=st.lists(st.one_of(meta_command(), classic_command()), min_size=1, max_size=15))
def test_quiet_pipelines_closed_by_mn_match_memcached(diff_pair, cmds):
    # one write, q flags hiding nominal replies, the sentinel mn closing it
    run(diff_pair, cmds, pipelined=True)


def test_too_large_ms_matches_memcached(diff_pair):
    n = (1 << 20) + 10
    prefix = new_prefix()
    data = (b"ms %sbig 1\r\nx\r\nms %sbig %d T0 c\r\n" % (prefix, prefix, n)
            + b"z" * n + b"\r\nmg %sbig v\r\n" % prefix)
    r = [wire.exchange(s, data, timeout=5).data for s in diff_pair]
    assert r[0] == r[1] == b"HD\r\nSERVER_ERROR object too large for cache\r\nEN\r\n"


def test_value_split_across_writes_matches_memcached(diff_pair):
    prefix = new_prefix()
    out = []
    for s in diff_pair:
        with wire.connect(s) as c:
            c.dribble(b"ms %sd 5 T0\r\nabcde\r\nmg %sd v s\r\n" % (prefix, prefix), pause=0)
            out.append(c.request(b""))
    assert out[0] == out[1] == b"HD\r\nVA 5 s5\r\nabcde\r\n"


def test_binary_key_mark_after_append_and_incr_matches_memcached(diff_pair):
    # an item stored with b keeps showing its key base64-encoded; memcached
    # drops that mark when an append (even one sent with b) or an incr that
    # outgrows the value rebuilds the item, and keeps it on an incr in place
    prefix = new_prefix()
    k1, k2, k3 = (base64.b64encode(prefix + name) for name in (b"bin\x01key", b"num2", b"num3"))
    script = (b"ms %s 2 b\r\nab\r\nmg %s b k v\r\n" % (k1, k1)
              + b"ms %s 1 b MA\r\nc\r\nmg %s b k v\r\n" % (k1, k1)
              + b"ms %s 1 b MP\r\nz\r\nmg %s b k v\r\n" % (k1, k1)
              + b"ms %s 1 b\r\n7\r\nma %s b D100000\r\nmg %s b k v\r\n" % (k2, k2, k2)
              + b"ms %s 2 b\r\n17\r\nma %s b D1\r\nmg %s b k v\r\n" % (k3, k3, k3))
    replies = [wire.exchange(s, script).data for s in diff_pair]
    assert replies[0] == replies[1]
    assert b" k" + k3 + b" b\r\n18\r\n" in replies[0]
