"""The slab allocator: class sizes, chunk hand-out, reuse and the -m bound."""

from __future__ import annotations

from array import array

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from memd.cache.records import RECORD
from memd.cache.slabs import (BLOCK_BYTES, CHUNK_ALIGN, ID_BLOCK, MAX_CLASSES, MEMCACHED_ITEM_HEADER, PAGE_SIZE,
                              SlabAllocator, class_sizes)

# `memcached -vv` (1.6.18) prints its classes at start-up; below its largest
# chunk (slab_chunk_size_max = page/2, where memcached starts chaining chunks)
# memd's sizes must be the same numbers, so `stats slabs` reads the same.
MEMCACHED_DEFAULT = [96, 120, 152, 192, 240, 304, 384, 480, 600, 752, 944, 1184, 1480,
                     1856, 2320, 2904, 3632, 4544, 5680, 7104, 8880, 11104, 13880, 17352,
                     21696, 27120, 33904, 42384, 52984, 66232, 82792, 103496, 129376,
                     161720, 202152, 252696, 315872, 394840]
MEMCACHED_F15_N20 = [72, 112, 168, 256, 384, 576, 864, 1296, 1944, 2920, 4384, 6576, 9864,
                     14800, 22200, 33304, 49960, 74944, 112416, 168624, 252936]


def test_default_sizes_match_memcached():
    sizes = class_sizes(PAGE_SIZE, 1.25, 48)
    assert sizes[:len(MEMCACHED_DEFAULT)] == MEMCACHED_DEFAULT
    assert sizes[-1] == PAGE_SIZE


def test_other_factor_matches_memcached():
    sizes = class_sizes(PAGE_SIZE, 1.5, 20)
    assert sizes[:len(MEMCACHED_F15_N20)] == MEMCACHED_F15_N20


@given(factor=st.floats(1.01, 4.0), min_size=st.integers(1, 2000),
       page_mb=st.sampled_from([1, 2, 4]))
@settings(max_examples=200, deadline=None)
def test_class_sizes_grow_by_factor_and_are_aligned(factor, min_size, page_mb):
    page = page_mb << 20
    sizes = class_sizes(page, factor, min_size)
    assert len(sizes) <= MAX_CLASSES
    assert sizes[-1] == page
    first = MEMCACHED_ITEM_HEADER + min_size
    first += -first % CHUNK_ALIGN
    assert sizes[0] == first or len(sizes) == 1
    for a, b in zip(sizes, sizes[1:-1]):
        assert b % CHUNK_ALIGN == 0
        grown = int(a * factor)
        assert b == grown + (-grown % CHUNK_ALIGN)      # factor, then aligned up
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))
    if factor >= 1.02:
        # below that int(56 * factor) == 56 repeats a class, as memcached's
        # own `size *= factor` on an unsigned int does
        assert all(a < b for a, b in zip(sizes, sizes[1:]))


def test_factor_must_exceed_one():
    with pytest.raises(ValueError):
        SlabAllocator(64 << 20, factor=1.0)


@given(total=st.integers(1, PAGE_SIZE))
@settings(max_examples=300, deadline=None)
def test_class_for_is_smallest_fitting(total):
    a = SlabAllocator(64 << 20)
    cid = a.class_for(total)
    assert cid >= 1
    assert a.classes[cid].chunk_size >= total
    if cid > 1:
        assert a.classes[cid - 1].chunk_size < total


def test_class_for_too_big_is_zero():
    a = SlabAllocator(64 << 20)
    assert a.class_for(PAGE_SIZE + 1) == 0


def test_memory_follows_use():
    """No page is taken before something needs it (-m is a bound, not a reservation)."""
    a = SlabAllocator(1 << 30)
    assert a.malloced == 0 and a.accounted == 0 and a.n_ids == 0
    a.alloc(1)
    assert a.malloced == PAGE_SIZE
    assert len(a.classes[1].pages) == 1


def test_accounting_charges_pages_and_per_chunk_metadata():
    a = SlabAllocator(64 << 20)
    extra = a.register(array("Q"))
    cls = a.classes[3]
    a.alloc(3)
    assert a.bytes_per_id == RECORD + 8       # the item record and the extra array
    # the page's ids come in whole blocks, each with its page number and view
    ids = -(-cls.per_page // ID_BLOCK) * ID_BLOCK
    assert a.accounted == PAGE_SIZE + ids * a.bytes_per_id + ids // ID_BLOCK * BLOCK_BYTES
    assert len(extra) == a.n_ids == ids


def test_register_after_pages_grows_array_to_id_space():
    a = SlabAllocator(64 << 20)
    a.alloc(1)
    late = a.register(array("i"))
    assert len(late) == a.n_ids
    a.alloc(2)
    assert len(late) == a.n_ids


# -- random alloc/release sequences against a model ----------------------------


def page_cost(a: SlabAllocator, cls) -> int:
    """What one more page costs against -m: the page and its chunks' metadata
    (its ids in whole blocks, each block with its page number and view)."""
    ids = -(-cls.per_page // ID_BLOCK) * ID_BLOCK
    return a.page_size + ids * a.bytes_per_id + ids // ID_BLOCK * BLOCK_BYTES

# big classes (few chunks a page) so a few MB of limit is reached quickly
BIG_CLASSES = list(range(30, 43))


@given(ops=st.lists(st.tuples(st.sampled_from(["alloc", "alloc", "free"]),
                              st.sampled_from(BIG_CLASSES), st.integers(0, 1 << 30)),
                    max_size=300),
       limit_pages=st.integers(0, 8))
@settings(max_examples=120, deadline=None)
def test_alloc_release_model(ops, limit_pages):
    limit = limit_pages * (PAGE_SIZE + 4096)
    a = SlabAllocator(limit)
    meta = a.register(array("Q"))
    live: dict[int, int] = {}               # id -> class
    freed: dict[int, list[int]] = {}        # class -> freed ids, LIFO
    where: set[tuple[int, int]] = set()
    for op, cls_id, pick in ops:
        cls = a.classes[cls_id]
        if op == "free":
            if not live:
                continue
            cid = sorted(live)[pick % len(live)]
            c = live.pop(cid)
            where.discard((a.id_page[cid], a.id_offset[cid]))
            a.release(cid)
            freed.setdefault(c, []).append(cid)
            continue
        pages_before = len(cls.pages)
        accounted_before = a.accounted
        cid = a.alloc(cls_id)
        if cid < 0:
            # refused only when the class has nothing free and no page fits
            assert not freed.get(cls_id)
            assert cls.end_left == 0
            assert cls.pages, "a class may always take its first page"
            assert accounted_before + page_cost(a, cls) > limit
            assert a.accounted == accounted_before
            continue
        assert cid not in live, "chunk handed out twice"
        if freed.get(cls_id):
            # freed chunks are reused before anything new
            assert cid == freed[cls_id].pop()
            assert len(cls.pages) == pages_before
        live[cid] = cls_id
        assert a.id_class[cid] == cls_id
        page, off = a.id_page[cid], a.id_offset[cid]
        # the page's view: this page, an id block holding the chunk, its class
        view_page, first, chunk, view_cls = a.page_view[page]
        assert view_page is a.pages[page]
        assert (chunk, view_cls) == (cls.chunk_size, cls_id)
        assert first <= cid < first + cls.per_page and off == (cid - first) * chunk
        assert off % cls.chunk_size == 0 and off + cls.chunk_size <= a.page_size
        assert (page, off) not in where
        where.add((page, off))
        if len(cls.pages) > pages_before and pages_before > 0:
            assert a.accounted <= limit          # a second page must fit
        # every per-id array covers every id, the records have room for them
        assert len(meta) == a.n_ids <= a.records.capacity
    # global bound: pages + metadata within -m, but for first pages
    first_pages = sum(page_cost(a, c) for c in a.classes[1:] if c.pages)
    assert a.accounted <= max(limit, 0) + first_pages
    assert a.accounted == sum(len(c.pages) * page_cost(a, c) for c in a.classes[1:])
    assert a.malloced == len(a.pages) * PAGE_SIZE
    for c in a.classes[1:]:
        n_live = sum(1 for v in live.values() if v == c.id)
        assert c.used == n_live
        assert c.used + c.free_chunks == c.total_chunks


def test_fills_to_limit_then_refuses():
    cls_id = 35
    limit = 3 * (PAGE_SIZE + 8192)
    a = SlabAllocator(limit)
    cls = a.classes[cls_id]
    got = []
    while True:
        cid = a.alloc(cls_id)
        if cid < 0:
            break
        got.append(cid)
    assert len(set(got)) == len(got) == cls.total_chunks
    assert a.accounted <= limit
    assert a.accounted + page_cost(a, cls) > limit
    assert cls.free_chunks == 0
    a.release(got[5])
    assert a.alloc(cls_id) == got[5]
    assert a.alloc(cls_id) == -1


def test_first_page_of_each_class_allowed_past_limit():
    a = SlabAllocator(PAGE_SIZE)           # room for one page, barely
    ids = [a.alloc(c) for c in (1, 5, 20)]
    assert all(i >= 0 for i in ids)
    assert a.accounted > a.mem_limit        # the documented exception
    # ...but never a second page
    cls = a.classes[20]
    while a.alloc(20) >= 0:
        pass
    assert len(cls.pages) == 1
