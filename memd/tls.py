"""TLS for the node's listeners: one server-side ``ssl.SSLContext``.

TLS 1.2 is the floor by default (memcached's default ``ssl_min_version`` is
tls1.2 as well).  Given a CA bundle, clients must present a certificate it
signed (mutual TLS, memcached's ``ssl_verify_mode=2`` with ``ssl_ca_cert``),
unless ``verify_mode`` says otherwise.
"""

from __future__ import annotations

import ssl

# memcached's ssl_verify_mode: 0 none, 1 request, 2 require, 3 once (require,
# checked at the first handshake only -- the same thing without renegotiation)
VERIFY_MODES = {0: ssl.CERT_NONE, 1: ssl.CERT_OPTIONAL, 2: ssl.CERT_REQUIRED, 3: ssl.CERT_REQUIRED}
# memcached's ssl_min_version: 0 tlsv1.0 ... 3 tlsv1.3
MIN_VERSIONS = {0: ssl.TLSVersion.TLSv1, 1: ssl.TLSVersion.TLSv1_1,
                2: ssl.TLSVersion.TLSv1_2, 3: ssl.TLSVersion.TLSv1_3}


def server_context(cert: str, key: str, ca: str | None = None, *, verify_mode: int | None = None,
                   min_version: int | None = None, ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSIONS[2 if min_version is None else min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.load_cert_chain(cert, key)
    if ciphers:
        ctx.set_ciphers(ciphers)
    if ca:
        ctx.load_verify_locations(cafile=ca)
    if verify_mode is None:
        verify_mode = 2 if ca else 0
    ctx.verify_mode = VERIFY_MODES[verify_mode]
    return ctx
