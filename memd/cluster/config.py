"""The node side of ElastiCache auto discovery: ``config get cluster``.

Nodes never talk to each other, so a fleet agrees on its membership only if
every node derives its answer from the same input the same way. Hence:

- **The answer is a function of the membership alone.** Entries are sorted
  by host then port (ElastiCache lists nodes alphabetically by host name),
  and the version is derived from the member list (or declared in the
  cluster file), never counted per node: two nodes given the same members
  answer the same bytes, whatever order they started in.
- **Host names are announced with an empty IP field** (``memd2||11211``),
  which ElastiCache's format allows ("if the private IP address is not
  available ... the pipe characters will still be printed"); clients then
  resolve the name when they connect. A resolved IP would be one node's view
  of DNS at one moment: nodes that resolved at different times announce
  different bytes, and a restarted container's new address reaches clients
  only once every node has re-resolved it. With the name, DNS is the single
  source of the address and a new container is reached at the next connect.
  IP literals are announced as themselves, and ``host|ip|port`` keeps the IP
  the operator wrote. The name (``host:port``) is also what clients put on
  their hash ring, so a key stays on its node when the node's address moves.
- **Names are still looked up**, off the event loop, only to log those that
  do not resolve (yet, or any more): they stay members, since dropping one
  would move its keys to the other nodes on every client.

Reply format (ElastiCache "Adding Auto Discovery to your client library")::

    CONFIG cluster 0 <n>\\r\\n
    <version>\\n
    <host>|<ip>|<port> <host>|<ip>|<port> ...\\n
    \\r\\n
    END\\r\\n

``<n>`` counts the bytes of ``<version>\\n<nodes>\\n``.

``reply()`` is what the event loop calls; ``poll()`` does the blocking
work (reading the cluster file, DNS) and is meant for a worker thread: it
swaps in new reply bytes with one assignment, so the loop sees the old
answer or the new one, never a mix. Nothing here imports trio.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable

from memd.cluster import discovery

log = logging.getLogger(__name__)

DEFAULT_PORT = 11211

# ElastiCache documents only the ``cluster`` key. What it answers for other
# keys is not documented anywhere we could find, so we answer as memcached
# does for a command it does not know.
UNKNOWN_KEY_REPLY = b"ERROR\r\n"

#: Seconds between DNS membership lookups (``--cluster-dns``).
DNS_POLL_INTERVAL = 5.0
#: Seconds between checks that every member's name still resolves.
RESOLVE_CHECK_INTERVAL = 10.0

Resolver = Callable[[str], str]
SrvLookup = Callable[[str], "list[tuple[str, int]]"]

# RFC 1123 host names; "_" is tolerated because some internal DNS zones
# (and Docker service names) use it.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_VERSION_LINE = re.compile(r"version\s*=?\s*(\d+)", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class NodeEntry:
    """One cache node as announced: its name, its IP ("" = resolve the name), its port."""

    host: str
    ip: str
    port: int

    def render(self) -> str:
        return f"{self.host}|{self.ip}|{self.port}"

    @property
    def name(self) -> str:
        """``host:port``: the node's identity on clients' hash rings."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def resolve_ip(host: str) -> str:
    """The first address of ``host`` (IPv4 preferred), or ``""`` if it does not resolve.

    Blocking: call it from a worker thread, never from the event loop.
    """
    literal = _ip_literal(host)
    if literal is not None:
        return literal
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return ""
    for family, *_rest, sockaddr in infos:
        if family == socket.AF_INET:
            return sockaddr[0]
    return infos[0][4][0] if infos else ""


def _check_host(host: str, spec: str) -> str:
    if not host:
        raise ValueError(f"{spec!r}: empty host")
    if _ip_literal(host) is not None:
        return host
    if not _HOSTNAME.fullmatch(host) or len(host) > 253:
        raise ValueError(f"{spec!r}: {host!r} is neither a host name nor an IP address")
    return host.rstrip(".")


def parse_node_spec(spec: str) -> NodeEntry:
    """Parse ``host:port``, ``host``, ``[v6]:port`` or ``host|ip|port``. No DNS.

    A host name gets an empty IP field (clients resolve it); an IP literal is
    its own IP; ``host|ip|port`` keeps the given IP.
    """
    spec = spec.strip()
    if not spec:
        raise ValueError("empty node spec")
    if "|" in spec:
        parts = spec.split("|")
        if len(parts) != 3:
            raise ValueError(f"{spec!r}: expected host|ip|port")
        host, ip, port_s = (p.strip() for p in parts)
        host = _check_host(host, spec)
        if ip and _ip_literal(ip) is None:
            raise ValueError(f"{spec!r}: {ip!r} is not an IP address")
        return NodeEntry(host, ip or (_ip_literal(host) or ""), _port(port_s, spec))
    if spec.startswith("["):  # [ipv6]:port
        host, _, rest = spec[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{spec!r}: expected [address]:port")
        port = _port(rest[1:], spec) if rest else DEFAULT_PORT
        if _ip_literal(host) is None:
            raise ValueError(f"{spec!r}: {host!r} is not an IPv6 address")
    elif spec.count(":") == 1:
        host, port_s = spec.split(":")
        port = _port(port_s, spec)
    else:
        host, port = spec, DEFAULT_PORT  # a bare name, or an IPv6 literal
    host = _check_host(host, spec)
    return NodeEntry(host, _ip_literal(host) or "", port)


def _port(text: str, spec: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"{spec!r}: bad port {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"{spec!r}: port out of range")
    return port


def canonical(nodes: Iterable[NodeEntry]) -> list[NodeEntry]:
    """Members in announcement order (host, then port); one entry per host:port."""
    by_name: dict[str, NodeEntry] = {}
    for node in nodes:
        if node.name in by_name and by_name[node.name] != node:
            raise ValueError(f"{node.name} is listed twice with different IPs")
        by_name[node.name] = node
    return sorted(by_name.values(), key=lambda n: (n.host, n.port, n.ip))


def parse_node_list(text: str) -> list[NodeEntry]:
    """``--cluster-nodes`` value: comma and/or space separated specs."""
    return canonical(parse_node_spec(s) for s in text.replace(",", " ").split())


def parse_cluster_file(text: str, source: str = "cluster file") -> tuple[list[NodeEntry], int | None]:
    """One node spec per line (``#`` comments, blank lines), plus an optional
    ``version N`` line. Returns (members, declared version or None).

    Raises ValueError naming ``source`` and the line number of the first bad
    line: a line that is not exactly one node spec is refused, never read as
    host names (``garbage line here`` is not three nodes).
    """
    nodes: list[NodeEntry] = []
    version = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        declared = _VERSION_LINE.fullmatch(line)
        try:
            if declared:
                if version is not None:
                    raise ValueError("a second version line")
                version = int(declared.group(1))
                if not 0 < version < 2**31:
                    raise ValueError(f"version {version} out of range 1..2^31-1")
                continue
            if len(line.split()) != 1:
                raise ValueError(f"{line!r}: one node (host:port, host or host|ip|port) per line")
            nodes.append(parse_node_spec(line))
        except ValueError as exc:
            raise ValueError(f"{source} line {lineno}: {exc}") from None
    try:
        return canonical(nodes), version
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def derive_version(nodes: Iterable[NodeEntry]) -> int:
    """The version every node computes for this membership: CRC-32 of the
    announced node line, in 1..2^31-1 (a positive 32-bit int for Java clients).

    Deterministic, not monotonic: a client that only accepts a *higher*
    version (elasticache-pyclient, for one) should be fed a cluster file with a
    ``version N`` line that the operator raises on each change.
    """
    line = " ".join(n.render() for n in nodes).encode()
    return zlib.crc32(line) % (2**31 - 1) + 1


def render_reply(version: int, nodes: Iterable[NodeEntry]) -> bytes:
    payload = f"{version}\n{' '.join(n.render() for n in nodes)}\n".encode()
    return b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(payload), payload)


class ClusterConfig:
    """Membership a node announces: a static list, a watched file, or DNS SRV records."""

    def __init__(
        self,
        nodes: Iterable[NodeEntry] = (),
        *,
        path: str | None = None,
        dns_name: str | None = None,
        version: int | None = None,
        resolve: Resolver = resolve_ip,
        srv_lookup: SrvLookup | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.dns_name = dns_name
        self._resolve = resolve
        self._srv_lookup = srv_lookup or discovery.lookup_srv
        self._clock = clock
        self._nodes: list[NodeEntry] = []
        self.version = 0
        self._reply = b""
        self._apply(canonical(nodes), version, quiet=True)
        self._stamp: tuple[int, int, int] | None = None
        self._next_dns = 0.0
        self._next_resolve_check = 0.0
        #: Host names that did not resolve at the last check (logged once each).
        self.unresolved: set[str] = set()
        self._addresses: dict[str, str] = {}

    # -- construction -----------------------------------------------------
    @classmethod
    def from_options(
        cls,
        nodes: str | None,
        path: str | None,
        dns_name: str | None = None,
        **kw,
    ) -> "ClusterConfig | None":
        """From ``--cluster-nodes``, ``--cluster-file`` or ``--cluster-dns``; None if none.

        Raises ``ValueError`` (bad spec or line, more than one option) or
        ``OSError`` (unreadable file). Does no DNS itself: the first ``poll()``
        (on a worker thread) does. ``kw`` go to the constructor (``resolve``,
        ``srv_lookup``, ``clock``: stand-ins for tests).
        """
        if sum(map(bool, (nodes, path, dns_name))) > 1:
            raise ValueError("give one of --cluster-nodes, --cluster-file, --cluster-dns")
        if nodes:
            return cls(parse_node_list(nodes), **kw)
        if path:
            cfg = cls(path=path, **kw)
            cfg._read_file(initial=True)
            return cfg
        if dns_name:
            return cls(dns_name=dns_name, **kw)
        return None

    # -- queries (event loop) -------------------------------------------------
    @property
    def nodes(self) -> list[NodeEntry]:
        return list(self._nodes)

    def reply(self, key: bytes) -> bytes:
        """Full reply bytes for ``config get <key>``."""
        if key == b"cluster":
            return self._reply
        return UNKNOWN_KEY_REPLY

    # -- updates (worker thread) ------------------------------------------------
    def set_nodes(self, nodes: Iterable[NodeEntry], version: int | None = None) -> bool:
        """Replace the membership; True if the announced bytes changed."""
        return self._apply(canonical(nodes), version)

    def _apply(self, nodes: list[NodeEntry], version: int | None, quiet: bool = False) -> bool:
        version = version if version is not None else derive_version(nodes)
        if nodes == self._nodes and version == self.version:
            return False
        self._nodes, self.version = nodes, version
        self._reply = render_reply(version, nodes)  # one assignment: readers see old or new
        if not quiet:
            log.warning("cluster membership v%d: %s", version,
                        " ".join(n.name for n in nodes) or "(none)")
        return True

    def poll(self) -> None:
        """Blocking: re-read the file or DNS, check member names resolve.

        Never raises for a bad source: a missing or malformed file, or a
        failed DNS lookup, keeps the last good membership (dropping members
        because of a half-written file would move every client's keys).
        """
        now = self._clock()
        if self.path is not None:
            try:
                self._read_file(initial=False)
            except (OSError, ValueError) as exc:
                log.error("%s; keeping the last good membership (v%d, %d nodes)",
                          exc, self.version, len(self._nodes))
        elif self.dns_name is not None and now >= self._next_dns:
            self._next_dns = now + DNS_POLL_INTERVAL
            self._read_dns()
        if now >= self._next_resolve_check:
            self._next_resolve_check = now + RESOLVE_CHECK_INTERVAL
            self.check_names()

    def _read_file(self, initial: bool) -> None:
        st = os.stat(self.path)
        # The inode catches an atomic rename-over within one mtime tick.
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        with open(self.path, encoding="utf-8") as f:
            text = f.read()
        try:
            nodes, version = parse_cluster_file(text, f"cluster file {self.path}")
        finally:
            self._stamp = stamp  # a bad file is reported once, not every second
        if self._apply(nodes, version, quiet=initial) and initial:
            log.info("cluster membership v%d from %s: %d nodes", self.version, self.path, len(nodes))

    def _read_dns(self) -> None:
        try:
            found = self._srv_lookup(self.dns_name)
        except Exception as exc:  # dnspython raises many types; all mean "not now"
            log.error("cluster DNS %s: %s; keeping the last good membership (%d nodes)",
                      self.dns_name, exc, len(self._nodes))
            return
        if not found:
            log.error("cluster DNS %s: no records; keeping the last good membership (%d nodes)",
                      self.dns_name, len(self._nodes))
            return
        self._apply(canonical(parse_node_spec(f"{h}:{p}" if ":" not in h else f"[{h}]:{p}")
                              for h, p in found), None)

    def check_names(self) -> None:
        """Resolve every member's host name; log the ones that stop or start resolving."""
        for host in sorted({n.host for n in self._nodes if not n.ip}):
            ip = self._resolve(host)
            if not ip:
                if host not in self.unresolved:
                    self.unresolved.add(host)
                    log.warning("cluster member %s does not resolve; still announced "
                                "(clients resolve it when they connect)", host)
                continue
            if host in self.unresolved:
                self.unresolved.discard(host)
                log.warning("cluster member %s resolves again (%s)", host, ip)
            elif self._addresses.get(host, ip) != ip:
                log.info("cluster member %s moved: %s -> %s", host, self._addresses[host], ip)
            self._addresses[host] = ip
        members = {n.host for n in self._nodes}
        self.unresolved &= members
        for gone in set(self._addresses) - members:
            del self._addresses[gone]
