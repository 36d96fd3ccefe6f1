"""Differential tests of error handling, limits and admin commands: memd vs memcached.

Hypothesis throws malformed lines (random tokens and bytes after a real verb)
and too-large values at both servers; targeted cases pin the edges found by
probing memcached 1.6.18 (what it does with a 2049-byte line without `\\n`, a
4 KB multiget, a 251-byte key...).  Stats are compared by their NAMES and
order, never values.
"""

from __future__ import annotations

import os
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wire
from test_text_differential import (
    SETTINGS,
    Command,
    Key,
    NAMES,
    STORAGE_VERBS,
    eols,
    keys,
    noreply,
    normalise_version,
    run_steps,
    storage_commands,
)

ONE_MB = 1024 * 1024

# ---------------------------------------------------------------------------
# Hypothesis: malformed lines and too-large values.

VERBS = [
    b"set", b"add", b"replace", b"append", b"prepend", b"cas", b"get", b"gets",
    b"gat", b"gats", b"touch", b"delete", b"incr", b"decr", b"flush_all",
    b"version", b"verbosity", b"cache_memlimit", b"quit",
]

# Token bytes: anything but the separators, and never 0x80 (a first byte of
# 0x80 on a fresh connection selects the binary protocol).
token_bytes = st.binary(min_size=0, max_size=12).map(
    lambda b: bytes(c for c in b if c not in (0x20, 0x0A, 0x0D, 0x80))
)
numberish = st.sampled_from(
    [b"0", b"1", b"-1", b"-0", b"+5", b"4294967295", b"4294967296", b"18446744073709551615",
     b"18446744073709551616", b"99999999999999999999999", b"1e3", b"0x10", b" ", b""]
)


@st.composite
def garbage_lines(draw):
    verb = draw(st.sampled_from(VERBS))
    args = draw(st.lists(st.one_of(numberish, token_bytes, keys), max_size=7))
    # Storage verbs get a (possibly empty) data block, padded to whatever
    # length memcached would read, so the stream stays in step.
    data = b"" if verb in STORAGE_VERBS else None
    cmd = Command((verb, *args, *draw(noreply)), draw(eols), data)
    return cmd if cmd.reads_at_most(2 * 1024 * 1024) else Command((verb,), cmd.eol, data)


@st.composite
def too_large_sets(draw):
    """Values over the 1 MB item limit: memcached answers SERVER_ERROR, swallows
    the data, and (for set) drops the old item with that key."""
    verb = draw(st.sampled_from([b"set", b"add", b"replace", b"append", b"prepend"]))
    n = draw(st.sampled_from([ONE_MB, ONE_MB + 1, ONE_MB + 4096]))
    key = Key("name", draw(st.sampled_from(NAMES)))
    return Command((verb, key, b"0", b"0", str(n).encode(), *draw(noreply)), b"\r\n", b"a" * n, n)


@settings(max_examples=150, **SETTINGS)
@given(cmds=st.lists(st.one_of(garbage_lines(), storage_commands()), min_size=1, max_size=10))
def test_garbage_arguments_after_real_verbs_match_memcached(diff_pair, cmds):
    run_steps(diff_pair, cmds)


@settings(max_examples=12, **SETTINGS)
@given(
    cmds=st.lists(
        st.one_of(
            too_large_sets(),
            storage_commands(verbs=("set",)),
            st.builds(lambda k: Command((b"get", k)), keys),
        ),
        min_size=2,
        max_size=5,
    )
)
def test_too_large_values_match_memcached(diff_pair, cmds):
    run_steps(diff_pair, cmds)


# ---------------------------------------------------------------------------
# Targeted cases on the shared pair, one fresh connection each.


def both(pair, data: bytes, *, until_close: bool = False, timeout: float = 2.0):
    """Send `data` to both servers on fresh connections; return both replies."""
    out = []
    for server in pair:
        with wire.connect(server, timeout) as c:
            out.append(c.send_until_close(data, timeout) if until_close else c.exchange(data, timeout))
    return out


def assert_same(pair, data: bytes, **kw):
    a, b = both(pair, data, **kw)
    assert normalise_version(a.data) == normalise_version(b.data) and a.closed == b.closed, (
        f"\n  sent:      {data[:300]!r}\n  memcached: {a}\n  memd:      {b}"
    )
    return a


def staged(pair, parts: list[bytes], pause: float = 0.15):
    """Send `parts` with pauses (so each arrives in its own read), then the
    sentinel; return both replies."""
    out = []
    for server in pair:
        with wire.connect(server, 2.0) as c:
            closed = False
            for p in parts:
                try:
                    c.send(p)
                except OSError:
                    closed = True
                    break
                time.sleep(pause)
            out.append(wire.Reply(b"", closed=True) if closed else c.exchange(b"", 1.0))
    return out


def assert_staged_same(pair, parts, expect=None):
    a, b = staged(pair, parts)
    desc = f"\n  sent:      {[p[:60] for p in parts]!r}\n  memcached: {a}\n  memd:      {b}"
    if expect is not None:
        assert (a.data, a.closed) == expect, "harness: memcached changed?" + desc
    assert (normalise_version(a.data), a.closed) == (normalise_version(b.data), b.closed), desc


def test_line_of_2049_bytes_without_newline_closes_connection(diff_pair):
    # memcached gives up on a non-get line with no `\n` in the first 2048
    # bytes and closes the connection without a reply.
    assert_staged_same(diff_pair, [b"x" * 2049], expect=(b"", True))


def test_line_of_2048_bytes_without_newline_waits_for_the_rest(diff_pair):
    assert_staged_same(diff_pair, [b"x" * 2048, b"\r\n"], expect=(b"ERROR\r\n", False))


def test_long_get_line_without_newline_is_kept_as_multiget(diff_pair):
    # get/gets lines may be longer than 2048 bytes (large multigets).
    assert_staged_same(diff_pair, [b"get " + b"k " * 2000, b"\r\n"], expect=(b"END\r\n", False))


def test_long_gets_line_with_overlong_key_answers_client_error(diff_pair):
    assert_staged_same(
        diff_pair, [b"get " + b"x" * 3000, b"\r\n"], expect=(b"CLIENT_ERROR bad command line format\r\n", False)
    )


def test_long_get_after_100_leading_spaces_closes_connection(diff_pair):
    assert_staged_same(diff_pair, [b" " * 101 + b"get " + b"k " * 1500], expect=(b"", True))


def test_long_gat_line_without_newline_closes_connection(diff_pair):
    # Only get/gets are allowed to be long; gat is not.
    assert_staged_same(diff_pair, [b"gat 0 " + b"k " * 1500], expect=(b"", True))


def test_data_block_split_across_reads_is_reassembled(diff_pair):
    assert_staged_same(
        diff_pair,
        [b"set split 0 0 10\r\nabc", b"defg", b"hij", b"\r", b"\nget split\r\n"],
        expect=(b"STORED\r\nVALUE split 0 10\r\nabcdefghij\r\nEND\r\n", False),
    )


def test_command_line_split_across_reads_is_reassembled(diff_pair):
    assert_staged_same(diff_pair, [b"ver", b"sion", b"\r", b"\n"])


def test_multiget_of_many_keys_in_one_line_is_answered(diff_pair):
    lines = b"".join(b"set mg%d 0 0 2\r\n%02d\r\n" % (i, i) for i in range(300))
    assert_same(diff_pair, lines)
    assert_same(diff_pair, b"get " + b" ".join(b"mg%d" % i for i in range(300)) + b" missing\r\n")
    assert_same(diff_pair, b"get mg1 mg1 mg2\r\n")  # repeated keys are answered twice


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"get\r\n", id="get-no-keys"),
        pytest.param(b"get \r\n", id="get-trailing-space"),
        pytest.param(b"gets\r\n", id="gets-no-keys"),
        pytest.param(b"gat 0\r\n", id="gat-no-keys"),
        pytest.param(b"set " + b"k" * 250 + b" 0 0 1\r\nx\r\nget " + b"k" * 250 + b"\r\n", id="key-250"),
        pytest.param(b"set " + b"k" * 251 + b" 0 0 1\r\nx\r\nget " + b"k" * 251 + b"\r\n", id="key-251"),
        pytest.param(b"delete " + b"k" * 251 + b"\r\nincr " + b"k" * 251 + b" 1\r\ntouch " + b"k" * 251 + b" 0\r\n",
                     id="key-251-other-commands"),
        pytest.param(b"get " + b"k" * 250 + b" " + b"j" * 251 + b"\r\n", id="multiget-with-one-long-key"),
        pytest.param(b"flush_all noreply\r\n", id="flush_all-noreply"),
        pytest.param(b"flush_all 0\r\n", id="flush_all-0"),
        pytest.param(b"flush_all\r\nflush_all 0 noreply\r\n", id="flush_all-variants"),
        pytest.param(b"verbosity 1\r\nverbosity 0\r\n", id="verbosity"),
        pytest.param(b"verbosity\r\nverbosity 1 noreply\r\n", id="verbosity-bad"),
        pytest.param(b"cache_memlimit 100\r\ncache_memlimit 64\r\n", id="cache_memlimit"),
        pytest.param(b"cache_memlimit 1\r\ncache_memlimit\r\ncache_memlimit x\r\n", id="cache_memlimit-bad"),
        pytest.param(b"stats reset\r\n", id="stats-reset"),
        pytest.param(b"stats detail on\r\nstats detail off\r\n", id="stats-detail"),
        pytest.param(b"stats foo\r\n", id="stats-unknown"),
        pytest.param(b"shutdown\r\n", id="shutdown-without-A"),
        pytest.param(b"version\r\nversion\n", id="version"),
        pytest.param(b"\r\n\n \r\n", id="empty-lines"),
        pytest.param(b"set nl 0 0 1\nx\r\nget nl\n", id="lf-only-command-lines"),
        pytest.param(b"set nl2 0 0 1\r\nx\nget nl2\r\n", id="lf-only-after-data"),
        pytest.param(b"set a\x00b 0 0 1\r\nx\r\nget a\x00b\r\nget a\r\n", id="nul-in-key"),
        pytest.param(b"set big20 0 0 20\r\n18446744073709551615\r\nincr big20 1\r\nget big20\r\n", id="incr-wraps"),
        pytest.param(b"set d 0 0 3\r\n100\r\ndecr d 1\r\nget d\r\ndecr d 1000\r\nget d\r\n", id="decr-clamps-and-pads"),
        pytest.param(b"set t 0 0 21\r\n123456789012345678901\r\nincr t 1\r\n", id="incr-too-long-value"),
        pytest.param(b"set t2 0 0 2\r\nab\r\nincr t2 1\r\ndecr t2 1\r\n", id="incr-non-numeric"),
        pytest.param(b"cas c 0 0 1 18446744073709551616\r\nx\r\ncas c 0 0 1 18446744073709551615\r\nx\r\n",
                     id="huge-cas"),
        pytest.param(b"set fl 4294967296 0 1\r\nx\r\nget fl\r\n", id="flags-overflow"),
        pytest.param(b"set ex 0 2147483648 1\r\nx\r\nget ex\r\n", id="exptime-overflow"),
        pytest.param(b"set a 0 0 3 noreply\r\nabcde\r\n", id="bad-chunk-noreply"),
    ],
)
def test_edge_case_replies_match_memcached(diff_pair, data):
    assert_same(diff_pair, data)


def test_get_with_overlong_key_discards_unsent_replies_of_the_same_batch(diff_pair):
    # memcached 1.6.18 quirk: on a get key > 250 bytes it releases every
    # reply not yet written (conn_release_items), so the replies to earlier
    # commands in the same read batch vanish; only the CLIENT_ERROR remains.
    a = assert_same(diff_pair, b"version\r\nbogus\r\nget " + b"k" * 251 + b"\r\n")
    assert a.data == b"CLIENT_ERROR bad command line format\r\n"


def test_quit_closes_connection_without_reply(diff_pair):
    a = assert_same(diff_pair, b"quit\r\n", until_close=True)
    assert a.closed and a.data == b""


def test_commands_after_quit_in_same_write_are_not_answered(diff_pair):
    a = assert_same(diff_pair, b"version\r\nquit\r\nversion\r\n", until_close=True)
    assert a.closed


def test_too_large_set_drops_the_old_value(diff_pair):
    big = b"x" * (ONE_MB + 10)
    data = b"set tl 0 0 1\r\nv\r\nset tl 0 0 %d\r\n%s\r\nget tl\r\n" % (len(big), big)
    a = assert_same(diff_pair, data)
    assert a.data == b"STORED\r\nSERVER_ERROR object too large for cache\r\nEND\r\n"


# ---------------------------------------------------------------------------
# Servers started for one test: -I, stats shapes, -A.


def get_and_touch_counters(reply: bytes) -> dict[bytes, bytes]:
    names = (b"cmd_get", b"get_hits", b"get_misses", b"cmd_touch", b"touch_hits", b"touch_misses")
    return {m.group(1): m.group(2) for m in re.finditer(rb"STAT (\w+) (\d+)\r\n", reply)
            if m.group(1) in names}


def test_gat_counts_as_a_touch_and_an_overlong_key_stops_after_the_keys_before_it(fresh_pair):
    # memcached counts a gat only in the touch counters, and works through a
    # get or gat line in order: keys before an over-long one are looked up,
    # counted and (gat) touched, then only the CLIENT_ERROR is answered
    pair = fresh_pair()
    long_key = b"b" * 251
    script = [b"set a 0 0 1\r\nv\r\n", b"gat 0 a nokey\r\n", b"get a nokey " + long_key + b"\r\n",
              b"gats 0 a " + long_key + b"\r\n", b"gat -1 a " + long_key + b"\r\n", b"get a\r\n"]
    transcripts = []
    for server in pair:
        with wire.connect(server) as c:
            replies = [c.request(line) for line in script]
            transcripts.append((replies, get_and_touch_counters(c.request(b"stats\r\n"))))
    assert transcripts[0] == transcripts[1]
    assert transcripts[0][0][-1] == b"END\r\n"      # the gat -1 before the error expired it


@pytest.fixture
def fresh_pair(server_factory):
    second = "memcached" if os.environ.get("MEMD_DIFF_SELFTEST") == "1" else "memd"

    def make(*flags):
        return server_factory("memcached", *flags), server_factory(second, *flags)

    return make


def test_item_size_limit_flag_is_honoured(fresh_pair):
    pair = fresh_pair("-I", "512k")
    for n in (400 * 1024, 600 * 1024):
        data = b"set k 0 0 %d\r\n%s\r\nget k\r\n" % (n, b"z" * n)
        a = assert_same(pair, data)
    assert a.data.startswith(b"SERVER_ERROR object too large for cache")


def stat_names(reply: bytes) -> list[bytes]:
    """Stat names in order, with slab class ids replaced by their rank.

    Deliberate difference: memd keeps an item's metadata outside its chunk
    (typed arrays), so an item needs fewer chunk bytes than in memcached
    (which counts a 56-byte header) and can land in a smaller class.  Which
    classes are used is therefore not compared, only that the same number
    of classes report the same fields in the same order.
    """
    names = []
    ranks: dict[bytes, bytes] = {}
    for line in reply.split(b"\r\n"):
        if line.startswith(b"STAT "):
            name = line.split(b" ")[1]
            m = re.match(rb"(items:)?(\d+):(.*)", name)
            if m:
                rank = ranks.setdefault(m.group(2), b"#%d" % (len(ranks) + 1))
                name = (m.group(1) or b"") + rank + b":" + m.group(3)
            names.append(name)
        elif line:
            names.append(line)  # END, ERROR... compared verbatim
    return names


STORE_A_FEW = b"".join(b"set s%d 0 0 %d\r\n%s\r\n" % (i, n, b"v" * n) for i, n in enumerate([10, 100, 1000, 5000]))


@pytest.mark.parametrize("command", [b"stats", b"stats settings", b"stats items", b"stats slabs", b"stats sizes"])
def test_stats_names_and_order_match_memcached(fresh_pair, command):
    pair = fresh_pair()
    replies = []
    for server in pair:
        with wire.connect(server) as c:
            c.request(STORE_A_FEW + b"get s0 s1 nope\r\n")
            replies.append(c.request(command + b"\r\n"))
    a, b = (stat_names(r) for r in replies)
    missing = [n for n in a if n not in b]
    extra = [n for n in b if n not in a]
    assert a == b, f"{command!r}: missing in memd {missing}, extra in memd {extra}\n memcached order {a}\n memd order {b}"


def conns_shape(reply: bytes) -> list[tuple[int, bytes]]:
    """`STAT <fd>:<field> <value>`: fds and addresses differ; the fields per
    connection (in order) and which connection is which must not."""
    fds: list[bytes] = []
    shape = []
    for line in reply.split(b"\r\n"):
        m = re.match(rb"STAT (\d+):(\S+) ", line)
        if m:
            if m.group(1) not in fds:
                fds.append(m.group(1))
            shape.append((fds.index(m.group(1)), m.group(2)))
        elif line:
            shape.append((-1, line))
    return shape


def test_stats_conns_has_memcacheds_shape(fresh_pair):
    pair = fresh_pair()
    shapes = []
    for server in pair:
        with wire.connect(server) as c:
            shapes.append(conns_shape(c.request(b"stats conns\r\n")))
    assert shapes[0] == shapes[1]


def test_stats_reset_and_detail_replies_match(fresh_pair):
    pair = fresh_pair()
    assert_same(pair, b"stats reset\r\nstats detail on\r\nget x\r\nstats detail dump\r\nstats detail off\r\n")


def test_shutdown_with_A_closes_the_server(fresh_pair):
    pair = fresh_pair("-A")
    a, b = both(pair, b"shutdown\r\n", until_close=True, timeout=3.0)
    assert (a.data, a.closed) == (b.data, b.closed)
    for s in pair:
        s.proc.wait(timeout=5)
        assert not s.alive()
