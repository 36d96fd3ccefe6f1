"""Hot keys: the space-saving sketch (memd/hotkeys.py), `stats hotkeys`, the
Prometheus series, and ClusterClient.hot_keys() over a local memd fleet.

A zipf load (rank r requested in proportion to 1/r**s) is the load the
feature exists for: the sketch must name its hottest keys.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from prometheus_client import generate_latest

from memd.cache.clock import FakeClock
from memd.cluster.client import ClusterClient
from memd.hotkeys import HotKeys, key_label, label_key, parse_stats
from memd.metrics import HOT_KEYS_EXPORTED, make_registry
from memd.node import Node
from memd.protocol import protocol_for
from tools.fleet import LocalFleet, memd_available
from tools.hotkeys_zipf import find_top, zipf_sampler


def zipf_stream(n: int, keys: int = 2000, s: float = 1.2, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    draw = zipf_sampler(keys, s, rng)
    return [b"k%d" % r for r in draw(n)]


def stat_lines(reply: bytes) -> list[tuple[str, str]]:
    assert reply.endswith(b"END\r\n")
    out = []
    for line in reply.split(b"\r\n")[:-2]:
        stat, name, value = line.decode().split(" ")
        assert stat == "STAT"
        out.append((name, value))
    return out


def test_counts_are_exact_while_the_keys_fit_in_the_counters():
    hot = HotKeys(capacity=64, sample=1)
    stream = zipf_stream(5000, keys=50)
    for key in stream:
        hot.count(key)
    truth = Counter(stream)
    assert {k: c for k, c, _ in hot.top(64)} == dict(truth)
    assert all(err == 0 for _, _, err in hot.top(64))


def test_memory_stays_bounded_and_every_key_above_n_over_capacity_is_kept():
    capacity = 32
    hot = HotKeys(capacity=capacity, sample=1)
    stream = zipf_stream(20_000, keys=5000, s=1.0)
    for key in stream:
        hot.count(key)
        assert len(hot.counts) <= capacity
    truth = Counter(stream)
    reported = {k: (c, e) for k, c, e in hot.top(capacity)}
    for key, true_count in truth.items():
        if true_count > len(stream) / capacity:     # space-saving's guarantee
            assert key in reported
    for key, (count, error) in reported.items():
        assert count - error <= truth[key] <= count


def test_the_ten_hottest_keys_of_a_zipf_load_are_found_exactly_without_sampling():
    hot = HotKeys(capacity=128, sample=1)
    stream = zipf_stream(100_000)
    for i in range(0, len(stream), 100):           # as multi-gets of 100 keys
        hot.count_many(stream[i:i + 100])
    true_top = [k for k, _ in Counter(stream).most_common(10)]
    assert [k for k, _, _ in hot.top(10)] == true_top


def test_sampled_counting_still_ranks_a_zipf_loads_hottest_keys():
    hot = HotKeys(sample=16, seed=3)
    stream = zipf_stream(200_000)
    for i in range(0, len(stream), 100):
        hot.count_many(stream[i:i + 100])
    truth = Counter(stream)
    true_top = [k for k, _ in truth.most_common(10)]
    found = hot.top(10)
    assert [k for k, _, _ in found[:3]] == true_top[:3]
    assert len({k for k, _, _ in found} & set(true_top)) >= 8
    # counts are scaled back to requests: the hottest is estimated within 15%
    assert abs(found[0][1] - truth[true_top[0]]) < 0.15 * truth[true_top[0]]
    assert hot.sampled < len(stream) / 8            # most requests never reach the sketch


def test_single_and_batched_hooks_sample_the_same_positions():
    one, many = HotKeys(sample=8, seed=5), HotKeys(sample=8, seed=5)
    stream = zipf_stream(10_000)
    for key in stream:
        one.count(key)
    for i in range(0, len(stream), 37):
        many.count_many(stream[i:i + 37])
    assert one.counts == many.counts and one.sampled == many.sampled > 0


def test_counts_halve_every_window_so_a_key_that_cooled_off_drops_out():
    clock = FakeClock()
    hot = HotKeys(capacity=4, sample=1, window=60, clock=clock)
    for _ in range(64):
        hot.count(b"old")
    clock.advance(60)
    hot.count(b"new")                               # a sample triggers the halving
    assert dict((k, c) for k, c, _ in hot.top()) == {b"old": 32, b"new": 1}
    clock.advance(60 * 7)
    for _ in range(3):
        hot.count(b"new")
    assert [k for k, _, _ in hot.top()] == [b"new"]   # 32 >> 7 == 0: freed


def test_turned_off_nothing_is_counted_and_on_again_starts_empty():
    hot = HotKeys(sample=1)
    hot.count(b"a")
    hot.set_enabled(False)
    for _ in range(100):
        hot.count(b"b")
        hot.count_many([b"c", b"d"])
    assert hot.top() == [] and hot.sampled == 0
    hot.set_enabled(True)
    hot.count(b"e")
    assert [k for k, _, _ in hot.top()] == [b"e"]


@pytest.mark.parametrize("key", [b"plain:key", b"with space", b"\x00\xff", b"b64:looks-encoded",
                                 "ключ".encode()])
def test_key_labels_are_one_printable_token_and_round_trip(key):
    label = key_label(key)
    assert label.isprintable() and " " not in label
    assert label_key(label) == key


# -- through the protocol ---------------------------------------------------------------

@pytest.fixture
def node():
    node = Node()
    node.store.hotkeys = HotKeys(sample=1)         # exact, so the test can name the counts
    return node


def test_stats_hotkeys_lists_the_settings_then_the_hottest_keys_in_stat_style(node):
    text = protocol_for(node, ord("s"))
    text.feed(b"set a 0 0 1\r\n1\r\n")
    text.feed(b"get a\r\nget a b\r\nget a\r\ngets b\r\nmg a v\r\n")
    pairs = stat_lines(text.feed(b"stats hotkeys\r\n"))
    names = [n for n, _ in pairs]
    assert names[:6] == ["hotkeys_enabled", "hotkeys_capacity", "hotkeys_sample",
                         "hotkeys_window", "hotkeys_window_age", "hotkeys_sampled"]
    assert pairs[6:] == [("hotkey:a", "4"), ("hotkey:b", "2")]   # get, get, get, mg / get, gets
    assert dict(pairs)["hotkeys_sampled"] == "6"
    assert stat_lines(text.feed(b"stats hotkeys 1\r\n"))[6:] == [("hotkey:a", "4")]


def test_binary_protocol_gets_are_counted_and_odd_keys_are_reported_in_base64(node):
    import struct
    binary = protocol_for(node, 0x80)
    key = b"sp ace"
    binary.feed(struct.pack(">BBHBBHIIQ", 0x80, 0x00, len(key), 0, 0, 0, len(key), 0, 0) + key)
    text = protocol_for(node, ord("s"))
    pairs = dict(stat_lines(text.feed(b"stats hotkeys\r\n")))
    assert parse_stats({k: v for k, v in pairs.items()}) == [(key, 1)]


def test_stats_hotkeys_switches_off_and_on_and_refuses_other_arguments(node):
    text = protocol_for(node, ord("s"))
    assert text.feed(b"stats hotkeys off\r\n") == b"OK\r\n"
    text.feed(b"get a\r\n")
    pairs = dict(stat_lines(text.feed(b"stats hotkeys\r\n")))
    assert pairs["hotkeys_enabled"] == "0" and not any(n.startswith("hotkey:") for n in pairs)
    assert text.feed(b"stats hotkeys on\r\n") == b"OK\r\n"
    text.feed(b"get a\r\n")
    assert dict(stat_lines(text.feed(b"stats hotkeys\r\n")))["hotkey:a"] == "1"
    assert text.feed(b"stats hotkeys sideways\r\n").startswith(b"CLIENT_ERROR")


def test_prometheus_exports_only_the_top_ten_as_key_labels(node):
    text = protocol_for(node, ord("s"))
    for i in range(30):
        text.feed(b"get " + b" ".join(b"key%d" % i for _ in range(i + 1)) + b"\r\n")
    metrics = generate_latest(make_registry(node)).decode()
    series = [line for line in metrics.splitlines() if line.startswith("memd_hot_key_requests{")]
    assert len(series) == HOT_KEYS_EXPORTED
    assert 'memd_hot_key_requests{key="key29"} 30.0' in series
    assert "memd_hot_keys_window_seconds 60.0" in metrics


# -- a fleet ----------------------------------------------------------------------------

@pytest.mark.skipif(not memd_available(), reason="memd not importable")
def test_cluster_client_merges_the_nodes_hot_keys_and_finds_a_zipf_loads_hottest():
    with LocalFleet(n=3, backend="memd", first_host=90, extra_args=["-m", "16"]) as fleet:
        with ClusterClient(fleet.addresses) as client:
            result = find_top(client, keys=2000, requests=60_000, s=1.2, seed=11)
    true_keys = [k for k, _ in result["true"]]
    found_keys = [k for k, _ in result["found"]]
    # the nodes sample one request in 32, so the tail of the ten may differ
    # by a rank or two; the head of a zipf load stands far above it
    assert set(true_keys[:5]) <= set(found_keys)
    assert result["recall"] >= 0.7
    counts = [c for _, c in result["found"]]
    assert counts == sorted(counts, reverse=True)


def test_merging_nodes_lists_sums_a_keys_counts_and_keeps_the_top():
    from memd.hotkeys import merge
    a = [(b"x", 50), (b"y", 40), (b"z", 5)]
    b = [(b"y", 30), (b"w", 45)]
    assert merge([a, b], 3) == [(b"y", 70), (b"x", 50), (b"w", 45)]
    assert merge([], 3) == []


def test_keys_given_as_bytearray_or_memoryview_are_counted_as_bytes():
    # protocols may hand the store a slice of their receive buffer; every one
    # of those keys is sampled here, so none may be unhashable
    from memd.hotkeys import HotKeys
    hot = HotKeys(sample=1)          # every request counted
    for _ in range(200):
        hot.count(bytearray(b"ba"))
        hot.count_many([memoryview(b"mv"), bytearray(b"ba")])
    assert {bytes(k) for k, *_ in hot.top(2)} == {b"ba", b"mv"}
