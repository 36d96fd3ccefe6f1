"""meta-memcache (a PyPI client that speaks only the meta protocol) against memd.

The client is not ours: it builds mg/ms/md/ma lines with its own flags
(base64 keys for long or binary keys, O opaques, q, N/R/T leases, I
invalidation), so passing here means memd understands meta as real clients
send it.  Every scenario also runs against memcached 1.6.18, which proves the
expectations are memcached's, not memd's.
"""

from __future__ import annotations

import pytest

meta_memcache = pytest.importorskip(
    "meta_memcache", reason="meta-memcache not installed (pip install meta-memcache)")

from meta_memcache import (  # noqa: E402
    CacheClient, LeasePolicy, ServerAddress, connection_pool_factory_builder,
)


@pytest.fixture
def client(any_server, key_prefix):
    c = CacheClient.cache_client_from_servers(
        [ServerAddress(host=any_server.host, port=any_server.port)],
        connection_pool_factory_builder(recv_timeout=2, connection_timeout=2),
    )
    return c, key_prefix


def test_set_get_roundtrip_of_python_values(client):
    c, p = client
    assert c.set(p + "a", {"x": [1, 2]}, ttl=100)
    assert c.get(p + "a") == {"x": [1, 2]}
    assert c.set(p + "s", "text", ttl=0)
    assert c.get(p + "s") == "text"
    assert c.get(p + "missing") is None


def test_long_and_binary_keys_go_base64(client):
    c, p = client
    long_key = p + "k" * 300                    # the client hashes and base64-encodes it
    assert c.set(long_key, "long", ttl=100)
    assert c.get(long_key) == "long"
    odd = p + "bin\x00é key"
    assert c.set(odd, b"bytes", ttl=100)
    assert c.get(odd) == b"bytes"


def test_cas_tokens(client):
    c, p = client
    assert c.set(p + "c", "v1", ttl=100)
    value, cas = c.get_cas(p + "c")
    assert value == "v1" and cas
    assert c.set(p + "c", "v2", ttl=100, cas_token=cas)
    assert not c.set(p + "c", "v3", ttl=100, cas_token=cas)     # stale token
    assert c.get(p + "c") == "v2"


def test_counters(client):
    c, p = client
    assert c.delta_initialize(p + "n", 5, 10, initial_ttl=100)
    assert c.delta_and_get(p + "n", 3) == 13
    assert c.delta(p + "n", -2)
    assert c.delta_and_get(p + "n", -1) == 10
    assert c.delta_initialize_and_get(p + "n2", 1, 7, initial_ttl=0) == 7
    assert c.delta_and_get(p + "nope", 1) is None


def test_touch_delete_invalidate(client):
    c, p = client
    assert c.set(p + "t", "v", ttl=100)
    assert c.touch(p + "t", 50)
    assert c.delete(p + "t")
    assert c.get(p + "t") is None
    assert c.set(p + "i", "old", ttl=100)
    assert c.invalidate(p + "i")
    # an invalidated item is stale: a plain get does not serve it
    assert c.get(p + "i") is None


def test_lease_on_miss(client):
    c, p = client
    lease = LeasePolicy(ttl=30, miss_retries=1, miss_retry_wait=0.01,
                        wait_backoff_factor=1, miss_max_retry_wait=0.02)
    # first caller wins the lease (N flag → W) and gets a miss to recache
    assert c.get_or_lease(p + "L", lease) is None
    assert c.set(p + "L", "filled", ttl=100)
    assert c.get_or_lease(p + "L", lease) == "filled"


def test_multi_get(client):
    c, p = client
    assert c.set(p + "m1", "one", ttl=100)
    assert c.set(p + "m2", 2, ttl=100)
    got = c.multi_get([p + "m1", p + "m2", p + "m3"])
    assert sorted((k.key, v) for k, v in got.items()) == [
        (p + "m1", "one"), (p + "m2", 2), (p + "m3", None)]
