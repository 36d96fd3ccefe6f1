"""What one cluster client knows about copies that may be stale.

The staleness policy of ``ClusterClient`` (docs/fleet.md, "One staleness
policy") rests on two records kept here, both bounded:

- **suspects**: per node, the keys whose latest write this client did not
  get acknowledged by that node (it was dead, hung, timed out, answered
  differently from the primary, or was skipped because it was down).  A node
  never serves a read of a key it is suspect for; the key is *settled* on it
  first (the fresh value copied in, or the key deleted there).
- **holders**: per key, the stand-in nodes this client wrote the key to in
  place of a dead owner.  A stand-in is trusted for a read only for keys it
  holds for us; anything else it has may be an orphan from an earlier
  outage or an older ring.

When a node's suspect list would pass the bound, the node is marked
*overflowed*: every key is suspect on it until it has been flushed.  When
the holders record is full, stand-ins are not trusted for new keys (reads
miss instead).  Either way the bound costs hits, never correctness.

``KeyLocks`` serialises, within this process, every write of a key with
any copy of that key between nodes (settling, warm-up), so a copy can never
carry a value over a write that raced it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterable, Iterator

import xxhash

# The ring's rule for a key's bytes (str keys as UTF-8), so the journal and
# the ring agree on what one key is.
from memd.cluster.ring import _key_bytes as key_bytes  # noqa: F401  (re-exported)


class Journal:
    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._suspects: dict[str, dict[bytes, None]] = {}
        self._count = 0
        self._holders: dict[bytes, set[str]] = {}
        self.overflowed: set[str] = set()

    # -- suspects ---------------------------------------------------------
    def mark(self, node: str, key: bytes) -> None:
        """``node`` may hold a value of ``key`` older than an acknowledged write."""
        with self._lock:
            keys = self._suspects.setdefault(node, {})
            if key in keys or node in self.overflowed:
                return
            if self._count >= self.limit:
                self.overflowed.add(node)
                return
            keys[key] = None
            self._count += 1

    def mark_all(self, node: str) -> None:
        """Every key of ``node`` is suspect (it must be flushed before serving)."""
        with self._lock:
            self.overflowed.add(node)

    def is_suspect(self, node: str, key: bytes) -> bool:
        return node in self.overflowed or key in self._suspects.get(node, ())

    def clear(self, node: str, key: bytes) -> None:
        with self._lock:
            keys = self._suspects.get(node)
            if keys is not None and keys.pop(key, 0) is None:
                self._count -= 1

    def pending(self, node: str, limit: int) -> list[bytes]:
        keys = self._suspects.get(node)
        if not keys:
            return []
        with self._lock:
            out = []
            for k in keys:
                out.append(k)
                if len(out) >= limit:
                    break
            return out

    def flushed(self, node: str, keys_before: Iterable[bytes]) -> None:
        """``node`` was flushed: forget the marks that existed before the flush."""
        with self._lock:
            self.overflowed.discard(node)
            keys = self._suspects.get(node, {})
            for k in keys_before:
                if keys.pop(k, 0) is None:
                    self._count -= 1

    def snapshot(self, node: str) -> list[bytes]:
        with self._lock:
            return list(self._suspects.get(node, ()))

    def forget_node(self, node: str) -> None:
        """``node`` left the membership for good."""
        with self._lock:
            self._count -= len(self._suspects.pop(node, {}))
            self.overflowed.discard(node)
            for key in [k for k, s in self._holders.items() if node in s]:
                self._drop_holder_locked(key, node)

    # -- holders ----------------------------------------------------------
    def add_holder(self, key: bytes, node: str) -> bool:
        with self._lock:
            nodes = self._holders.get(key)
            if nodes is None:
                if len(self._holders) >= self.limit:
                    return False
                nodes = self._holders[key] = set()
            nodes.add(node)
            return True

    def holders(self, key: bytes) -> tuple[str, ...]:
        # tuple() of a set runs without releasing the GIL: a consistent copy.
        return tuple(self._holders.get(key, ()))

    def holds(self, node: str, key: bytes) -> bool:
        nodes = self._holders.get(key)
        return nodes is not None and node in nodes

    def drop_holder(self, key: bytes, node: str) -> None:
        with self._lock:
            self._drop_holder_locked(key, node)

    def _drop_holder_locked(self, key: bytes, node: str) -> None:
        nodes = self._holders.get(key)
        if nodes is not None:
            nodes.discard(node)
            if not nodes:
                del self._holders[key]

    def held(self, start: int, limit: int) -> list[tuple[bytes, str]]:
        """Up to ``limit`` (key, holder) pairs from the ``start``-th key on,
        wrapping, so that pairs that must wait do not starve the others."""
        with self._lock:
            keys = list(self._holders)
            if not keys:
                return []
            start %= len(keys)
            out = []
            for k in keys[start:] + keys[:start]:
                out.extend((k, n) for n in self._holders[k])
                if len(out) >= limit:
                    break
            return out

    # -- state ------------------------------------------------------------
    @property
    def empty(self) -> bool:
        return not (self._count or self._holders or self.overflowed)

    def sizes(self) -> dict[str, int]:
        return {"suspect": self._count, "held": sum(map(len, self._holders.values())),
                "overflowed": len(self.overflowed)}


class KeyLocks:
    """Striped locks: one of ``stripes`` locks per key, taken in index order."""

    def __init__(self, stripes: int = 1024) -> None:
        self._locks = [threading.Lock() for _ in range(stripes)]

    def _index(self, key: bytes) -> int:
        return xxhash.xxh3_64_intdigest(key, seed=7) % len(self._locks)

    def one(self, key: bytes) -> threading.Lock:
        """The lock of a single key (a plain ``with`` is cheaper than ``hold``)."""
        return self._locks[self._index(key)]

    @contextmanager
    def hold(self, keys: Iterable[bytes]) -> Iterator[None]:
        # Sorted indices: two callers locking overlapping sets cannot deadlock.
        held = [self._locks[i] for i in sorted({self._index(k) for k in keys})]
        for lock in held:
            lock.acquire()
        try:
            yield
        finally:
            for lock in reversed(held):
                lock.release()
