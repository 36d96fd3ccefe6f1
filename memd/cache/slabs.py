"""The slab allocator: memory pages carved into fixed-size chunks per size class.

Every item lives in one chunk of one slab page (a ``bytearray``).  An item is
known by its *id*, a small integer; everything about an item other than its
bytes lives in its 40-byte record (records.py), whose fields the store, the
index and the LRU read as per-id views.  That keeps millions of items out of
Python's object model: no per-item objects for the garbage collector to walk,
40 bytes of metadata per item, and a hard bound on memory.

Ids come in blocks, one block per page, so an item's page, chunk offset and
class follow from its id and are not stored per item.  A page's block
starts at a multiple of ID_BLOCK ids and spans whole multiples of it, so
``block_view[cid >> ID_SHIFT]`` is the page's view (one list subscript,
where a page number in the record cost 4 bytes an item and a read); a page
leaves at most ID_BLOCK - 1 ids unused (2.5 KB of records a 1 MiB page).

Memory accounting: ``-m`` bounds the pages *and* the metadata of the chunks
they hold, so the limit is a limit on what the cache really uses.  As in
memcached, a class may always take its first page even past the limit, so a
tiny ``-m`` still stores something of every size.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left

from .records import RECORD, ItemRecords

PAGE_SIZE = 1 << 20
# memcached's item header is 48 bytes; its first class is header + -n.  Using
# the same formula makes `stats slabs` show memcached's chunk sizes.
MEMCACHED_ITEM_HEADER = 48
CHUNK_ALIGN = 8
MAX_CLASSES = 63
ID_SHIFT = 6
ID_BLOCK = 1 << ID_SHIFT        # ids of one page start and end on these
BLOCK_BYTES = 4 + 8             # a block's page number and its list slot
UNOWNED = (bytearray(), 0, 0, 0)    # the view of ids no page holds


def class_sizes(largest: int, factor: float, min_size: int) -> list[int]:
    """Chunk sizes of the classes, smallest first, the last one ``largest``.

    memcached's slabs_init rule, the one copy of it: classes grow by ``factor``
    from header + ``-n``, 8-byte aligned, until the next would reach
    ``largest / factor``; then one class of ``largest``.  memd's allocator
    passes a whole page; meta's ``cls=`` passes memcached's chunk maximum
    (half a page), see meta_flags.memcached_class.
    """
    sizes = []
    size = MEMCACHED_ITEM_HEADER + min_size
    while size < largest / factor and len(sizes) < MAX_CLASSES - 1:
        if size % CHUNK_ALIGN:
            size += CHUNK_ALIGN - size % CHUNK_ALIGN
        sizes.append(size)
        size = int(size * factor)
    sizes.append(largest)
    return sizes


class SlabClass:
    """One size class: its pages, its free chunks and its counters."""

    __slots__ = (
        "id", "chunk_size", "per_page", "pages", "free", "end_next", "end_left",
        "used", "requested",
        # counters reported by `stats items` / `stats slabs`
        "evicted", "evicted_nonzero", "evicted_time", "evicted_unfetched",
        "reclaimed", "expired_unfetched", "outofmemory", "crawler_reclaimed",
        "cmd_set", "delete_hits", "incr_hits", "decr_hits",
        "cas_hits", "cas_badval", "touch_hits",
    )

    def __init__(self, class_id: int, chunk_size: int, page_size: int) -> None:
        self.id = class_id
        self.chunk_size = chunk_size
        self.per_page = page_size // chunk_size
        self.pages: list[int] = []       # page numbers owned by this class
        self.free = array("i")           # freed chunk ids, used as a stack
        self.end_next = 0                # next never-used id in the newest page
        self.end_left = 0                # never-used chunks left in the newest page
        self.used = 0                    # chunks holding an item
        self.requested = 0               # bytes of those items (mem_requested)
        self.reset_counters()

    def reset_counters(self) -> None:
        self.evicted = self.evicted_nonzero = self.evicted_time = 0
        self.evicted_unfetched = self.reclaimed = self.expired_unfetched = 0
        self.outofmemory = self.crawler_reclaimed = 0
        self.cmd_set = self.delete_hits = 0
        self.incr_hits = self.decr_hits = self.cas_hits = 0
        self.cas_badval = self.touch_hits = 0

    @property
    def total_chunks(self) -> int:
        return len(self.pages) * self.per_page

    @property
    def free_chunks(self) -> int:
        return len(self.free) + self.end_left


class SlabAllocator:
    """Pages, classes and the per-item id space."""

    def __init__(self, mem_limit: int, item_size_max: int = PAGE_SIZE,
                 factor: float = 1.25, min_size: int = 48) -> None:
        if factor <= 1.0:
            raise ValueError("factor must be greater than 1.0")
        self.mem_limit = mem_limit
        self.page_size = max(PAGE_SIZE, item_size_max)
        self.item_size_max = item_size_max
        self.sizes = class_sizes(self.page_size, factor, min_size)
        # classes[0] is a placeholder so class ids are 1-based, as in memcached
        self.classes: list[SlabClass | None] = [None] + [
            SlabClass(i + 1, size, self.page_size) for i, size in enumerate(self.sizes)]
        self.pages: list[bytearray] = []
        self.page_block = array("I")        # ids reserved for each page
        # per page: (the page, its first id, its class's chunk size, its
        # class; 0, 0, 0 while no class owns it).  One tuple, so a get hit
        # reads all of it with one subscript: three typed-array reads per key
        # were 5% of a multi-get's instructions (tools/lookup_trace).
        self.page_view: list[tuple[bytearray, int, int, int]] = []
        self.spare_blocks: list[tuple[int, int]] = []   # (first id, count) of moved pages
        self.draining = -1                  # page being emptied for a move, or -1
        self.records = ItemRecords(self._max_ids())
        # per block of ID_BLOCK ids: its page's number (-1: none) and view
        self.block_page = array("i")
        self.block_view: list[tuple[bytearray, int, int, int]] = []
        self.id_page = _PageOf(self)
        # read-only per-id views for callers that index them like the record fields
        self.id_offset = _OffsetOf(self)
        self.id_class = _ClassOf(self)
        self._id_arrays: list[array] = []   # extra per-id arrays (register)
        self.n_ids = 0
        self.malloced = 0      # bytes of pages (memcached's total_malloced)

    def _max_ids(self) -> int:
        """Ids the memory limit can ever need: the records it can pay for, plus
        the first page of every class (which may exceed the limit), plus
        what rounding each page's ids to whole blocks can leave unused."""
        pages = self.mem_limit // self.page_size + len(self.sizes) + 1
        return (self.mem_limit // RECORD + sum(self.page_size // size for size in self.sizes)
                + pages * ID_BLOCK)

    # -- per-id metadata -------------------------------------------------------

    def register(self, arr: array) -> array:
        """Grow ``arr`` with the id space from now on; returns it."""
        if len(arr) < self.n_ids:
            arr.frombytes(bytes((self.n_ids - len(arr)) * arr.itemsize))
        self._id_arrays.append(arr)
        return arr

    @property
    def bytes_per_id(self) -> int:
        return RECORD + sum(a.itemsize for a in self._id_arrays)

    def offset_of(self, cid: int) -> int:
        """Where chunk ``cid`` starts in its page."""
        _, first, chunk, _ = self.block_view[cid >> ID_SHIFT]
        return (cid - first) * chunk

    def class_of(self, cid: int) -> int:
        return self.block_view[cid >> ID_SHIFT][3]

    # -- classes ---------------------------------------------------------------

    def class_for(self, total: int) -> int:
        """The smallest class whose chunk holds ``total`` bytes (0 if none)."""
        i = bisect_left(self.sizes, total)
        return i + 1 if i < len(self.sizes) else 0

    # -- chunks ----------------------------------------------------------------

    def alloc(self, class_id: int) -> int:
        """A free chunk id of the class, or -1 when it has none and no page is left."""
        cls = self.classes[class_id]
        if cls.free:
            cid = cls.free.pop()
        elif cls.end_left:
            cid = cls.end_next
            cls.end_next += 1
            cls.end_left -= 1
        elif self._grow(cls):
            cid = cls.end_next
            cls.end_next += 1
            cls.end_left -= 1
        else:
            return -1
        cls.used += 1
        return cid

    def release(self, cid: int) -> None:
        cls = self.classes[self.block_view[cid >> ID_SHIFT][3]]
        cls.used -= 1
        # a chunk on a page being moved away must not be handed out again
        if self.block_page[cid >> ID_SHIFT] != self.draining:
            cls.free.append(cid)

    def start_draining(self, page_no: int) -> None:
        """Stop handing out chunks of ``page_no`` (its class is about to lose it)."""
        cls = self.classes[self.page_view[page_no][3]]
        ids = self.page_ids(page_no)
        lo, hi = ids.start, ids.stop
        cls.free = array("i", (c for c in cls.free if not lo <= c < hi))
        if cls.end_left and lo <= cls.end_next < hi:
            cls.end_left = 0
        self.draining = page_no

    @property
    def accounted(self) -> int:
        """What ``-m`` bounds: the pages plus the metadata of every id they hold."""
        return self.malloced + self.n_ids * self.bytes_per_id + (self.n_ids >> ID_SHIFT) * BLOCK_BYTES

    def _ids_cost(self, n: int) -> int:
        return n * self.bytes_per_id + (n >> ID_SHIFT) * BLOCK_BYTES

    def _ids_to_add(self, cls: SlabClass, freed_block: int = 0) -> int:
        """New ids a page for ``cls`` would cost (0 when a spare block fits,
        including the block of a page about to be moved)."""
        n = _whole_blocks(cls.per_page)
        if freed_block >= n or any(count >= n for _, count in self.spare_blocks):
            return 0
        return n

    def can_grow(self, cls: SlabClass) -> bool:
        new_ids = self._ids_to_add(cls)
        if self.n_ids + new_ids > self.records.capacity:
            return False        # only when the address space could not be reserved
        if not cls.pages:
            return True         # as memcached: every class may have its first page
        cost = self.page_size + self._ids_cost(new_ids)
        return self.accounted + cost <= self.mem_limit

    def can_receive(self, cls: SlabClass, src: SlabClass) -> bool:
        """Whether a page moved from ``src`` to ``cls`` fits its ids within the limit.

        Moving towards larger chunks reuses the moved page's own id block;
        moving towards smaller ones may need more ids than the limit allows.
        """
        new_ids = self._ids_to_add(cls, freed_block=_whole_blocks(src.per_page))
        return not new_ids or (self.accounted + self._ids_cost(new_ids) <= self.mem_limit
                               and self.n_ids + new_ids <= self.records.capacity)

    def _grow(self, cls: SlabClass) -> bool:
        if not self.can_grow(cls):
            return False
        page_no = len(self.pages)
        self.pages.append(bytearray(self.page_size))
        self.page_block.append(0)
        self.page_view.append((self.pages[page_no], 0, 0, 0))
        self.malloced += self.page_size
        self.assign_page(cls, page_no)
        return True

    def _id_block(self, n: int) -> tuple[int, int]:
        """A block of at least ``n`` ids, in whole ID_BLOCKs: the smallest spare
        one that fits, or new ids."""
        n = _whole_blocks(n)
        best = -1
        for i, (_, count) in enumerate(self.spare_blocks):
            if count >= n and (best < 0 or count < self.spare_blocks[best][1]):
                best = i
        if best >= 0:
            return self.spare_blocks.pop(best)
        first = self.n_ids
        for arr in self._id_arrays:
            arr.frombytes(bytes(n * arr.itemsize))
        self.block_page.frombytes(b"\xff" * (4 * (n >> ID_SHIFT)))      # -1: no page
        self.block_view.extend([UNOWNED] * (n >> ID_SHIFT))
        self.n_ids += n
        return first, n

    def assign_page(self, cls: SlabClass, page_no: int) -> None:
        """Hand an unowned page to a class, with a block of ids for its chunks."""
        n = cls.per_page
        first, count = self._id_block(n)
        self.page_block[page_no] = count
        self.page_view[page_no] = view = (self.pages[page_no], first, cls.chunk_size, cls.id)
        self._own_blocks(first, count, page_no, view)
        cls.pages.append(page_no)
        cls.end_next = first
        cls.end_left = n

    def page_ids(self, page_no: int) -> range:
        _, first, _, cls_id = self.page_view[page_no]
        return range(first, first + self.classes[cls_id].per_page)

    def take_page(self, page_no: int) -> None:
        """Take an emptied page away from its class; its id block becomes spare.

        The caller has already unlinked every item on the page.  Spare blocks
        are reused by later page assignments, so moving pages back and forth
        does not grow the metadata arrays.
        """
        if self.draining != page_no:
            self.start_draining(page_no)
        self.draining = -1
        cls = self.classes[self.page_view[page_no][3]]
        ids = self.page_ids(page_no)
        lo = ids.start
        cls.pages.remove(page_no)
        self.page_view[page_no] = (self.pages[page_no], 0, 0, 0)
        self.spare_blocks.append((lo, self.page_block[page_no]))
        self._own_blocks(lo, self.page_block[page_no], -1, UNOWNED)

    def _own_blocks(self, first: int, count: int, page_no: int, view: tuple) -> None:
        """Point the id blocks of ``first``..``first + count`` at a page (or none)."""
        for b in range(first >> ID_SHIFT, (first + count) >> ID_SHIFT):
            self.block_page[b] = page_no
            self.block_view[b] = view



def _whole_blocks(n: int) -> int:
    return (n + ID_BLOCK - 1) & -ID_BLOCK


class _PageOf:
    """``id_page[cid]``: the number of a chunk's page."""

    __slots__ = ("block_page",)

    def __init__(self, slabs: SlabAllocator) -> None:
        self.block_page = slabs.block_page

    def __getitem__(self, cid: int) -> int:
        return self.block_page[cid >> ID_SHIFT]


class _ClassOf:
    """``id_class[cid]``: the class of a chunk, from its page."""

    __slots__ = ("block_view",)

    def __init__(self, slabs: SlabAllocator) -> None:
        self.block_view = slabs.block_view

    def __getitem__(self, cid: int) -> int:
        return self.block_view[cid >> ID_SHIFT][3]


class _OffsetOf:
    """``id_offset[cid]``: where a chunk starts in its page."""

    __slots__ = ("block_view",)

    def __init__(self, slabs: SlabAllocator) -> None:
        self.block_view = slabs.block_view

    def __getitem__(self, cid: int) -> int:
        _, first, chunk, _ = self.block_view[cid >> ID_SHIFT]
        return (cid - first) * chunk
