"""Item records: every per-item field, interleaved, one 40-byte record per id.

A lookup over a large store used to read about ten separate per-id arrays
(hash, chain link, page, offset, key length, expiry, access time, flags
bits, class, value start and length).  Over a million items each of those
reads was a cache miss of its own, and a miss costs more than the
interpreter's work around it.  Here the fields of one item sit next to
each other, as memcached's item header does, so a lookup touches the
record's line (the fields it needs are in the first 24 bytes) and then the
chunk:

    byte  0 hash     I   low 32 bits of the key's xxh3 (a filter: the key
                         itself is always compared in the chunk)
          4 chain    i   next item in the hash bucket, -1 ends
          8 vlen     I   value length
         12 exptime  I   absolute expiry, 0 = never
         16 atime    I   last access (LRU bump) time
         20 vstart   H   where the value starts in the chunk
         22 klen     B   key length
         23 iflags   B   LINKED / FETCHED / STALE / WIN_SENT / KEY_BINARY
         24 cas      Q
         32 prev     i   LRU links, -1 ends
         36 next     i

Two things an item has are not here.  Its page follows from its id: ids
come in 64-aligned blocks of one page each (``SlabAllocator.block_view``),
and the chunk's offset and class follow from the page.  Its client flags
are in the chunk, as the digits of its ``VALUE`` line, and are read from
there (``ItemStore.flags``) by the few paths that want them as a number.
That is 8 bytes an item fewer than a page number and a flags field, 4% of
a small item's memory (docs/storage.md).

Each field is exposed as a strided ``memoryview`` over the records, so
``records.cas[item]`` reads and writes like the ``array`` it replaces, at
the same speed (measured: 32 ns against 34 ns a read).

The records live in one anonymous ``mmap`` reserved at the start for as
many ids as the memory limit can ever need.  Untouched pages of a mapping
cost no memory, so the reservation costs only address space, and the
views never have to be rebuilt: a growing buffer could not be resized
while views of it exist, and copying it would be a pause that grows with
the store.
"""

from __future__ import annotations

import mmap
import sys

RECORD = 40
# name: (struct format, byte offset in the record)
FIELDS = {
    "hash": ("I", 0), "chain": ("i", 4), "vlen": ("I", 8), "exptime": ("I", 12),
    "atime": ("I", 16), "vstart": ("H", 20), "klen": ("B", 22), "iflags": ("B", 23),
    "cas": ("Q", 24), "prev": ("i", 32), "next": ("i", 36),
}
_SIZES = {"B": 1, "H": 2, "i": 4, "I": 4, "Q": 8}
# ids are 32-bit signed in chains, LRU links and buckets
MAX_IDS = (1 << 31) - 1
# address space reserved at most (the memory limit bounds it long before)
MAX_RESERVE = 1 << 40
# Linux: reserve address space without committing swap for it
_MAP_NORESERVE = 0x4000 if sys.platform.startswith("linux") else 0
# Linux: back the records with 2 MiB pages where the kernel allows (THP in
# "madvise" mode): a lookup's record read then rarely misses the TLB as well
# (measured: 1M-item fetch_text +6%, find +5%)
HUGE_PAGES = hasattr(mmap, "MADV_HUGEPAGE")


class ItemRecords:
    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, min(capacity, MAX_IDS, MAX_RESERVE // RECORD))
        self._map = mmap.mmap(-1, self.capacity * RECORD,
                              flags=mmap.MAP_PRIVATE | _MAP_NORESERVE)
        if HUGE_PAGES:
            self._map.madvise(mmap.MADV_HUGEPAGE)
        whole = memoryview(self._map)
        for name, (fmt, offset) in FIELDS.items():
            size = _SIZES[fmt]
            assert offset % size == 0 and offset + size <= RECORD
            view = whole.cast(fmt)[offset // size::RECORD // size]
            setattr(self, name, view)
