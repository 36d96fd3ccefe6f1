"""memd-bench (tools/bench.py): its parts in isolation, then short real runs
against a memcached started for the test (skipped when it is not installed)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # `tools` importable without installing the package

from tools.bench import BenchConfig, format_table, parse_server, run_benchmark, split_connections  # noqa: E402
from tools.bench_hist import LatencyHistogram, bucket_index, bucket_value  # noqa: E402
from tools.bench_parser import ReplyParser  # noqa: E402
from tools.bench_workload import (  # noqa: E402
    RequestMaker, UniformSampler, WorkloadSpec, ZipfSampler, key_format, parse_value_sizes,
    preload_requests,
)

needs_memcached = pytest.mark.skipif(
    shutil.which("memcached") is None,
    reason="memcached binary not installed (apt-get install memcached)")


# -- reply parser -------------------------------------------------------------

def value_reply(key: bytes, data: bytes) -> bytes:
    return b"VALUE %s 0 %d\r\n%s\r\n" % (key, len(data), data)


TRICKY = b"x\r\nEND\r\nSTORED\r\nVALUE k 0 3\r\n\n"   # terminators inside value data


def test_parser_ignores_terminators_inside_value_data():
    stream = value_reply(b"a", TRICKY) + value_reply(b"b", b"") + b"END\r\n" + b"STORED\r\n"
    p = ReplyParser()
    assert p.feed(stream) == 2
    assert (p.gets, p.sets, p.hits, p.errors) == (1, 1, 2, 0)


def test_parser_handles_replies_split_at_every_byte():
    stream = (value_reply(b"a", TRICKY) + b"END\r\n") * 3 + b"STORED\r\n"
    p = ReplyParser()
    done = sum(p.feed(stream[i:i + 1]) for i in range(len(stream)))
    assert done == 4
    assert (p.gets, p.sets, p.hits, p.errors) == (3, 1, 3, 0)


def test_parser_skips_a_large_value_spread_over_many_chunks():
    data = bytes(random.Random(3).randrange(256) for _ in range(200_000))
    stream = value_reply(b"big", data) + b"END\r\n"
    p = ReplyParser()
    done = sum(p.feed(stream[i:i + 4096]) for i in range(0, len(stream), 4096))
    assert done == 1 and p.hits == 1 and p.errors == 0


def test_parser_counts_error_replies_as_completed_requests():
    p = ReplyParser()
    assert p.feed(b"SERVER_ERROR out of memory storing object\r\nNOT_STORED\r\nSTORED\r\n") == 3
    assert p.errors == 2 and p.sets == 1
    assert p.last_error == b"NOT_STORED"


def test_parser_rejects_a_value_line_without_a_length():
    with pytest.raises(ValueError):
        ReplyParser().feed(b"VALUE k 0 notanumber\r\n")


# -- workload -------------------------------------------------------------------

def test_zipf_sampler_follows_the_power_law():
    n, s, draws = 1000, 1.0, 200_000
    sampler = ZipfSampler(n, s, random.Random(7))
    counts = Counter(sampler.block(draws))
    harmonic = sum(1 / (i + 1) for i in range(n))
    assert counts[0] / draws == pytest.approx(1 / harmonic, rel=0.05)      # ~13.4%
    assert counts[0] / counts[1] == pytest.approx(2.0, rel=0.1)             # p(i) ~ 1/(i+1)
    assert counts[0] / counts[9] == pytest.approx(10.0, rel=0.25)
    top10 = sum(counts[i] for i in range(10)) / draws
    assert top10 == pytest.approx(sum(1 / (i + 1) for i in range(10)) / harmonic, rel=0.05)
    assert min(counts) >= 0 and max(counts) < n
    assert sampler.probability(0) == pytest.approx(1 / harmonic)


def test_uniform_sampler_covers_keys_evenly():
    counts = Counter(UniformSampler(10, random.Random(1)).block(100_000))
    assert set(counts) == set(range(10))
    assert all(abs(c - 10_000) < 600 for c in counts.values())


def test_keys_have_exactly_the_requested_size():
    fmt = key_format(10000, 16)
    assert fmt % 0 == b"key:000000000000" and len(fmt % 9999) == 16
    assert key_format(1000, 3) % 7 == b"007"        # no room left for the prefix
    with pytest.raises(ValueError):
        key_format(10000, 3)
    with pytest.raises(ValueError):
        key_format(10, 251)


def test_value_size_accepts_single_mix_and_range():
    assert parse_value_sizes("100") == (100,)
    assert parse_value_sizes("100,1000,10000") == (100, 1000, 10000)
    sizes = parse_value_sizes("100-10000", seed=1)
    assert len(sizes) == 64 and min(sizes) >= 100 and max(sizes) <= 10000
    assert parse_value_sizes("100-10000", seed=1) == sizes        # same seed, same mix
    with pytest.raises(ValueError):
        parse_value_sizes("10-1")


def test_requests_parse_back_as_the_configured_mix():
    spec = WorkloadSpec(keys=50, key_size=10, get_ratio=0.5, value_sizes=(5, 70))
    wire = RequestMaker(spec, seed=3).requests(2000)
    lines = wire.split(b"\r\n")
    gets = [ln for ln in lines if ln.startswith(b"get ")]
    sets = [ln for ln in lines if ln.startswith(b"set ")]
    assert len(gets) + len(sets) == 2000
    assert 0.45 < len(gets) / 2000 < 0.55
    assert {int(ln.split()[4]) for ln in sets} == {5, 70}
    assert all(len(ln.split()[1]) == 10 for ln in gets + sets)


def test_multiget_requests_carry_the_configured_width():
    spec = WorkloadSpec(keys=1000, get_ratio=1.0, multiget=25)
    wire = RequestMaker(spec, seed=1).requests(10)
    lines = [ln for ln in wire.split(b"\r\n") if ln]
    assert len(lines) == 10
    assert all(ln.startswith(b"get ") and len(ln.split()) == 26 for ln in lines)


def test_same_seed_gives_the_same_request_stream():
    spec = WorkloadSpec(distribution="zipf")
    assert RequestMaker(spec, 5).requests(500) == RequestMaker(spec, 5).requests(500)


def test_preload_stores_every_key_once():
    spec = WorkloadSpec(keys=30, value_sizes=(1, 2))
    wire = preload_requests(spec, 0, 30)
    assert wire.count(b"set ") == 30


# -- histogram and plumbing -----------------------------------------------------------

def test_histogram_buckets_are_within_one_percent():
    for ns in (0, 1, 255, 256, 1000, 123_456, 10**9, 2**62):
        assert bucket_value(bucket_index(ns)) == pytest.approx(ns, rel=0.01, abs=1)


def test_histograms_merge_across_processes():
    a, b = LatencyHistogram(), LatencyHistogram()
    a.record(100_000, 99)             # 100 us
    b.record(10_000_000)              # 10 ms
    a.merge(LatencyHistogram.from_sparse(b.to_sparse()))
    assert a.total() == 100
    assert a.percentile_us(50) == pytest.approx(100, rel=0.01)
    assert a.percentile_us(99.9) == pytest.approx(10_000, rel=0.01)


def test_connections_split_evenly_without_empty_processes():
    assert split_connections(50, 3) == [17, 17, 16]
    assert split_connections(2, 4) == [1, 1]


def test_server_addresses_parse():
    assert parse_server("10.0.0.5:11311") == ("10.0.0.5", 11311)
    assert parse_server("cache-1") == ("cache-1", 11211)
    assert parse_server("[::1]:9") == ("::1", 9)


# -- real runs against memcached ---------------------------------------------------------

def short(**kw) -> BenchConfig:
    base = dict(connections=8, duration=0.8, warmup=0.2)
    base.update(kw)
    return BenchConfig(**base)


def assert_healthy(result: dict) -> None:
    assert result["ops"] > 0 and result["ops_s"] > 0
    assert result["errors"] == 0 and result["conns_lost"] == 0, result["error_samples"]
    assert result["hit_rate"] == pytest.approx(1.0)
    assert result["latency_us"]["p50"] > 0
    assert result["latency_us"]["p50"] <= result["latency_us"]["p99"] <= result["latency_us"]["p99.9"]


@needs_memcached
def test_one_process_without_pipelining_hits_every_preloaded_key(memcached_server_factory):
    srv = memcached_server_factory()
    r = run_benchmark(f"127.0.0.1:{srv.port}", short(), progress_out=None)
    assert_healthy(r)
    assert r["preload"]["stored"] == 10000
    assert r["sets"] > 0 and r["gets"] > 5 * r["sets"]        # default 90/10 mix
    assert "ops/s" in format_table([r])


@needs_memcached
def test_two_processes_pipelined_zipf_merge_their_counts(memcached_server_factory):
    srv = memcached_server_factory()
    spec = WorkloadSpec(keys=5000, distribution="zipf", value_sizes=parse_value_sizes("100-3000"))
    r = run_benchmark(f"127.0.0.1:{srv.port}", short(processes=2, pipeline=8, spec=spec), None)
    assert_healthy(r)
    assert r["processes"] == 2


@needs_memcached
def test_multiget_counts_keys_per_request(memcached_server_factory):
    srv = memcached_server_factory()
    spec = WorkloadSpec(keys=2000, get_ratio=1.0, multiget=20)
    r = run_benchmark(f"127.0.0.1:{srv.port}", short(pipeline=2, spec=spec), None)
    assert_healthy(r)
    assert r["sets"] == 0
    assert r["keys_s"] == pytest.approx(20 * r["ops_s"])
    assert r["hits"] == 20 * r["gets"]


@needs_memcached
def test_without_preload_gets_miss_until_sets_fill_the_cache(memcached_server_factory):
    srv = memcached_server_factory()
    spec = WorkloadSpec(keys=100_000, get_ratio=0.99)
    r = run_benchmark(f"127.0.0.1:{srv.port}", short(preload=False, spec=spec), None)
    assert r["ops"] > 0 and r["errors"] == 0
    assert r["hit_rate"] < 0.5


@needs_memcached
def test_command_line_compares_two_servers_as_json(memcached_server_factory):
    a, b = memcached_server_factory(), memcached_server_factory()
    out = subprocess.run(
        [sys.executable, "-m", "tools.bench", "--server", f"127.0.0.1:{a.port}",
         "--server", f"127.0.0.1:{b.port}", "--connections", "4", "--pipeline", "4",
         "--duration", "0.6", "--warmup", "0.2", "--keys", "1000", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [r["server"] for r in doc["runs"]] == [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    assert all(r["ops"] > 0 and r["errors"] == 0 for r in doc["runs"])
    assert doc["ratio_first_to_second"]["ops/s"] > 0
    assert re.search(r"\[ *[\d.]+s\] 127\.0\.0\.1:\d+ +(warmup|run) +[\d,]+ ops/s", out.stderr)


def test_command_line_reports_an_unreachable_server(tmp_path):
    import socket
    with socket.socket() as s:             # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run(
        [sys.executable, "-m", "tools.bench", "--server", f"127.0.0.1:{port}", "--duration", "0.5"],
        cwd=REPO, capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 2
    assert "cannot connect" in out.stderr
