"""The item store: memcached 1.6's command semantics over the slab allocator.

Synchronous and free of I/O: the protocols call it, the server never awaits
inside it.  It owns every memcached rule about items and their counters;
the protocols get result records back and only render them (the table in
docs/design.md).

Item layout in its chunk (chosen so a text ``get`` hit is one slice)::

    "VALUE " <key> " " <flags> " " <bytes> "\\r\\n" <value> "\\r\\n"
    ^0       ^6                                   ^ vstart

so ``chunk[:vstart + vlen + 2]`` is the complete reply for a hit.  The six
bytes of "VALUE " cost nothing for most items (chunk sizes step by 25%) and
save a list append and a join part per key of a multi-get.  Everything else
about an item lives in its 40-byte record, whose fields are per-id views
(``self.cas[item]``; see records.py); its page, chunk offset and class
follow from its id (slabs.py), its client flags are read from its chunk.

Time follows memcached: whole seconds from the clock, expiry times stored
as absolute Unix seconds (0 = never), ``flush_all`` recorded as an
``oldest_live`` moment plus an ``oldest_cas`` bound for same-second items.
"""

from __future__ import annotations

from dataclasses import dataclass

import xxhash

from ..numbers import strtoull
from .clock import system_clock
from .index import HASH_BITS, HashIndex
from .lru import LRU, NIL
from .recent import MAX_REPLY, SAMPLE, RecentReplies
from ..hotkeys import HotKeys
from .slabs import ID_SHIFT, SlabAllocator

END_LINE = b"END\r\n"      # what ends a get's reply (fetch_text's end_each)

# results of store()
STORED, NOT_STORED, EXISTS, NOT_FOUND, TOO_LARGE, NO_MEMORY = range(6)
# store() modes
SET, ADD, REPLACE, APPEND, PREPEND, CAS = range(6)
# results of delete() / incr_decr()
DELETED = STORED
NON_NUMERIC = 6

RESULT_NAMES = ("stored", "not_stored", "exists", "not_found", "too_large", "no_memory")
MODE_NAMES = ("set", "add", "replace", "append", "prepend", "cas")

# item flag bits (array 'B' per item)
LINKED = 1        # in the index and an LRU list
FETCHED = 2       # read at least once since stored
STALE = 4         # meta: invalidated, served stale until recached
WIN_SENT = 8      # meta: a client was handed the right to recache

KEY_OFFSET = len(b"VALUE ")   # where the key starts in a chunk
REALTIME_MAXDELTA = 60 * 60 * 24 * 30
# memcached's item header (48) + CAS (8) + key NUL (1) + value CRLF (2): its
# "too large" test is on that total, and we use the same test so the same
# values are refused by both.
MEMCACHED_ITEM_OVERHEAD = 48 + 8 + 1 + 2
TAIL_SEARCH = 5   # how far up the tail to look for an expired item before evicting

_hash = xxhash.xxh3_64_intdigest


@dataclass
class StoreSettings:
    mem_limit: int = 64 << 20
    item_size_max: int = 1 << 20
    factor: float = 1.25
    min_size: int = 48
    evictions: bool = True
    bump_interval: int = 60     # seconds between LRU bumps of one item (memcached's ITEM_UPDATE_INTERVAL)
    recent_bytes: int = -1      # budget of RecentReplies; -1: a sixteenth of mem_limit


class ItemStore:
    # the `stats` counters: reset_stats zeroes each one, snapshots save them
    COUNTERS = (
        "cmd_get", "cmd_set", "cmd_touch", "cmd_flush", "get_hits", "get_misses",
        "get_expired", "get_flushed", "delete_hits", "delete_misses", "incr_hits",
        "incr_misses", "decr_hits", "decr_misses", "cas_hits", "cas_misses",
        "cas_badval", "touch_hits", "touch_misses", "evictions", "reclaimed",
        "expired_unfetched", "evicted_unfetched", "evicted_active", "total_items",
        "crawler_reclaimed", "store_too_large", "store_no_memory",
    )

    def __init__(self, settings: StoreSettings | None = None, clock=None) -> None:
        self.settings = s = settings or StoreSettings()
        self.clock = clock or system_clock
        self.started = self.clock()
        self.slabs = slabs = SlabAllocator(s.mem_limit, s.item_size_max, s.factor, s.min_size)
        self.pages = slabs.pages
        self.id_class = slabs.id_class
        self._block_view = slabs.block_view      # per id block: its page's view
        rec = slabs.records
        self.lru = LRU(len(slabs.sizes), rec.prev, rec.next)
        self.index = HashIndex(self._key_is, hashes=rec.hash, chain=rec.chain, klen=rec.klen)
        self.klen = rec.klen
        self.flags = _FlagsOf(self)              # read from the chunk (records.py)
        self.exptime = rec.exptime
        self.atime = rec.atime
        self.cas = rec.cas
        self.vstart = rec.vstart
        self.vlen = rec.vlen
        self.iflags = rec.iflags
        # what describes an item, copied when it moves to another chunk
        self.item_arrays = (self.klen, self.exptime, self.atime, self.cas,
                            self.vstart, self.vlen, self.iflags)
        self.rebalancer = None     # set by cache.rebalance.Rebalancer
        self.watch = None          # a memd.watch.WatchHub when the node has one
        self.detail = None         # a PrefixStats while `stats detail on`
        self.crawl_requested = False
        self.text_bytes = 0        # what the last fetch_text appended, in bytes
        self.next_cas = 1
        self.oldest_live = 0
        self.oldest_cas = 0
        self.curr_items = 0
        self.bytes = 0
        self.reclaim_cursor = 0
        # a list, not an array("Q"): a multi-get bumps one per hit, and an
        # array's read-modify-write (unbox, box) was 7% of its instructions
        self.class_get_hits = [0] * len(slabs.classes)
        # the arrays the read path needs, fetched with one attribute load (they
        # only ever grow in place, so the tuple stays valid)
        self._hot_arrays = (self.index.hash, self.klen, slabs.block_view,
                            self.vstart, self.vlen, self.exptime, self.atime, self.iflags)
        self.recent = RecentReplies(s.recent_bytes if s.recent_bytes >= 0 else s.mem_limit // 16)
        self._recent_flush_at = 0      # when a delayed flush_all takes effect
        self.hotkeys = HotKeys()       # the most requested keys (memd/hotkeys.py)
        self.reset_stats()

    def reset_stats(self) -> None:
        # The `stats` counters (the names in COUNTERS), plain int attributes:
        # the request paths bump them as self.<name> += 1, nothing in between.
        self.cmd_get: int = 0
        self.cmd_set: int = 0
        self.cmd_touch: int = 0
        self.cmd_flush: int = 0
        self.get_hits: int = 0
        self.get_misses: int = 0
        self.get_expired: int = 0
        self.get_flushed: int = 0
        self.delete_hits: int = 0
        self.delete_misses: int = 0
        self.incr_hits: int = 0
        self.incr_misses: int = 0
        self.decr_hits: int = 0
        self.decr_misses: int = 0
        self.cas_hits: int = 0
        self.cas_misses: int = 0
        self.cas_badval: int = 0
        self.touch_hits: int = 0
        self.touch_misses: int = 0
        self.evictions: int = 0
        self.reclaimed: int = 0
        self.expired_unfetched: int = 0
        self.evicted_unfetched: int = 0
        self.evicted_active: int = 0
        self.total_items: int = 0
        self.crawler_reclaimed: int = 0
        self.store_too_large: int = 0
        self.store_no_memory: int = 0
        if self.detail is not None:
            self.detail.clear()
        for cls in self.slabs.classes[1:]:
            cls.reset_counters()
        for i in range(len(self.class_get_hits)):
            self.class_get_hits[i] = 0

    # -- small helpers ---------------------------------------------------------

    def _key_is(self, item: int, key: bytes) -> bool:
        """Whether the item's key starts with ``key`` (the index has checked
        the length): compared in the page, no slice made."""
        page, first, chunk, _ = self._block_view[item >> ID_SHIFT]
        return page.startswith(key, (item - first) * chunk + KEY_OFFSET)

    def _chunk(self, item: int) -> tuple[bytearray, int]:
        """The item's page and where its chunk starts in it (one read of its
        block's view; the hot paths below write this out inline)."""
        page, first, chunk, _ = self._block_view[item >> ID_SHIFT]
        return page, (item - first) * chunk

    def _key_at(self, item: int, n: int) -> bytes:
        page, off = self._chunk(item)
        off += KEY_OFFSET
        return page[off:off + n]

    def abs_exptime(self, exptime: int, now: int) -> int:
        """memcached's realtime(): client exptime → absolute seconds (0 = never)."""
        if exptime == 0:
            return 0
        if exptime < 0:
            return 1            # already expired
        if exptime > REALTIME_MAXDELTA:
            return exptime if exptime > self.started else 1
        return now + exptime

    def is_dead(self, item: int, now: int) -> int:
        """0 if live, 1 if expired, 2 if flushed."""
        exp = self.exptime[item]
        if exp and exp <= now:
            return 1
        ol = self.oldest_live
        if ol and ol <= now and (self.atime[item] <= ol or
                                 (self.oldest_cas and self.cas[item] < self.oldest_cas)):
            return 2
        return 0

    def new_cas(self) -> int:
        c = self.next_cas
        self.next_cas = c + 1
        return c

    # -- linking ---------------------------------------------------------------

    def invalidate(self, item: int, key: bytes | None = None) -> None:
        """What a get of this item answers is about to change (its chunk is
        rewritten or released, or its expiry moves): drop its recent reply.
        Callers that have the key pass it, saving a read of the page."""
        if self.recent.replies:
            if type(key) is not bytes:      # none given, or a bytearray/memoryview
                key = bytes(self._key_at(item, self.klen[item]))
            self.recent.forget(key)

    def set_exptime(self, item: int, exptime: int) -> None:
        """Give a live item a new absolute expiry time (0 = never)."""
        self.invalidate(item)
        self.exptime[item] = exptime

    def _unlink(self, item: int, key: bytes | None = None) -> None:
        self.invalidate(item, key)
        cls_id = self.slabs.class_of(item)
        self.index.remove(item)
        self.lru.unlink(cls_id, item)
        total = self.vstart[item] + self.vlen[item] + 2
        cls = self.slabs.classes[cls_id]
        cls.requested -= total
        self.bytes -= total
        self.curr_items -= 1
        self.iflags[item] = 0
        self.slabs.release(item)

    def drop(self, item: int) -> None:
        """Remove an item without counting a delete (a refused meta set drops
        the old value, as memcached does)."""
        self._unlink(item)

    def _reclaim(self, item: int) -> None:
        """Unlink an expired or flushed item found in passing."""
        cls = self.slabs.classes[self.id_class[item]]
        cls.reclaimed += 1
        self.reclaimed += 1
        if not self.iflags[item] & FETCHED:
            cls.expired_unfetched += 1
            self.expired_unfetched += 1
        self._unlink(item)

    def _evict(self, item: int, now: int) -> None:
        cls = self.slabs.classes[self.id_class[item]]
        cls.evicted += 1
        self.evictions += 1
        cls.evicted_time = now - self.atime[item]
        if self.exptime[item]:
            cls.evicted_nonzero += 1
        if not self.iflags[item] & FETCHED:
            cls.evicted_unfetched += 1
            self.evicted_unfetched += 1
        if self.watch:
            exp = self.exptime[item]
            self.watch.emit("evictions", "type=eviction key=%s fetch=%s ttl=%d la=%d clsid=%d"
                            % (self.key_of(item).decode("latin-1"),
                               "yes" if self.iflags[item] & FETCHED else "no",
                               exp - now if exp else -1, self.atime[item], cls.id))
        self._unlink(item)

    def _alloc(self, cls_id: int, now: int) -> int:
        """A chunk of the class: free, new, reclaimed from the tail, or evicted."""
        item = self.slabs.alloc(cls_id)
        if item >= 0:
            return item
        for cand in self.lru.from_tail(cls_id, TAIL_SEARCH):
            if self.is_dead(cand, now):
                self._reclaim(cand)
                return self.slabs.alloc(cls_id)
        tail = self.lru.tail[cls_id]
        if tail == NIL or not self.settings.evictions:
            self.slabs.classes[cls_id].outofmemory += 1
            return -1
        self._evict(tail, now)
        return self.slabs.alloc(cls_id)

    def find(self, key: bytes, now: int | None = None) -> int:
        """The live item for ``key`` or -1; dead items met are reclaimed."""
        if now is None:
            now = self.clock()
        item = self.index.find(key, _hash(key))
        if item != NIL and self.is_dead(item, now):
            self._reclaim(item)
            return NIL
        return item

    def find_for_get(self, key: bytes, now: int) -> int:
        self.hotkeys.count(key)
        item = self.index.find(key, _hash(key))
        if item != NIL:
            dead = self.is_dead(item, now)
            if dead:
                if dead == 1:
                    self.get_expired += 1
                else:
                    self.get_flushed += 1
                self._reclaim(item)
                return NIL
        return item

    def _touched(self, item: int, now: int) -> None:
        """Mark a hit: fetched, and bumped to the LRU head at most every interval."""
        self.iflags[item] |= FETCHED
        if now - self.atime[item] >= self.settings.bump_interval:
            self.atime[item] = now
            self.lru.bump(self.slabs.class_of(item), item)

    def _write(self, key: bytes, flags: int, exp: int, value, now: int, cas: int = 0) -> int:
        """Allocate and fill a new item (not yet linked); -1 if no memory."""
        klen = len(key)
        vlen = len(value)
        # the whole chunk text in one piece: one slice write instead of three
        text = b"VALUE %s %d %d\r\n%s\r\n" % (key, flags, vlen, value)
        total = len(text)
        vstart = total - vlen - 2
        cls_id = self.slabs.class_for(total)
        item = self._alloc(cls_id, now)
        if item < 0:
            return -1
        page, first, chunk, _ = self._block_view[item >> ID_SHIFT]
        off = (item - first) * chunk
        page[off:off + total] = text
        self.klen[item] = klen
        self.vstart[item] = vstart
        self.vlen[item] = vlen
        self.exptime[item] = exp
        self.atime[item] = now
        self.cas[item] = cas or self.new_cas()
        return item

    def _link(self, item: int, key: bytes) -> None:
        cls_id = self.slabs.class_of(item)
        self.index.insert(item, _hash(key))
        self.lru.link(cls_id, item)
        self.iflags[item] = LINKED
        total = self.vstart[item] + self.vlen[item] + 2
        self.slabs.classes[cls_id].requested += total
        self.bytes += total
        self.curr_items += 1
        self.total_items += 1

    def _replace(self, old: int, new: int, key: bytes) -> None:
        # the allocation may have evicted ``old`` itself (it can be the tail)
        if old >= 0 and self.iflags[old] & LINKED and old != new:
            self._unlink(old, key)
        self._link(new, key)

    # -- item accessors (for the protocols) ------------------------------------

    def key_of(self, item: int) -> bytes:
        return self._key_at(item, self.klen[item])

    def value_of(self, item: int) -> bytes:
        page, off = self._chunk(item)
        off += self.vstart[item]
        return bytes(page[off:off + self.vlen[item]])

    def value_view(self, item: int) -> memoryview:
        """The value without copying (valid until the item changes)."""
        page, off = self._chunk(item)
        off += self.vstart[item]
        return memoryview(page)[off:off + self.vlen[item]]

    def value_line(self, item: int) -> bytes:
        """The value and its CRLF (meta's ``mg`` with ``v``; ``_chunk`` written
        out, as on every per-get path: with the one in ``flags``, 3% of an ``mg``)."""
        page, first, chunk, _ = self._block_view[item >> ID_SHIFT]
        off = (item - first) * chunk + self.vstart[item]
        return page[off:off + self.vlen[item] + 2]

    def text_value(self, item: int) -> bytes:
        """``VALUE <key> <flags> <bytes>\\r\\n<value>\\r\\n``: a get hit's reply."""
        page, off = self._chunk(item)
        return page[off:off + self.vstart[item] + self.vlen[item] + 2]

    def ttl_of(self, item: int, now: int | None = None) -> int:
        """Seconds left to live, -1 for never (meta's t flag)."""
        exp = self.exptime[item]
        if not exp:
            return -1
        if now is None:
            now = self.clock()
        return max(exp - now, 0)

    def item_size(self, item: int) -> int:
        return self.vstart[item] + self.vlen[item] + 2

    def too_large(self, klen: int, vlen: int, flags: int = 0) -> bool:
        """memcached's test: its item header grows by 4 bytes for non-zero flags."""
        return (MEMCACHED_ITEM_OVERHEAD + klen + vlen + (4 if flags else 0)
                > self.settings.item_size_max)

    # -- commands ----------------------------------------------------------------

    def fetch_text(self, keys, out: list, with_cas: bool = False, end_each: bool = False,
                   budget: int = 1 << 62, cfd: int = 0, joined: bool = False) -> int:
        """The text get/gets hot path: append one VALUE block per hit to ``out``;
        return how many keys were looked up.

        With ``end_each`` every key is its own single-key get and gets its own
        END (the parser batches a pipeline of those into one call, and the
        server a pass's lone gets).  With ``joined`` as well, each key leaves
        exactly one chunk, its VALUE block and END together, so the server
        pairs chunks with connections by ``zip`` (not with ``with_cas``).  A
        pipeline's chunks are joined into one reply anyway, so there the
        block and its END stay apart rather than be copied once more.  Once the
        replies appended reach ``budget`` bytes the lookups stop (after the
        reply that reached it): the connection's output bound.  ``keys`` may be
        an iterator; a stopped one goes on where it stopped.  A list of keys
        too short for recent replies (each at most MAX_REPLY) to reach half
        the budget is checked against it only after full lookups.
        ``text_bytes`` is left holding the exact bytes appended, so neither
        the output bound nor the server adds up the chunks' lengths again
        (two ``sum(map(len, ...))`` passes over a 100-key reply were 13% of
        mget100's instructions).

        A key read lately is answered from ``recent`` (see recent.py): one
        dict lookup.  Any other key takes the full lookup, inlined with
        everything in locals (this loop is what a multi-get spends its time
        in), and a hit is offered to ``recent``.
        """
        if keys.__class__ is list:
            # a whole request's keys; an iterator continues a multi-get the
            # output bound stopped, whose keys were counted by its first call
            self.hotkeys.count_many(keys)
        now = self.clock()
        recent = self.recent
        if self._recent_flush_at and self._recent_flush_at <= now:
            recent.clear()               # a delayed flush_all took effect
            self._recent_flush_at = 0
        remember = recent.active and not (with_cas or self.watch or self.detail)
        recent_get = recent.replies.get
        class_hits = self.class_get_hits
        append = out.append
        hits = recent_hits = misses = size = 0
        full_path = False
        counted = type(keys) is not list or len(keys) * MAX_REPLY > budget >> 1
        if not counted:
            budget >>= 1
        for key in keys:
            # (asked only when remembering: a resting or unused dict lookup
            # that misses was 3% of a multi-get over a large store)
            if remember and (entry := recent_get(key)) is not None and now < entry[1]:
                recent_hits += 1
                class_hits[entry[2]] += 1
                if end_each:
                    if joined:
                        append(entry[0] + END_LINE)
                    else:
                        append(entry[0])
                        append(END_LINE)
                    size += entry[3] + 5
                else:
                    append(entry[0])
                    size += entry[3]
                if counted and size >= budget:
                    break
                continue
            if not full_path:
                # set up the full lookup only once a key needs it: a read
                # answered from recent replies alone skips this
                full_path = True
                add = recent.add
                sampling, skipped = recent.sampling, recent.skipped
                index = self.index
                old = index.old
                buckets, mask = index.buckets, index.mask
                old_mask, migrated = index.old_mask, index.migrated
                (hashes, klen, block_view,
                 vstart, vlen, exptime, atime, iflags) = self._hot_arrays
                chain = index.chain
                oldest_live = self.oldest_live
                if oldest_live > now:
                    oldest_live = 0
                bump_interval = self.settings.bump_interval
                bump_before = now - bump_interval
                watching = self.watch is not None or self.detail is not None
            h = _hash(key) & HASH_BITS
            if old is not None and (h & old_mask) >= migrated:
                item = old[h & old_mask]
            else:
                item = buckets[h & mask]
            # the record's fields share a cache line; the chunk is the only
            # other line a hit reads
            while item != NIL:
                if hashes[item] == h and klen[item] == len(key):
                    page, first, chunk, cls_id = block_view[item >> ID_SHIFT]
                    off = (item - first) * chunk
                    # startswith compares in place: no slice object per lookup
                    if page.startswith(key, off + KEY_OFFSET):
                        break
                item = chain[item]
            else:
                item = NIL
            if item != NIL:
                exp = exptime[item]
                if (exp and exp <= now) or (oldest_live and self.is_dead(item, now)):
                    self.find_for_get(key, now)      # counts and reclaims it
                    item = NIL
            if item == NIL:
                misses += 1
                if end_each:
                    append(END_LINE)
                    size += 5
                if watching:
                    self._fetched(key, NIL, cfd)
                continue
            hits += 1
            class_hits[cls_id] += 1
            if not iflags[item] & FETCHED:
                iflags[item] |= FETCHED
            if atime[item] <= bump_before:
                atime[item] = now
                self.lru.bump(cls_id, item)
            vs = vstart[item]
            if with_cas:
                append(page[off:off + vs - 2])
                cas_end = b" %d\r\n" % self.cas[item]
                append(cas_end)
                append(page[off + vs:off + vs + vlen[item] + 2])
                size += vs + vlen[item] + len(cas_end)
                if end_each:
                    append(END_LINE)
                    size += 5
            else:
                reply = page[off:off + vs + vlen[item] + 2]
                if end_each:
                    if joined:
                        append(reply + END_LINE)
                    else:
                        append(reply)
                        append(END_LINE)
                    size += len(reply) + 5
                else:
                    append(reply)
                    size += len(reply)
                if remember:
                    # recent.admit's sampling, inlined (a call per key was 14%
                    # of this loop): while the replies are not earning their
                    # keep, only one miss in SAMPLE is added
                    if not sampling or skipped >= SAMPLE - 1:
                        skipped = 0
                        # usable until the item expires or is due for its next bump
                        until = atime[item] + bump_interval
                        add(key, reply, exp if exp and exp < until else until, cls_id)
                    else:
                        skipped += 1
            if watching:
                self._fetched(key, item, cfd)
            if size >= budget:
                break
        self.text_bytes = size
        n = hits + recent_hits + misses
        if remember:
            recent.hits += recent_hits
            if full_path:
                recent.skipped = skipped
        elif recent.resting:
            # the rest counts down (recent.py); once out, a new sampled round,
            # so a load that has become hot gets back in
            recent.resting -= n
            if recent.resting <= 0:
                recent.rest(0)
        self.cmd_get += n
        self.get_hits += hits + recent_hits
        self.get_misses += misses
        return n

    def _fetched(self, key: bytes, item: int, cfd: int) -> None:
        """What a get tells the watchers and the prefix stats (when either is on).
        ``cfd``: the asking connection's fd, for the watch line's cfd=."""
        if self.detail is not None:
            self.detail.record_get(key, item != NIL)
        if self.watch:
            self._emit_fetch(key, item, cfd)

    def _emit_fetch(self, key: bytes, item: int, cfd: int) -> None:
        watch = self.watch
        if item == NIL:
            watch.emit("fetchers", "type=item_get key=%s status=not_found clsid=0 cfd=%d size=0"
                       % (key.decode("latin-1"), cfd))
        else:
            watch.emit("fetchers", "type=item_get key=%s status=found clsid=%d cfd=%d size=%d"
                       % (key.decode("latin-1"), self.id_class[item], cfd,
                          self.vlen[item]))

    def _emit_store(self, mode: int, key: bytes, result: int, value_len: int,
                    cfd: int) -> None:
        watch = self.watch
        item = self.index.find(key, _hash(key))
        cls_id = self.id_class[item] if item != NIL else 0
        ttl = self.ttl_of(item) if item != NIL else 0
        watch.emit("mutations", "type=item_store key=%s status=%s cmd=%s ttl=%d clsid=%d cfd=%d size=%d"
                   % (key.decode("latin-1"), RESULT_NAMES[result], MODE_NAMES[mode],
                      max(ttl, 0), cls_id, cfd, value_len))

    def get(self, key: bytes, touch_exptime: int | None = None, cfd: int = 0) -> int:
        """One counted get (gat when ``touch_exptime`` is given): item or -1.

        As in memcached 1.6.18, a gat counts as a touch only, not as a get
        (but `stats detail` counts it as a get)."""
        return self._lookup(key, touch_exptime, True, cfd)

    def _lookup(self, key: bytes, touch_exptime: int | None, observed: bool,
                cfd: int = 0) -> int:
        now = self.clock()
        item = self.find_for_get(key, now)
        if observed and (self.watch or self.detail is not None):
            self._fetched(key, item, cfd)
        touched = touch_exptime is not None
        if item == NIL:
            self.miss(touched)
            return NIL
        if touched:
            self.set_exptime(item, self.abs_exptime(touch_exptime, now))
        self.hit(item, now, touched)
        return item

    def hit(self, item: int, now: int, touched: bool = False, bump: bool = True) -> None:
        """Count a get (or touch) hit, and bump the item unless ``bump`` is False
        (meta's u flag).  The one place these are counted, but for fetch_text's
        inlined hot loop."""
        if touched:
            self.cmd_touch += 1
            self.touch_hits += 1
            self.slabs.classes[self.id_class[item]].touch_hits += 1
        else:
            self.cmd_get += 1
            self.get_hits += 1
            self.class_get_hits[self.id_class[item]] += 1
        if bump:
            self._touched(item, now)

    def miss(self, touched: bool = False) -> None:
        if touched:
            self.cmd_touch += 1
            self.touch_misses += 1
        else:
            self.cmd_get += 1
            self.get_misses += 1

    def store(self, mode: int, key: bytes, flags: int, exptime: int, value, cas: int = 0,
              counted: bool = True, detail: bool = True, cfd: int = 0) -> int:
        """set/add/replace/append/prepend/cas. Returns STORED, NOT_STORED,
        EXISTS, NOT_FOUND, TOO_LARGE or NO_MEMORY (``write`` also gives the
        new CAS).

        ``counted=False`` stores without counting a ``cmd_set`` (meta's vivify
        on miss creates items that memcached does not count as sets)."""
        return self.write(mode, key, flags, exptime, value, cas, counted, detail, cfd)[0]

    def write(self, mode: int, key: bytes, flags: int, exptime: int, value, cas: int = 0,
              counted: bool = True, detail: bool = True, cfd: int = 0) -> tuple[int, int]:
        """``store`` with its result record: (result, the new CAS or 0).

        Owns the refusals: a value too large (counted in store_too_large), no
        memory (store_no_memory; a failed set drops the old value so that it
        cannot be served stale, as memcached does), and an append or prepend
        whose combined value does not fit (NOT_STORED, uncounted).
        ``detail=False``: not counted in `stats detail` (meta's ms).  ``cfd``:
        the writing connection's fd, for a watch line's cfd= (as in every
        call that can produce one)."""
        if detail and self.detail is not None:
            self.detail.record_set(key)
        result, new_cas = self._store(mode, key, flags, exptime, value, cas, counted)
        if result == NO_MEMORY:
            if mode == APPEND or mode == PREPEND:
                result = NOT_STORED
            else:
                self.store_no_memory += 1
                if mode == SET:
                    old = self.find(key)
                    if old >= 0:
                        self._unlink(old, key)
        elif result == TOO_LARGE:
            self.store_too_large += 1
        if self.watch:
            self._emit_store(mode, key, result, len(value), cfd)
        return result, new_cas

    def refuse_too_large(self, key: bytes, drop_old: bool, counted: bool = True,
                         detail: bool = True) -> None:
        """A value refused before it was read (too large): counted (memcached's
        binary protocol does not count it), and with ``drop_old`` the key's
        current value is unlinked (not counted as a delete), so a client whose
        set failed does not read the old one."""
        if counted:
            self.store_too_large += 1
        if detail and self.detail is not None:
            self.detail.record_set(key)
        if drop_old:
            old = self.find(key)
            if old >= 0:
                self._unlink(old, key)

    def _store(self, mode: int, key: bytes, flags: int, exptime: int, value, cas: int,
               counted: bool) -> tuple[int, int]:
        if self.too_large(len(key), len(value), flags):
            return TOO_LARGE, 0
        now = self.clock()
        old = self.find(key, now)
        if counted:
            self.cmd_set += 1
            if old >= 0:
                # (the class from the page's view: id_class[] is a Python call)
                self.slabs.classes[self._block_view[old >> ID_SHIFT][3]].cmd_set += 1
        if mode == SET:
            pass
        elif mode == ADD:
            if old >= 0:
                # memcached bumps the existing item on a failed add
                self._touched_update(old, now)
                return NOT_STORED, 0
        elif mode == REPLACE:
            if old < 0:
                return NOT_STORED, 0
        elif mode == CAS:
            if old < 0:
                self.cas_misses += 1
                return NOT_FOUND, 0
            if self.cas[old] != cas:
                self.cas_badval += 1
                self.slabs.classes[self.id_class[old]].cas_badval += 1
                return EXISTS, 0
            self.cas_hits += 1
            self.slabs.classes[self.id_class[old]].cas_hits += 1
        else:  # APPEND / PREPEND keep the old flags and expiry
            if old < 0:
                return NOT_STORED, 0
            if cas and self.cas[old] != cas:
                return EXISTS, 0
            current = self.value_of(old)
            value = current + bytes(value) if mode == APPEND else bytes(value) + current
            if self.too_large(len(key), len(value), self.flags[old]):
                return NOT_STORED, 0    # memcached: the allocation fails inside the store

            return self._store_new(old, key, self.flags[old], self.exptime[old], value, now)
        exp = self.abs_exptime(exptime, now)
        # (under -M memcached refuses a replacement when no chunk is free; the
        # in-place path would hide that, so it is only taken with evictions on)
        if old >= 0 and self.settings.evictions and self._overwrite(old, key, flags, exp, value, now):
            return STORED, self.cas[old]
        return self._store_new(old, key, flags, exp, value, now)

    def _store_new(self, old: int, key: bytes, flags: int, exp: int, value,
                   now: int) -> tuple[int, int]:
        """Write the item to a new chunk and put it in place of ``old`` (or -1)."""
        new = self._write(key, flags, exp, value, now)
        if new < 0:
            return NO_MEMORY, 0
        self._replace(old, new, key)
        return STORED, self.cas[new]

    def _overwrite(self, item: int, key: bytes, flags: int, exp: int, value, now: int) -> bool:
        """Replace an item's value in its own chunk when the new one fits the
        same class: no allocation, no index or free-list traffic.  The item
        is otherwise new: fresh CAS, flags, expiry, unfetched, LRU head."""
        klen = self.klen[item]
        vlen = len(value)
        # what follows the key, in one piece (one slice write instead of three)
        tail = b" %d %d\r\n%s\r\n" % (flags, vlen, value)
        total = KEY_OFFSET + klen + len(tail)
        vstart = total - vlen - 2
        # (slabs.class_of and offset_of, from one read of the page's view)
        page, first, chunk, cls_id = self._block_view[item >> ID_SHIFT]
        if total > chunk or (cls_id > 1 and total <= self.slabs.sizes[cls_id - 2]):
            return False        # it belongs in another class
        self.invalidate(item, key)
        cls = self.slabs.classes[cls_id]
        off = (item - first) * chunk
        page[off + KEY_OFFSET + klen:off + total] = tail
        old_total = self.vstart[item] + self.vlen[item] + 2
        cls.requested += total - old_total
        self.bytes += total - old_total
        self.vstart[item] = vstart
        self.vlen[item] = vlen
        self.exptime[item] = exp
        self.atime[item] = now
        self.cas[item] = self.new_cas()
        self.iflags[item] = LINKED
        self.lru.bump(cls_id, item)
        self.total_items += 1
        return True

    def _touched_update(self, item: int, now: int) -> None:
        if now - self.atime[item] >= self.settings.bump_interval:
            self.atime[item] = now
            self.lru.bump(self.id_class[item], item)

    def delete(self, key: bytes, cas: int = 0, detail: bool = True,
               bad_cas_is_miss: bool = False) -> int:
        """DELETED, NOT_FOUND, or EXISTS (CAS given and different).
        ``detail=False``: not counted in `stats detail`; ``bad_cas_is_miss``:
        a CAS mismatch counts a delete miss (both meta's md, as memcached)."""
        if detail and self.detail is not None:
            self.detail.record_delete(key)
        item = self.find(key)
        if item < 0:
            self.delete_misses += 1
            return NOT_FOUND
        if cas and self.cas[item] != cas:
            if bad_cas_is_miss:
                self.delete_misses += 1
            return EXISTS
        self.delete_hits += 1
        self.slabs.classes[self.id_class[item]].delete_hits += 1
        self._unlink(item, key)
        return DELETED

    def invalidate_stale(self, key: bytes, cas: int = 0, exptime: int | None = None) -> int:
        """Meta's md with I: keep the item but mark it stale (served with X,
        one client told to recache with W), give it a new CAS and optionally
        a new expiry.  DELETED, NOT_FOUND or EXISTS (CAS given and different),
        misses counted as md counts them."""
        now = self.clock()
        item = self.find(key, now)
        if item < 0 or (cas and self.cas[item] != cas):
            self.delete_misses += 1
            return NOT_FOUND if item < 0 else EXISTS
        if exptime is not None:
            self.set_exptime(item, exptime)
        self.iflags[item] = (self.iflags[item] | STALE) & ~WIN_SENT
        self.invalidate(item, key)
        self.cas[item] = self.new_cas()
        return DELETED

    def incr_decr(self, key: bytes, delta: int, incr: bool, cas: int = 0, cfd: int = 0):
        """(STORED, new value) or (NOT_FOUND | NON_NUMERIC | EXISTS | NO_MEMORY, None)."""
        return self.arith(key, delta, incr, cas, cfd=cfd)[:2]

    def arith(self, key: bytes, delta: int, incr: bool, cas: int = 0, create=None,
              cfd: int = 0):
        """incr/decr with its result record: (result, value, new CAS, created).

        result is STORED (value: the new number), NOT_FOUND, NON_NUMERIC (an
        empty value is, before any CAS test, as memcached checks it), EXISTS
        (``cas`` given and different) or NO_MEMORY.  ``create=(initial,
        exptime)`` makes a miss create the item holding ``initial`` (binary
        incr with an expiry, meta's N): then no miss is counted, nor a set.
        A miss that cannot be created is NOT_STORED.

        (memcached rewrites in place only when no one else holds a reference
        to the item, e.g. a reply still being sent; memd always can.)"""
        now = self.clock()
        item = self.find(key, now)
        if item < 0:
            if create is None:
                if incr:
                    self.incr_misses += 1
                else:
                    self.decr_misses += 1
                return NOT_FOUND, None, 0, False
            initial, exptime = create
            digits = b"%d" % initial
            result, new_cas = self._store(ADD, key, 0, exptime, digits, 0, False)
            if self.watch:
                self._emit_store(ADD, key, result, len(digits), cfd)
            if result != STORED:
                return NOT_STORED, None, 0, False       # (no memory: nothing else can refuse it)
            return STORED, initial, new_cas, True
        vlen = self.vlen[item]
        if not vlen:
            return NON_NUMERIC, None, 0, False
        if cas and self.cas[item] != cas:
            return EXISTS, None, 0, False
        # C reads the number up to a NUL, so "5\0abc" is 5 there too
        current = strtoull(self.value_of(item).split(b"\0", 1)[0])
        if current is None:
            return NON_NUMERIC, None, 0, False
        cls = self.slabs.classes[self.id_class[item]]
        if incr:
            value = (current + delta) & 0xFFFFFFFFFFFFFFFF
            self.incr_hits += 1
            cls.incr_hits += 1
        else:
            value = current - delta if delta < current else 0
            self.decr_hits += 1
            cls.decr_hits += 1
        digits = b"%d" % value
        # memcached reads the item with DONT_UPDATE (no fetched mark) and
        # then bumps it (do_item_update)
        self._touched_update(item, now)
        if len(digits) <= vlen:
            # memcached rewrites in place, padding with spaces to the old length
            page, off = self._chunk(item)
            off += self.vstart[item]
            self.invalidate(item, key)
            page[off:off + vlen] = digits.ljust(vlen)
            self.cas[item] = self.new_cas()
            return STORED, value, self.cas[item], False
        new = self._write(key, self.flags[item], self.exptime[item], digits, now)
        if new < 0:
            return NO_MEMORY, None, 0, False
        self._replace(item, new, key)
        return STORED, value, self.cas[new], False

    def touch(self, key: bytes, exptime: int) -> int:
        """The item with its expiry replaced, or -1.  Counted as a touch; a
        dead item met counts in get_expired/get_flushed, as every memcached
        lookup does (not a fetch for watchers or `stats detail`)."""
        return self._lookup(key, exptime, False)

    def flush_all(self, delay: int = 0) -> None:
        """Invalidate everything stored before now (or before now + delay)."""
        now = self.clock()
        self.cmd_flush += 1
        if delay > 0:
            self.oldest_live = self.abs_exptime(delay, now) - 1
        else:
            self.oldest_live = now - 1
        if self.oldest_live <= now:
            self.oldest_cas = self.next_cas
            self.recent.clear()
        else:
            self._recent_flush_at = self.oldest_live

    # -- background work -------------------------------------------------------

    def reclaim_step(self, budget: int = 2000) -> int:
        """Look at up to ``budget`` chunks, reclaiming expired or flushed items.

        The server calls this from a timer, so expired items free their memory
        without being touched; a rolling cursor bounds the work per call.
        """
        n = self.slabs.n_ids
        if not n:
            return 0
        if self.crawl_requested:
            budget *= 10             # `lru_crawler crawl`: a faster full pass
        now = self.clock()
        iflags = self.iflags
        cursor = self.reclaim_cursor
        found = 0
        for _ in range(min(budget, n)):
            if cursor >= n:
                cursor = 0
                self.crawl_requested = False
            if iflags[cursor] & LINKED and self.is_dead(cursor, now):
                cls = self.slabs.classes[self.id_class[cursor]]
                cls.crawler_reclaimed += 1
                self.crawler_reclaimed += 1
                self._reclaim(cursor)
                found += 1
            cursor += 1
        self.reclaim_cursor = cursor
        self.index.migrate(64)
        return found

    def items_of_class(self, cls_id: int):
        """Live item ids of a class, most recent first (for dumps and stats)."""
        return self.lru.items(cls_id)


class _FlagsOf:
    """``flags[item]``: an item's client flags, read from the digits of its
    VALUE line.  They are not in the record (4 bytes an item saved; see
    records.py): a text get never needs them as a number, and the meta,
    binary and snapshot paths that do pay a parse."""

    __slots__ = ("store",)

    def __init__(self, store: ItemStore) -> None:
        self.store = store

    def __getitem__(self, item: int) -> int:
        store = self.store
        # (store._chunk written out: meta's f and every binary get ask this)
        page, first, chunk, _ = store._block_view[item >> ID_SHIFT]
        start = (item - first) * chunk + KEY_OFFSET + store.klen[item] + 1
        if page[start] == 48:       # b"0": the digits never have a leading zero
            return 0
        return int(page[start:page.index(b" ", start)])
