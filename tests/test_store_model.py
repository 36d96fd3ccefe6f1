"""A stateful model test of ``ItemStore`` against a plain-Python model of
memcached 1.6's item semantics.

Hypothesis drives the store and the model with the same random commands and
the same ``FakeClock`` (moved by small steps and by jumps across expiry times
and the 30-day relative/absolute boundary), and compares every answer:
status, value, flags, the CAS unique (new and larger on every mutation,
unchanged by reads and touches) and the text ``get``/``gets`` reply bytes.

The store is given far more memory than the test can fill, so nothing is
evicted and the model never has to guess which item the LRU dropped, and
``bump_interval=0`` so every hit moves the item's access time to "now" (the
flush rule below reads that time).
"""

from __future__ import annotations

import hypothesis.strategies as st
import xxhash
from hypothesis import settings
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant,
                                 rule)

from memd.cache import store as S
from memd.cache.clock import FakeClock
from memd.cache.store import ItemStore, StoreSettings

THIRTY_DAYS = 60 * 60 * 24 * 30
U64 = (1 << 64) - 1

KEYS = [b"a", b"bb", b"key:3", b"k" * 250]
# values chosen so incr/decr meet every parse case: plain digits, leading
# zeros / spaces / plus sign, trailing space, negative zero, a negative
# number, 2**64-1 and 2**64 (overflow), digits then junk, empty, a lone space
NUMERIC_VALUES = [b"0", b"1", b"9", b"42", b"007", b" 7", b"+5", b"5 ", b"-0",
                  b"-1", b"18446744073709551615", b"18446744073709551616",
                  b"12abc", b"", b" ", b"99999999999999999999",
                  b"5\x00abc", b"\x005", b"7 \x00x", b"+\x001"]   # C strings end at NUL
values = st.one_of(st.sampled_from(NUMERIC_VALUES), st.binary(max_size=40))
flags_st = st.sampled_from([0, 1, 7, 0xFFFFFFFF, 123456])
# exptime: never, short relative, the exact 30-day boundary (relative) and
# one past it (absolute, in 1970, so already expired), negative (expired);
# ("abs", n) becomes now + n as an absolute Unix time when the rule runs
exptimes = st.one_of(
    st.sampled_from([0, 1, 2, 3, 10, 60, 61, THIRTY_DAYS, THIRTY_DAYS + 1, -1, -100]),
    st.tuples(st.just("abs"), st.sampled_from([-10, 0, 1, 5, 100, THIRTY_DAYS + 5])),
)
advances = st.one_of(st.sampled_from([0, 1, 1, 2, 59, 60, 61, 3600, 86400, THIRTY_DAYS]),
                     st.integers(0, 40 * 86400))
deltas = st.sampled_from([0, 1, 2, 10, 1 << 32, 1 << 63, U64, 18446744073709551606])


def c_strtoull(value: bytes):
    """memcached's safe_strtoull on an item's data (followed by "\r\n").

    Written here from C's strtoull: the data is a C string, so it ends at
    the first NUL; skip leading white space, an optional sign, decimal
    digits; the number must be followed by white space or the string's end;
    past 2**64-1 is an error (ERANGE); a '-' is only refused when the wrapped
    result looks negative as a signed 64-bit value.
    """
    data = value.split(b"\x00", 1)[0] if b"\x00" in value else value + b"\r\n"
    space = (b" ", b"\t", b"\n", b"\v", b"\f", b"\r")
    i = 0
    while i < len(data) and data[i:i + 1] in space:
        i += 1
    neg = data[i:i + 1] == b"-"
    if data[i:i + 1] in (b"+", b"-"):
        i += 1
    j = i
    while j < len(data) and data[j:j + 1].isdigit():
        j += 1
    if j == i:
        return None
    if j < len(data) and data[j:j + 1] not in space:
        return None
    n = int(data[i:j])
    if n > U64:
        return None
    if neg:
        n = (-n) & U64
        if n >= 1 << 63:
            return None
    return n


class ModelItem:
    __slots__ = ("value", "flags", "exp", "atime", "cas")

    def __init__(self, value, flags, exp, atime, cas):
        self.value, self.flags, self.exp, self.atime, self.cas = value, flags, exp, atime, cas


class StoreModel(RuleBasedStateMachine):
    """The store and a dict model receive identical commands."""

    @initialize()
    def setup(self):
        self.clock = FakeClock()
        self.store = ItemStore(StoreSettings(mem_limit=256 << 20, bump_interval=0), self.clock)
        self.started = self.clock.now
        self.items: dict[bytes, ModelItem] = {}
        self.oldest_live = 0
        self.oldest_cas = 0
        self.max_cas = 0
        self.seen_cas: list[int] = [0, 1, 2]
        self.hits = self.misses = 0

    # -- the model's memcached rules -----------------------------------------

    def realtime(self, exptime) -> int:
        """Client exptime → absolute time; 0 never; 1 = long expired."""
        now = self.clock.now
        if isinstance(exptime, tuple):
            exptime = now + exptime[1]
        if exptime == 0:
            return 0
        if exptime < 0:
            return 1
        if exptime > THIRTY_DAYS:          # an absolute Unix time
            return exptime if exptime > self.started else 1
        return now + exptime               # relative seconds

    def wire_exptime(self, exptime) -> int:
        return self.clock.now + exptime[1] if isinstance(exptime, tuple) else exptime

    def dead(self, it: ModelItem) -> bool:
        now = self.clock.now
        if it.exp and it.exp <= now:
            return True
        # memcached's item_is_flushed(): flush_all records oldest_live (and,
        # when it takes effect at once, oldest_cas = the next CAS).  An item
        # is flushed once oldest_live <= now if it was last updated at or
        # before oldest_live, or if it was stored before the flush in the
        # same second (its CAS is below oldest_cas: time alone cannot tell
        # "before" from "after" within one second).  A delayed flush moves
        # oldest_live into the future, which suspends the rule until then,
        # even for items an earlier flush had already hidden but nobody had
        # looked at (and so reclaimed) yet -- memcached does the same, so the
        # model must apply the rule lazily, on lookup, exactly like the store.
        ol = self.oldest_live
        return bool(ol and ol <= now and (it.atime <= ol or
                                          (self.oldest_cas and it.cas < self.oldest_cas)))

    def lookup(self, key: bytes):
        it = self.items.get(key)
        if it is not None and self.dead(it):
            del self.items[key]     # found dead: reclaimed, as the store does
            return None
        return it

    def new_cas(self, c: int) -> int:
        """The CAS a mutation's result record gave: it must be new."""
        assert c > self.max_cas, "CAS must grow on every mutation"
        self.max_cas = c
        self.seen_cas.append(c)
        return c

    def check_item(self, item: int, key: bytes, it: ModelItem):
        st_ = self.store
        assert st_.key_of(item) == key
        assert st_.value_of(item) == it.value
        assert st_.flags[item] == it.flags
        assert st_.cas[item] == it.cas
        assert st_.exptime[item] == it.exp

    # -- rules -----------------------------------------------------------------

    @rule(dt=advances)
    def advance(self, dt):
        self.clock.advance(dt)

    @rule(mode=st.sampled_from([S.SET, S.ADD, S.REPLACE]), key=st.sampled_from(KEYS),
          flags=flags_st, exptime=exptimes, value=values)
    def set_add_replace(self, mode, key, flags, exptime, value):
        got, cas = self.store.write(mode, key, flags, self.wire_exptime(exptime), value)
        it = self.lookup(key)
        now = self.clock.now
        if mode == S.ADD and it is not None:
            it.atime = now          # a failed add bumps the existing item
            assert got == S.NOT_STORED
            return
        if mode == S.REPLACE and it is None:
            assert got == S.NOT_STORED
            return
        assert got == S.STORED
        self.items[key] = ModelItem(value, flags, self.realtime(exptime), now, self.new_cas(cas))

    @rule(mode=st.sampled_from([S.APPEND, S.PREPEND]), key=st.sampled_from(KEYS),
          value=values, use_cas=st.sampled_from([None, None, "right", "wrong"]))
    def append_prepend(self, mode, key, value, use_cas):
        it = self.lookup(key)
        cas = 0
        if use_cas == "right" and it is not None:
            cas = it.cas
        elif use_cas == "wrong":
            cas = self.max_cas + 1000
        got, new = self.store.write(mode, key, 999, 999, value, cas)
        if it is None:
            assert got == S.NOT_STORED
            return
        if cas and cas != it.cas:
            assert got == S.EXISTS
            return
        assert got == S.STORED
        # appending keeps the old flags and expiry, ignores the new ones
        new_value = it.value + value if mode == S.APPEND else value + it.value
        self.items[key] = ModelItem(new_value, it.flags, it.exp, self.clock.now, self.new_cas(new))

    @rule(key=st.sampled_from(KEYS), flags=flags_st, exptime=exptimes, value=values,
          which=st.sampled_from(["current", "current", "old", "zero", "random"]),
          rnd=st.integers(1, U64))
    def cas(self, key, flags, exptime, value, which, rnd):
        it = self.items.get(key)   # peek only: the store looks it up itself
        if which == "current":
            unique = it.cas if it is not None else self.max_cas
        elif which == "old":
            unique = self.seen_cas[rnd % len(self.seen_cas)]
        elif which == "zero":
            unique = 0
        else:
            unique = rnd
        got, new = self.store.write(S.CAS, key, flags, self.wire_exptime(exptime), value, unique)
        it = self.lookup(key)
        if it is None:
            assert got == S.NOT_FOUND
            return
        if it.cas != unique:
            assert got == S.EXISTS
            return
        assert got == S.STORED
        self.items[key] = ModelItem(value, flags, self.realtime(exptime), self.clock.now,
                                    self.new_cas(new))

    @rule(key=st.sampled_from(KEYS))
    def get(self, key):
        item = self.store.get(key)
        it = self.lookup(key)
        if it is None:
            self.misses += 1
            assert item == -1
            return
        self.hits += 1
        it.atime = self.clock.now
        self.check_item(item, key, it)

    @rule(keys=st.lists(st.sampled_from(KEYS + [b"missing"]), min_size=1, max_size=6),
          with_cas=st.booleans())
    def get_multi(self, keys, with_cas):
        out: list = []
        self.store.fetch_text(keys, out, with_cas)
        expected = []
        for key in keys:
            it = self.lookup(key)
            if it is None:
                self.misses += 1
                continue
            self.hits += 1
            it.atime = self.clock.now
            head = b"VALUE %s %d %d" % (key, it.flags, len(it.value))
            if with_cas:
                head += b" %d" % it.cas
            expected.append(head + b"\r\n" + it.value + b"\r\n")
        assert b"".join(bytes(x) for x in out) == b"".join(expected)

    @rule(key=st.sampled_from(KEYS), exptime=exptimes)
    def gat(self, key, exptime):
        item = self.store.get(key, self.wire_exptime(exptime))
        it = self.lookup(key)
        # memcached counts a gat in the touch counters only, not as a get
        if it is None:
            assert item == -1
            return
        it.atime = self.clock.now
        it.exp = self.realtime(exptime)     # touching leaves the CAS alone
        self.check_item(item, key, it)

    @rule(key=st.sampled_from(KEYS), exptime=exptimes)
    def touch(self, key, exptime):
        item = self.store.touch(key, self.wire_exptime(exptime))
        it = self.lookup(key)
        if it is None:
            assert item == -1
            return
        it.atime = self.clock.now
        it.exp = self.realtime(exptime)
        self.check_item(item, key, it)

    @rule(key=st.sampled_from(KEYS), use_cas=st.sampled_from([None, None, "right", "wrong"]))
    def delete(self, key, use_cas):
        it = self.items.get(key)
        cas = 0
        if use_cas == "right" and it is not None:
            cas = it.cas
        elif use_cas == "wrong":
            cas = self.max_cas + 1000
        got = self.store.delete(key, cas)
        it = self.lookup(key)
        if it is None:
            assert got == S.NOT_FOUND
        elif cas and cas != it.cas:
            assert got == S.EXISTS
        else:
            assert got == S.DELETED
            del self.items[key]

    @rule(key=st.sampled_from(KEYS), delta=deltas, incr=st.booleans())
    def incr_decr(self, key, delta, incr):
        status, value, new_cas, _ = self.store.arith(key, delta, incr)
        it = self.lookup(key)
        if it is None:
            assert (status, value) == (S.NOT_FOUND, None)
            return
        current = c_strtoull(it.value) if it.value else None
        if current is None:
            assert (status, value) == (S.NON_NUMERIC, None)
            return
        if incr:
            new = (current + delta) & U64
        else:
            new = max(current - delta, 0)
        assert (status, value) == (S.STORED, new)
        digits = b"%d" % new
        if len(digits) <= len(it.value):
            # rewritten in place: padded with spaces to the old length
            it.value = digits.ljust(len(it.value))
        else:
            it.value = digits
        it.atime = self.clock.now
        it.cas = self.new_cas(new_cas)

    @rule(delay=st.one_of(st.sampled_from([0, 0, 1, 2, 5, 60, -3, THIRTY_DAYS]),
                          st.tuples(st.just("abs"), st.sampled_from([-5, 10, THIRTY_DAYS + 5]))))
    def flush_all(self, delay):
        self.store.flush_all(self.wire_exptime(delay))
        now = self.clock.now
        # memcached: oldest_live = realtime(delay) - 1 (now - 1 without a
        # positive delay); oldest_cas is only moved when that moment is not
        # in the future, so items stored later in this same second survive.
        if isinstance(delay, tuple) or delay > 0:
            self.oldest_live = self.realtime(delay) - 1
        else:
            self.oldest_live = now - 1
        if self.oldest_live <= now:
            self.oldest_cas = self.max_cas + 1

    @rule()
    def reclaim_everything(self):
        # a budget of every id visits each chunk once: every dead item goes
        self.store.reclaim_step(self.store.slabs.n_ids)
        for key in [k for k, it in self.items.items() if self.dead(it)]:
            del self.items[key]

    # -- invariants ------------------------------------------------------------

    @invariant()
    def same_items(self):
        # peek through the index (no expiry check, no reclaim): the store
        # holds exactly the model's items, dead-but-unreclaimed ones included
        for key in KEYS:
            item = self.store.index.find(key, xxhash.xxh3_64_intdigest(key))
            it = self.items.get(key)
            assert (item != -1) == (it is not None), key
            if it is not None:
                self.check_item(item, key, it)
                assert self.store.atime[item] == it.atime

    @invariant()
    def counts_match(self):
        s = self.store
        assert s.curr_items == len(self.items)
        assert s.get_hits == self.hits
        assert s.get_misses == self.misses
        # `bytes` is the chunk bytes items use: the text reply stored whole,
        # "VALUE <key> <flags> <bytes>\r\n<value>\r\n"
        expected_bytes = sum(len(b"VALUE %s %d %d\r\n" % (k, it.flags, len(it.value)))
                             + len(it.value) + 2 for k, it in self.items.items())
        assert s.bytes == expected_bytes
        assert s.evictions == 0
        used = sum(c.used for c in s.slabs.classes[1:])
        assert used == s.curr_items


StoreModel.TestCase.settings = settings(max_examples=300, stateful_step_count=40,
                                        deadline=None)
TestStoreModel = StoreModel.TestCase


class BigClockModel(StoreModel):
    """Same rules, but the clock mostly makes large jumps (days, months)."""

    @rule(days=st.integers(1, 45))
    def jump_days(self, days):
        self.clock.advance(days * 86400 - 1)


BigClockModel.TestCase.settings = settings(max_examples=80, stateful_step_count=40,
                                           deadline=None)
TestBigClockModel = BigClockModel.TestCase
