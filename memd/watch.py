"""`watch`: streaming log lines of what the cache does to watching connections.

memcached's watchers see lines like
``ts=1700000000.123456 gid=7 type=item_get key=foo status=found clsid=1 cfd=23 size=3``.
The store calls ``emit`` only when someone watches (one attribute test on
the hot paths otherwise).  Lines wait in a per-watcher buffer that the
server flushes every loop; a watcher that does not read fast enough loses
lines (counted as ``log_watcher_skipped``) instead of slowing anyone down.
"""

from __future__ import annotations

import time

FETCHERS, MUTATIONS, EVICTIONS = "fetchers", "mutations", "evictions"
KINDS = (FETCHERS, MUTATIONS, EVICTIONS)
MAX_BUFFERED = 1 << 20       # bytes a watcher may fall behind before lines are dropped


class Watcher:
    __slots__ = ("fd", "kinds", "lines", "size")

    def __init__(self, fd: int, kinds) -> None:
        self.fd = fd
        self.kinds = frozenset(kinds)
        self.lines: list[bytes] = []
        self.size = 0


class WatchHub:
    """Registered watchers; the store sees the hub only while it has any
    (``store.watch`` is None otherwise, a cheap test on hot paths)."""

    def __init__(self, store) -> None:
        self.store = store
        self.watchers: dict[int, Watcher] = {}
        self.gid = 0
        self.sent = 0
        self.skipped = 0

    def add(self, fd: int, kinds) -> None:
        self.watchers[fd] = Watcher(fd, kinds)
        self.store.watch = self

    def remove(self, fd: int) -> None:
        self.watchers.pop(fd, None)
        if not self.watchers:
            self.store.watch = None

    def emit(self, kind: str, fields: str) -> None:
        self.gid += 1
        t = time.time()
        line = b"ts=%d.%06d gid=%d %s\n" % (int(t), int(t * 1e6) % 1000000, self.gid, fields.encode())
        for w in self.watchers.values():
            if kind not in w.kinds:
                continue
            if w.size > MAX_BUFFERED:
                self.skipped += 1
                continue
            w.lines.append(line)
            w.size += len(line)
            self.sent += 1

    def take(self) -> list[tuple[int, bytes]]:
        """(fd, bytes) for every watcher with lines waiting; clears them."""
        out = []
        for w in self.watchers.values():
            if w.lines:
                out.append((w.fd, b"".join(w.lines)))
                w.lines = []
                w.size = 0
        return out
