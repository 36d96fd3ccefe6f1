"""A cluster client: many memcached/memd nodes used as one cache.

Built on pymemcache: one thread-safe ``PooledClient`` per node, keys routed
by a consistent-hash ring (``HashRing`` by default, ``KetamaRing`` to share
a fleet with libmemcached/twemproxy/spymemcached clients).

``vnodes`` trades ring build time for balance: at 160 points per node a
3-node fleet puts 33% +- 2.6 points (one sigma) on each node; 640 points
halve that at the same lookup cost (bisect is logarithmic).

Placement: a key's *home* is the first ``replicas`` distinct nodes on the
ring from its point; its *serving set* the first ``replicas`` live ones
(``failover="remap"``) or the live members of its home (``"miss"``).
Writes go to the whole serving set in parallel, reads to its first node
with fallback down the list.

Failure handling:

- A node that fails ``failure_limit`` calls in a row (connection refused,
  reset, timeout) is marked dead; a background thread probes it with
  ``version`` after 1 s, then at doubling intervals up to ``dead_timeout``,
  and puts it back when it answers.
- With ``ignore_exc=True`` no exception escapes: reads become misses,
  writes return False / report failed keys.

No read ever returns a value older than one this client had acknowledged
before the read: the staleness policy (``journal.py``; docs/fleet.md, "One
staleness policy") marks every copy a write did not reach as *suspect*,
never reads a suspect copy, trusts a stand-in only for what this client
wrote there, and settles suspect copies in the background.  The same rule
drives warm-up after a membership change: for ``warmup`` seconds (and until
a background sweep has moved every moved key off its previous owner) a miss
on a key's new owner is looked up on its previous owner and copied over,
and writes reach both.

Membership comes from a static list, an ElastiCache configuration endpoint
(``config get cluster`` polled every ``poll_interval`` s, falling back to
any known member when the endpoint is down), or a DNS name whose A records
are the nodes. The ring is swapped whole on a change; no restart needed.
A node's identity on the ring is its ``host:port`` name, never its address:
a ``host|ip|port`` entry is connected to at ``ip`` (or the name when the IP
field is empty), and a node announced at a new address keeps its keys.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping

from pymemcache.client.base import PooledClient
from pymemcache.exceptions import MemcacheClientError, MemcacheError, MemcacheUnexpectedCloseError
from pymemcache.serde import LegacyWrappingSerde

from memd.cluster import discovery
from memd.cluster.journal import Journal, KeyLocks, key_bytes
from memd.cluster.migrate import metadump_keys
from memd.cluster.ring import DEFAULT_VNODES, HashRing, KetamaRing

log = logging.getLogger(__name__)

# Errors that mean "the node is unreachable", as opposed to the node
# answering with an error (bad key, out of memory), which is not its death.
NODE_ERRORS = (OSError, MemcacheUnexpectedCloseError)

RINGS: dict[str, Callable[[], Any]] = {"xxhash": HashRing, "ketama": KetamaRing}

#: Suspect keys settled per node per maintenance tick.
SETTLE_BATCH = 512

#: memcached treats a larger expiry as an absolute Unix time.
MAX_RELATIVE_TTL = 60 * 60 * 24 * 30


class _Superseded(Exception):
    """The sweep's ring change is over (closed, or a newer change)."""


class NoLiveNodes(MemcacheError):
    """Every node of the cluster is dead or none is known."""


class _RawSerde:
    """Node clients move (bytes, flags) untouched; the cluster client applies
    the user's serde once, so copies between nodes keep flags exactly."""

    @staticmethod
    def serialize(key, value):
        return value, 0

    @staticmethod
    def deserialize(key, value, flags):
        return value, flags


#: First probe of a dead node after this many seconds; the interval doubles
#: up to ``dead_timeout`` while probes fail.
FIRST_PROBE = 1.0
#: How long the warm-up sweep keeps retrying a node that refuses its key listing.
SWEEP_RETRY_SECONDS = 30.0


class _Health:
    __slots__ = ("failures", "dead_until", "backoff", "deaths", "revived_at")

    def __init__(self) -> None:
        self.failures = 0
        self.dead_until: float | None = None
        self.backoff = 0.0
        self.deaths = 0        # deaths in a row, each within dead_timeout of a return
        self.revived_at = float("-inf")


class _View:
    """An immutable routing snapshot: readers use whichever one they grabbed."""

    __slots__ = ("ring", "live", "dead", "prev", "replicas", "remap", "simple")

    def __init__(self, ring, live, dead, prev, replicas, remap) -> None:
        self.ring, self.live, self.dead = ring, live, dead
        self.prev = prev
        self.replicas, self.remap = replicas, remap
        # One replica, every node live, no warm-up: the plain ring lookup.
        self.simple = replicas == 1 and not dead and prev is None

    def _order(self, ring, kb: bytes) -> list[str]:
        return ring.get_nodes(kb, self.replicas + len(self.dead))

    def home(self, kb: bytes) -> list[str]:
        return self.ring.get_nodes(kb, self.replicas)

    def serving(self, kb: bytes) -> list[str]:
        if self.simple:
            return [self.ring.get_node(kb)] if len(self.ring) else []
        order = self._order(self.ring, kb)
        if self.remap:
            return [n for n in order if n in self.live][: self.replicas]
        return [n for n in order[: self.replicas] if n in self.live]

    def warming(self) -> bool:
        # Not a clock check: the window ends when _end_window drops ``prev``,
        # which waits for the sweep.  Ending it by the clock alone would stop
        # warm-up reads, and the sweep's own moves, while keys still sit on
        # their previous owners (a slow sweep on a busy machine).
        return self.prev is not None

    def previous(self, kb: bytes) -> list[str]:
        """The key's live home nodes on the ring before the last change (warm-up).

        Home nodes only: a stand-in of the old ring may hold an orphan, and
        the holders record already covers what this client wrote there.
        """
        if not self.warming():
            return []
        return [n for n in self.prev.get_nodes(kb, self.replicas) if n in self.live]


def _member(server: str | tuple[str, int]) -> tuple[str, str]:
    """``(identity, address)`` of one server as the caller or discovery gives it.

    The identity (``host:port``) is what the ring hashes, so a key stays on
    its node when the node's address changes; the address is where the
    client connects.  ``host|ip|port`` (a ``config get cluster`` entry)
    names the node by its host and connects to the IP when one is given.
    """
    if isinstance(server, (tuple, list)):
        host, port = server
        node = discovery.DiscoveredNode(host, "", int(port))
    elif "|" in server:
        host, ip, port = server.split("|")
        node = discovery.DiscoveredNode(host, ip, int(port))
    else:
        host, port = discovery.split_address(server)
        node = discovery.DiscoveredNode(host, "", port)
    return node.name, node.address


def _parse_ttl(line: bytes) -> int | None:
    """Remaining TTL from an ``mg <key> t`` reply (None: no such key)."""
    if not line.startswith(b"HD"):
        return None
    for token in line.split()[1:]:
        if token.startswith(b"t"):
            return int(token[1:])
    return -1


class ClusterClient:
    def __init__(
        self,
        servers: Iterable[str | tuple[str, int]] = (),
        *,
        config_endpoint: str | None = None,
        dns_name: str | None = None,
        dns_port: int = discovery.DEFAULT_PORT,
        poll_interval: float = 60.0,
        ring: str | Callable[[], Any] = "xxhash",
        vnodes: int = DEFAULT_VNODES,
        replicas: int = 1,
        failover: str = "remap",
        failure_limit: int = 2,
        dead_timeout: float = 30.0,
        warmup: float = 60.0,
        journal_limit: int = 100_000,
        ignore_exc: bool = False,
        max_workers: int = 8,
        connect_timeout: float = 1.0,
        timeout: float = 1.0,
        max_pool_size: int = 8,
        **client_kwargs: Any,
    ) -> None:
        if failover not in ("remap", "miss"):
            raise ValueError("failover must be 'remap' or 'miss'")
        if replicas < 1:
            raise ValueError("replicas must be >= 1")
        servers = [_member(s) for s in servers]
        if sum(map(bool, (servers, config_endpoint, dns_name))) != 1:
            raise ValueError("give exactly one of servers, config_endpoint, dns_name")
        if ring == "xxhash":
            self._ring_factory = functools.partial(HashRing, vnodes=vnodes)
        else:
            self._ring_factory = RINGS[ring] if isinstance(ring, str) else ring
        self.replicas = replicas
        self.failover = failover
        self.failure_limit = max(1, failure_limit)
        self.dead_timeout = dead_timeout
        self.warmup = warmup
        self.ignore_exc = ignore_exc
        self.poll_interval = poll_interval
        self.config_endpoint = config_endpoint
        self.config_version: int | None = None
        self.dns_name, self.dns_port = dns_name, dns_port
        # The user's serde runs here, once; node clients carry raw bytes.
        serde = client_kwargs.pop("serde", None)
        serializer = client_kwargs.pop("serializer", None)
        deserializer = client_kwargs.pop("deserializer", None)
        self._serde = serde or LegacyWrappingSerde(serializer, deserializer)
        self._plain = not (serde or serializer or deserializer)  # bytes in, bytes out
        # A write this client cannot see fail cannot be journaled, so writes
        # wait for the node's reply unless the caller asks otherwise.
        self._noreply = bool(client_kwargs.pop("default_noreply", False))
        self._client_kwargs = dict(
            connect_timeout=connect_timeout, timeout=timeout,
            max_pool_size=max_pool_size, serde=_RawSerde(), **client_kwargs)
        self._probe_timeout = connect_timeout
        self._max_workers = max_workers
        self._executor: ThreadPoolExecutor | None = None
        self._journal = Journal(journal_limit)
        self._held_cursor = 0
        self._locks = KeyLocks()

        # Copy-on-write maps and an immutable view: readers on any thread use
        # whatever objects they grabbed, writers hold _lock.  _clients and
        # _health also keep nodes that left, until the warm-up window ends.
        self._lock = threading.Lock()
        self._members: list[str] = []
        self._clients: dict[str, PooledClient] = {}
        self._addresses: dict[str, str] = {}  # identity -> where to connect
        self._health: dict[str, _Health] = {}
        self._prev_ring = None
        self._window_until = 0.0
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        #: One entry per warm-up sweep: nodes listed, keys moved, finished or not.
        self.sweeps: list[dict[str, Any]] = []
        self._view = _View(self._ring_factory(), frozenset(), frozenset(), None,
                           replicas, failover == "remap")

        if servers:
            self._set_members(servers)
        else:
            try:
                self._poll_membership()
            except (OSError, discovery.DiscoveryError) as exc:
                if not ignore_exc:
                    raise
                log.warning("initial discovery failed, starting empty: %s", exc)

        self._next_poll = time.monotonic() + poll_interval
        self._thread = threading.Thread(target=self._maintain, name="memd-cluster", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ membership
    @property
    def servers(self) -> list[str]:
        return list(self._members)

    def node_states(self) -> dict[str, str]:
        return {n: ("dead" if self._health[n].dead_until is not None else "live")
                for n in self._members}

    def node_for(self, key: str | bytes) -> str | None:
        """The node a key is read from first now (dead nodes excluded under remap)."""
        kb = key_bytes(key)
        nodes = self._view.serving(kb) if self.failover == "remap" else self._view.home(kb)
        return nodes[0] if nodes else None

    def nodes_for(self, key: str | bytes) -> list[str]:
        """The key's serving set now: where writes go, in read order."""
        return self._view.serving(key_bytes(key))

    def journal_sizes(self) -> dict[str, int]:
        """Suspect keys, stand-in copies held, overflowed nodes (for tools)."""
        return self._journal.sizes()

    def set_servers(self, servers: Iterable[str | tuple[str, int]]) -> None:
        """Replace the membership by hand (what the pollers call)."""
        self._set_members([_member(s) for s in servers])

    def _connect(self, address: str) -> PooledClient:
        return PooledClient(discovery.split_address(address), **self._client_kwargs)

    def _set_members(self, members: list[tuple[str, str]]) -> None:
        """Apply a membership of ``(identity, address)`` pairs.

        The ring and everything keyed per node (health, journal, sweep) use
        the identity; a node whose address changed keeps its place on the
        ring and gets a fresh pool to its new address.
        """
        closing = []
        names = [name for name, _ in members]
        with self._lock:
            if set(names) == set(self._members) and all(
                    self._addresses.get(name) == address for name, address in members):
                return
            clients, health = dict(self._clients), dict(self._health)
            addresses = dict(self._addresses)
            for name, address in members:
                if name in clients and addresses[name] == address:
                    continue
                if name in clients:
                    log.info("cluster member %s moved: %s -> %s", name, addresses[name], address)
                    closing.append(clients[name])
                clients[name] = self._connect(address)
                addresses[name] = address
                # A new address is a new process: its old failures say nothing.
                health[name] = _Health()
            self._clients, self._health, self._addresses = clients, health, addresses
            if set(names) == set(self._members):
                self._rebuild_view_locked()
                for client in closing:
                    client.close()
                return  # only addresses moved: same ring, nothing to warm up
            sweep = None
            if self._members and self.warmup > 0:
                # Warm-up: the ring before the change keeps being read on
                # misses and written to; nodes that left stay reachable.
                self._prev_ring = self._view.ring
                self._window_until = time.monotonic() + self.warmup
                sweep = self._prev_ring
            else:
                for a in [a for a in clients if a not in names]:
                    closing.append(clients.pop(a))
                    del health[a], addresses[a]
            self._members = names
            self._rebuild_view_locked()
        log.info("cluster membership: %s", ", ".join(
            n if a == n else f"{n} at {a}" for n, a in members))
        for client in closing:
            client.close()
        if sweep is not None:
            self._sweeper = threading.Thread(target=self._sweep, args=(sweep,),
                                             name="memd-warmup-sweep", daemon=True)
            self._sweeper.start()

    def _rebuild_view_locked(self) -> None:
        ring = self._ring_factory()
        ring.set_nodes(self._members)
        prev = self._prev_ring
        reachable = set(self._members) | (set(prev.nodes) if prev is not None else set())
        dead = frozenset(a for a in reachable if self._health[a].dead_until is not None)
        live = frozenset(a for a in reachable if a not in dead)
        self._view = _View(ring, live, dead & set(self._members), prev,
                           self.replicas, self.failover == "remap")

    def _end_window(self) -> None:
        sweeper = self._sweeper
        if sweeper is not None and sweeper.is_alive():
            return  # the window lasts until every moved key has been moved
        with self._lock:
            if self._prev_ring is None or time.monotonic() < self._window_until:
                return
            self._prev_ring = None
            gone = [a for a in self._clients if a not in self._members]
            clients, health = dict(self._clients), dict(self._health)
            addresses = dict(self._addresses)
            closing = [clients.pop(a) for a in gone]
            for a in gone:
                del health[a], addresses[a]
            self._clients, self._health, self._addresses = clients, health, addresses
            self._rebuild_view_locked()
        for a in gone:
            self._journal.forget_node(a)
        for client in closing:
            client.close()
        log.info("warm-up window over")

    def _poll_membership(self) -> None:
        if self.config_endpoint:
            # The endpoint first; any member next, since every node answers
            # config get cluster and the endpoint may be the node that died.
            info = discovery.fetch_first(
                [self.config_endpoint, *(self._addresses[n] for n in self._members)],
                timeout=self._probe_timeout)
            self.config_version = info.version
            self._set_members([(n.name, n.address) for n in info.nodes])
        elif self.dns_name:
            found = discovery.resolve_dns(self.dns_name, self.dns_port)
            if found:
                self._set_members([_member(s) for s in found])

    # ------------------------------------------------------------------ health
    def _record_failure(self, node: str) -> None:
        with self._lock:
            health = self._health.get(node)
            if health is None or health.dead_until is not None:
                return
            health.failures += 1
            if health.failures >= self.failure_limit:
                # Probe soon, then less and less often; a node that flaps
                # (dies again soon after returning) starts further up.
                now = time.monotonic()
                flapping = now - health.revived_at < self.dead_timeout
                health.deaths = health.deaths + 1 if flapping else 1
                health.backoff = min(self.dead_timeout,
                                     FIRST_PROBE * 2 ** (health.deaths - 1))
                health.dead_until = now + health.backoff
                log.warning("node %s marked dead after %d failures", node, health.failures)
                self._rebuild_view_locked()

    def _revive(self, node: str) -> None:
        if node in self._journal.overflowed:
            # Too many writes missed to list: the node comes back empty.
            before = self._journal.snapshot(node)
            try:
                self._clients[node].flush_all(0, False)
            except (KeyError, *NODE_ERRORS, MemcacheError):
                return
            self._journal.flushed(node, before)
        with self._lock:
            health = self._health.get(node)
            if health is None:
                return
            # Pooled sockets to the process that died would each fail once
            # and mark the node dead again: start with a fresh pool.
            stale = self._clients[node]
            self._clients = {**self._clients, node: self._connect(self._addresses[node])}
            health.failures, health.dead_until = 0, None
            health.revived_at = time.monotonic()
            self._rebuild_view_locked()
        stale.close()
        log.info("node %s is back", node)

    def _probe(self, node: str) -> bool:
        address = self._addresses.get(node)
        if address is None:
            return False  # no longer a member
        host, port = discovery.split_address(address)
        try:
            with socket.create_connection((host, port), timeout=self._probe_timeout) as sock:
                sock.sendall(b"version\r\n")
                return sock.recv(64).startswith(b"VERSION ")
        except OSError:
            return False

    def _maintain(self) -> None:
        tick = max(0.05, min(0.5, self.dead_timeout / 2, FIRST_PROBE / 2, self.poll_interval / 2))
        while not self._stop.wait(tick):
            now = time.monotonic()
            for node, health in list(self._health.items()):
                if health.dead_until is not None and now >= health.dead_until:
                    if self._probe(node):
                        self._revive(node)
                    else:
                        health.backoff = min(self.dead_timeout, health.backoff * 2)
                        health.dead_until = time.monotonic() + health.backoff
            if self._prev_ring is not None and now >= self._window_until:
                self._end_window()
            if not self._journal.empty:
                self.settle_pending()
            if (self.config_endpoint or self.dns_name) and now >= self._next_poll:
                self._next_poll = now + self.poll_interval
                try:
                    self._poll_membership()
                except (OSError, discovery.DiscoveryError) as exc:
                    log.warning("membership poll failed, keeping %d nodes: %s",
                                len(self._members), exc)

    # ------------------------------------------------------------------ the policy
    def _call(self, node: str, method: str, *args: Any) -> Any:
        """One request to one node; a connection-level failure counts against it."""
        client = self._clients.get(node)
        if client is None:
            raise ConnectionError(f"{node} is no longer a member")
        try:
            result = getattr(client, method)(*args)
        except NODE_ERRORS:
            self._record_failure(node)
            raise
        health = self._health.get(node)
        if health is not None and health.failures:
            health.failures = 0  # a success breaks the "in a row" count
        return result

    def _readable(self, kb: bytes, view: _View, exclude: str | None = None) -> list[str]:
        """Nodes that may answer a read of ``kb``, in order.

        The serving set minus suspect copies, a stand-in only for keys this
        client wrote to it, then stand-ins still holding the freshest copy
        while a returning owner is suspect.
        """
        journal = self._journal
        home = view.home(kb) if view.dead or view.prev is not None else None
        out = []
        for n in view.serving(kb):
            if n == exclude or journal.is_suspect(n, kb):
                continue
            if home is not None and n not in home and not journal.holds(n, kb):
                continue
            out.append(n)
        for n in journal.holders(kb):
            if n not in out and n != exclude and n in view.live and not journal.is_suspect(n, kb):
                out.append(n)
        return out

    def _targets(self, kb: bytes, view: _View) -> tuple[list[str], list[str]]:
        """(nodes a write goes to, nodes that may hold the key but will not get it)."""
        targets = view.serving(kb)
        if not targets:
            # failover="miss" with every owner down: nothing is written, but
            # a delete answered False looks like "was not there", so the
            # owners are invalidated for the key when they return.
            return [], view.home(kb)
        for p in view.previous(kb):
            if p not in targets:
                targets.append(p)
        missed = [n for n in view.home(kb) if n not in targets]
        missed += [n for n in self._journal.holders(kb) if n not in targets and n not in missed]
        return targets, missed

    def _begin_write(self, kb: bytes, view: _View | None = None) -> tuple[_View, list[str]]:
        """The view and targets of a write; copies it will miss are marked
        suspect before anything is sent.  Caller holds the key lock."""
        view = view or self._view
        targets, missed = self._targets(kb, view)
        for node in missed:
            self._journal.mark(node, kb)
        return view, targets

    def _read_item(self, node: str, key: Any) -> tuple[bytes, int, int] | None:
        """(value, flags, expire) of a key on one node, for copying it."""
        kb = key_bytes(key)
        ttl = _parse_ttl(self._call(node, "raw_command", b"mg " + kb + b" t", b"\r\n"))
        if ttl is None:
            return None
        got = self._call(node, "get", key)
        if got is None:
            return None
        if ttl < 0:
            return got[0], got[1], 0
        # memcached reads an expiry over 30 days as a Unix time.
        return got[0], got[1], max(1, ttl) if ttl <= MAX_RELATIVE_TTL else int(time.time()) + ttl

    def _settle(self, node: str, key: Any, kb: bytes, view: _View) -> None:
        """Make ``node``'s copy of a key fresh or absent; caller holds the key lock."""
        if node in view.serving(kb) or node in view.previous(kb):
            item = None
            for source in self._readable(kb, view, exclude=node):
                # Readable copies are fresh or absent: one that lost the key
                # (evicted, restarted) yields to the next.
                try:
                    item = self._read_item(source, key)
                except NODE_ERRORS:
                    continue
                if item is not None:
                    break
            if item is not None:
                self._call(node, "set", key, item[0], item[2], False, item[1])
            else:
                self._call(node, "delete", key, False)
        else:
            self._call(node, "delete", key, False)
            self._journal.drop_holder(kb, node)
        self._journal.clear(node, kb)

    def settle_pending(self) -> None:
        """Settle suspect copies on live nodes and drop stand-in copies no longer needed."""
        view, journal = self._view, self._journal
        for node in list(view.live):
            if node in journal.overflowed:
                # Too many suspect keys to list: the node is not read until
                # it has been flushed.
                before = journal.snapshot(node)
                try:
                    self._call(node, "flush_all", 0, False)
                except (*NODE_ERRORS, MemcacheError):
                    continue
                journal.flushed(node, before)
                continue
            for kb in journal.pending(node, SETTLE_BATCH):
                try:
                    with self._locks.one(kb):
                        if journal.is_suspect(node, kb):
                            self._settle(node, kb, kb, self._view)
                except MemcacheClientError:
                    journal.clear(node, kb)  # a key no node accepts holds no value
                except (*NODE_ERRORS, MemcacheError):
                    break
        held = journal.held(self._held_cursor, SETTLE_BATCH)
        self._held_cursor += len(held)
        for kb, node in held:
            with self._locks.one(kb):
                view = self._view
                if (node not in view.live or node in view.serving(kb) or node in view.previous(kb)
                        or any(journal.is_suspect(h, kb) or h not in view.live for h in view.home(kb))):
                    continue
                try:
                    self._call(node, "delete", kb, False)
                except (*NODE_ERRORS, MemcacheError):
                    continue
                journal.drop_holder(kb, node)

    # ------------------------------------------------------------------ reads
    def _no_nodes(self, default: Any) -> Any:
        if self.ignore_exc:
            return default
        raise NoLiveNodes("no live memcached nodes")

    def _read(self, method: str, key: Any, miss: Any) -> Any:
        """First answer that is not ``miss`` from the readable nodes, warm-up last."""
        kb = key_bytes(key)
        view = self._view
        if view.simple and self._journal.empty:
            nodes = view.serving(kb)
        else:
            nodes = self._readable(kb, view)
        if not nodes and not len(view.ring):
            return self._no_nodes(miss)
        error, answered = None, False
        for node in nodes:
            try:
                got = self._call(node, method, key)
            except NODE_ERRORS as exc:
                error = error or exc
                continue
            answered = True
            if got != miss:
                return got
        if view.warming():
            try:
                got = self._warm(method, key, kb)
                answered = True
            except NODE_ERRORS as exc:
                error = error or exc
                got = miss
            if got != miss:
                return got
        if error is not None and not answered and not self.ignore_exc:
            raise error
        return miss

    def _warm(self, method: str, key: Any, kb: bytes) -> Any:
        """Warm-up: a miss on the new owners is looked up on the previous ones."""
        miss = None if method == "get" else (None, None)
        with self._locks.one(kb):
            view = self._view
            prev = [p for p in view.previous(kb) if p not in view.serving(kb)
                    and not self._journal.is_suspect(p, kb)]
            if not prev:
                return miss
            for node in self._readable(kb, view):  # a write may have landed meanwhile
                got = self._call(node, method, key)
                if got != miss:
                    return got
            item = None
            for p in prev:
                try:
                    item = self._read_item(p, key)
                except NODE_ERRORS:
                    continue
                if item is not None:
                    # p's copy is now one this client must retire later.
                    self._journal.add_holder(kb, p)
                    break
            if item is None:
                return miss
            for node in view.serving(kb):
                try:
                    self._call(node, "add", key, item[0], item[2], False, item[1])
                except (*NODE_ERRORS, MemcacheError):
                    self._journal.mark(node, kb)
            if method == "get":
                return item[0], item[1]
            for node in self._readable(kb, view):
                got = self._call(node, method, key)
                if got != miss:
                    return got
            return miss

    def _move(self, key: Any, kb: bytes, source: str) -> bool:
        """Move a key that left ``source`` in the last ring change to its new
        owners (``set``: under the key's lock ``source`` has every write this
        client made), then delete it on ``source``.  True when moved."""
        journal = self._journal
        with self._locks.one(kb):
            view = self._view
            if (source not in view.previous(kb) or source in view.serving(kb)
                    or journal.is_suspect(source, kb)):
                return False
            # Until the delete below, ``source`` holds a copy to retire later.
            journal.add_holder(kb, source)
            item = self._read_item(source, key)
            if item is not None:
                for node in view.serving(kb):
                    self._call(node, "set", key, item[0], item[2], False, item[1])
                    journal.clear(node, kb)
            self._call(source, "delete", key, False)
            journal.drop_holder(kb, source)
            return item is not None

    def _sweep(self, prev_ring: Any) -> None:
        """Move every key the last ring change moved off each previous owner."""
        record = {"nodes": 0, "moved": 0, "finished": False, "seconds": 0.0}
        self.sweeps.append(record)
        started = time.monotonic()
        for node in prev_ring.nodes:
            # A refused or broken listing is retried: memcached answers BUSY
            # while its LRU crawler runs (an automatic crawl, or another
            # client's metadump), and a node skipped here would keep the
            # keys that left it as orphans past the window.
            delay, deadline = 0.05, time.monotonic() + SWEEP_RETRY_SECONDS
            while True:
                if self._stop.is_set() or self._prev_ring is not prev_ring:
                    return  # closed, or a newer change started its own sweep
                if node not in self._view.live:
                    break
                try:
                    self._sweep_node(node, prev_ring, record)
                    record["nodes"] += 1
                    break
                except _Superseded:
                    return
                except Exception as exc:  # a background thread must not die on one node
                    if time.monotonic() >= deadline:
                        log.warning("warm-up sweep: gave up listing the keys of %s: %s", node, exc)
                        break
                    log.info("warm-up sweep: listing %s again: %s", node, exc)
                    self._stop.wait(delay)
                    delay = min(1.0, delay * 2)
        record["finished"], record["seconds"] = True, time.monotonic() - started
        log.info("warm-up sweep: %d keys moved off %d nodes in %.1f s",
                 record["moved"], record["nodes"], record["seconds"])

    def _sweep_node(self, node: str, prev_ring: Any, record: dict[str, Any]) -> None:
        """Move the keys that left ``node``, counting them in ``record`` as it goes."""
        for kb in metadump_keys(self._addresses[node], self._probe_timeout,
                                max(5.0, self._probe_timeout)):
            if self._stop.is_set() or self._prev_ring is not prev_ring:
                raise _Superseded
            view = self._view
            if node in view.serving(kb) or node not in view.previous(kb):
                continue
            try:
                record["moved"] += self._move(kb, kb, node)
            except (*NODE_ERRORS, MemcacheError) as exc:
                log.warning("warm-up sweep: %r not moved off %s: %s", kb, node, exc)

    def _decode(self, key: Any, got: tuple[bytes, int]) -> Any:
        return got[0] if self._plain else self._serde.deserialize(key, got[0], got[1])

    def get(self, key, default=None):
        try:
            got = self._read("get", key, None)
        except (*NODE_ERRORS, MemcacheError):
            if self.ignore_exc:
                return default
            raise
        return default if got is None else self._decode(key, got)

    def gets(self, key, default=None, cas_default=None):
        """Value and CAS token from the first readable replica (tokens are per node)."""
        try:
            got, cas = self._read("gets", key, (None, None))
        except (*NODE_ERRORS, MemcacheError):
            if self.ignore_exc:
                return default, cas_default
            raise
        return (default, cas_default) if cas is None else (self._decode(key, got), cas)

    def get_many(self, keys: Iterable[Any]) -> dict:
        """Found keys -> values, each node asked once per round, in parallel.

        Round one asks each key's first readable node; keys it misses (or
        whose node failed) go to their next readable node, and so on; keys
        still missing in a warm-up window are looked up on their previous
        owners.
        """
        keys = list(keys)
        view = self._view
        if not len(view.ring):
            return self._no_nodes({})
        simple = view.simple and self._journal.empty
        if simple:
            get_node = view.ring.get_node
            first: dict[str, list[Any]] = {}
            for k in keys:
                first.setdefault(get_node(k), []).append(k)
            plans = {}
        else:
            plans = {k: self._readable(key_bytes(k), view) for k in keys}
        found: dict = {}
        errors: list[Exception] = []
        answered = False
        todo = keys
        for rnd in range(1 if simple else max((len(p) for p in plans.values()), default=0)):
            groups: dict[str, list[Any]] = first if simple else {}
            for k in () if simple else todo:
                if rnd < len(plans[k]):
                    groups.setdefault(plans[k][rnd], []).append(k)
            if not groups:
                break
            results = self._fan_out(groups, lambda node, part: self._call(node, "get_many", part))
            for value, exc, _part in results:
                if exc is None:
                    answered = True
                    found.update(value)
                elif isinstance(exc, NODE_ERRORS):
                    errors.append(exc)
                elif not self.ignore_exc:
                    raise exc
            if not simple:
                todo = [k for k in todo if k not in found]
        if not simple and todo and view.warming():
            for k in todo:
                try:
                    got = self._warm("get", k, key_bytes(k))
                except NODE_ERRORS as exc:
                    errors.append(exc)
                    continue
                if got is not None:
                    found[k] = got
        if errors and not answered and not found and not self.ignore_exc:
            raise errors[0]
        if self._plain:
            return {k: v[0] for k, v in found.items()}
        return {k: self._decode(k, v) for k, v in found.items()}

    get_multi = get_many

    # ------------------------------------------------------------------ writes
    def _noreply_of(self, noreply: bool | None) -> bool:
        return self._noreply if noreply is None else noreply

    def _encode(self, key: Any, value: Any, flags: int | None) -> tuple[Any, int]:
        data, data_flags = self._serde.serialize(key, value)
        return data, data_flags if flags is None else flags

    def _fan_write(self, method: str, key: Any, args: tuple, default: Any,
                   conditional: bool) -> Any:
        """A write sent to every target in parallel; the primary's answer is the result.

        ``conditional`` commands (replace, append, prepend, touch) depend on
        the value already there, so suspect targets are settled first.  Any
        target that fails or answers differently from the primary becomes
        suspect for the key; stand-ins that took the write become holders.
        """
        kb = key_bytes(key)
        with self._locks.one(kb):
            view = self._view
            if view.simple and self._journal.empty and len(view.ring):
                # One live owner, nothing suspect: the plain path.
                node = view.ring.get_node(kb)
                try:
                    return self._call(node, method, key, *args)
                except NODE_ERRORS:
                    self._journal.mark(node, kb)  # it may have applied it
                    if self.ignore_exc:
                        return default
                    raise
                except MemcacheClientError:
                    raise  # refused before anything changed (bad key, bad command)
                except MemcacheError:
                    self._journal.mark(node, kb)  # SERVER_ERROR: the old value stays
                    raise
            view, targets = self._begin_write(kb, view)
            if not targets:
                return self._no_nodes(default) if not len(view.ring) else default
            if conditional:
                for node in targets:
                    if self._journal.is_suspect(node, kb):
                        try:
                            self._settle(node, key, kb, view)
                        except NODE_ERRORS:
                            pass
            results = self._fan_out(
                {n: n for n in targets}, lambda node, _p: self._call(node, method, key, *args))
            return self._settle_results(kb, view, targets, results, default,
                                        stored=method != "delete")

    def _settle_results(self, kb: bytes, view: _View, targets: list[str], results: list,
                        default: Any, stored: bool) -> Any:
        primary = None
        error = None
        home = view.home(kb)
        for node, (value, exc, _p) in zip(targets, results):
            if exc is not None:
                if isinstance(exc, MemcacheClientError):
                    raise exc  # refused before anything changed, on every target alike
                self._journal.mark(node, kb)
                if not isinstance(exc, NODE_ERRORS):
                    raise exc
                error = error or exc
                continue
            if primary is None:
                primary = (value,)
            elif stored and bool(value) != bool(primary[0]):
                self._journal.mark(node, kb)
                continue
            self._journal.clear(node, kb)
            if node not in home:
                if stored:
                    self._journal.add_holder(kb, node)
                else:
                    self._journal.drop_holder(kb, node)
        if primary is None:
            if self.ignore_exc:
                return default
            raise error
        if not stored:  # delete: True when any replica had the key
            return any(v for v, e, _p in results if e is None)
        return primary[0]

    def _primary_write(self, method: str, key: Any, args: tuple, default: Any,
                       succeeded: Callable[[Any], bool],
                       propagate: Callable[[str, Any], None]) -> Any:
        """A write that must happen once (add, cas, incr, decr): on the first
        target that answers, then copied to the other targets."""
        kb = key_bytes(key)
        with self._locks.one(kb):
            view, targets = self._begin_write(kb)
            if not targets:
                return self._no_nodes(default) if not len(view.ring) else default
            error = None
            for i, node in enumerate(targets):
                try:
                    if self._journal.is_suspect(node, kb):
                        self._settle(node, key, kb, view)
                    result = self._call(node, method, key, *args)
                except NODE_ERRORS as exc:
                    self._journal.mark(node, kb)
                    error = error or exc
                    continue
                break
            else:
                if self.ignore_exc:
                    return default
                raise error
            primary, rest = targets[i], targets[i + 1:]
            home = view.home(kb)
            if succeeded(result):
                for node in rest:
                    try:
                        propagate(node, primary)
                        self._journal.clear(node, kb)
                    except (*NODE_ERRORS, MemcacheError):
                        self._journal.mark(node, kb)
                for node in [primary, *rest]:
                    if node not in home:
                        self._journal.add_holder(kb, node)
            return result

    def set(self, key, value, expire=0, noreply=None, flags=None):
        data, fl = self._encode(key, value, flags)
        return self._fan_write("set", key, (data, expire, self._noreply_of(noreply), fl),
                               False, conditional=False)

    def replace(self, key, value, expire=0, noreply=None, flags=None):
        data, fl = self._encode(key, value, flags)
        return self._fan_write("replace", key, (data, expire, self._noreply_of(noreply), fl),
                               False, conditional=True)

    def append(self, key, value, expire=0, noreply=None, flags=None):
        data, fl = self._encode(key, value, flags)
        return self._fan_write("append", key, (data, expire, self._noreply_of(noreply), fl),
                               False, conditional=True)

    def prepend(self, key, value, expire=0, noreply=None, flags=None):
        data, fl = self._encode(key, value, flags)
        return self._fan_write("prepend", key, (data, expire, self._noreply_of(noreply), fl),
                               False, conditional=True)

    def touch(self, key, expire=0, noreply=None):
        return self._fan_write("touch", key, (expire, self._noreply_of(noreply)), False,
                               conditional=True)

    def delete(self, key, noreply=None):
        return self._fan_write("delete", key, (self._noreply_of(noreply),), False,
                               conditional=False)

    def add(self, key, value, expire=0, noreply=None, flags=None):
        data, fl = self._encode(key, value, flags)
        return self._primary_write(
            "add", key, (data, expire, self._noreply_of(noreply), fl), False, bool,
            lambda node, _p: self._call(node, "set", key, data, expire, False, fl))

    def cas(self, key, value, cas, expire=0, noreply=False, flags=None):
        data, fl = self._encode(key, value, flags)
        return self._primary_write(
            "cas", key, (data, cas, expire, noreply, fl), False, lambda r: r is True,
            lambda node, _p: self._call(node, "set", key, data, expire, False, fl))

    def _copy_item(self, key: Any, node: str, source: str) -> None:
        # incr keeps the item's flags and TTL: copy the whole item.
        item = self._read_item(source, key)
        if item is None:
            self._call(node, "delete", key, False)
        else:
            self._call(node, "set", key, item[0], item[2], False, item[1])

    def incr(self, key, value, noreply=False):
        return self._primary_write(
            "incr", key, (value, noreply), None, lambda r: r is not None,
            lambda node, primary: self._copy_item(key, node, primary))

    def decr(self, key, value, noreply=False):
        return self._primary_write(
            "decr", key, (value, noreply), None, lambda r: r is not None,
            lambda node, primary: self._copy_item(key, node, primary))

    # ------------------------------------------------------------------ multi-key writes
    def _many_write(self, method: str, keys: list[Any], part_args: Callable[[list], tuple],
                    stored: bool) -> list:
        """Keys grouped by target node, one request per node in parallel;
        returns the keys no target took."""
        kbs = {k: key_bytes(k) for k in keys}
        with self._locks.hold(kbs.values()):
            view = self._view
            if not len(view.ring):
                return self._no_nodes(list(keys))
            groups: dict[str, list[Any]] = {}
            plans = {}
            for k in keys:
                _view, targets = self._begin_write(kbs[k], view)
                plans[k] = targets
                for node in targets:
                    groups.setdefault(node, []).append(k)
            results = self._fan_out(
                groups, lambda node, part: self._call(node, method, *part_args(part)))
            failed_on: dict[Any, int] = {}
            errors = []
            for node, (value, exc, part) in zip(groups, results):
                if exc is not None and not isinstance(exc, NODE_ERRORS):
                    raise exc
                bad = set(part) if exc is not None else set(value or ()) if stored else set()
                if exc is not None:
                    errors.append(exc)
                for k in part:
                    if k in bad:
                        self._journal.mark(node, kbs[k])
                        failed_on[k] = failed_on.get(k, 0) + 1
                        continue
                    self._journal.clear(node, kbs[k])
                    if node not in view.home(kbs[k]):
                        if stored:
                            self._journal.add_holder(kbs[k], node)
                        else:
                            self._journal.drop_holder(kbs[k], node)
            failed = [k for k in keys if not plans[k] or failed_on.get(k, 0) == len(plans[k])]
            if errors and not self.ignore_exc and len(failed) == len(keys):
                raise errors[0]
            return failed

    def set_many(self, values: Mapping[Any, Any], expire: int = 0, noreply=None, flags=None) -> list:
        """Store every pair; returns the keys that were not stored anywhere."""
        encoded = {k: self._encode(k, v, flags) for k, v in values.items()}
        by_flags: dict[int, list] = {}
        for k, (_d, fl) in encoded.items():
            by_flags.setdefault(fl, []).append(k)
        failed: list = []
        nr = self._noreply_of(noreply)
        for fl, keys in by_flags.items():
            failed += self._many_write(
                "set_many", keys,
                lambda part, fl=fl: ({k: encoded[k][0] for k in part}, expire, nr, fl), True)
        return failed

    set_multi = set_many

    def delete_many(self, keys: Iterable[Any], noreply=None) -> bool:
        nr = self._noreply_of(noreply)
        self._many_write("delete_many", list(keys), lambda part: (part, nr), False)
        return True

    delete_multi = delete_many

    # ------------------------------------------------------------------ fan-out
    def _fan_out(self, groups: Mapping[str, Any], call: Callable[[str, Any], Any]) -> list[tuple[Any, Any, Any]]:
        """Run ``call(node, part)`` for every group, in parallel; exceptions returned."""
        def guarded(node, part):
            try:
                return call(node, part), None
            except Exception as exc:  # collected, handled by the caller
                return None, exc

        items = list(groups.items())
        if len(items) <= 1:
            return [guarded(n, p) + (p,) for n, p in items]
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self._max_workers,
                                                        thread_name_prefix="memd-fanout")
        futures = [(self._executor.submit(guarded, n, p), p) for n, p in items]
        return [f.result() + (p,) for f, p in futures]

    # ------------------------------------------------------------------ whole-fleet API
    def _each_node(self, method: str, *args: Any) -> dict[str, Any]:
        view = self._view
        nodes = {n: n for n in self._members if n in view.live}
        results = self._fan_out(nodes, lambda node, _p: self._call(node, method, *args))
        out = {}
        for node, (value, exc, _p) in zip(nodes, results):
            out[node] = exc if exc is not None else value
        return out

    def flush_all(self, delay: int = 0, noreply=None) -> bool:
        # A node that misses the flush still has everything: flush it on return.
        results = self._each_node("flush_all", delay, self._noreply_of(noreply))
        for node in self._members:
            if results.get(node) is not True:
                self._journal.mark_all(node)
        return all(results.get(n) is True for n in self._members)

    def stats(self, *args: Any) -> dict[str, Any]:
        """Per node ``stats`` output (or the exception it raised)."""
        return self._each_node("stats", *args)

    def hot_keys(self, n: int = 10) -> list[tuple[bytes, int]]:
        """The fleet's ``n`` most requested keys as (key, estimated requests),
        hottest first: every live node's ``stats hotkeys`` merged, a key's
        counts summed over the nodes that serve it (replicas, or a key that
        moved).  Nodes that do not report hot keys (memcached) add nothing."""
        from memd import hotkeys
        # ask each node for more than n: a key just below a node's top n may
        # still make the fleet's top n once summed with its other owners
        replies = self._each_node("stats", "hotkeys", str(2 * n)).values()
        return hotkeys.merge((hotkeys.parse_stats(r) for r in replies if isinstance(r, dict)), n)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop the maintenance thread and the fan-out pool; close sockets."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            client.close()

    def __enter__(self) -> "ClusterClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
