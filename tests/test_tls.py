"""TLS: pymemcache over TLS, mutual TLS, and failed handshakes hurting no one else.

Certificates come from the openssl recipe of docs/security.md, run as written
(tests/pki.py): a CA, a server certificate for localhost and 127.0.0.1, a
client certificate; running it again in another directory gives a client
certificate signed by another CA.
"""

from __future__ import annotations

import socket
import ssl
import time

import pytest
from pymemcache.client.base import Client

import servers
from memd.tls import server_context
from pki import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ours = make_pki(d / "ours")
    other = make_pki(d / "other")
    return {
        "ca": ours["ca.pem"],
        "server": (ours["server.pem"], ours["server.key"]),
        "client": (ours["client.pem"], ours["client.key"]),
        "rogue": (other["client.pem"], other["client.key"]),
    }


def client_context(pki, cert=None):
    ctx = ssl.create_default_context(cafile=pki["ca"])
    if cert:
        ctx.load_cert_chain(*pki[cert])
    return ctx


@pytest.fixture
def tls_node(pki, memd_server_factory):
    """A node serving plain text on -p and TLS on --tls-port."""
    tls_port = servers.free_port()
    cert, key = pki["server"]
    node = memd_server_factory("--tls-cert", cert, "--tls-key", key, "--tls-port", str(tls_port))
    node.tls_port = tls_port
    _wait_for(tls_port)
    return node


@pytest.fixture
def mtls_node(pki, memd_server_factory):
    cert, key = pki["server"]
    node = memd_server_factory("--tls-cert", cert, "--tls-key", key, "--tls-ca", pki["ca"])
    return node


def _wait_for(port):
    import time
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listening on {port}"
            time.sleep(0.05)


def test_server_context_is_tls12_plus_and_mutual_with_a_ca(pki):
    cert, key = pki["server"]
    ctx = server_context(cert, key)
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE
    assert server_context(cert, key, pki["ca"]).verify_mode == ssl.CERT_REQUIRED


def test_pymemcache_over_tls(pki, tls_node):
    c = Client(("127.0.0.1", tls_node.tls_port), tls_context=client_context(pki), timeout=5)
    c.set("k", b"secret value")
    assert c.get("k") == b"secret value"
    # the plain port serves the same cache
    plain = Client(tls_node.address, timeout=5)
    assert plain.get("k") == b"secret value"
    c.close()
    plain.close()


def test_tls_1_1_is_refused(pki, tls_node):
    ctx = client_context(pki)
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises((ssl.SSLError, OSError)):
        with socket.create_connection(("127.0.0.1", tls_node.tls_port), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
                t.sendall(b"version\r\n")
                t.recv(100)


def test_binary_protocol_over_tls(pki, tls_node):
    from test_binary import frame, parse
    with socket.create_connection(("127.0.0.1", tls_node.tls_port), timeout=5) as s:
        with client_context(pki).wrap_socket(s, server_hostname="127.0.0.1") as t:
            t.sendall(frame(0x0B))
            buf = b""
            while len(buf) < 24 or len(parse(buf)[0]) < 1:
                buf += t.recv(100)
            [r] = parse(buf)[0]
            assert r.status == 0 and r.value.startswith(b"1.6.18")


def test_mutual_tls_accepts_a_client_certificate_signed_by_the_ca(pki, mtls_node):
    c = Client(mtls_node.address, tls_context=client_context(pki, "client"), timeout=5)
    c.set("m", b"1")
    assert c.get("m") == b"1"
    c.close()


@pytest.mark.parametrize("cert", [None, "rogue"])
def test_mutual_tls_refuses_clients_without_a_trusted_certificate(pki, mtls_node, cert):
    c = Client(mtls_node.address, tls_context=client_context(pki, cert), timeout=5)
    # TLS 1.3 reports the server's refusal on the first read, not in the handshake
    with pytest.raises((ssl.SSLError, OSError, Exception)):
        c.set("m", b"1")
        c.get("m")
    c.close()


def test_failed_handshakes_and_plain_text_close_only_that_connection(pki, tls_node):
    good = Client(("127.0.0.1", tls_node.tls_port), tls_context=client_context(pki), timeout=5)
    good.set("alive", b"yes")
    # plain text sent to the TLS port
    with socket.create_connection(("127.0.0.1", tls_node.tls_port), timeout=5) as s:
        s.sendall(b"get alive\r\n" * 50)
        try:
            data = s.recv(100)
            while data:
                assert b"VALUE" not in data
                data = s.recv(100)
        except (ConnectionResetError, socket.timeout):
            pass
    # a client that does not trust the server's CA
    bad_ctx = ssl.create_default_context()
    with socket.create_connection(("127.0.0.1", tls_node.tls_port), timeout=5) as s:
        with pytest.raises(ssl.SSLError):
            bad_ctx.wrap_socket(s, server_hostname="127.0.0.1")
    # a connection dropped in the middle of the handshake
    with socket.create_connection(("127.0.0.1", tls_node.tls_port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x00\xff\x01")
    assert good.get("alive") == b"yes"
    fresh = Client(("127.0.0.1", tls_node.tls_port), tls_context=client_context(pki), timeout=5)
    assert fresh.get("alive") == b"yes"
    assert Client(tls_node.address, timeout=5).get("alive") == b"yes"
    good.close()
    fresh.close()


def test_an_idle_tls_connection_is_closed_by_the_idle_timeout(pki, memd_server_factory):
    """--idle-timeout applies to TLS connections too (a task each, cancelled)."""
    cert, key = pki["server"]
    node = memd_server_factory("--tls-cert", cert, "--tls-key", key, "--idle-timeout", "1")
    raw = socket.create_connection(("127.0.0.1", node.port), timeout=5)
    conn = client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        conn.sendall(b"version\r\n")
        assert conn.recv(100).startswith(b"VERSION")
        started = time.monotonic()
        assert conn.recv(100) == b""        # closed by the node, not by us
        assert time.monotonic() - started < 4
    finally:
        conn.close()


def _version_over_tls(address, ctx) -> bytes:
    with socket.create_connection(address, timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            t.sendall(b"version\r\n")
            return t.recv(100)


@pytest.mark.parametrize("mode, client_needs_a_certificate",
                         [(None, False), ("0", False), ("1", False), ("2", True), ("3", True)])
def test_memcached_ssl_options_take_effect_with_Z(pki, mode, client_needs_a_certificate):
    """-Z -o ssl_chain_cert,ssl_key,ssl_ca_cert[,ssl_verify_mode]: memcached's spelling;
    ssl_ca_cert alone does not ask for a client certificate (mode 0, as memcached)."""
    import memd
    cert, key = pki["server"]
    opts = f"ssl_chain_cert={cert},ssl_key={key},ssl_ca_cert={pki['ca']}"
    if mode is not None:
        opts += f",ssl_verify_mode={mode}"
    with memd.serve("-Z", "-o", opts) as node:
        assert _version_over_tls(node.address, client_context(pki, "client")).startswith(b"VERSION")
        if client_needs_a_certificate:
            # TLS 1.3 reports the refusal on the first read: an error or a closed stream
            try:
                reply = _version_over_tls(node.address, client_context(pki))
            except (ssl.SSLError, OSError):
                reply = b""
            assert reply == b""
        else:
            assert _version_over_tls(node.address, client_context(pki)).startswith(b"VERSION")


def test_ssl_min_version_3_refuses_tls_1_2(pki):
    import memd
    cert, key = pki["server"]
    with memd.serve("-Z", "-o", f"ssl_chain_cert={cert},ssl_key={key},ssl_min_version=3") as node:
        old = client_context(pki)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, OSError)):
            _version_over_tls(node.address, old)
        assert _version_over_tls(node.address, client_context(pki)).startswith(b"VERSION")


def test_stats_settings_reports_the_tls_settings(pki):
    import memd
    import wire
    cert, key = pki["server"]
    opts = f"ssl_chain_cert={cert},ssl_key={key},ssl_ca_cert={pki['ca']},ssl_verify_mode=1"
    with memd.serve("-Z", "-o", opts + ",ssl_min_version=3,ssl_ciphers=HIGH") as node:
        with socket.create_connection(node.address, timeout=5) as s:
            with client_context(pki, "client").wrap_socket(s, server_hostname="127.0.0.1") as t:
                t.sendall(b"stats settings\r\n")
                reply = b""
                while not reply.endswith(b"END\r\n"):
                    reply += t.recv(65536)
    for line in ("ssl_enabled yes", f"ssl_chain_cert {cert}", f"ssl_key {key}",
                 f"ssl_ca_cert {pki['ca']}", "ssl_verify_mode 1", "ssl_min_version tlsv1.3",
                 "ssl_ciphers HIGH"):
        assert f"STAT {line}\r\n".encode() in reply, line


def test_a_notls_listener_speaks_plain_text_beside_tls(pki):
    import memd
    import wire
    cert, key = pki["server"]
    port = servers.free_port()
    with memd.serve("-l", f"notls:127.0.0.1:{port},127.0.0.1", tls=(cert, key)) as node:
        plain, secure = node.addresses
        assert plain == f"127.0.0.1:{port}"
        assert wire.exchange(("127.0.0.1", port), b"version\r\n").data.startswith(b"VERSION")
        host, p = secure.rsplit(":", 1)
        assert _version_over_tls((host, int(p)), client_context(pki)).startswith(b"VERSION")
