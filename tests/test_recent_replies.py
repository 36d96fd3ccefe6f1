"""The get shortcut (memd/cache/recent.py) never answers what the full lookup
would not: every change to an item after it was read shows in the next get.

Each test reads a key once (so its reply is remembered), changes the item by
one route, and checks the next get through the text protocol, with a fake
clock where time matters.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from memd.cache import recent as R
from memd.cache.clock import FakeClock
from memd.cache.store import SET, ItemStore, StoreSettings


def read_twice(conn, key=b"k"):
    """Read ``key`` so its reply is remembered; return that reply."""
    first = conn(b"get %s\r\n" % key)
    assert key in conn.node.store.recent.replies or first == b"END\r\n"
    return first


def test_a_repeated_get_is_answered_from_recent_with_the_same_bytes(conn):
    conn(b"set k 5 0 3\r\nabc\r\n")
    assert read_twice(conn) == b"VALUE k 5 3\r\nabc\r\nEND\r\n"
    assert conn(b"get k\r\n") == b"VALUE k 5 3\r\nabc\r\nEND\r\n"
    assert conn(b"get k k\r\n") == b"VALUE k 5 3\r\nabc\r\n" * 2 + b"END\r\n"
    stats = conn(b"stats\r\n")
    assert b"STAT get_hits 4\r\n" in stats and b"STAT cmd_get 4\r\n" in stats


def test_set_in_place_after_a_get_is_seen(conn):
    conn(b"set k 0 0 3\r\nabc\r\n")
    read_twice(conn)
    # same size class: the chunk is rewritten in place
    assert conn(b"set k 7 0 3\r\nxyz\r\n") == b"STORED\r\n"
    assert conn(b"get k\r\n") == b"VALUE k 7 3\r\nxyz\r\nEND\r\n"


def test_a_get_then_set_in_one_read_answers_the_old_value_then_the_new(conn):
    conn(b"set k 0 0 3\r\nabc\r\n")
    read_twice(conn)
    assert conn(b"get k\r\nset k 0 0 3\r\nxyz\r\nget k\r\n") == (
        b"VALUE k 0 3\r\nabc\r\nEND\r\nSTORED\r\nVALUE k 0 3\r\nxyz\r\nEND\r\n")


@pytest.mark.parametrize("change, after", [
    (b"delete k\r\n", b"END\r\n"),
    (b"incr k 1\r\n", b"VALUE k 0 2\r\n11\r\nEND\r\n"),
    (b"incr k 90\r\n", b"VALUE k 0 3\r\n100\r\nEND\r\n"),     # longer: a new item
    (b"decr k 9\r\n", b"VALUE k 0 2\r\n1 \r\nEND\r\n"),       # memcached pads in place
    (b"append k 0 0 1\r\nz\r\n", b"VALUE k 0 3\r\n10z\r\nEND\r\n"),
    (b"prepend k 0 0 1\r\nz\r\n", b"VALUE k 0 3\r\nz10\r\nEND\r\n"),
    (b"touch k -1\r\n", b"END\r\n"),
    (b"gat -1 k\r\n", b"END\r\n"),
    (b"mg k T-1\r\n", b"END\r\n"),
    (b"ma k D5\r\n", b"VALUE k 0 2\r\n15\r\nEND\r\n"),
    (b"md k\r\n", b"END\r\n"),
    (b"ms k 1 F3\r\nq\r\n", b"VALUE k 3 1\r\nq\r\nEND\r\n"),
    (b"flush_all\r\n", b"END\r\n"),
])
def test_every_change_after_a_get_shows_in_the_next_get(conn, change, after):
    conn(b"set k 0 0 2\r\n10\r\n")
    read_twice(conn)
    conn(change)
    assert conn(b"get k\r\n") == after


def test_expiry_is_not_skipped(conn, clock):
    conn(b"set k 0 5 1\r\nv\r\n")
    read_twice(conn)
    clock.advance(4)
    assert conn(b"get k\r\n") == b"VALUE k 0 1\r\nv\r\nEND\r\n"
    clock.advance(1)
    assert conn(b"get k\r\n") == b"END\r\n"
    assert b"STAT get_expired 1\r\n" in conn(b"stats\r\n")


def test_a_touch_that_extends_the_life_is_kept(conn, clock):
    conn(b"set k 0 5 1\r\nv\r\n")
    read_twice(conn)
    conn(b"touch k 100\r\n")
    clock.advance(50)
    assert conn(b"get k\r\n") == b"VALUE k 0 1\r\nv\r\nEND\r\n"


def test_a_delayed_flush_all_takes_effect_on_time(conn, clock):
    conn(b"set k 0 0 1\r\nv\r\n")
    read_twice(conn)
    assert conn(b"flush_all 10\r\n") == b"OK\r\n"
    clock.advance(8)
    assert conn(b"get k\r\n") == b"VALUE k 0 1\r\nv\r\nEND\r\n"
    clock.advance(2)
    assert conn(b"get k\r\n") == b"END\r\n"


def test_reads_from_recent_still_bump_the_lru_once_an_interval(conn, clock):
    store = conn.node.store
    conn(b"set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\n")
    read_twice(conn, b"a")
    cls = store.id_class[store.find(b"a")]
    assert list(store.lru.items(cls))[0] == store.find(b"b")     # b is the newest
    clock.advance(store.settings.bump_interval)
    conn(b"get a\r\n")
    assert list(store.lru.items(cls))[0] == store.find(b"a")     # a bumped to the head


def test_gets_and_a_watched_node_take_the_full_path(conn):
    conn(b"set k 0 0 1\r\nv\r\n")
    read_twice(conn)
    reply = conn(b"gets k\r\n")
    assert reply.startswith(b"VALUE k 0 1 ") and reply.endswith(b"\r\nv\r\nEND\r\n")


@settings(max_examples=60, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 20_000)), min_size=1, max_size=200),
       budget=st.integers(0, 200_000))
def test_memory_stays_within_the_budget(writes, budget):
    store = ItemStore(StoreSettings(mem_limit=64 << 20, recent_bytes=budget), FakeClock())
    out = []
    for i, size in writes:
        key = b"k%d" % i
        store.store(SET, key, 0, 0, b"v" * size)
        store.fetch_text([key], out)
        recent = store.recent
        assert recent.used <= budget
        assert recent.used == sum(len(r) + R.ENTRY_OVERHEAD for r, *_ in recent.replies.values())
        assert len(recent.replies) <= R.MAX_ENTRIES
        assert all(len(r) <= R.MAX_REPLY for r, *_ in recent.replies.values())


def test_a_load_spread_over_too_many_keys_samples_admissions_until_entries_earn_hits():
    recent = R.RecentReplies(budget=10 * (100 + R.ENTRY_OVERHEAD))
    reply = b"x" * 100
    for i in range(11):                      # the 11th starts a new round
        recent.admit(b"k%d" % i, reply, 1 << 40, 1)
    assert recent.sampling and len(recent.replies) == 1
    for i in range(11, 11 + 9 * R.SAMPLE):
        recent.admit(b"k%d" % i, reply, 1 << 40, 1)
    assert len(recent.replies) == 10           # one admission in SAMPLE: full again
    recent.hits += 100                         # this round's entries are read a lot
    for i in range(R.SAMPLE):
        recent.admit(b"h%d" % i, reply, 1 << 40, 1)
    assert not recent.sampling and len(recent.replies) == 1


def test_a_large_uniform_read_load_is_answered_exactly_while_sampling():
    store = ItemStore(StoreSettings(mem_limit=64 << 20, recent_bytes=50 * (150 + R.ENTRY_OVERHEAD)),
                      FakeClock())
    keys = [b"key%d" % i for i in range(2000)]
    for k in keys:
        store.store(SET, k, 0, 0, k * 3)
    for rounds in range(3):
        out = []
        store.fetch_text(keys, out)
        assert out == [b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(k) * 3, k * 3) for k in keys]
    assert store.recent.sampling
    assert store.get_hits == 3 * len(keys) and store.get_misses == 0


def test_a_load_that_thrashes_even_sampled_rests_then_gets_a_new_sampled_round(monkeypatch):
    monkeypatch.setattr(R, "REST", 5000)
    store = ItemStore(StoreSettings(mem_limit=64 << 20, recent_bytes=50 * (150 + R.ENTRY_OVERHEAD)),
                      FakeClock())
    keys = [b"key%d" % i for i in range(2000)]
    for k in keys:
        store.store(SET, k, 0, 0, k * 3)
    expected = [b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(k) * 3, k * 3) for k in keys]
    rested_at = None
    for round_no in range(10):
        out = []
        store.fetch_text(keys, out)
        assert out == expected
        if not store.recent.active and rested_at is None:
            rested_at = round_no
    assert rested_at is not None and rested_at <= 2      # a sampled round, then rest
    # resting, nothing is asked of (or added to) the shortcut; a change is
    # still seen at once
    store.recent.rest(10)
    assert not store.recent.active
    store.store(SET, keys[0], 0, 0, b"new")
    out = []
    store.fetch_text(keys[:1], out)
    assert out == [b"VALUE key0 0 3\r\nnew\r\n"]
    store.fetch_text(keys[:20], [])
    assert store.recent.active and store.recent.resting == 0
    assert store.get_misses == 0


def test_each_single_key_get_of_a_joined_batch_leaves_one_chunk_with_its_end():
    # the server pairs a pass's lone gets with their connections by zip
    # (server._answer_lone_gets): one chunk a key, whichever path answered it
    store = ItemStore(StoreSettings(mem_limit=64 << 20), FakeClock())
    store.store(SET, b"a", 3, 0, b"xyz")
    keys = [b"a", b"nope", b"a", b"a", b"nope"]
    for round_no in range(3):             # full lookups first, then recent replies
        out = []
        assert store.fetch_text(keys, out, False, True, joined=True) == len(keys)
        hit, miss = b"VALUE a 3 3\r\nxyz\r\nEND\r\n", b"END\r\n"
        assert out == [hit, miss, hit, hit, miss]
        assert store.text_bytes == sum(map(len, out))
        out = []                          # a pipeline's: the blocks and ENDs apart
        store.fetch_text(keys, out, False, True)
        assert b"".join(out) == hit + miss + hit + hit + miss
        assert store.text_bytes == sum(map(len, out))
    assert store.recent.hits > 0


def test_a_sampled_round_that_earns_no_hits_rests_without_waiting_to_fill():
    recent = R.RecentReplies(budget=64 << 20)
    reply = b"x" * 100
    recent.sampling = True                    # an earlier round thrashed
    for i in range(R.VERDICT * R.SAMPLE):
        recent.admit(b"k%d" % i, reply, 1 << 40, 1)
    assert recent.active                      # VERDICT admissions so far, far from full
    recent.admit(b"one more", reply, 1 << 40, 1)
    for i in range(R.SAMPLE):
        recent.admit(b"j%d" % i, reply, 1 << 40, 1)
    assert not recent.active and recent.resting == R.REST and not recent.replies


def test_a_sampled_round_whose_entries_are_read_again_goes_on():
    recent = R.RecentReplies(budget=64 << 20)
    reply = b"x" * 100
    recent.sampling = True
    for i in range(2 * R.VERDICT * R.SAMPLE):
        recent.admit(b"k%d" % i, reply, 1 << 40, 1)
        recent.hits += 1                      # every lookup of a hot set hits
    assert recent.active and len(recent.replies) == 2 * R.VERDICT
