"""The keys the shell has seen lately, offered by completion."""

from __future__ import annotations

from collections import OrderedDict


class RecentKeys:
    """The last ``limit`` keys typed or seen in replies, most recent last."""

    def __init__(self, limit: int = 500) -> None:
        self.limit = limit
        self._keys: OrderedDict[str, None] = OrderedDict()

    def add(self, key: bytes | str) -> None:
        if isinstance(key, bytes):
            key = key.decode(errors="replace")
        self._keys.pop(key, None)
        self._keys[key] = None
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)

    def __iter__(self):
        return reversed(self._keys)     # most recent first
