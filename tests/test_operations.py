"""Operator commands against a running memd node: watch, lru_crawler,
slabs reassign/automove, and slab rebalancing under a changing value size."""

from __future__ import annotations

import socket
import time

import pytest
from pymemcache.client.base import Client

import wire


def _client(server) -> Client:
    return Client(server.address, connect_timeout=2, timeout=5)


def _read_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    """Read until ``marker`` has arrived (or the timeout passes)."""
    buf = b""
    deadline = time.monotonic() + timeout
    while marker not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 20)
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
    return buf


def test_watch_streams_fetches_mutations_and_evictions(memd_server_factory):
    server = memd_server_factory("-m", "1")
    watcher = socket.create_connection(server.address, timeout=5)
    watcher.sendall(b"watch fetchers mutations evictions\r\n")
    assert _read_until(watcher, b"OK\r\n") == b"OK\r\n"
    client = _client(server)
    client.set("foo", b"bar")
    client.get("foo")
    client.get("nope")
    text = _read_until(watcher, b"key=nope status=not_found", 5).decode()
    assert "type=item_store key=foo status=stored cmd=set" in text
    assert "type=item_get key=foo status=found" in text
    assert "type=item_get key=nope status=not_found" in text
    # a node of 1 MB evicts quickly: evictions are streamed too
    big = b"x" * 5000
    for i in range(600):
        client.set(f"fill{i}", big, noreply=True)
    assert b"type=eviction key=fill" in _read_until(watcher, b"type=eviction key=fill", 10)
    watcher.close()
    client.set("after", b"1")          # the node goes on after the watcher left
    assert client.get("after") == b"1"


def test_watch_rejects_unknown_event_kinds(memd_server):
    with wire.connect(memd_server) as c:
        assert c.request(b"watch nonsense\r\n") == b"ERROR\r\n"


def test_metadump_lists_every_item_in_memcached_format(memd_server_factory):
    server = memd_server_factory()
    client = _client(server)
    for i in range(3000):
        client.set(f"dump_{i}", b"v" * (i % 50), expire=0 if i % 2 else 1000, noreply=True)
    with wire.connect(server) as c:        # pymemcache refuses such keys; memcached does not
        c.request(b"set tab\tkey 0 0 1\r\nx\r\n")
    client.get("dump_1")
    sock = socket.create_connection(server.address, timeout=5)
    sock.sendall(b"lru_crawler metadump all\r\nversion\r\n")
    out = _read_until(sock, b"VERSION", 10)
    out += _read_until(sock, b"\r\n", 1) if not out.endswith(b"\r\n") else b""
    body, _, rest = out.partition(b"END\r\n")
    assert rest.startswith(b"VERSION ")          # the pipelined command waits for the dump
    lines = body.decode().splitlines()
    assert len(lines) == 3001
    by_key = {l.split()[0][4:]: dict(f.split("=", 1) for f in l.split()[1:]) for l in lines}
    assert by_key["dump_1"]["fetch"] == "yes" and by_key["dump_2"]["fetch"] == "no"
    assert by_key["dump_1"]["exp"] == "-1" and int(by_key["dump_2"]["exp"]) > time.time()
    assert "tab%09key" in by_key                  # keys are URI-encoded, as memcached does
    assert set(by_key["dump_3"]) == {"exp", "la", "cas", "fetch", "cls", "size"}


def test_lru_crawler_crawl_reclaims_expired_items_without_touching_them(memd_server_factory):
    server = memd_server_factory()
    client = _client(server)
    for i in range(200):
        client.set(f"short:{i}", b"x", expire=1, noreply=True)
    client.set("long", b"y")
    time.sleep(2.1)
    with wire.connect(server) as c:
        assert c.request(b"lru_crawler crawl all\r\n") == b"OK\r\n"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        stats = client.stats()
        if stats[b"curr_items"] == 1:
            break
        time.sleep(0.1)
    assert stats[b"curr_items"] == 1
    assert stats[b"crawler_reclaimed"] + stats[b"reclaimed"] >= 200
    assert client.get("long") == b"y"


@pytest.mark.parametrize("commands", [
    [b"lru_crawler disable", b"lru_crawler disable", b"lru_crawler enable", b"lru_crawler enable"],
    [b"lru_crawler bogus", b"lru_crawler", b"lru_crawler crawl all", b"lru_crawler crawl 1,2"],
    [b"lru_crawler crawl 0", b"lru_crawler crawl 100", b"lru_crawler metadump 0"],
    [b"lru_crawler sleep 100", b"lru_crawler tocrawl 5"],
    [b"watch bogus"],
])
def test_lru_crawler_and_watch_replies_match_memcached(server_factory, commands):
    replies = []
    for kind in ("memcached", "memd"):
        server = server_factory(kind)
        got = []
        for command in commands:          # one connection each: state is per node
            with wire.connect(server) as c:
                got.append(c.request(command + b"\r\n"))
        replies.append(got)
    assert replies[0] == replies[1]


@pytest.mark.parametrize("command, reply", [
    (b"slabs reassign 1 1", b"SAME src and dst class are identical\r\n"),
    (b"slabs reassign 99 1", b"BADCLASS invalid src or dst class id\r\n"),
    (b"slabs reassign x 1", b"CLIENT_ERROR bad command line format\r\n"),
    (b"slabs reassign 1 2", b"NOSPARE source class has no spare pages\r\n"),
    (b"slabs automove 2", b"OK\r\n"),
    (b"slabs automove 3", b"ERROR\r\n"),
    (b"slabs bogus", b"ERROR\r\n"),
])
def test_slabs_commands_answer_like_memcached(diff_pair, command, reply):
    for server in diff_pair:
        with wire.connect(server) as c:
            assert c.request(command + b"\r\n") == reply, server


def test_slabs_reassign_moves_a_page_by_hand(memd_server_factory):
    server = memd_server_factory("-m", "8", "-o", "slab_automove=0")
    client = _client(server)
    with wire.connect(server) as c:
        c.request(b"slabs automove 0\r\n")
    for i in range(60000):
        client.set(f"s{i}", b"v" * 100, noreply=True)
    slabs = client.stats("slabs")
    src = next(int(k.split(b":")[0]) for k, v in slabs.items()
               if k.endswith(b":total_pages") and v >= 2)
    pages_before = slabs[b"%d:total_pages" % src]
    with wire.connect(server) as c:
        assert c.request(b"slabs reassign %d 30\r\n" % src) == b"OK\r\n"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        slabs = client.stats("slabs")
        if slabs.get(b"30:total_pages") == 1:
            break
        time.sleep(0.1)
    assert slabs[b"30:total_pages"] == 1
    assert slabs[b"%d:total_pages" % src] == pages_before - 1
    assert client.stats()[b"slabs_moved"] == 1


def _hit_rate(client: Client, keys, value: bytes) -> float:
    """One pass of a read-through workload: get each key, store the misses."""
    hits = 0
    for i in range(0, len(keys), 50):
        batch = keys[i:i + 50]
        found = client.get_many(batch)
        hits += len(found)
        missing = {k: value for k in batch if k not in found}
        if missing:
            client.set_many(missing, noreply=True)
    return hits / len(keys)


def _steady_hit_rate(client: Client, keys, value: bytes, rounds: int = 3) -> float:
    rate = 0.0
    for _ in range(rounds):
        rate = _hit_rate(client, keys, value)
    return rate


def test_rebalancing_lets_a_full_cache_of_small_values_serve_large_ones(memd_server_factory):
    """Fill with 100-byte values, then switch to 10 KiB values: automove gives
    the new size class pages until its hit rate is >= 90% of a fresh node's."""
    keys = [f"big:{i}" for i in range(700)]       # ~7 MB of 10 KiB values in a 16 MB node
    big = b"B" * 10240

    fresh = _client(memd_server_factory("-m", "16"))
    fresh_rate = _steady_hit_rate(fresh, keys, big)
    assert fresh_rate > 0.9

    server = memd_server_factory("-m", "16")
    client = _client(server)
    for i in range(0, 200_000, 500):
        client.set_many({f"small:{j}": b"s" * 100 for j in range(i, i + 500)}, noreply=True)
    assert client.stats()[b"evictions"] > 0          # the small class owns all memory
    start = time.monotonic()
    rate = 0.0
    while time.monotonic() - start < 60:
        rate = _hit_rate(client, keys, big)
        if rate >= 0.9 * fresh_rate:
            break
    took = time.monotonic() - start
    print(f"rebalanced to hit rate {rate:.2f} (fresh {fresh_rate:.2f}) in {took:.1f} s, "
          f"{client.stats()[b'slabs_moved']} pages moved")
    assert rate >= 0.9 * fresh_rate


def _own_fd(sock: socket.socket) -> int:
    """The node's fd for this connection, found in `stats conns` by its port."""
    sock.sendall(b"stats conns\r\n")
    port = sock.getsockname()[1]
    for line in _read_until(sock, b"END\r\n").decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].endswith(":addr") and parts[2].endswith(f":{port}"):
            return int(parts[1].split(":")[0])
    raise AssertionError("connection not in stats conns")


def test_watch_lines_name_the_connection_that_asked(memd_server):
    watcher = socket.create_connection(memd_server.address, timeout=5)
    watcher.sendall(b"watch fetchers mutations\r\n")
    assert _read_until(watcher, b"OK\r\n") == b"OK\r\n"
    a = socket.create_connection(memd_server.address, timeout=5)
    b = socket.create_connection(memd_server.address, timeout=5)
    fd_a, fd_b = _own_fd(a), _own_fd(b)
    assert fd_a != fd_b
    a.sendall(b"set ka 0 0 1\r\nx\r\n")
    assert _read_until(a, b"\r\n") == b"STORED\r\n"
    b.sendall(b"get ka\r\n")
    assert _read_until(b, b"END\r\n").endswith(b"END\r\n")
    b.sendall(b"ms kb 1\r\ny\r\n")
    assert _read_until(b, b"\r\n") == b"HD\r\n"
    a.sendall(b"get kb\r\n")
    assert _read_until(a, b"END\r\n").endswith(b"END\r\n")
    text = _read_until(watcher, b"key=kb status=found").decode()
    assert f"type=item_store key=ka status=stored cmd=set ttl=0 clsid=1 cfd={fd_a} " in text
    assert f"type=item_get key=ka status=found clsid=1 cfd={fd_b} " in text
    assert f"type=item_store key=kb status=stored cmd=set ttl=0 clsid=1 cfd={fd_b} " in text
    assert f"type=item_get key=kb status=found clsid=1 cfd={fd_a} " in text
    for s in (watcher, a, b):
        s.close()
