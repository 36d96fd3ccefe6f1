"""The key index: a chained hash table on typed arrays, grown incrementally.

Why not a ``dict``: a dict from key bytes to item id costs a key object, an
int object and a slot per item (~130 bytes; measured in docs/design.md), more than
half of what memcached spends on a whole small item.  Here a bucket is 4
bytes and an item carries the low 32 bits of its hash and a chain link (8
bytes, in its record), and the key bytes are the ones already in the slab
chunk.  The stored hash bits only filter: a match is always confirmed by
comparing the key itself, so a crafted hash collision cannot read another
key.  32 bits are enough to pick buckets in tables of up to 2^32 buckets.

Why chaining, as memcached does: growth can move one bucket at a time.  When
the table gets 1.5 items per bucket a table twice the size is allocated and
``MIGRATE_PER_INSERT`` old buckets move on each insert (plus whatever the
server's idle ticks move), so no single operation rehashes the whole table.
A lookup during growth reads the old table for buckets not yet moved.
"""

from __future__ import annotations

from array import array

from .lru import NIL

INITIAL_POWER = 16
MIGRATE_PER_INSERT = 4
HASH_BITS = 0xFFFFFFFF     # what an item keeps of its hash


def _empty_buckets(power: int) -> array:
    # from bytes: repeating a one-element array copies element by element
    # (tens of ms at 2^21 buckets); all-ones bytes are -1 in every slot
    buckets = array("i")
    buckets.frombytes(b"\xff" * (buckets.itemsize << power))
    return buckets


class HashIndex:
    def __init__(self, key_is, power: int = INITIAL_POWER,
                 hashes=None, chain=None, klen=None) -> None:
        # key_is(item, key) -> whether the item's chunk holds ``key`` (asked
        # only when the hash bits and the length match, so it compares the
        # bytes in place); hashes, chain, klen: per-item sequences (record
        # fields), or arrays
        self.key_is = key_is
        self.power = power
        self.buckets = _empty_buckets(power)
        self.mask = (1 << power) - 1
        self.old: array | None = None      # the table being migrated from
        self.old_mask = 0
        self.migrated = 0                  # old buckets already moved
        self.count = 0
        self.hash = array("I") if hashes is None else hashes   # per item: hash & HASH_BITS
        self.chain = array("i") if chain is None else chain     # per item: next in its bucket
        self.klen = array("B") if klen is None else klen        # per item: key length

    @property
    def expanding(self) -> bool:
        return self.old is not None

    def find(self, key: bytes, h: int) -> int:
        old = self.old
        if old is not None and (h & self.old_mask) >= self.migrated:
            item = old[h & self.old_mask]
        else:
            item = self.buckets[h & self.mask]
        hashes = self.hash
        chain = self.chain
        n = len(key)
        h &= HASH_BITS
        while item != NIL:
            if hashes[item] == h and self.klen[item] == n and self.key_is(item, key):
                return item
            item = chain[item]
        return NIL

    def insert(self, item: int, h: int) -> None:
        h &= HASH_BITS
        self.hash[item] = h
        old = self.old
        if old is not None and (h & self.old_mask) >= self.migrated:
            b = h & self.old_mask
            self.chain[item] = old[b]
            old[b] = item
        else:
            b = h & self.mask
            self.chain[item] = self.buckets[b]
            self.buckets[b] = item
        self.count += 1
        if old is not None:
            self.migrate(MIGRATE_PER_INSERT)
        elif self.count > (3 << self.power) >> 1:
            self._start_growth()

    def remove(self, item: int) -> None:
        h = self.hash[item]
        old = self.old
        if old is not None and (h & self.old_mask) >= self.migrated:
            table, b = old, h & self.old_mask
        else:
            table, b = self.buckets, h & self.mask
        chain = self.chain
        cur = table[b]
        if cur == item:
            table[b] = chain[item]
        else:
            while cur != NIL:
                nxt = chain[cur]
                if nxt == item:
                    chain[cur] = chain[item]
                    break
                cur = nxt
            else:
                raise KeyError(item)
        self.count -= 1

    def replace(self, old: int, new: int) -> None:
        """Put item ``new`` where ``old`` is in its chain (same key, moved chunk)."""
        h = self.hash[old]
        self.hash[new] = h
        table = self.old
        if table is not None and (h & self.old_mask) >= self.migrated:
            b = h & self.old_mask
        else:
            table, b = self.buckets, h & self.mask
        chain = self.chain
        chain[new] = chain[old]
        cur = table[b]
        if cur == old:
            table[b] = new
            return
        while cur != NIL:
            if chain[cur] == old:
                chain[cur] = new
                return
            cur = chain[cur]
        raise KeyError(old)

    def _start_growth(self) -> None:
        self.old = self.buckets
        self.old_mask = self.mask
        self.migrated = 0
        self.power += 1
        self.mask = (1 << self.power) - 1
        self.buckets = _empty_buckets(self.power)

    def migrate(self, n_buckets: int) -> None:
        """Move up to ``n_buckets`` old buckets into the new table."""
        old = self.old
        if old is None:
            return
        buckets, mask, chain, hashes = self.buckets, self.mask, self.chain, self.hash
        start = self.migrated
        stop = min(start + n_buckets, len(old))
        for b in range(start, stop):
            item = old[b]
            while item != NIL:
                nxt = chain[item]
                nb = hashes[item] & mask
                chain[item] = buckets[nb]
                buckets[nb] = item
                item = nxt
            old[b] = NIL
        self.migrated = stop
        if stop == len(old):
            self.old = None
