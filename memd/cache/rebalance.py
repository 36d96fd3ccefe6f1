"""Slab rebalancing: moving pages between size classes (memcached's slab_reassign).

Without it a cache "calcifies": once every page belongs to the classes of
yesterday's value sizes, today's sizes can only evict among themselves.

A move drains one page of the source class a bounded number of chunks per
step (so a 10,922-chunk page never stalls the node): each live item on it is
rescued into a free chunk of its class when there is one, else evicted; then
the page is handed to the destination class.  ``automove`` decides moves
from evictions, like memcached's ``slabs automove``:

* 0 — only by hand (``slabs reassign``);
* 1 — when a class keeps evicting, take a page from the class with the most
  free chunks, or else from the class whose oldest item is clearly older
  (its LRU tail age at least ``AGE_RATIO`` times the evicting class's);
* 2 — as 1, without the age test: any class with a spare page gives.
"""

from __future__ import annotations

from .lru import NIL
from .store import LINKED, ItemStore

OK, BUSY, BADCLASS, NOSPARE, SAME = "OK", "BUSY", "BADCLASS", "NOSPARE", "SAME"
AGE_RATIO = 1.25          # source tail must be this much older than the destination's
# Decide at every step that has no move in progress: a page takes a few
# ticks to drain anyway, and the age test keeps pages from ping-ponging.
WINDOW = 0


class Rebalancer:
    def __init__(self, store: ItemStore, automove: int = 1, chunks_per_step: int = 2000) -> None:
        self.store = store
        self.automove = automove
        self.chunks_per_step = chunks_per_step
        self.moving: tuple[int, int, int] | None = None   # (page, src, dst)
        self.cursor = 0
        self.slabs_moved = 0
        self.rescues = 0
        self.evictions_nomem = 0
        self._last_decision = 0
        self._last_pressure: dict[int, int] = {}
        store.rebalancer = self

    # -- by hand --------------------------------------------------------------

    def reassign(self, src: int, dst: int) -> str:
        """Start moving one page from class ``src`` to ``dst`` (-1: any source)."""
        slabs = self.store.slabs
        n = len(slabs.classes) - 1
        if self.moving is not None:
            return BUSY
        if src == dst:
            return SAME
        if not 1 <= dst <= n or not (src == -1 or 1 <= src <= n):
            return BADCLASS
        if src == -1:
            src = self._pick_source(dst, require_age=False)
            if src < 0:
                return NOSPARE
        if len(slabs.classes[src].pages) < 2:
            return NOSPARE
        if not slabs.can_receive(slabs.classes[dst], slabs.classes[src]):
            return NOSPARE
        self._start(src, dst)
        return OK

    # -- stepping ------------------------------------------------------------------

    def step(self) -> None:
        """Called by the server every tick: advance a move, or decide one."""
        if self.moving is not None:
            self._drain()
            return
        if not self.automove:
            return
        now = self.store.clock()
        if now - self._last_decision < WINDOW:
            return
        self._last_decision = now
        dst = self._pressured_class()
        if dst < 0:
            return
        src = self._pick_source(dst, require_age=self.automove == 1)
        classes = self.store.slabs.classes
        if src >= 0 and self.store.slabs.can_receive(classes[dst], classes[src]):
            self._start(src, dst)
            self._drain()

    # -- decisions -----------------------------------------------------------------

    def _pressured_class(self) -> int:
        """The class that evicted (or ran out of memory) most since the last decision."""
        best, best_delta = -1, 0
        for cls in self.store.slabs.classes[1:]:
            pressure = cls.evicted + cls.outofmemory
            delta = pressure - self._last_pressure.get(cls.id, 0)
            self._last_pressure[cls.id] = pressure
            if delta > best_delta:
                best, best_delta = cls.id, delta
        return best

    def _tail_age(self, cls_id: int, now: int) -> int:
        tail = self.store.lru.tail[cls_id]
        return now - self.store.atime[tail] if tail != NIL else 0

    def _pick_source(self, dst: int, require_age: bool) -> int:
        store = self.store
        now = store.clock()
        candidates = [c for c in store.slabs.classes[1:] if c.id != dst and len(c.pages) >= 2]
        if not candidates:
            return -1
        # a class holding a whole page worth of free chunks gives it up first
        spare = [c for c in candidates if c.free_chunks >= c.per_page]
        if spare:
            return max(spare, key=lambda c: c.free_chunks / c.per_page).id
        oldest = max(candidates, key=lambda c: self._tail_age(c.id, now))
        if require_age and store.lru.count[dst]:
            if self._tail_age(oldest.id, now) < AGE_RATIO * max(self._tail_age(dst, now), 1):
                return -1
        return oldest.id

    # -- the move itself ---------------------------------------------------------------

    def _start(self, src: int, dst: int) -> None:
        store = self.store
        slabs = store.slabs
        cls = slabs.classes[src]
        # the page holding the class's oldest item: its neighbours are likely cold too
        tail = store.lru.tail[src]
        page = slabs.id_page[tail] if tail != NIL else cls.pages[0]
        slabs.start_draining(page)
        self.moving = (page, src, dst)
        self.cursor = 0

    def _drain(self) -> None:
        page, src, dst = self.moving
        store = self.store
        slabs = store.slabs
        ids = slabs.page_ids(page)
        stop = min(self.cursor + self.chunks_per_step, len(ids))
        iflags = store.iflags
        now = store.clock()
        for i in range(self.cursor, stop):
            item = ids[i]
            if iflags[item] & LINKED:
                if store.is_dead(item, now):
                    store._reclaim(item)
                elif not self._rescue(item, src):
                    self.evictions_nomem += 1
                    store._evict(item, now)
        self.cursor = stop
        if stop == len(ids):
            slabs.take_page(page)
            slabs.assign_page(slabs.classes[dst], page)
            self.slabs_moved += 1
            self.moving = None

    def _rescue(self, item: int, cls_id: int) -> bool:
        """Copy a live item into a free chunk of its class elsewhere; False if none."""
        store = self.store
        slabs = store.slabs
        cls = slabs.classes[cls_id]
        if not cls.free_chunks:
            return False
        new = slabs.alloc(cls_id)
        total = store.item_size(item)
        src_off = slabs.id_offset[item]
        dst_off = slabs.id_offset[new]
        store.pages[slabs.id_page[new]][dst_off:dst_off + total] = \
            store.pages[slabs.id_page[item]][src_off:src_off + total]
        for arr in store.item_arrays:
            arr[new] = arr[item]
        store.index.replace(item, new)
        store.lru.replace(cls_id, item, new)
        store.iflags[item] = 0
        slabs.release(item)
        self.rescues += 1
        return True
