"""The per-class LRU lists on typed arrays, against a list model."""

from __future__ import annotations

from array import array

import hypothesis.strategies as st
from hypothesis import given, settings

from memd.cache.lru import LRU, NIL


def make(n_items: int, n_classes: int = 3) -> LRU:
    lru = LRU(n_classes)
    lru.prev = array("i", [0] * n_items)
    lru.next = array("i", [0] * n_items)
    return lru


def check(lru: LRU, model: dict[int, list[int]]) -> None:
    for cls, items in model.items():
        assert list(lru.items(cls)) == items            # head first
        assert list(lru.from_tail(cls, 10 ** 9)) == items[::-1]
        assert lru.count[cls] == len(items)
        assert lru.head[cls] == (items[0] if items else NIL)
        assert lru.tail[cls] == (items[-1] if items else NIL)


@given(ops=st.lists(st.tuples(st.sampled_from(["link", "unlink", "bump"]),
                              st.integers(1, 3), st.integers(0, 39)), max_size=200))
@settings(max_examples=300, deadline=None)
def test_lru_matches_list_model(ops):
    lru = make(40)
    model: dict[int, list[int]] = {1: [], 2: [], 3: []}
    where: dict[int, int] = {}
    for op, cls, item in ops:
        if op == "link":
            if item in where:
                continue
            lru.link(cls, item)
            model[cls].insert(0, item)
            where[item] = cls
        elif item in where:
            c = where[item]
            if op == "unlink":
                lru.unlink(c, item)
                model[c].remove(item)
                del where[item]
            else:
                lru.bump(c, item)
                model[c].remove(item)
                model[c].insert(0, item)
        check(lru, model)


def test_from_tail_limit_and_unlink_while_iterating():
    lru = make(10, 1)
    for i in range(10):
        lru.link(1, i)
    assert list(lru.from_tail(1, 3)) == [0, 1, 2]
    # the caller may unlink the item it was just given (eviction does)
    for item in lru.from_tail(1, 4):
        lru.unlink(1, item)
    assert list(lru.items(1)) == [9, 8, 7, 6, 5, 4]
    assert lru.count[1] == 6


def test_bump_head_is_noop_and_single_item():
    lru = make(3, 1)
    lru.link(1, 0)
    lru.bump(1, 0)
    assert list(lru.items(1)) == [0]
    assert lru.head[1] == lru.tail[1] == 0
    lru.unlink(1, 0)
    assert lru.head[1] == lru.tail[1] == NIL and lru.count[1] == 0
