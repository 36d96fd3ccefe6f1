"""The node side of ElastiCache auto discovery: ``config get cluster``.

Sans-IO apart from reading the cluster file and one ``getaddrinfo`` per new
host name; no trio. The server asks for ``reply(key)`` bytes and calls
``refresh()`` about once a second.

Reply format (ElastiCache "Adding Auto Discovery to your client library")::

    CONFIG cluster 0 <n>\\r\\n
    <version>\\n
    <host>|<ip>|<port> <host>|<ip>|<port> ...\\n
    \\r\\n
    END\\r\\n

``<n>`` counts the bytes of ``<version>\\n<nodes>\\n``; the version goes up by
one on every membership change, starting at 1.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from typing import Callable, Iterable

log = logging.getLogger(__name__)

DEFAULT_PORT = 11211

# ElastiCache documents only the ``cluster`` key. What it answers for other
# keys is not documented anywhere we could find, so we answer as memcached
# does for a command it does not know.
UNKNOWN_KEY_REPLY = b"ERROR\r\n"

Resolver = Callable[[str], str]


@dataclass(frozen=True)
class NodeEntry:
    """One cache node as advertised: name clients may use, its IP, its port."""

    host: str
    ip: str
    port: int

    def render(self) -> str:
        return f"{self.host}|{self.ip}|{self.port}"


def resolve_ip(host: str) -> str:
    """The first IPv4/IPv6 address of ``host``, or ``""`` if it does not resolve."""
    try:
        return str(ipaddress.ip_address(host))  # literals need no lookup
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return ""
    # Prefer IPv4: that is what ElastiCache advertises and what most
    # clients connect to.
    for family, *_rest, sockaddr in infos:
        if family == socket.AF_INET:
            return sockaddr[0]
    return infos[0][4][0] if infos else ""


def parse_node_spec(spec: str, resolve: Resolver = resolve_ip) -> NodeEntry:
    """Parse ``host:port``, ``host``, or ``host|ip|port``.

    An unresolvable host is advertised with the host string in the IP field,
    so clients that connect by IP still get something they can try.
    """
    spec = spec.strip()
    if not spec:
        raise ValueError("empty node spec")
    if "|" in spec:
        parts = spec.split("|")
        if len(parts) != 3:
            raise ValueError(f"node spec {spec!r}: expected host|ip|port")
        host, ip, port_s = (p.strip() for p in parts)
        if not host:
            raise ValueError(f"node spec {spec!r}: empty host")
        port = _port(port_s, spec)
        return NodeEntry(host, ip or resolve(host) or host, port)
    if spec.startswith("["):  # [ipv6]:port
        host, _, rest = spec[1:].partition("]")
        port = _port(rest[1:], spec) if rest.startswith(":") else DEFAULT_PORT
    elif spec.count(":") == 1:
        host, port_s = spec.split(":")
        port = _port(port_s, spec)
    else:
        host, port = spec, DEFAULT_PORT
    if not host:
        raise ValueError(f"node spec {spec!r}: empty host")
    return NodeEntry(host, resolve(host) or host, port)


def _port(text: str, spec: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"node spec {spec!r}: bad port {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"node spec {spec!r}: port out of range")
    return port


def parse_node_list(text: str, resolve: Resolver = resolve_ip) -> list[NodeEntry]:
    """``--cluster-nodes`` value: comma and/or space separated specs."""
    specs = [s for s in text.replace(",", " ").split() if s]
    return [parse_node_spec(s, resolve) for s in specs]


def parse_cluster_file(text: str, resolve: Resolver = resolve_ip) -> list[NodeEntry]:
    """One spec per line; ``#`` starts a comment; blank lines ignored."""
    nodes = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            nodes.extend(parse_node_list(line, resolve))
        except ValueError as exc:
            raise ValueError(f"line {lineno}: {exc}") from None
    return nodes


def render_reply(version: int, nodes: Iterable[NodeEntry]) -> bytes:
    payload = f"{version}\n{' '.join(n.render() for n in nodes)}\n".encode()
    return b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(payload), payload)


class ClusterConfig:
    """Membership a node advertises, from a static list or a watched file."""

    def __init__(
        self,
        nodes: list[NodeEntry],
        path: str | None = None,
        resolve: Resolver = resolve_ip,
    ) -> None:
        self.path = path
        self.version = 1
        self._nodes = list(nodes)
        self._reply = render_reply(self.version, self._nodes)
        # Resolve each host name once: a lookup can block for seconds on a
        # bad resolver and refresh() runs on the server's event loop.
        self._cache: dict[str, str] = {n.host: n.ip for n in nodes}
        self._resolve = resolve
        self._stamp: tuple[int, int, int] | None = None
        self._text: str | None = None

    # -- construction -----------------------------------------------------
    @classmethod
    def from_options(
        cls, nodes: str | None, path: str | None, resolve: Resolver = resolve_ip
    ) -> "ClusterConfig | None":
        """Build from ``--cluster-nodes`` or ``--cluster-file``; None if neither.

        Raises ``ValueError`` (bad spec, both options) or ``OSError`` (file).
        """
        if nodes and path:
            raise ValueError("give --cluster-nodes or --cluster-file, not both")
        if nodes:
            return cls(parse_node_list(nodes, resolve), resolve=resolve)
        if path:
            cfg = cls([], path=path, resolve=resolve)
            cfg._load(initial=True)
            return cfg
        return None

    # -- queries ------------------------------------------------------------
    @property
    def nodes(self) -> list[NodeEntry]:
        return list(self._nodes)

    def set_nodes(self, nodes: list[NodeEntry]) -> bool:
        """Replace the membership; bumps the version if it changed."""
        if nodes == self._nodes:
            return False
        self.version += 1
        self._nodes = list(nodes)
        self._reply = render_reply(self.version, self._nodes)
        log.info("cluster membership v%d: %d nodes", self.version, len(nodes))
        return True

    def reply(self, key: bytes) -> bytes:
        """Full reply bytes for ``config get <key>``."""
        if key == b"cluster":
            return self._reply
        return UNKNOWN_KEY_REPLY

    # -- file watching ------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the cluster file if it changed. Cheap when it did not.

        A missing or malformed file keeps the last good membership: dropping
        the fleet because of a half-written file would send every client's
        keys elsewhere.
        """
        if self.path is None:
            return
        try:
            self._load(initial=False)
        except (OSError, ValueError) as exc:
            log.warning("cluster file %s not reloaded: %s", self.path, exc)

    def _load(self, initial: bool) -> None:
        st = os.stat(self.path)
        # The inode catches an atomic rename-over within one mtime tick.
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        with open(self.path, encoding="utf-8") as f:
            text = f.read()
        self._stamp = stamp
        if text == self._text:
            return
        nodes = parse_cluster_file(text, self._cached_resolve)
        self._text = text
        if initial:
            self._nodes = nodes
            self._reply = render_reply(self.version, self._nodes)
        else:
            self.set_nodes(nodes)

    def _cached_resolve(self, host: str) -> str:
        if host not in self._cache:
            self._cache[host] = self._resolve(host)
        return self._cache[host]
