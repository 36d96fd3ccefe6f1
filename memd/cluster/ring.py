"""Consistent-hash rings: which node owns a key.

Two rings share one lookup (a sorted list of points and ``bisect``):

- ``HashRing``: xxh3-64 points, ``vnodes`` points per unit of weight. The
  default for memd's own cluster client: fast and evenly spread.
- ``KetamaRing``: md5 points laid out exactly as libmemcached's weighted
  ketama (``MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED``), twemproxy and
  spymemcached do, so a memd client and a C/Java/PHP client of the same
  fleet agree on where every key lives.

Both plug into ``pymemcache.client.hash.HashClient(hasher=...)``: that class
calls ``hasher()`` with no arguments, then ``add_node(name)``,
``remove_node(name)`` and ``get_node(key)`` with names like ``"host:port"``.

Rings are rebuilt whole on a membership change (a few thousand points sort
in well under a millisecond) and never mutated in place while a lookup may
read them: ``add_node``/``remove_node`` build new lists and swap both in one
assignment, so a reader on another thread sees the old ring or the new one.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from hashlib import md5
from typing import Iterable, Mapping

import xxhash

_xxh3 = xxhash.xxh3_64_intdigest

#: Points per unit of weight for ``HashRing``. 160 keeps every node of ten
#: equal nodes within about +-10% of its fair share (see docs/fleet.md).
DEFAULT_VNODES = 160

#: libmemcached's MEMCACHED_POINTS_PER_SERVER_KETAMA.
KETAMA_POINTS = 160
MEMCACHED_DEFAULT_PORT = 11211


def _key_bytes(key: str | bytes) -> bytes:
    # A str key and its UTF-8 bytes must land on the same node, because
    # pymemcache sends str keys as UTF-8 (allow_unicode_keys) or ASCII.
    if type(key) is bytes:
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    return bytes(key)


class _Ring:
    """Shared state and lookup: sorted points and the node owning each."""

    def __init__(self) -> None:
        self._weights: dict[str, float] = {}
        # (points, owners) swapped together so lookups never see a mix.
        self._table: tuple[list[int], list[str]] = ([], [])

    # -- membership -----------------------------------------------------
    def add_node(self, node: str, weight: float = 1) -> None:
        if weight <= 0:
            raise ValueError(f"weight must be positive, got {weight!r}")
        self._weights[str(node)] = weight
        self._rebuild()

    def remove_node(self, node: str) -> None:
        try:
            del self._weights[str(node)]
        except KeyError:
            # HashClient's own RendezvousHash raises ValueError here too.
            raise ValueError(f"No such node {node} to remove") from None
        self._rebuild()

    def set_nodes(self, nodes: Iterable[str] | Mapping[str, float]) -> None:
        """Replace the whole membership in one rebuild."""
        if isinstance(nodes, Mapping):
            weights = {str(n): w for n, w in nodes.items()}
        else:
            weights = {str(n): 1 for n in nodes}
        if any(w <= 0 for w in weights.values()):
            raise ValueError("weights must be positive")
        self._weights = weights
        self._rebuild()

    @property
    def nodes(self) -> list[str]:
        return list(self._weights)

    def weight(self, node: str) -> float:
        return self._weights[node]

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, node: object) -> bool:
        return node in self._weights

    def _rebuild(self) -> None:
        pairs: list[tuple[int, str]] = []
        for node in self._weights:
            pairs.extend((p, node) for p in self._node_points(node))
        # Sorting (point, node) makes the owner of a colliding point
        # independent of the order nodes were added in.
        pairs.sort()
        self._table = ([p for p, _ in pairs], [n for _, n in pairs])

    def _node_points(self, node: str) -> list[int]:
        raise NotImplementedError

    # -- lookup ---------------------------------------------------------
    def key_point(self, key: str | bytes) -> int:
        raise NotImplementedError

    def get_node(self, key: str | bytes) -> str | None:
        """The node owning ``key``: the first point >= the key's, wrapping."""
        points, owners = self._table
        if not points:
            return None
        i = bisect_left(points, self.key_point(key))
        return owners[i] if i < len(points) else owners[0]

    def get_nodes(self, key: str | bytes, count: int | None = None) -> list[str]:
        """Distinct nodes in ring order from ``key``'s owner on.

        The second entry is where the key goes when its owner is dead.
        """
        points, owners = self._table
        if not points:
            return []
        want = len(self._weights) if count is None else min(count, len(self._weights))
        start = bisect_left(points, self.key_point(key))
        found: list[str] = []
        n = len(points)
        for step in range(n):
            node = owners[(start + step) % n]
            if node not in found:
                found.append(node)
                if len(found) == want:
                    break
        return found

    def point_counts(self) -> dict[str, int]:
        """Points each node holds on the ring (for stats and tests)."""
        counts = dict.fromkeys(self._weights, 0)
        for node in self._table[1]:
            counts[node] += 1
        return counts


class HashRing(_Ring):
    """xxh3-64 ring with ``vnodes`` points per unit of weight."""

    def __init__(
        self,
        nodes: Iterable[str] | Mapping[str, float] | None = None,
        vnodes: int = DEFAULT_VNODES,
    ) -> None:
        super().__init__()
        if vnodes < 1:
            raise ValueError("vnodes must be >= 1")
        self.vnodes = vnodes
        if nodes:
            self.set_nodes(nodes)

    def _node_points(self, node: str) -> list[int]:
        count = max(1, round(self.vnodes * self._weights[node]))
        prefix = node.encode("utf-8") + b"#"
        return [_xxh3(prefix + str(i).encode()) for i in range(count)]

    def key_point(self, key: str | bytes) -> int:
        return _xxh3(_key_bytes(key))

    def get_node(self, key: str | bytes) -> str | None:
        # Inlined copy of _Ring.get_node: this is the per-key hot path and
        # each avoided call is ~0.1 us.
        points, owners = self._table
        if not points:
            return None
        if type(key) is str:
            key = key.encode("utf-8")
        elif type(key) is not bytes:
            key = _key_bytes(key)
        i = bisect_left(points, _xxh3(key))
        return owners[i] if i < len(points) else owners[0]


# ---------------------------------------------------------------------------
# ketama


def _f32(x: float) -> float:
    """Round a double to the nearest IEEE single, as C's float arithmetic."""
    return struct.unpack("f", struct.pack("f", x))[0]


def ketama_points_per_server(weight: float, total_weight: float, live_servers: int) -> int:
    """Points libmemcached gives one server under weighted ketama.

    libmemcached (hosts.cc update_continuum) and twemproxy (nc_ketama.c)
    compute, in C single precision::

        pct = (float)weight / (float)total_weight;
        floor((float)(pct * 160 / 4 * (float)live_servers + 0.0000000001)) * 4

    Each step rounds to float, so with equal weights some fleet sizes get
    156 points rather than 160 (25, 47, 50, ... servers). Doing the
    arithmetic in doubles would disagree with every C client on those
    fleets, hence the step-by-step float32 rounding.
    """
    pct = _f32(_f32(weight) / _f32(total_weight))
    v = _f32(pct * KETAMA_POINTS)
    v = _f32(v / 4)
    v = _f32(v * _f32(live_servers))
    v = _f32(v + 0.0000000001)  # added in double, then cast back to float
    return int(v // 1) * 4


def ketama_label(node: str) -> str:
    """The string libmemcached hashes for a server: ``host`` or ``host:port``.

    libmemcached hashes ``"host-i"`` when the port is 11211 and
    ``"host:port-i"`` otherwise; a node name without a port is used as is.
    """
    host, sep, port = node.rpartition(":")
    if sep and port.isdigit() and host and "]" not in port:
        if int(port) == MEMCACHED_DEFAULT_PORT:
            return host.strip("[]") if host.startswith("[") else host
        return node
    return node


class KetamaRing(_Ring):
    """libmemcached-compatible weighted ketama (md5, 160 points per server).

    Node names are ``"host:port"`` (or a bare ``"host"`` for port 11211),
    spelled as the other clients spell them: ketama hashes the host string,
    so ``localhost`` and ``127.0.0.1`` are different rings.
    """

    def __init__(self, nodes: Iterable[str] | Mapping[str, float] | None = None) -> None:
        super().__init__()
        if nodes:
            self.set_nodes(nodes)

    def _node_points(self, node: str) -> list[int]:
        total = sum(self._weights.values())
        per_server = ketama_points_per_server(self._weights[node], total, len(self._weights))
        label = ketama_label(node)
        points: list[int] = []
        # Each md5 digest gives four points: bytes 0-3, 4-7, 8-11, 12-15,
        # each read little-endian.
        for i in range(per_server // 4):
            digest = md5(f"{label}-{i}".encode("utf-8")).digest()
            points.extend(struct.unpack("<4I", digest))
        return points

    def key_point(self, key: str | bytes) -> int:
        return int.from_bytes(md5(_key_bytes(key)).digest()[:4], "little")
