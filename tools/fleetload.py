"""A checked client load for fleet fault and scenario runs.

Every value read is checked against what this process knows it wrote:

- values are ``b"<key>|<version>"``; versions only grow;
- each key is written by one thread only (its owner), so writes of one key
  never race each other and "the last write acknowledged before a read
  started" is well defined; reads go to any key from any thread;
- a read is **stale** when it returns a version older than the last write
  (set or delete) acknowledged before the read started, or a value after a
  delete was acknowledged; a **miss** when it returns nothing although the
  last acknowledged write was a set; an **error** when the client raised.

Writes that raise or return False are not acknowledged: the model keeps the
previous state, and a later read of the unacknowledged version is allowed
(the node may have applied it).  Every count is per phase, the phase being
whatever ``Load.phase`` was when the operation started.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

DELETED = -1


@dataclass
class Counts:
    reads: int = 0
    hits: int = 0
    misses: int = 0      # nothing returned although a value was acknowledged
    stale: int = 0       # older than the acknowledged state at read start
    bad: int = 0         # a value this load never wrote
    writes: int = 0
    errors: int = 0      # exceptions raised by the client (reads and writes)
    not_stored: int = 0  # writes answered False

    def add(self, other: "Counts") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def hit_ratio(self) -> float:
        expected = self.hits + self.misses + self.stale
        return self.hits / expected if expected else 1.0


@dataclass
class Load:
    """Threads reading and writing through ``client``; counts per phase."""

    client: Any
    keys: int = 600
    threads: int = 4
    read_share: float = 0.8
    delete_share: float = 0.1   # of writes
    pause: float = 0.001        # between operations, per thread (a busy machine)
    prefix: str = "fl"
    writes: bool = True
    phase: str = "start"
    counts: dict[str, Counts] = field(default_factory=lambda: defaultdict(Counts))

    def __post_init__(self) -> None:
        self.names = [f"{self.prefix}:{i}" for i in range(self.keys)]
        # Per key: (version, deleted?) of the last acknowledged write.
        self.acked: dict[str, tuple[int, bool]] = {}
        # Deletes sent per key, and whether one may have been applied
        # without an acknowledgement since the last acknowledged write.
        self.deletes: dict[str, int] = defaultdict(int)
        self.maybe_deleted: dict[str, bool] = defaultdict(bool)
        self._next = [1] * self.keys
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # -- set-up ------------------------------------------------------------
    def populate(self) -> None:
        """Write version 1 of every key (acknowledged ones enter the model)."""
        for i, name in enumerate(self.names):
            self._write(i, name, Counts(), delete=False)

    def keys_acked_present(self) -> list[str]:
        return [k for k, (_v, deleted) in self.acked.items() if not deleted]

    # -- checking -----------------------------------------------------------
    def check(self, name: str, before: tuple[int, bool] | None, got: Any, c: Counts,
              quiet: bool = True) -> None:
        """``quiet``: no write of the key was in flight at any time during the read."""
        c.reads += 1
        if got is None:
            if before is not None and not before[1] and quiet:
                c.misses += 1
            return
        text = got.decode() if isinstance(got, bytes) else str(got)
        key, _, version = text.rpartition("|")
        if key != name or not version.isdigit():
            c.bad += 1
            return
        version = int(version)
        if before is None:
            c.hits += 1
            return
        if version < before[0]:  # older than the acknowledged set or delete
            c.stale += 1
        else:
            c.hits += 1

    def read(self, name: str, c: Counts) -> None:
        quiet, before = self._delete_state(name), self.acked.get(name)
        try:
            got = self.client.get(name)
        except Exception:
            c.errors += 1
            return
        # A delete in flight may answer the read with nothing: not a miss.
        self.check(name, before, got, c, quiet=quiet == self._delete_state(name) and quiet[1])

    def _delete_state(self, name: str) -> tuple[int, bool]:
        return self.deletes[name], not self.maybe_deleted[name]

    def read_many(self, names: list[str], c: Counts) -> None:
        quiet = {n: self._delete_state(n) for n in names}
        before = {n: self.acked.get(n) for n in names}
        try:
            got = self.client.get_many(names)
        except Exception:
            c.errors += 1
            return
        for n in names:
            self.check(n, before[n], got.get(n), c,
                       quiet=quiet[n] == self._delete_state(n) and quiet[n][1])

    def _write(self, i: int, name: str, c: Counts, delete: bool) -> None:
        version = self._next[i]
        self._next[i] += 1
        if delete:
            self.deletes[name] += 1
            self.maybe_deleted[name] = True
        c.writes += 1
        try:
            if delete:
                ok = self.client.delete(name, noreply=False)
                ok = True  # a delete of an absent key is still acknowledged
            else:
                ok = self.client.set(name, f"{name}|{version}".encode(), noreply=False)
        except Exception:
            c.errors += 1
            return
        if ok:
            self.acked[name] = (version, delete)
            self.maybe_deleted[name] = False
        else:
            c.not_stored += 1

    # -- running ------------------------------------------------------------
    def _worker(self, t: int) -> None:
        rng = random.Random(t)
        own = list(range(t, self.keys, self.threads))
        while not self._stop.is_set():
            c = Counts()
            phase = self.phase
            if not self.writes or rng.random() < self.read_share:
                self.read(self.names[rng.randrange(self.keys)], c)
            else:
                i = rng.choice(own)
                self._write(i, self.names[i], c, delete=rng.random() < self.delete_share)
            with self._lock:
                self.counts[phase].add(c)
            if self.pause:
                time.sleep(self.pause)

    def start(self) -> "Load":
        self._stop.clear()
        self._threads = [threading.Thread(target=self._worker, args=(t,), daemon=True)
                         for t in range(self.threads)]
        for th in self._threads:
            th.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(timeout=10)

    def run_phases(self, steps: list[tuple[str, float, Callable[[], None] | None]]) -> dict[str, Counts]:
        """For each (phase, seconds, action): run ``action`` then load for ``seconds``."""
        self.start()
        try:
            for phase, seconds, action in steps:
                self.phase = phase
                if action is not None:
                    action()
                time.sleep(seconds)
        finally:
            self.stop()
        return dict(self.counts)


def table(rows: dict[str, dict[str, Counts]], columns=("reads", "misses", "stale", "errors")) -> str:
    """A markdown table: one row per (client, phase)."""
    head = "| client | phase | " + " | ".join(columns) + " | hit ratio |"
    out = [head, "|" + "---|" * (len(columns) + 3)]
    for client, phases in rows.items():
        for phase, c in phases.items():
            cells = " | ".join(str(getattr(c, col)) for col in columns)
            out.append(f"| {client} | {phase} | {cells} | {c.hit_ratio:.2%} |")
    return "\n".join(out)
