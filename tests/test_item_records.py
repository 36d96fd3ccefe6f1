"""Item records: interleaved fields stay apart, and the 32 stored hash bits
only ever filter — keys whose stored bits collide never read each other."""

from __future__ import annotations

import xxhash

from memd.cache import store as S
from memd.cache.clock import FakeClock
from memd.cache.index import HASH_BITS
from memd.cache.records import FIELDS, RECORD, ItemRecords
from memd.cache.store import ItemStore, StoreSettings


def colliding_keys() -> tuple[bytes, bytes]:
    """Two different keys with the same stored hash bits (so the same bucket
    and the same filter value): a birthday search over 32 bits."""
    seen: dict[int, bytes] = {}
    i = 0
    while True:
        key = b"c:%d" % i
        h = xxhash.xxh3_64_intdigest(key) & HASH_BITS
        other = seen.setdefault(h, key)
        if other != key:
            return other, key
        i += 1


def test_fields_of_neighbouring_records_do_not_overlap():
    rec = ItemRecords(8)
    top = {"B": 0xFF, "H": 0xFFFF, "i": -1, "I": 0xFFFFFFFF, "Q": (1 << 64) - 1}
    for name, (fmt, _) in FIELDS.items():
        getattr(rec, name)[3] = top[fmt]
    for name, (fmt, _) in FIELDS.items():
        view = getattr(rec, name)
        assert (view[2], view[3], view[4]) == (0, top[fmt], 0), name
    assert sum({"B": 1, "H": 2, "i": 4, "I": 4, "Q": 8}[f] for f, _ in FIELDS.values()) == RECORD


def test_keys_with_colliding_hash_bits_are_told_apart_by_the_key():
    a, b = colliding_keys()
    store = ItemStore(StoreSettings(recent_bytes=0), FakeClock())
    assert store.store(S.SET, a, 1, 0, b"value-a") == S.STORED
    # b shares a's bucket and filter bits: only the key compare can refuse it
    assert store.find(b) == -1
    out: list = []
    store.fetch_text([b], out)
    assert out == []
    assert store.store(S.SET, b, 2, 0, b"value-b") == S.STORED
    out = []
    store.fetch_text([a, b, a], out)
    assert out == [b"VALUE %s 1 7\r\nvalue-a\r\n" % a, b"VALUE %s 2 7\r\nvalue-b\r\n" % b,
                   b"VALUE %s 1 7\r\nvalue-a\r\n" % a]
    assert store.delete(a) == S.DELETED
    assert store.value_of(store.find(b)) == b"value-b" and store.find(a) == -1
