"""Authentication: the auth-file table, and binary SASL PLAIN through a real client.

The client is python-binary-memcached (``bmemcached``, from PyPI, not ours):
it lists the mechanisms and authenticates with PLAIN when it connects.
"""

from __future__ import annotations

import signal
import socket
import time

import pytest

from memd.auth import AuthFileError, Authenticator
from test_binary import frame, parse, sasl_plain, set_extras

# -- the table -------------------------------------------------------------------


def test_from_file_parses_user_colon_password_lines(tmp_path):
    f = tmp_path / "auth"
    f.write_bytes(b"alice:secret\r\nbob:p:w:2\n\ncarol:\n")
    a = Authenticator.from_file(str(f))
    assert a.check(b"alice", b"secret")
    assert a.check(b"bob", b"p:w:2")           # the user ends at the first colon
    assert a.check(b"carol", b"")
    assert not a.check(b"alice", b"secret\r")
    assert not a.check(b"alice", b"Secret")
    assert not a.check(b"mallory", b"secret")
    assert not a.check(b"", b"")


def test_malformed_or_missing_file_is_refused(tmp_path):
    f = tmp_path / "auth"
    f.write_bytes(b"alice:secret\nnocolon\n")
    with pytest.raises(AuthFileError):
        Authenticator.from_file(str(f))
    with pytest.raises(OSError):
        Authenticator.from_file(str(tmp_path / "missing"))


def test_reload_swaps_the_table_and_keeps_it_when_the_file_is_bad(tmp_path):
    f = tmp_path / "auth"
    f.write_bytes(b"alice:one\n")
    a = Authenticator.from_file(str(f))
    f.write_bytes(b"alice:two\n")
    assert a.reload()
    assert a.check(b"alice", b"two") and not a.check(b"alice", b"one")
    f.write_bytes(b"garbage\n")
    assert not a.reload()
    assert a.check(b"alice", b"two")
    f.unlink()
    assert not a.reload()
    assert a.check(b"alice", b"two")


def test_check_compares_with_compare_digest(monkeypatch):
    import memd.auth as auth_mod
    calls = []
    real = auth_mod.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_mod.hmac, "compare_digest", spy)
    a = Authenticator([(b"alice", b"secret"), (b"bob", b"pw")])
    assert not a.check(b"alice", b"nope")
    # every entry is compared, user and password, whatever matched first
    assert len(calls) == 4


# -- a node with --auth-file, through bmemcached ---------------------------------------

bmemcached = pytest.importorskip("bmemcached", reason="python-binary-memcached not installed")


@pytest.fixture
def auth_node(tmp_path, memd_server_factory):
    f = tmp_path / "auth"
    f.write_bytes(b"alice:secret\nbob:hunter2\n")
    node = memd_server_factory("--auth-file", str(f))
    node.auth_path = f
    return node


def client(node, user, password):
    return bmemcached.Client([f"{node.host}:{node.port}"], user, password, socket_timeout=3)


def test_bmemcached_authenticates_with_sasl_plain_and_works(auth_node):
    c = client(auth_node, "alice", "secret")
    assert c.set("k", "v")
    assert c.get("k") == "v"
    assert c.delete("k")
    c.disconnect_all()


def test_bmemcached_with_a_wrong_password_is_refused(auth_node):
    c = client(auth_node, "alice", "wrong")
    # bmemcached raises InvalidCredentials or, for the failure reported on
    # its first command, MemcachedException with memcached's status 0x20
    with pytest.raises(bmemcached.exceptions.MemcachedException) as exc:
        c.set("k", "v")
    assert "Auth failure" in str(exc.value) or isinstance(
        exc.value, bmemcached.exceptions.InvalidCredentials)


def raw(node, data: bytes, wait: float = 1.0):
    """Send ``data``; return (responses, closed)."""
    s = socket.create_connection((node.host, node.port), timeout=wait)
    s.sendall(data)
    buf = b""
    closed = False
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            d = s.recv(65536)
            if not d:
                closed = True
                break
            buf += d
    except socket.timeout:
        pass
    s.close()
    return parse(buf)[0], closed


def test_commands_without_authentication_are_refused_and_closed(auth_node):
    resps, closed = raw(auth_node, frame(0x01, b"k", set_extras(), b"v") + frame(0x0A))
    assert [(r.status, r.value) for r in resps] == [(0x20, b"Auth failure.")]
    assert closed


def test_version_and_mechanisms_are_answered_before_authentication(auth_node):
    resps, closed = raw(auth_node, frame(0x0B) + frame(0x20), wait=0.5)
    assert [r.status for r in resps] == [0, 0]
    assert resps[1].value == b"PLAIN" and not closed


@pytest.mark.parametrize("data", [
    frame(0x21, b"PLAIN", value=b"alice\0secret"),                # one NUL
    frame(0x21, b"PLAIN", value=b"\0alice\0secret\0"),            # trailing NUL
    frame(0x21, b"PLAIN", value=b"bob\0alice\0secret"),           # someone else's identity
    frame(0x21, b"SCRAM-SHA-1", value=b"n,,n=alice,r=abc"),       # a mechanism we lack
    frame(0x22, b"PLAIN", value=b"\0alice\0secret"),              # a step with no start
])
def test_malformed_sasl_is_refused_and_the_next_command_closes(auth_node, data):
    resps, closed = raw(auth_node, data + frame(0x00, b"k"))
    assert [r.status for r in resps] == [0x20, 0x20]
    assert closed


@pytest.mark.parametrize("data", [
    frame(0x21, b"PLAIN", b"1234", b"\0alice\0secret"),           # extras on an auth
    frame(0x21, b"", value=b"\0alice\0secret"),                   # no mechanism
    frame(0x21, b"PLAIN", bodylen=2),                             # key longer than the body
])
def test_malformed_sasl_frames_close_the_connection(auth_node, data):
    resps, closed = raw(auth_node, data)
    assert resps and resps[0].status in (0x04, 0x81)
    assert closed


def test_after_plain_success_the_connection_works(auth_node):
    resps, closed = raw(auth_node, sasl_plain(b"bob", b"hunter2")
                        + frame(0x01, b"k", set_extras(), b"v") + frame(0x00, b"k"), wait=0.5)
    assert [r.status for r in resps] == [0, 0, 0]
    assert resps[0].value == b"Authenticated" and resps[2].value == b"v"


def test_sighup_reloads_the_auth_file(auth_node):
    auth_node.auth_path.write_bytes(b"alice:rotated\n")
    auth_node.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while True:
        resps, _ = raw(auth_node, sasl_plain(b"alice", b"rotated"), wait=0.3)
        if resps and resps[0].status == 0:
            break
        assert time.monotonic() < deadline, "new password not accepted after SIGHUP"
        time.sleep(0.1)
    resps, _ = raw(auth_node, sasl_plain(b"alice", b"secret"), wait=0.3)
    assert resps[0].status == 0x20


def test_text_protocol_is_gated_too(auth_node):
    s = socket.create_connection((auth_node.host, auth_node.port), timeout=2)
    s.sendall(b"get k\r\n")
    assert s.recv(100) == b"CLIENT_ERROR unauthenticated\r\n"
    s.sendall(b"set auth 0 0 12\r\nalice secret\r\nget k\r\n")
    buf = b""
    while not buf.endswith(b"END\r\n"):
        buf += s.recv(100)
    assert buf == b"STORED\r\nEND\r\n"
    s.close()
