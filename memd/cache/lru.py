"""Per-class LRU lists on typed arrays: O(1) link, unlink, bump and tail.

Links are item ids in two per-id sequences of signed 32-bit ints (-1 ends
a list): the ``prev``/``next`` fields of the item records in the store, plain
``array('i')`` when none are given.  A list of a million items is 8 MB and
no Python objects.  Head is the most
recently used item, tail the next to evict.
"""

from __future__ import annotations

from array import array
from typing import Iterator

NIL = -1


class LRU:
    def __init__(self, n_classes: int, prev=None, nxt=None) -> None:
        self.prev = array("i") if prev is None else prev
        self.next = array("i") if nxt is None else nxt
        self.head = [NIL] * (n_classes + 1)
        self.tail = [NIL] * (n_classes + 1)
        self.count = [0] * (n_classes + 1)

    def link(self, cls: int, item: int) -> None:
        """Put ``item`` at the head of its class's list."""
        old = self.head[cls]
        self.prev[item] = NIL
        self.next[item] = old
        if old == NIL:
            self.tail[cls] = item
        else:
            self.prev[old] = item
        self.head[cls] = item
        self.count[cls] += 1

    def unlink(self, cls: int, item: int) -> None:
        p = self.prev[item]
        n = self.next[item]
        if p == NIL:
            self.head[cls] = n
        else:
            self.next[p] = n
        if n == NIL:
            self.tail[cls] = p
        else:
            self.prev[n] = p
        self.count[cls] -= 1

    def replace(self, cls: int, old: int, new: int) -> None:
        """Put ``new`` at ``old``'s place in the list (the item moved chunks)."""
        p = self.prev[new] = self.prev[old]
        n = self.next[new] = self.next[old]
        if p == NIL:
            self.head[cls] = new
        else:
            self.next[p] = new
        if n == NIL:
            self.tail[cls] = new
        else:
            self.prev[n] = new

    def bump(self, cls: int, item: int) -> None:
        """Move ``item`` to the head (unlink and link, written out: every
        overwrite and every due hit bumps, and the two calls were a third of
        its cost)."""
        head = self.head
        old = head[cls]
        if old == item:
            return
        prev, nxt = self.prev, self.next
        p = prev[item]          # not NIL: the item is linked and not the head
        n = nxt[item]
        nxt[p] = n
        if n == NIL:
            self.tail[cls] = p
        else:
            prev[n] = p
        prev[item] = NIL
        nxt[item] = old
        prev[old] = item
        head[cls] = item

    def from_tail(self, cls: int, limit: int) -> Iterator[int]:
        """Up to ``limit`` items from the tail towards the head."""
        item = self.tail[cls]
        prev = self.prev
        while item != NIL and limit > 0:
            nxt = prev[item]     # read first: the caller may unlink ``item``
            yield item
            item = nxt
            limit -= 1

    def items(self, cls: int) -> Iterator[int]:
        """Every item of the class, head first."""
        item = self.head[cls]
        nxt = self.next
        while item != NIL:
            following = nxt[item]
            yield item
            item = following
