"""Listing a node's keys, for the warm-up sweep after a membership change.

After the ring changes, the keys that moved still sit on their previous
owners.  Warm-up reads them there on a miss, but a key nobody touches during
the window would stay behind as an orphan, and come back into use, older
than writes made since, if the ring ever changes back (the new node is
removed).  The cluster client therefore walks each previous owner's keys with
``lru_crawler metadump all`` (memcached 1.5+ and memd both answer it) and
moves the ones that left it.
"""

from __future__ import annotations

import socket
from typing import Iterator
from urllib.parse import unquote_to_bytes

from memd.cluster import discovery


class MetadumpError(OSError):
    """The node refused or broke off the key listing."""


def metadump_keys(node: str, connect_timeout: float = 1.0,
                  timeout: float = 5.0) -> Iterator[bytes]:
    """Every key ``node`` holds now (URL-decoded), streamed as it answers."""
    host, port = discovery.split_address(node)
    with socket.create_connection((host, port), timeout=connect_timeout) as sock:
        sock.settimeout(timeout)
        # Alone on its connection: memcached refuses a metadump pipelined
        # behind other commands.
        sock.sendall(b"lru_crawler metadump all\r\n")
        buf = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise MetadumpError(f"{node} closed the key listing")
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.startswith(b"key="):
                    yield unquote_to_bytes(line[4:].split(b" ", 1)[0])
                elif line.rstrip(b"\r") == b"END":
                    return
                elif line.strip():
                    raise MetadumpError(f"{node}: {line.strip()[:80]!r}")
