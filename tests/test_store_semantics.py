"""ItemStore under memory pressure: eviction order, reclaiming, -M, too-large,
and the counters staying true to what is stored.  Plus the bugs found."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import xxhash
from hypothesis import event, given, settings

from memd.cache import store as S
from memd.cache.clock import FakeClock
from memd.cache.lru import NIL
from memd.cache.slabs import BLOCK_BYTES, ID_BLOCK
from memd.cache.store import ItemStore, StoreSettings

MB = 1 << 20


def make(mem_limit=64 * MB, **kw) -> tuple[ItemStore, FakeClock]:
    clock = FakeClock()
    return ItemStore(StoreSettings(mem_limit=mem_limit, **kw), clock), clock


def linked_items(s: ItemStore) -> list[int]:
    return [i for i in range(s.slabs.n_ids) if s.iflags[i] & S.LINKED]


def first_page_costs(s: ItemStore) -> int:
    a = s.slabs
    # a page's ids come in whole blocks, each with its page number and view
    ids = [-(-c.per_page // ID_BLOCK) * ID_BLOCK for c in a.classes[1:] if c.pages]
    return sum(a.page_size + n * a.bytes_per_id + n // ID_BLOCK * BLOCK_BYTES for n in ids)


def check_consistency(s: ItemStore) -> None:
    """Every counter agrees with what the arrays actually hold."""
    items = linked_items(s)
    classes = s.slabs.classes[1:]
    assert s.curr_items == len(items) == s.index.count
    assert sum(s.lru.count) == len(items)
    assert sum(c.used for c in classes) == len(items)
    assert s.bytes == sum(s.item_size(i) for i in items)
    for c in classes:
        mine = [i for i in items if s.id_class[i] == c.id]
        assert c.used == len(mine) == s.lru.count[c.id]
        assert sorted(s.lru.items(c.id)) == sorted(mine)
        assert c.requested == sum(s.item_size(i) for i in mine)
        assert c.used + c.free_chunks == c.total_chunks
        if mine:
            assert c.chunk_size >= max(s.item_size(i) for i in mine)
            if c.id > 1:
                assert s.slabs.classes[c.id - 1].chunk_size < min(s.item_size(i) for i in mine)
    for i in items:
        key = s.key_of(i)
        assert s.index.find(key, xxhash.xxh3_64_intdigest(key)) == i
    assert s.evictions == sum(c.evicted for c in classes)
    assert s.evicted_unfetched == sum(c.evicted_unfetched for c in classes) <= s.evictions
    assert s.reclaimed == sum(c.reclaimed for c in classes)
    assert s.expired_unfetched == sum(c.expired_unfetched for c in classes) <= s.reclaimed
    assert s.crawler_reclaimed == sum(c.crawler_reclaimed for c in classes) <= s.reclaimed
    assert s.slabs.accounted <= s.settings.mem_limit + first_page_costs(s)


def watch_evictions(s: ItemStore, log: list) -> None:
    """Wrap _evict: every eviction must take the LRU tail, and only when none
    of the TAIL_SEARCH items nearest the tail could be reclaimed instead."""
    original = s._evict

    def evict(item, now):
        cls = s.id_class[item]
        assert s.lru.tail[cls] == item
        assert not any(s.is_dead(c, now) for c in s.lru.from_tail(cls, S.TAIL_SEARCH))
        log.append(s.key_of(item))
        original(item, now)

    s._evict = evict


# -- random pressure -------------------------------------------------------------

def random_ops(rnd, n, p_big, key_space):
    """A workload: mostly sets in three size bands (the big band lands in two
    classes of 8-10 chunks a page, so a small -m evicts after a few dozen
    sets), with gets, deletes, clock steps and reclaim steps mixed in."""
    ops = []
    for _ in range(n):
        r = rnd.random()
        k = rnd.randrange(key_space)
        if r < 0.6:
            band = rnd.random()
            if band < p_big:
                size = rnd.choice([100_000, 101_000, 120_000])
            elif band < 0.6:
                size = rnd.randrange(900, 1300)
            else:
                size = rnd.randrange(0, 60)
            ops.append(("set", k, size, rnd.choice([0, 0, 0, 5, 30])))
        elif r < 0.8:
            ops.append(("get", k))
        elif r < 0.9:
            ops.append(("delete", k))
        elif r < 0.95:
            ops.append(("advance", rnd.choice([1, 6, 31])))
        else:
            ops.append(("reclaim", rnd.choice([10, 1000])))
    return ops


@given(rnd=st.randoms(use_true_random=False), n=st.integers(50, 400),
       p_big=st.sampled_from([0.05, 0.2, 0.4]), key_space=st.sampled_from([50, 400]),
       bump=st.sampled_from([0, 60]), limit=st.sampled_from([1, 2 * MB, 5 * MB]))
@settings(max_examples=80, deadline=None)
def test_pressure_with_mixed_sizes_keeps_counters_true(rnd, n, p_big, key_space, bump, limit):
    ops = random_ops(rnd, n, p_big, key_space)
    s, clock = make(limit, bump_interval=bump)
    evicted: list[bytes] = []
    watch_evictions(s, evicted)
    latest: dict[bytes, bytes] = {}
    for op in ops:
        if op[0] == "set":
            _, k, size, exp = op
            key = b"key:%d" % k
            value = (b"%d:" % k) * (size // 6 + 1)
            value = value[:size]
            assert s.store(S.SET, key, k, exp, value) == S.STORED   # evictions on: never refused
            latest[key] = value
        elif op[0] == "get":
            key = b"key:%d" % op[1]
            item = s.get(key)
            if item >= 0:
                assert s.value_of(item) == latest[key]
                assert s.flags[item] == op[1]
        elif op[0] == "delete":
            s.delete(b"key:%d" % op[1])
        elif op[0] == "advance":
            clock.advance(op[1])
        else:
            s.reclaim_step(op[1])
    check_consistency(s)
    assert s.evictions == len(evicted)
    event("evicted" if evicted else "no eviction")
    event("reclaimed" if s.reclaimed else "nothing reclaimed")
    # what is stored is always the latest value of its key, never an older one
    for i in linked_items(s):
        assert s.value_of(i) == latest[bytes(s.key_of(i))]


# -- eviction order --------------------------------------------------------------

BIG = 100_000          # a value in a class of ~10 chunks per 1 MiB page


def fill_one_page(s: ItemStore, prefix=b"k", exptime=0, start=0) -> list[bytes]:
    """Store items of one big class until the class's single page is full."""
    cls = s.slabs.classes[s.slabs.class_for(BIG + 20)]
    keys = []
    i = start
    while True:
        key = prefix + b"%d" % i
        assert s.store(S.SET, key, 0, exptime, b"v" * BIG) == S.STORED
        keys.append(key)
        i += 1
        if cls.free_chunks == 0 and len(cls.pages) == 1:
            return keys


def test_lru_evicts_oldest_first_and_hits_bump():
    s, clock = make(1, bump_interval=0)     # -m tiny: each class gets one page
    keys = fill_one_page(s)
    assert s.evictions == 0
    assert s.get(keys[0]) >= 0              # a hit moves keys[0] to the head
    s.store(S.SET, b"new1", 0, 0, b"v" * BIG)
    assert s.find(keys[0]) >= 0
    assert s.find(keys[1]) == NIL           # the oldest not-hit item went
    assert s.evictions == 1 and s.evicted_unfetched == 1
    s.store(S.SET, b"new2", 0, 0, b"v" * BIG)
    assert s.find(keys[2]) == NIL
    check_consistency(s)


def test_hits_within_bump_interval_do_not_bump():
    s, clock = make(1, bump_interval=60)
    keys = fill_one_page(s)
    assert s.get(keys[0]) >= 0               # same second: no bump (memcached's 60 s rule)
    s.store(S.SET, b"new", 0, 0, b"v" * BIG)
    assert s.find(keys[0]) == NIL
    assert s.evicted_unfetched == 0          # it was fetched, though
    clock.advance(60)
    assert s.get(keys[1]) >= 0               # 60 s later a hit bumps
    s.store(S.SET, b"new2", 0, 0, b"v" * BIG)
    assert s.find(keys[1]) >= 0 and s.find(keys[2]) == NIL


def test_expired_tail_item_reclaimed_before_live_one_evicted():
    s, clock = make(1, bump_interval=0)
    old = fill_one_page(s, b"exp", exptime=10)[:3]
    # make the first three the only expired ones: rewrite the rest without expiry
    cls = s.slabs.classes[s.slabs.class_for(BIG + 20)]
    rest = [s.key_of(i) for i in s.lru.items(cls.id) if s.key_of(i) not in old]
    for k in rest:
        s.touch(k, 0)
    clock.advance(11)
    s.store(S.SET, b"fresh", 0, 0, b"v" * BIG)
    assert s.evictions == 0
    assert s.reclaimed == 1 and s.expired_unfetched == 1
    assert all(s.find(k) >= 0 for k in rest)
    check_consistency(s)


def test_expired_item_beyond_tail_search_does_not_save_the_tail():
    s, clock = make(1, bump_interval=0)
    keys = fill_one_page(s)
    n = len(keys)
    assert n > S.TAIL_SEARCH + 1
    victim = keys[S.TAIL_SEARCH + 1]          # sixth from the tail
    s.touch(victim, 1)
    clock.advance(2)
    s.store(S.SET, b"fresh", 0, 0, b"v" * BIG)
    assert s.evictions == 1                   # memcached looks at 5 tail items only
    assert s.find(keys[0]) == NIL


def test_flushed_tail_items_are_reclaimed_not_evicted():
    s, clock = make(1)
    fill_one_page(s)
    s.flush_all()
    s.store(S.SET, b"after", 0, 0, b"v" * BIG)
    assert s.evictions == 0 and s.reclaimed == 1


def test_no_evictions_mode_refuses_with_no_memory():
    s, clock = make(1, evictions=False)
    keys = fill_one_page(s)
    cls = s.slabs.classes[s.slabs.class_for(BIG + 20)]
    malloced = s.slabs.malloced
    assert s.store(S.SET, b"more", 0, 0, b"v" * BIG) == S.NO_MEMORY
    assert s.evictions == 0 and cls.outofmemory == 1
    assert all(s.find(k) >= 0 for k in keys)
    assert s.slabs.malloced == malloced
    # replacing an existing key also needs a new chunk first; the failed set
    # drops the old value, as memcached does ("avoid stale data persisting")
    assert s.store(S.SET, keys[0], 0, 0, b"w" * BIG) == S.NO_MEMORY
    assert s.find(keys[0]) < 0 and s.store_no_memory == 2
    # expired items are still reclaimed under -M (memcached does too)
    s.touch(keys[1], 1)
    clock.advance(2)
    assert s.store(S.SET, b"more", 0, 0, b"v" * BIG) == S.STORED
    # other classes still work
    assert s.store(S.SET, b"small", 0, 0, b"x") == S.STORED
    check_consistency(s)


def test_incr_growing_under_no_memory():
    s, clock = make(1, evictions=False)
    cls = s.slabs.classes[s.slabs.class_for(len(b"n 0 1\r\n9\r\n"))]
    i = 0
    while cls.free_chunks or not cls.pages:
        s.store(S.SET, b"n%d" % i, 0, 0, b"9")
        i += 1
    # growing to two digits still fits the same tiny class: moves to a new
    # chunk only if one is free; here, none is
    status, value = s.incr_decr(b"n0", 1, True)
    assert status in (S.STORED, S.NO_MEMORY)
    if status == S.NO_MEMORY:
        assert s.value_of(s.find(b"n0")) == b"9"
    check_consistency(s)


# -- too large -------------------------------------------------------------------

@pytest.mark.parametrize("item_size_max", [1024, 512 * 1024, MB, 2 * MB])
def test_too_large_threshold_is_memcacheds(item_size_max):
    s, clock = make(64 * MB, item_size_max=item_size_max)
    key = b"kk"
    # memcached: 48 header + 8 cas + key + 1 + value + 2 must fit -I
    fits = item_size_max - 48 - 8 - 1 - 2 - len(key)
    malloced, n_ids = s.slabs.malloced, s.slabs.n_ids
    assert s.store(S.SET, key, 0, 0, b"x" * (fits + 1)) == S.TOO_LARGE
    assert (s.slabs.malloced, s.slabs.n_ids) == (malloced, n_ids)   # nothing allocated
    assert s.cmd_set == 0
    assert s.store(S.SET, key, 0, 0, b"x" * fits) == S.STORED
    assert s.value_of(s.find(key)) == b"x" * fits
    check_consistency(s)


# -- reclaim_step ------------------------------------------------------------------

def test_reclaim_step_frees_expired_items_nobody_touches():
    s, clock = make()
    for i in range(3000):
        s.store(S.SET, b"t%d" % i, 0, 5 if i % 3 else 0, b"v" * (i % 50))
    clock.advance(6)
    before_free = sum(c.free_chunks for c in s.slabs.classes[1:])
    found = 0
    seen = 0
    while seen < s.slabs.n_ids:
        got = s.reclaim_step(500)
        assert got <= 500
        found += got
        seen += 500
    assert found == 2000
    assert s.curr_items == 1000
    assert s.crawler_reclaimed == 2000 and s.reclaimed == 2000
    assert sum(c.free_chunks for c in s.slabs.classes[1:]) == before_free + 2000
    assert s.get_expired == 0           # nobody asked for them
    assert all(s.find(b"t%d" % i) >= 0 for i in range(0, 3000, 3))
    check_consistency(s)


def test_reclaim_step_takes_flushed_items():
    s, clock = make()
    for i in range(100):
        s.store(S.SET, b"f%d" % i, 0, 0, b"v")
    s.flush_all()
    s.store(S.SET, b"after", 0, 0, b"v")          # same second, after the flush
    s.reclaim_step(10_000)
    assert s.curr_items == 1 and s.find(b"after") >= 0


def test_memory_is_reused_after_reclaim():
    s, clock = make(4 * MB)
    for round_ in range(6):
        for i in range(2000):
            s.store(S.SET, b"r%d:%d" % (round_, i), 0, 2, b"v" * 1000)
        clock.advance(3)
        s.reclaim_step(s.slabs.n_ids)
    assert s.evictions == 0
    check_consistency(s)


# -- memcached quirks (found as bugs, now fixed) ----------------------------------------------------------------------

def test_too_large_counts_flags_like_memcached():
    # verified against memcached 1.6.18 -I 1m: key "k", flags 1, 1048513-byte value ->
    # "SERVER_ERROR object too large for cache"; with flags 0 it is STORED
    s, clock = make(64 * MB)
    assert s.store(S.SET, b"k", 0, 0, b"x" * 1048513) == S.STORED
    assert s.store(S.SET, b"k", 1, 0, b"x" * 1048513) == S.TOO_LARGE


def test_append_past_item_size_max_is_not_stored():
    s, clock = make(64 * MB)
    assert s.store(S.SET, b"a", 0, 0, b"x" * (MB - 100)) == S.STORED
    assert s.store(S.APPEND, b"a", 0, 0, b"y" * 200) == S.NOT_STORED


def test_incr_stops_at_nul_like_memcached():
    s, clock = make()
    s.store(S.SET, b"n", 0, 0, b"5\x00abc")
    assert s.incr_decr(b"n", 1, True) == (S.STORED, 6)
    assert s.value_of(s.find(b"n")) == b"6    "


def test_reset_stats_zeroes_every_counter_it_reports():
    store = ItemStore(StoreSettings(mem_limit=4 << 20))
    for name in ItemStore.COUNTERS:
        setattr(store, name, 7)
    store.reset_stats()
    assert {name: getattr(store, name) for name in ItemStore.COUNTERS} == dict.fromkeys(
        ItemStore.COUNTERS, 0)
