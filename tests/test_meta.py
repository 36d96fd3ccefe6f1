"""Meta commands driven through the sans-IO text parser with a fake clock.

Expected bytes were taken from memcached 1.6.18 (sending it the same lines);
TTL and stale-while-revalidate cases move a FakeClock instead of sleeping.
"""

from __future__ import annotations

import base64

import pytest

from memd.protocol.meta_flags import b64decode


def test_ms_then_mg_with_every_return_flag(conn):
    assert conn(b"ms foo 3 T0 F5\r\nbar\r\n") == b"HD\r\n"
    assert conn(b"mg foo v f t s c k h l O123 q\r\n") == \
        b"VA 3 f5 t-1 s3 c1 kfoo h0 l0 O123\r\nbar\r\n"
    assert conn(b"mg foo h\r\n") == b"HD h1\r\n"


def test_mg_miss_and_quiet_mode(conn):
    assert conn(b"mg missing\r\nmg missing q\r\nmg missing k O1 v q\r\n"
                b"mg missing k O1 v\r\nmn\r\n") == b"EN\r\nEN kmissing O1\r\nMN\r\n"


def test_quiet_hides_only_the_nominal_reply(conn):
    assert conn(b"ms k 1 q\r\nx\r\nms k 1 ME q\r\nx\r\n") == b"NS\r\n"
    assert conn(b"mg k q\r\n") == b"HD\r\n"                     # mg's q hides only EN
    assert conn(b"md k q\r\nmd k q k O5\r\nmn\r\n") == b"NF kk O5\r\nMN\r\n"
    assert conn(b"ma k q\r\n") == b"NF\r\n"
    # a vivifying ma is not a nominal delta: memcached answers it even with q
    assert conn(b"ma k N0 J5 q\r\nmg k v\r\n") == b"HD\r\nVA 1\r\n5\r\n"
    assert conn(b"ma k q\r\nmg k v\r\n") == b"VA 1\r\n6\r\n"


@pytest.mark.parametrize("line, reply", [
    (b"mg\r\n", b"ERROR\r\n"),
    (b"mx foo\r\n", b"ERROR\r\n"),
    (b"mg foo zz\r\n", b"CLIENT_ERROR invalid flag\r\n"),
    (b"mg foo v v\r\n", b"CLIENT_ERROR duplicate flag\r\n"),
    (b"md foo x\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    (b"ma foo x\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
    (b"mg foo E5\r\n", b"CLIENT_ERROR invalid flag\r\n"),
    (b"mg foo Tx\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
    (b"mg !!!! b\r\n", b"CLIENT_ERROR error decoding key\r\n"),
    (b"me\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    (b"mg " + b"k" * 251 + b"\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    (b"mg a " + b" ".join(b"%d" % i for i in range(18)) + b"\r\n",
     b"CLIENT_ERROR options flags are too long\r\n"),
    (b"md a " + b" ".join(b"%d" % i for i in range(18)) + b"\r\n",
     b"CLIENT_ERROR options flags too long\r\n"),
    (b"mg foo O" + b"o" * 32 + b"\r\n", b"CLIENT_ERROR opaque token too long\r\n"),
    (b"ma foo Mx\r\n", b"CLIENT_ERROR invalid mode for ma M token\r\n"),
    (b"ms foo\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    (b"ms foo -1\r\n", b"CLIENT_ERROR bad command line format\r\n"),
])
def test_malformed_lines(conn, line, reply):
    assert conn(line + b"mn\r\n") == reply + b"MN\r\n"


def test_ms_flag_errors_swallow_the_data_block(conn):
    assert conn(b"ms foo 3 x\r\nbar\r\nmn\r\n") == b"CLIENT_ERROR invalid flag\r\nMN\r\n"
    assert conn(b"ms foo 1 Mx\r\nx\r\nms foo 1 MSS\r\nx\r\nmn\r\n") == (
        b"CLIENT_ERROR invalid mode for ms M token\r\n"
        b"CLIENT_ERROR incorrect length for M token\r\nMN\r\n")
    # an unusable length is refused before the data: the data is a command line
    assert conn(b"ms foo bar\r\nbar\r\nmn\r\n") == \
        b"CLIENT_ERROR bad command line format\r\nERROR\r\nMN\r\n"


def test_bad_data_chunk_keeps_the_stream_in_step(conn):
    assert conn(b"ms foo 3\r\nbarx\r\nmn\r\n") == \
        b"CLIENT_ERROR bad data chunk\r\nERROR\r\nMN\r\n"
    # a value arriving in pieces
    assert conn(b"ms foo 5 c\r\nab") == b""
    assert conn(b"cde\r") == b""
    assert conn(b"\nmg foo v\r\n") == b"HD c1\r\nVA 5\r\nabcde\r\n"


def test_too_large_is_refused_swallowed_and_drops_the_old_value(conn):
    big = 2 << 20
    assert conn(b"ms big 1\r\nx\r\n") == b"HD\r\n"
    assert conn(b"ms big %d T0\r\n" % big) == b"SERVER_ERROR object too large for cache\r\n"
    assert conn(b"z" * big) == b""
    assert conn(b"\r\nmg big\r\n") == b"EN\r\n"
    assert conn.node.store.store_too_large == 1


def test_ms_modes_and_cas(conn):
    out = conn(b"ms dd 1 MA\r\nx\r\nms dd 1 ME\r\nx\r\nms dd 1 MR\r\nx\r\n"
               b"ms dd 1 MA c k O1\r\ny\r\nms dd 1 MP\r\nw\r\nmg dd v c\r\n")
    assert out == b"NS\r\nHD\r\nHD\r\nHD c3 kdd O1\r\nHD\r\nVA 3 c4\r\nwxy\r\n"
    assert conn(b"ms dd 1 C3\r\nz\r\n") == b"EX\r\n"
    assert conn(b"ms dd 1 C4 c\r\nz\r\n") == b"HD c5\r\n"
    assert conn(b"ms nope 1 C4\r\nz\r\n") == b"NF\r\n"
    assert conn(b"ms dd 1 MA C1\r\nz\r\n") == b"EX\r\n"


def test_base64_keys(conn):
    assert conn(b"ms bjE= 2 b\r\n10\r\n") == b"HD\r\n"
    assert conn(b"ma bjE= v c t k O9 b\r\n") == b"VA 2 c2 t-1 kbjE= b O9\r\n11\r\n"
    # the same item by its raw key: still reported base64, as memcached does
    assert conn(b"mg n1 k v\r\n") == b"VA 2 kbjE= b\r\n11\r\n"
    assert conn(b"mg abcd b k\r\n") == b"EN kabcd b\r\n"
    assert conn(b"me bjE= b\r\n").startswith(b"ME bjE= exp=-1 la=0 cas=2 fetch=yes cls=1 size=")


def test_memcached_base64_decoder_quirks():
    assert b64decode(b"YWJj") == b"abc"
    assert b64decode(b"Y!Q==") == b"a"            # bytes outside the alphabet are skipped
    assert b64decode(b"Y=QA") == base64.b64decode(b"YAQ=")
    assert b64decode(b"YQ==YQ==") == b"a"         # stops after the first padded block
    assert b64decode(b"abc") is None
    assert b64decode(b"A===") is None
    assert b64decode(b"!!!!") is None


def test_vivify_on_miss_gives_one_winner(conn, clock):
    assert conn(b"mg v1 N30 t s v c\r\n") == b"VA 0 t30 s0 c1 W\r\n\r\n"
    assert conn(b"mg v1 N30 t\r\n") == b"HD t30 Z\r\n"
    clock.advance(10)
    assert conn(b"mg v1 t h l\r\n") == b"HD t20 h1 l10 Z\r\n"
    assert conn(b"ms v1 3 T60\r\nnew\r\nmg v1 v t\r\n") == b"HD\r\nVA 3 t60\r\nnew\r\n"
    clock.advance(61)
    assert conn(b"mg v1 v\r\n") == b"EN\r\n"


def test_recache_when_ttl_is_low(conn, clock):
    conn(b"ms r 1 T100\r\nx\r\n")
    assert conn(b"mg r R30 t\r\n") == b"HD t100\r\n"
    clock.advance(80)
    assert conn(b"mg r R30 t\r\n") == b"HD t20 W\r\n"
    assert conn(b"mg r R30 t\r\n") == b"HD t20 Z\r\n"


def test_touch_with_T_and_remaining_ttl(conn, clock):
    conn(b"ms t 1\r\nx\r\n")
    assert conn(b"mg t t T50\r\n") == b"HD t-1\r\n"
    assert conn(b"mg t t\r\n") == b"HD t50\r\n"
    s = conn.node.store
    assert s.cmd_touch == 1 and s.touch_hits == 1
    clock.advance(50)
    assert conn(b"mg t\r\n") == b"EN\r\n"


def test_invalidate_and_recache(conn, clock):
    conn(b"ms k 2\r\n10\r\n")
    assert conn(b"md k I T30\r\n") == b"HD\r\n"
    assert conn(b"mg k c v t\r\n") == b"VA 2 c2 t30 X W\r\n10\r\n"
    assert conn(b"mg k c v t\r\n") == b"VA 2 c2 t30 Z X\r\n10\r\n"
    # a CAS older than the item's with I: stored, but still stale and claimed
    assert conn(b"ms k 2 I C1\r\n33\r\nmg k c v t\r\n") == b"HD\r\nVA 2 c3 t30 Z X\r\n33\r\n"
    # the winner's CAS-matched set clears the stale state
    assert conn(b"ms k 2 C3 T0\r\n44\r\nmg k v t\r\n") == b"HD\r\nVA 2 t-1\r\n44\r\n"
    # md I clears a sent win, so the next reader wins again
    conn(b"md k I\r\nmg k\r\n")
    assert conn(b"md k I\r\nmg k\r\n") == b"HD\r\nHD X W\r\n"


def test_md(conn):
    conn(b"ms nx 1\r\n1\r\n")
    assert conn(b"md nx C99\r\nmd nx k O5\r\nmd nx\r\n") == b"EX\r\nHD knx O5\r\nNF\r\n"


def test_ma(conn, clock):
    assert conn(b"ma n\r\n") == b"NF\r\n"
    assert conn(b"ma n N0 J5 v\r\n") == b"VA 1\r\n5\r\n"
    assert conn(b"ma n D10 v t c\r\n") == b"VA 2 t-1 c2\r\n15\r\n"
    assert conn(b"ma n MD D100 v\r\nma n M- v\r\n") == b"VA 1\r\n0\r\nVA 1\r\n0\r\n"
    assert conn(b"ma n C1\r\n") == b"EX\r\n"
    assert conn(b"ma n T30 t\r\nma n t T40\r\nma n t\r\n") == b"HD t30\r\nHD t30\r\nHD t40\r\n"
    conn(b"ms s 3\r\nabc\r\n")
    assert conn(b"ma s q\r\n") == \
        b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"


def test_meta_and_classic_share_items_and_cas(conn):
    assert conn(b"set a 7 0 2\r\nhi\r\ngets a\r\n") == b"STORED\r\nVALUE a 7 2 1\r\nhi\r\nEND\r\n"
    assert conn(b"mg a c f v\r\n") == b"VA 2 c1 f7\r\nhi\r\n"
    assert conn(b"ms a 2 C1 F3 c\r\nho\r\n") == b"HD c2\r\n"
    assert conn(b"gets a\r\n") == b"VALUE a 3 2 2\r\nho\r\nEND\r\n"
    assert conn(b"incr a 1\r\n") == b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
    assert conn(b"delete a\r\nmg a\r\n") == b"DELETED\r\nEN\r\n"


def test_me_debug_dump(conn, clock):
    conn(b"ms foo 3 F5 T100\r\nbar\r\n")
    clock.advance(3)
    assert conn(b"me foo\r\n") == b"ME foo exp=-97 la=3 cas=1 fetch=no cls=1 size=69\r\n"
    assert conn(b"me nope\r\n") == b"EN\r\n"
    assert conn.node.counters["cmd_meta"] == 2     # memcached counts only me


def test_stats_counters(conn):
    s = conn.node.store
    conn(b"mg a\r\nms a 1\r\nx\r\nmg a\r\nmd a\r\nma a\r\n")
    assert (s.cmd_get, s.get_hits, s.get_misses, s.cmd_set, s.delete_hits, s.incr_misses) == \
        (2, 1, 1, 1, 1, 1)
