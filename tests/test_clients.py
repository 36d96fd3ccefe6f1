"""Real memcached clients other than pymemcache, against memd (and memcached).

python-memcached (`import memcache`) is the oldest pure-Python client and
parses replies its own way (readline-based, its own VALUE parser, `gets`
cache for cas), so it exercises memd differently from pymemcache.  Every test
runs against memcached too: a test that fails there is wrong, not memd.

python-memcached swallows connection errors (marks the server dead and
returns None/False), so every call's result is asserted.
"""

from __future__ import annotations

import pytest

memcache = pytest.importorskip("memcache", reason="python-memcached not installed (pip install python-memcached)")


@pytest.fixture
def mc(any_server):
    client = memcache.Client([f"{any_server.host}:{any_server.port}"], socket_timeout=2, dead_retry=0, cache_cas=True)
    yield client
    client.disconnect_all()


def test_set_then_get_returns_value(mc, key_prefix):
    assert mc.set(key_prefix + "k", "value")
    assert mc.get(key_prefix + "k") == "value"
    assert mc.get(key_prefix + "absent") is None


def test_python_objects_round_trip_with_flags(mc, key_prefix):
    # python-memcached stores ints with flag 2 and pickles with flag 1;
    # the server must echo flags exactly for these to come back typed.
    assert mc.set(key_prefix + "int", 42)
    assert mc.set(key_prefix + "obj", {"a": [1, 2]})
    assert mc.get(key_prefix + "int") == 42
    assert mc.get(key_prefix + "obj") == {"a": [1, 2]}


def test_delete_removes_key(mc, key_prefix):
    assert mc.set(key_prefix + "d", "x")
    assert mc.delete(key_prefix + "d")
    assert mc.get(key_prefix + "d") is None


def test_add_and_replace_respect_existence(mc, key_prefix):
    assert mc.add(key_prefix + "ar", "first")
    assert not mc.add(key_prefix + "ar", "second")
    assert mc.replace(key_prefix + "ar", "third")
    assert not mc.replace(key_prefix + "nope", "x")
    assert mc.get(key_prefix + "ar") == "third"


def test_append_and_prepend_concatenate(mc, key_prefix):
    assert mc.set(key_prefix + "ap", "mid")
    assert mc.append(key_prefix + "ap", ">")
    assert mc.prepend(key_prefix + "ap", "<")
    assert mc.get(key_prefix + "ap") == "<mid>"


def test_incr_and_decr_count(mc, key_prefix):
    assert mc.set(key_prefix + "n", "10")
    assert mc.incr(key_prefix + "n") == 11
    assert mc.incr(key_prefix + "n", 9) == 20
    assert mc.decr(key_prefix + "n", 25) == 0  # decr clamps at zero
    assert mc.incr(key_prefix + "missing") is None


def test_incr_wraps_at_2_to_the_64(mc, key_prefix):
    assert mc.set(key_prefix + "w", str(2**64 - 1))
    assert mc.incr(key_prefix + "w") == 0


def test_cas_succeeds_once_then_fails_after_another_write(mc, key_prefix):
    key = key_prefix + "cas"
    assert mc.set(key, "v1")
    assert mc.gets(key) == "v1"
    assert mc.cas(key, "v2")
    assert mc.get(key) == "v2"
    # The client still holds the old cas unique: a second cas must be refused.
    assert not mc.cas(key, "v3")
    assert mc.get(key) == "v2"


def test_get_multi_returns_only_present_keys(mc, key_prefix):
    mapping = {f"m{i}": f"value{i}" for i in range(20)}
    assert mc.set_multi(mapping, key_prefix=key_prefix) == []
    got = mc.get_multi([f"m{i}" for i in range(25)], key_prefix=key_prefix)
    assert got == mapping


def test_touch_keeps_item(mc, key_prefix):
    assert mc.set(key_prefix + "t", "x")
    assert mc.touch(key_prefix + "t", 1000)
    assert mc.get(key_prefix + "t") == "x"


def test_large_value_round_trips(mc, key_prefix):
    value = "z" * (500 * 1024)
    assert mc.set(key_prefix + "big", value)
    assert mc.get(key_prefix + "big") == value


def test_get_stats_parses(mc):
    (name, stats), = mc.get_stats()
    assert "curr_items" in stats and "version" in stats
    (name, slabs), = mc.get_stats("slabs")
    assert "active_slabs" in slabs
