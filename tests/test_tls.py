"""TLS: pymemcache over TLS, mutual TLS, and failed handshakes hurting no one else.

Certificates are made inside the test (``cryptography``) into tmp_path: a
CA, a server certificate for 127.0.0.1 signed by it, a client certificate
signed by it, and a client certificate signed by another CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import time

import pytest

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from pymemcache.client.base import Client  # noqa: E402

import servers  # noqa: E402
from memd.tls import server_context  # noqa: E402


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer, issuer_key, *, ca=False, server=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path, cert, key=None):
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        kp = path.with_suffix(".key")
        kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        return str(path), str(kp)
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("memd test CA", ca_key, "memd test CA", ca_key, ca=True)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _cert("other CA", other_key, "other CA", other_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    cli_key = ec.generate_private_key(ec.SECP256R1())
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "ca": _write(d / "ca.pem", ca),
        "server": _write(d / "server.pem", _cert("127.0.0.1", srv_key, "memd test CA", ca_key,
                                                 server=True), srv_key),
        "client": _write(d / "client.pem", _cert("client", cli_key, "memd test CA", ca_key), cli_key),
        "rogue": _write(d / "rogue.pem", _cert("rogue", rogue_key, "other CA", other_key), rogue_key),
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
