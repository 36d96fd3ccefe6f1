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
    def name(self) -> str:
        """``host:port``: the node's identity, whatever its current address."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def address(self) -> str:
        # Connect by IP when the node advertises one (memd does for IP
        # literals and host|ip|port entries); an empty IP field means
        # "resolve the name", which memd announces for host names.
        ip = self.ip or self.host
        return f"[{ip}]:{self.port}" if ":" in ip else f"{ip}:{self.port}"


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


#: The SRV service label memd's manifests give the client port: a Kubernetes
#: headless Service with a port named ``memcache`` publishes
#: ``_memcache._tcp.<service>`` with one record per pod, targeting the pod's
#: stable name (``memd-0.memd.<ns>.svc.cluster.local``).
SRV_PREFIX = "_memcache._tcp."


def lookup_srv(name: str, timeout: float = 2.0) -> list[tuple[str, int]]:
    """``(target, port)`` of every SRV record of ``name``, sorted.

    ``name`` is used as is when it starts with ``_`` (a full SRV name),
    otherwise ``_memcache._tcp.`` is put in front. Short names go through
    the resolver's search list, as in a pod (``memd`` finds
    ``memd.<ns>.svc.cluster.local``). No such records: ``[]``; a resolver
    failure (timeout, no name server) raises. Blocking: keep it off event loops.
    """
    import dns.exception
    import dns.resolver

    qname = name if name.startswith("_") else SRV_PREFIX + name
    try:
        answer = dns.resolver.resolve(qname, "SRV", search=True, lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise OSError(f"SRV lookup of {qname} failed: {exc}") from exc
    return sorted({(r.target.to_text(omit_final_dot=True), r.port) for r in answer})


def resolve_dns(name: str, port: int = DEFAULT_PORT) -> list[str]:
    """The fleet behind a DNS name, as ``host:port`` strings, sorted.

    SRV records first (a Kubernetes headless Service): the members are the
    records' targets, the pods' stable names, so a client's ring holds the
    same names the nodes announce and a pod that comes back with a new IP
    keeps its keys. Without SRV records, every A/AAAA record of ``name`` is
    a member as ``ip:port`` (a docker-compose network alias shared by the
    nodes). Nothing found raises OSError (socket.gaierror), which the client
    treats as "keep what you have".
    """
    try:
        srv = lookup_srv(name)
    except OSError:
        srv = []
    if srv:
        return [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in srv]
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    found = set()
    for family, *_rest, sockaddr in infos:
        ip = sockaddr[0]
        found.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return sorted(found)
