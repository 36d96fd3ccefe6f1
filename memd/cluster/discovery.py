"""Client-side membership discovery: ElastiCache ``config get cluster`` and DNS.

Each source answers one question, "which ``host:port`` nodes are in the
fleet now?", and the cluster client polls it. Nothing here keeps state
between calls except the socket timeout.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Iterable

DEFAULT_PORT = 11211
_MAX_REPLY = 1 << 20  # a config reply of thousands of nodes is ~100 KB


class DiscoveryError(Exception):
    """The endpoint's reply was not a cluster configuration."""


@dataclass(frozen=True)
class DiscoveredNode:
    host: str
    ip: str
    port: int

    @property
    def address(self) -> str:
        # Connect by IP when the node advertises one: the host name may
        # only resolve inside the fleet's network (docker-compose, VPC).
        return f"{self.ip or self.host}:{self.port}"


@dataclass(frozen=True)
class ClusterInfo:
    version: int
    nodes: tuple[DiscoveredNode, ...]

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]


def parse_config_reply(data: bytes) -> ClusterInfo:
    """Parse a whole ``config get cluster`` (or ``get AmazonElastiCache:cluster``) reply."""
    head, sep, rest = data.partition(b"\r\n")
    if not sep:
        raise DiscoveryError(f"no header line in {data[:80]!r}")
    fields = head.split()
    if len(fields) != 4 or fields[0] not in (b"CONFIG", b"VALUE"):
        raise DiscoveryError(f"not a cluster config reply: {head[:80]!r}")
    try:
        length = int(fields[3])
    except ValueError:
        raise DiscoveryError(f"bad length in {head!r}") from None
    payload, trailer = rest[:length], rest[length:]
    if len(payload) != length or trailer != b"\r\nEND\r\n":
        raise DiscoveryError("reply length does not match its header")
    return parse_config_payload(payload)


def parse_config_payload(payload: bytes) -> ClusterInfo:
    """``<version>\\n<host>|<ip>|<port> ...\\n`` -> ClusterInfo."""
    lines = payload.decode("utf-8", "replace").split("\n")
    if len(lines) < 2:
        raise DiscoveryError("payload has no node line")
    try:
        version = int(lines[0].strip())
    except ValueError:
        raise DiscoveryError(f"bad config version {lines[0]!r}") from None
    nodes = []
    for item in lines[1].split():
        parts = item.split("|")
        if len(parts) != 3:
            raise DiscoveryError(f"bad node entry {item!r}")
        host, ip, port = parts
        try:
            nodes.append(DiscoveredNode(host, ip, int(port)))
        except ValueError:
            raise DiscoveryError(f"bad port in {item!r}") from None
    return ClusterInfo(version, tuple(nodes))


def split_address(address: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / ``host`` -> (host, port)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if address.count(":") == 1:
        host, port = address.split(":")
        return host, int(port)
    return address, default_port


def fetch_cluster_config(endpoint: str, timeout: float = 2.0) -> ClusterInfo:
    """Ask one node for ``config get cluster``; raises OSError or DiscoveryError."""
    host, port = split_address(endpoint)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"config get cluster\r\n")
        buf = bytearray()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise DiscoveryError(f"{endpoint} closed before END")
            buf += chunk
            if buf.startswith((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")) and buf.endswith(b"\r\n"):
                # memcached, or a node started without cluster options.
                raise DiscoveryError(f"{endpoint} has no cluster config: {bytes(buf[:80])!r}")
            if buf.endswith(b"\r\nEND\r\n"):
                return parse_config_reply(bytes(buf))
            if len(buf) > _MAX_REPLY:
                raise DiscoveryError(f"{endpoint}: reply over {_MAX_REPLY} bytes")


def fetch_first(endpoints: Iterable[str], timeout: float = 2.0) -> ClusterInfo:
    """The config from the first endpoint that answers; re-raises the last error."""
    last: Exception = DiscoveryError("no endpoints")
    for endpoint in endpoints:
        try:
            return fetch_cluster_config(endpoint, timeout)
        except (OSError, DiscoveryError) as exc:
            last = exc
    raise last


def resolve_dns(name: str, port: int = DEFAULT_PORT) -> list[str]:
    """Every address behind ``name`` as ``ip:port``, sorted, de-duplicated.

    A docker-compose service scaled to N or a Kubernetes headless service
    answers with one A record per node; an empty answer raises OSError
    (socket.gaierror), which the client treats as "keep what you have".
    """
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    found = set()
    for family, *_rest, sockaddr in infos:
        ip = sockaddr[0]
        found.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return sorted(found)
