"""The chained hash index: lookups through incremental growth."""

from __future__ import annotations

from array import array

import hypothesis.strategies as st
import xxhash
from hypothesis import given, settings

from memd.cache.index import MIGRATE_PER_INSERT, HashIndex
from memd.cache.lru import NIL

_hash = xxhash.xxh3_64_intdigest


class Keys:
    """Keys by item id, standing in for the slab chunks the store reads."""

    def __init__(self, n: int, power: int = 4) -> None:
        self.keys: list[bytes] = [b""] * n
        self.index = HashIndex(self.key_is, power=power)
        for arr in (self.index.hash, self.index.chain, self.index.klen):
            arr.frombytes(bytes(n * arr.itemsize))

    def key_is(self, item: int, key: bytes) -> bool:
        return self.keys[item] == key

    def add(self, item: int, key: bytes, h: int | None = None) -> None:
        self.keys[item] = key
        self.index.klen[item] = len(key)
        self.index.insert(item, _hash(key) if h is None else h)

    def find(self, key: bytes, h: int | None = None) -> int:
        return self.index.find(key, _hash(key) if h is None else h)


def test_survives_several_growths_with_deletes_mid_growth():
    n = 60_000
    k = Keys(n, power=4)
    idx = k.index
    removed: set[int] = set()
    growths = 0
    deleted_mid_growth = 0
    for i in range(n):
        was = idx.power
        k.add(i, b"key:%d" % i)
        growths += idx.power != was
        if idx.expanding and i % 7 == 0 and i > 0:
            # delete while buckets are split between the old and new tables
            victim = i - 1 - (i % 13)
            if victim not in removed:
                idx.remove(victim)
                removed.add(victim)
                deleted_mid_growth += 1
        if i % 5000 == 0:
            # spot checks while a migration is (probably) under way
            for j in range(0, i, 997):
                assert (k.find(b"key:%d" % j) == j) == (j not in removed)
    assert growths >= 10
    assert deleted_mid_growth > 100
    assert idx.count == n - len(removed)
    for i in range(n):
        got = k.find(b"key:%d" % i)
        assert got == (NIL if i in removed else i)
    assert k.find(b"never") == NIL


def test_growth_is_incremental():
    """No insert moves more than MIGRATE_PER_INSERT old buckets."""
    k = Keys(5000, power=6)
    idx = k.index
    for i in range(5000):
        migrated = idx.migrated if idx.expanding else None
        k.add(i, b"%d" % i)
        if migrated is not None and idx.expanding:
            assert idx.migrated - migrated <= MIGRATE_PER_INSERT
    # while growing, the load stays bounded by the growth trigger
    assert idx.count <= (3 << idx.power) >> 1


def test_equal_hashes_compare_keys():
    """Two keys with the same 64-bit hash (forced) are still told apart."""
    k = Keys(4)
    k.add(0, b"alpha", h=12345)
    k.add(1, b"beta", h=12345)
    k.add(2, b"alph", h=12345)             # a prefix of another key
    assert k.find(b"alpha", 12345) == 0
    assert k.find(b"beta", 12345) == 1
    assert k.find(b"alph", 12345) == 2
    assert k.find(b"gamma", 12345) == NIL
    k.index.remove(1)
    assert k.find(b"beta", 12345) == NIL
    assert k.find(b"alpha", 12345) == 0 and k.find(b"alph", 12345) == 2


def test_migrate_to_completion_from_idle_ticks():
    k = Keys(200, power=4)
    for i in range(25):                    # 25 > 1.5 * 16: growth starts
        k.add(i, b"x%d" % i)
    assert k.index.expanding
    k.index.migrate(10 ** 6)
    assert not k.index.expanding
    assert all(k.find(b"x%d" % i) == i for i in range(25))


@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 299)), max_size=600),
       power=st.integers(1, 5))
@settings(max_examples=150, deadline=None)
def test_index_matches_dict(ops, power):
    k = Keys(300, power=power)
    model: dict[bytes, int] = {}
    for insert, i in ops:
        key = b"k%d" % i
        if insert and key not in model:
            k.add(i, key)
            model[key] = i
        elif not insert and key in model:
            k.index.remove(model.pop(key))
        assert k.index.count == len(model)
    for i in range(300):
        key = b"k%d" % i
        assert k.find(key) == model.get(key, NIL)
    # chains hold exactly the live items (no duplicates, no leftovers)
    seen = []
    tables = [k.index.buckets] + ([k.index.old] if k.index.old is not None else [])
    for t in tables:
        for b in range(len(t)):
            item = t[b]
            while item != NIL:
                seen.append(item)
                item = k.index.chain[item]
    assert sorted(seen) == sorted(model.values())
    assert isinstance(k.index.buckets, array)
