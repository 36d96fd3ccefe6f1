"""`stats detail`: per-prefix counts of gets, hits, sets and deletes
(memcached's stats_prefix.c).

A key's prefix is what comes before the first delimiter (``-D``, ``:`` by
default); keys without one are not counted, as in memcached.  The store
records into it while detail is on (``ItemStore.detail``); turning detail
off stops the counting but keeps the figures, and ``stats reset`` clears
them, as memcached does.  memcached lists prefixes in its hash table's
order; memd lists them in the order first seen.
"""

from __future__ import annotations


class PrefixStats:
    def __init__(self, delimiter: bytes = b":") -> None:
        self.delimiter = delimiter
        self.counts: dict[bytes, list[int]] = {}     # prefix -> [get, hit, set, del]

    def _entry(self, key: bytes):
        i = key.find(self.delimiter)
        if i < 0:
            return None
        prefix = bytes(key[:i])
        entry = self.counts.get(prefix)
        if entry is None:
            entry = self.counts[prefix] = [0, 0, 0, 0]
        return entry

    def record_get(self, key: bytes, hit: bool) -> None:
        entry = self._entry(key)
        if entry is not None:
            entry[0] += 1
            entry[1] += hit

    def record_set(self, key: bytes) -> None:
        entry = self._entry(key)
        if entry is not None:
            entry[2] += 1

    def record_delete(self, key: bytes) -> None:
        entry = self._entry(key)
        if entry is not None:
            entry[3] += 1

    def clear(self) -> None:
        self.counts.clear()

    def dump(self) -> bytes:
        """``PREFIX <p> get <n> hit <n> set <n> del <n>`` lines and END."""
        return b"".join(b"PREFIX %s get %d hit %d set %d del %d\r\n" % (p, *c)
                        for p, c in self.counts.items()) + b"END\r\n"
