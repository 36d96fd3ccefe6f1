"""Prometheus metrics (memd.metrics): a real node started with --metrics-port,
scraped over HTTP and parsed with prometheus_client's own parser.

Names are memcached_exporter's, so these tests pin the names as much as the values.
"""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from memd.metrics import make_registry, start_metrics_server
from memd.node import Node
from memd.protocol import protocol_for

import servers


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(port: int) -> dict:
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return parse(r.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def talk(port: int, data: bytes, expect_end: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        buf = b""
        while not (expect_end in buf and buf.endswith(b"\r\n")):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return buf


@pytest.fixture
def node_with_metrics(memd_server_factory):
    mport = servers.free_port()
    node = memd_server_factory("--metrics-port", str(mport), "-c", "100")
    return node, mport


def test_scrape_reports_commands_items_and_bytes_after_traffic(node_with_metrics):
    node, mport = node_with_metrics
    reqs = b"".join(b"set k%d 5 0 10\r\n0123456789\r\n" % i for i in range(20))
    reqs += b"get k1 k2 k3 nope\r\ndelete k4\r\ndelete nope\r\nincr nope 1\r\n"
    reqs += b"touch k5 100\r\ncas k6 0 0 1 999\r\nx\r\nversion\r\n"
    talk(node.port, reqs, b"VERSION")
    # bytes written are counted once the send returns, which can be just
    # after the client has its reply: wait for that, not for a fixed time
    deadline = time.monotonic() + 10
    while True:
        m = scrape(mport)
        if m[("memcached_written_bytes_total", ())] > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.01)

    def cmd(command, status):
        return m[("memcached_commands_total", (("command", command), ("status", status)))]

    assert m[("memcached_up", ())] == 1
    assert cmd("get", "hit") == 3
    assert cmd("get", "miss") == 1
    assert cmd("delete", "hit") == 1 and cmd("delete", "miss") == 1
    assert cmd("incr", "miss") == 1
    assert cmd("touch", "hit") == 1
    assert cmd("cas", "badval") == 1
    # the exporter subtracts CAS commands from cmd_set to count plain sets
    assert cmd("set", "hit") == 20
    assert m[("memcached_current_items", ())] == 19
    assert m[("memcached_items_total", ())] == 20
    assert m[("memcached_current_bytes", ())] > 19 * 10
    assert m[("memcached_limit_bytes", ())] == 64 << 20
    assert m[("memcached_max_connections", ())] == 100
    assert m[("memcached_read_bytes_total", ())] >= len(reqs)
    assert m[("memcached_written_bytes_total", ())] > 0
    assert m[("memcached_connections_total", ())] >= 1
    assert m[("memcached_items_evicted_total", ())] == 0
    assert m[("memcached_items_reclaimed_total", ())] == 0
    assert m[("memcached_uptime_seconds", ())] >= 0
    versions = [k for k in m if k[0] == "memcached_version"]
    assert len(versions) == 1 and dict(versions[0][1])["version"].startswith("1.6.18")


def test_scrape_reports_per_slab_metrics_under_exporter_names(node_with_metrics):
    node, mport = node_with_metrics
    talk(node.port, b"set a 0 0 10\r\n0123456789\r\nset b 0 0 3000\r\n" + b"x" * 3000 +
         b"\r\nget a\r\n", b"END\r\n")
    m = scrape(mport)
    classes = {dict(k[1])["slab"] for k in m if k[0] == "memcached_slab_current_items"}
    assert len(classes) == 2
    assert sum(v for k, v in m.items() if k[0] == "memcached_slab_current_items") == 2
    for name in ("memcached_slab_chunk_size_bytes", "memcached_slab_chunks_per_page",
                 "memcached_slab_current_pages", "memcached_slab_current_chunks",
                 "memcached_slab_chunks_used", "memcached_slab_chunks_free",
                 "memcached_slab_chunks_free_end", "memcached_slab_mem_requested_bytes",
                 "memcached_slab_items_evicted_total", "memcached_slab_items_reclaimed_total",
                 "memcached_slab_items_age_seconds"):
        assert {dict(k[1])["slab"] for k in m if k[0] == name} == classes, name
    used = sum(v for k, v in m.items() if k[0] == "memcached_slab_chunks_used")
    assert used == 2
    hits = [v for k, v in m.items() if k[0] == "memcached_slab_lru_hits_total"
            and dict(k[1])["lru"] == "cold"]
    assert sum(hits) == 1
    sets = [v for k, v in m.items() if k[0] == "memcached_slab_commands_total"
            and dict(k[1])["command"] == "get"]
    assert sum(sets) == 1


def test_connections_gauge_follows_open_connections(node_with_metrics):
    node, mport = node_with_metrics
    socks = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(5)]
    try:
        for s in socks:          # make sure every one was accepted
            s.sendall(b"version\r\n")
            s.recv(100)
        m = scrape(mport)
        assert m[("memcached_current_connections", ())] >= 5
    finally:
        for s in socks:
            s.close()


def test_process_metrics_are_exported_for_rss_alerts(node_with_metrics):
    _, mport = node_with_metrics
    m = scrape(mport)
    assert m[("process_resident_memory_bytes", ())] > 10 << 20


def test_collector_reads_an_in_process_node_without_a_server():
    node = Node()
    proto = protocol_for(node, ord("s"))
    proto.feed(b"set x 0 0 1\r\n1\r\nincr x 5\r\ndecr x 1\r\nget x\r\n")
    m = parse(generate_latest(make_registry(node)).decode())
    assert m[("memcached_commands_total", (("command", "incr"), ("status", "hit")))] == 1
    assert m[("memcached_commands_total", (("command", "decr"), ("status", "hit")))] == 1
    assert m[("memcached_current_items", ())] == 1


def test_start_metrics_server_on_port_zero_reports_the_bound_port():
    node = Node()
    server = start_metrics_server(node, 0, "127.0.0.1")
    try:
        assert node.metrics_port == server.server_port > 0
        m = scrape(server.server_port)
        assert m[("memcached_up", ())] == 1
    finally:
        server.shutdown()
        server.server_close()
