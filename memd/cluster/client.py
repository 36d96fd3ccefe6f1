"""A cluster client: many memcached/memd nodes used as one cache.

Built on pymemcache: one thread-safe ``PooledClient`` per node, keys routed
by a consistent-hash ring (``HashRing`` by default, ``KetamaRing`` to share
a fleet with libmemcached/twemproxy/spymemcached clients).

``vnodes`` trades ring build time for balance: at 160 points per node a
3-node fleet puts 33% +- 2.6 points (one sigma) on each node; 640 points
halve that at the same lookup cost (bisect is logarithmic).

Failure handling, the way production memcached clients do it:

- A node that fails ``failure_limit`` calls in a row (connection refused,
  reset, timeout) is marked dead. With ``failover="remap"`` it leaves the
  routing ring and its keys go to the next node on the ring; with
  ``failover="miss"`` its keys are misses (reads return the default,
  writes fail) so no other node fills up with keys that will be stale
  when it comes back.
- A background thread probes dead nodes every ``dead_timeout`` seconds
  with ``version`` and puts them back when they answer.
- With ``ignore_exc=True`` no exception escapes: reads become misses,
  writes return False / report failed keys.

Membership comes from a static list, an ElastiCache configuration endpoint
(``config get cluster`` polled every ``poll_interval`` s, falling back to
any known member when the endpoint is down), or a DNS name whose A records
are the nodes. The ring is swapped whole on a change; no restart needed.
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
from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError

from memd.cluster import discovery
from memd.cluster.ring import DEFAULT_VNODES, HashRing, KetamaRing

log = logging.getLogger(__name__)

# Errors that mean "the node is unreachable", as opposed to the node
# answering with an error (bad key, out of memory), which is not its death.
NODE_ERRORS = (OSError, MemcacheUnexpectedCloseError)

RINGS: dict[str, Callable[[], Any]] = {"xxhash": HashRing, "ketama": KetamaRing}


class NoLiveNodes(MemcacheError):
    """Every node of the cluster is dead or none is known."""


class _Health:
    __slots__ = ("failures", "dead_until")

    def __init__(self) -> None:
        self.failures = 0
        self.dead_until: float | None = None


def _address(server: str | tuple[str, int]) -> str:
    if isinstance(server, (tuple, list)):
        host, port = server
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    host, port = discovery.split_address(server)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
        failover: str = "remap",
        failure_limit: int = 2,
        dead_timeout: float = 30.0,
        ignore_exc: bool = False,
        max_workers: int = 8,
        connect_timeout: float = 1.0,
        timeout: float = 1.0,
        max_pool_size: int = 8,
        **client_kwargs: Any,
    ) -> None:
        if failover not in ("remap", "miss"):
            raise ValueError("failover must be 'remap' or 'miss'")
        servers = [_address(s) for s in servers]
        if sum(map(bool, (servers, config_endpoint, dns_name))) != 1:
            raise ValueError("give exactly one of servers, config_endpoint, dns_name")
        if ring == "xxhash":
            self._ring_factory = functools.partial(HashRing, vnodes=vnodes)
        else:
            self._ring_factory = RINGS[ring] if isinstance(ring, str) else ring
        self.failover = failover
        self.failure_limit = max(1, failure_limit)
        self.dead_timeout = dead_timeout
        self.ignore_exc = ignore_exc
        self.poll_interval = poll_interval
        self.config_endpoint = config_endpoint
        self.config_version: int | None = None
        self.dns_name, self.dns_port = dns_name, dns_port
        self._client_kwargs = dict(
            connect_timeout=connect_timeout, timeout=timeout,
            max_pool_size=max_pool_size, **client_kwargs)
        self._probe_timeout = connect_timeout
        self._max_workers = max_workers
        self._executor: ThreadPoolExecutor | None = None

        # Copy-on-write maps and an immutable-once-built ring: readers on any
        # thread use whatever objects they grabbed, writers hold _lock.
        self._lock = threading.Lock()
        self._clients: dict[str, PooledClient] = {}
        self._health: dict[str, _Health] = {}
        self._ring = self._ring_factory()

        if servers:
            self._set_members(servers)
        else:
            try:
                self._poll_membership()
            except (OSError, discovery.DiscoveryError) as exc:
                if not ignore_exc:
                    raise
                log.warning("initial discovery failed, starting empty: %s", exc)

        self._stop = threading.Event()
        self._next_poll = time.monotonic() + poll_interval
        self._thread = threading.Thread(target=self._maintain, name="memd-cluster", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ membership
    @property
    def servers(self) -> list[str]:
        return list(self._clients)

    def node_states(self) -> dict[str, str]:
        return {n: ("dead" if h.dead_until is not None else "live") for n, h in self._health.items()}

    def node_for(self, key: str | bytes) -> str | None:
        """The node a key is routed to now (dead nodes excluded under remap)."""
        return self._ring.get_node(key)

    def set_servers(self, servers: Iterable[str | tuple[str, int]]) -> None:
        """Replace the membership by hand (what the pollers call)."""
        self._set_members([_address(s) for s in servers])

    def _set_members(self, addresses: list[str]) -> None:
        with self._lock:
            if set(addresses) == set(self._clients):
                return
            clients, health = dict(self._clients), dict(self._health)
            removed = [clients.pop(a) for a in list(clients) if a not in addresses]
            for a in list(health):
                if a not in addresses:
                    del health[a]
            for a in addresses:
                if a not in clients:
                    host, port = discovery.split_address(a)
                    clients[a] = PooledClient((host, port), **self._client_kwargs)
                    health[a] = _Health()
            self._clients, self._health = clients, health
            self._rebuild_ring_locked()
        log.info("cluster membership: %s", ", ".join(addresses))
        for client in removed:
            client.close()

    def _rebuild_ring_locked(self) -> None:
        ring = self._ring_factory()
        live = [a for a, h in self._health.items()
                if self.failover == "miss" or h.dead_until is None]
        ring.set_nodes(live)
        self._ring = ring

    def _poll_membership(self) -> None:
        if self.config_endpoint:
            # The endpoint first; any member next, since every node answers
            # config get cluster and the endpoint may be the node that died.
            info = discovery.fetch_first(
                [self.config_endpoint, *self._clients], timeout=self._probe_timeout)
            self.config_version = info.version
            self._set_members(info.addresses)
        elif self.dns_name:
            found = discovery.resolve_dns(self.dns_name, self.dns_port)
            if found:
                self._set_members(found)

    # ------------------------------------------------------------------ health
    def _record_failure(self, node: str) -> None:
        with self._lock:
            health = self._health.get(node)
            if health is None or health.dead_until is not None:
                return
            health.failures += 1
            if health.failures >= self.failure_limit:
                health.dead_until = time.monotonic() + self.dead_timeout
                log.warning("node %s marked dead after %d failures", node, health.failures)
                self._rebuild_ring_locked()

    def _revive(self, node: str) -> None:
        with self._lock:
            health = self._health.get(node)
            if health is None:
                return
            health.failures, health.dead_until = 0, None
            self._rebuild_ring_locked()
        log.info("node %s is back", node)

    def _probe(self, node: str) -> bool:
        host, port = discovery.split_address(node)
        try:
            with socket.create_connection((host, port), timeout=self._probe_timeout) as sock:
                sock.sendall(b"version\r\n")
                return sock.recv(64).startswith(b"VERSION ")
        except OSError:
            return False

    def _maintain(self) -> None:
        tick = max(0.05, min(0.5, self.dead_timeout / 2, self.poll_interval / 2))
        while not self._stop.wait(tick):
            now = time.monotonic()
            for node, health in list(self._health.items()):
                if health.dead_until is not None and now >= health.dead_until:
                    if self._probe(node):
                        self._revive(node)
                    else:
                        health.dead_until = time.monotonic() + self.dead_timeout
            if (self.config_endpoint or self.dns_name) and now >= self._next_poll:
                self._next_poll = now + self.poll_interval
                try:
                    self._poll_membership()
                except (OSError, discovery.DiscoveryError) as exc:
                    log.warning("membership poll failed, keeping %d nodes: %s",
                                len(self._clients), exc)

    # ------------------------------------------------------------------ dispatch
    def _run(self, node: str | None, method: str, default: Any, read: bool,
             args: tuple, kwargs: dict) -> Any:
        if node is None:
            if self.ignore_exc:
                return default
            raise NoLiveNodes("no live memcached nodes")
        client = self._clients.get(node)
        health = self._health.get(node)
        if client is None or health is None or health.dead_until is not None:
            return default  # failover="miss", or the ring changed under us
        try:
            result = getattr(client, method)(*args, **kwargs)
        except NODE_ERRORS:
            self._record_failure(node)
            if self.ignore_exc:
                return default
            raise
        except MemcacheError:
            if self.ignore_exc and read:
                return default
            raise
        if health.failures:
            health.failures = 0  # a success breaks the "in a row" count
        return result

    def _one(self, method: str, key: Any, default: Any, *args: Any, read: bool = False, **kwargs: Any) -> Any:
        return self._run(self._ring.get_node(key), method, default, read, (key, *args), kwargs)

    def _group(self, keys: Iterable[Any]) -> dict[str | None, list[Any]]:
        ring = self._ring
        groups: dict[str | None, list[Any]] = {}
        for key in keys:
            groups.setdefault(ring.get_node(key), []).append(key)
        return groups

    def _fan_out(self, groups: Mapping[str | None, Any], call: Callable[[str | None, Any], Any]) -> list[tuple[Any, Any]]:
        """Run ``call(node, part)`` for every group, in parallel; exceptions returned."""
        def guarded(node, part):
            try:
                return call(node, part), None
            except Exception as exc:  # collected, re-raised by the caller
                return None, exc

        items = list(groups.items())
        if len(items) <= 1:
            return [guarded(n, p) + (p,) for n, p in items]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._max_workers, thread_name_prefix="memd-fanout")
        futures = [(self._executor.submit(guarded, n, p), p) for n, p in items]
        return [f.result() + (p,) for f, p in futures]

    # ------------------------------------------------------------------ single-key API
    def get(self, key, default=None, **kw):
        return self._one("get", key, default, default, read=True, **kw)

    def gets(self, key, default=None, cas_default=None, **kw):
        value, cas = self._one("gets", key, (None, None), read=True, **kw)
        return (default, cas_default) if cas is None else (value, cas)

    def set(self, key, value, expire=0, noreply=None, flags=None):
        return self._one("set", key, False, value, expire, noreply, flags)

    def add(self, key, value, expire=0, noreply=None, flags=None):
        return self._one("add", key, False, value, expire, noreply, flags)

    def replace(self, key, value, expire=0, noreply=None, flags=None):
        return self._one("replace", key, False, value, expire, noreply, flags)

    def append(self, key, value, expire=0, noreply=None, flags=None):
        return self._one("append", key, False, value, expire, noreply, flags)

    def prepend(self, key, value, expire=0, noreply=None, flags=None):
        return self._one("prepend", key, False, value, expire, noreply, flags)

    def cas(self, key, value, cas, expire=0, noreply=False, flags=None):
        return self._one("cas", key, False, value, cas, expire, noreply, flags)

    def delete(self, key, noreply=None):
        return self._one("delete", key, False, noreply)

    def incr(self, key, value, noreply=False):
        return self._one("incr", key, None, value, noreply)

    def decr(self, key, value, noreply=False):
        return self._one("decr", key, None, value, noreply)

    def touch(self, key, expire=0, noreply=None):
        return self._one("touch", key, False, expire, noreply)

    # ------------------------------------------------------------------ multi-key API
    def get_many(self, keys: Iterable[Any]) -> dict:
        """Found keys -> values, fetched from every involved node in parallel."""
        results = self._fan_out(
            self._group(keys),
            lambda node, part: self._run(node, "get_many", {}, True, (part,), {}))
        found: dict = {}
        for value, exc, _part in results:
            if exc is not None:
                raise exc
            found.update(value)
        return found

    get_multi = get_many

    def set_many(self, values: Mapping[Any, Any], expire: int = 0, noreply=None, flags=None) -> list:
        """Store every pair; returns the keys that were not stored."""
        groups = self._group(values)
        results = self._fan_out(
            groups,
            lambda node, part: self._run(
                node, "set_many", None, False,
                ({k: values[k] for k in part}, expire, noreply, flags), {}))
        failed: list = []
        errors = []
        for value, exc, part in results:
            if exc is not None:
                errors.append(exc)
                failed.extend(part)
            elif value is None:  # node dead or unreachable under ignore_exc
                failed.extend(part)
            else:
                failed.extend(value)
        if errors:
            raise errors[0]
        return failed

    set_multi = set_many

    def delete_many(self, keys: Iterable[Any], noreply=None) -> bool:
        results = self._fan_out(
            self._group(keys),
            lambda node, part: self._run(node, "delete_many", False, False, (part, noreply), {}))
        for _value, exc, _part in results:
            if exc is not None:
                raise exc
        return True

    delete_multi = delete_many

    # ------------------------------------------------------------------ whole-fleet API
    def _each_node(self, method: str, *args: Any) -> dict[str, Any]:
        nodes = {n: n for n, h in self._health.items() if h.dead_until is None}
        results = self._fan_out(nodes, lambda node, _p: self._run(node, method, None, True, args, {}))
        out = {}
        for (node, _), (value, exc, _p) in zip(nodes.items(), results):
            out[node] = exc if exc is not None else value
        return out

    def flush_all(self, delay: int = 0, noreply=None) -> bool:
        return all(v is True for v in self._each_node("flush_all", delay, noreply).values())

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
