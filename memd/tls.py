"""TLS for the node's listeners: one server-side ``ssl.SSLContext``.

TLS 1.2 is the floor (memcached's default ``ssl_min_version`` is tls1.2 as
well).  Given a CA bundle, clients must present a certificate it signed
(mutual TLS, memcached's ``ssl_verify_mode=2`` with ``ssl_ca_cert``).
"""

from __future__ import annotations

import ssl


def server_context(cert: str, key: str, ca: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.load_cert_chain(cert, key)
    if ca:
        ctx.load_verify_locations(cafile=ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
