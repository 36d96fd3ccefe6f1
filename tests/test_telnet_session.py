"""A person at a telnet prompt: one line at a time, `\\n` line endings.

The same session is typed into memcached (the oracle) and memd; each reply
must match, and a few key replies are also checked literally so that a
changed oracle cannot make the test vacuous.  Data lines end in `\\r\\n`, as a
real telnet client sends them (memcached requires `\\r\\n` after data; a
data line ending in `\\n` alone is tested separately as an error).
"""

from __future__ import annotations

import pytest

import wire
from test_text_differential import CasNormaliser, normalise_version


def session(prefix: str) -> list[tuple[bytes, bytes | None]]:
    """(bytes typed, expected reply or None when only the oracle decides)."""
    k = prefix.encode()
    return [
        (b"version\n", None),
        (b"set %sgreeting 0 0 5\nhello\r\n" % k, b"STORED\r\n"),
        (b"get %sgreeting\n" % k, b"VALUE %sgreeting 0 5\r\nhello\r\nEND\r\n" % k),
        (b"add %sgreeting 0 0 3\nbye\r\n" % k, b"NOT_STORED\r\n"),
        (b"replace %sgreeting 7 0 3\nbye\r\n" % k, b"STORED\r\n"),
        (b"append %sgreeting 0 0 1\n!\r\n" % k, b"STORED\r\n"),
        (b"prepend %sgreeting 0 0 1\n<\r\n" % k, b"STORED\r\n"),
        (b"get %sgreeting %smissing\n" % (k, k), b"VALUE %sgreeting 7 5\r\n<bye!\r\nEND\r\n" % k),
        (b"gets %sgreeting\n" % k, None),
        (b"set %scounter 0 0 1\n1\r\n" % k, b"STORED\r\n"),
        (b"incr %scounter 41\n" % k, b"42\r\n"),
        (b"decr %scounter 50\n" % k, b"0\r\n"),
        (b"incr %sgreeting 1\n" % k, b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
        (b"touch %scounter 1000\n" % k, b"TOUCHED\r\n"),
        (b"gat 0 %scounter\n" % k, b"VALUE %scounter 0 2\r\n0 \r\nEND\r\n" % k),
        (b"delete %sgreeting\n" % k, b"DELETED\r\n"),
        (b"delete %sgreeting\n" % k, b"NOT_FOUND\r\n"),
        (b"get %sgreeting\n" % k, b"END\r\n"),
        (b"bogus\n", b"ERROR\r\n"),
        (b"\n", b"ERROR\r\n"),
        (b"set %sx 0 0 2\nab\n\n" % k, b"CLIENT_ERROR bad data chunk\r\n"),  # data ended by \n alone
        (b"verbosity 0\n", b"OK\r\n"),
    ]


def type_session(server, prefix: str, dribble: bool) -> list[tuple]:
    cas = CasNormaliser()
    out = []
    with wire.connect(server, timeout=2.0) as c:
        for typed, _ in session(prefix):
            if dribble:
                c.dribble(typed)
                r = c.exchange(b"", timeout=2.0)
            else:
                r = c.exchange(typed, timeout=2.0)
            out.append((normalise_version(cas(r.data)), r.closed, r.timed_out))
        r = c.send_until_close(b"quit\n", timeout=2.0)
        out.append((r.data, r.closed, r.timed_out))
    return out


@pytest.mark.parametrize("dribble", [False, True], ids=["line-at-a-time", "byte-at-a-time"])
def test_telnet_session_matches_memcached(diff_pair, key_prefix, dribble):
    mc, md = diff_pair
    steps = session(key_prefix) + [(b"quit\n", b"")]
    oracle = type_session(mc, key_prefix, dribble)
    got = type_session(md, key_prefix, dribble)
    # The oracle first: the literal expectations hold for memcached 1.6.18.
    for (typed, want), (reply, _, _) in zip(steps, oracle):
        if want is not None:
            assert reply == want, f"oracle changed? typed {typed!r}"
    assert oracle[-1][1], "quit must close the connection"
    for (typed, _), a, b in zip(steps, oracle, got):
        assert a == b, f"\n  typed:     {typed!r}\n  memcached: {a}\n  memd:      {b}"
