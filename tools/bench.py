"""memd-bench: a load generator for anything that speaks memcached's text protocol.

    memd-bench --server 127.0.0.1:11211 --connections 50 --pipeline 16
    python -m tools.bench --server 127.0.0.1:11211 --server 127.0.0.1:11311 --json

Give --server twice to run the same load (same seed, same request stream)
against two servers one after the other and get the ratio first/second per
metric.  --processes N splits the connections over N worker processes (one
epoll loop each) when one Python process cannot saturate the server; their
counts and latency histograms are merged.  See docs/bench.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from threading import BrokenBarrierError

from tools.bench_hist import LatencyHistogram
from tools.bench_parser import ReplyParser
from tools.bench_worker import WorkerPlan, worker_main
from tools.bench_workload import WorkloadSpec, parse_value_sizes, preload_requests

DEFAULT_PORT = 11211
PRELOAD_BATCH = 256
START_TIMEOUT_S = 30.0      # connecting every worker's sockets
REPORT_GRACE_S = 15.0       # after the end, how long workers get to report


class BenchError(Exception):
    """A run could not happen (server unreachable, worker died): exit 2."""


@dataclass
class BenchConfig:
    spec: WorkloadSpec = field(default_factory=WorkloadSpec)
    connections: int = 50
    pipeline: int = 1
    duration: float = 10.0
    warmup: float = 1.0
    processes: int = 1
    preload: bool = True
    seed: int = 1
    cpus: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.connections < 1 or self.pipeline < 1 or self.processes < 1:
            raise ValueError("--connections, --pipeline and --processes must be at least 1")
        if self.duration <= 0 or self.warmup < 0:
            raise ValueError("--duration must be positive and --warmup not negative")


# -- targets ----------------------------------------------------------------

def parse_server(text: str) -> tuple[str, int]:
    """'host:port', '[v6]:port', or a bare host (port 11211)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":") or DEFAULT_PORT
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, DEFAULT_PORT
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise ValueError(f"bad --server {text!r}: want host:port") from None


def parse_cpus(text: str | None) -> tuple[int, ...] | None:
    """'1', '0,2' or '2-3' -> CPU numbers for os.sched_setaffinity."""
    if not text:
        return None
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(cpus)


def preload(host: str, port: int, spec: WorkloadSpec) -> dict:
    """Store every key once, pipelined in batches, so gets can hit from the start."""
    t0 = time.monotonic()
    parser = ReplyParser()
    try:
        with socket.create_connection((host, port), timeout=30) as sock:
            for start in range(0, spec.keys, PRELOAD_BATCH):
                stop = min(spec.keys, start + PRELOAD_BATCH)
                sock.sendall(preload_requests(spec, start, stop))
                want, got = stop - start, 0
                while got < want:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError("server closed the connection during preload")
                    got += parser.feed(data)
    except OSError as e:
        raise BenchError(f"preload of {host}:{port} failed: {e}") from None
    return {"stored": parser.sets, "errors": parser.errors,
            "seconds": time.monotonic() - t0,
            "last_error": parser.last_error.decode("latin-1")}


def check_reachable(host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise BenchError(f"cannot connect to {host}:{port}: {e}") from None


# -- one run against one server ---------------------------------------------

def split_connections(total: int, processes: int) -> list[int]:
    """Connections per process, as even as possible, no empty process."""
    processes = min(processes, total)
    return [total // processes + (i < total % processes) for i in range(processes)]


def run_benchmark(server: str, cfg: BenchConfig, progress_out=sys.stderr) -> dict:
    """Preload (optionally), drive the load, return merged results for `server`."""
    host, port = parse_server(server)
    check_reachable(host, port)
    loaded = preload(host, port, cfg.spec) if cfg.preload else None
    if loaded and progress_out:
        print(f"preloaded {loaded['stored']:,} keys into {host}:{port} in {loaded['seconds']:.2f}s"
              + (f" ({loaded['errors']} errors: {loaded['last_error']})" if loaded["errors"] else ""),
              file=progress_out, flush=True)

    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    shares = split_connections(cfg.connections, cfg.processes)
    barrier = ctx.Barrier(len(shares) + 1)
    times = ctx.RawArray("q", 2)
    progress = ctx.RawArray("q", len(shares))
    results = ctx.Queue()
    procs = []
    for slot, n in enumerate(shares):
        plan = WorkerPlan(host, port, n, cfg.pipeline, cfg.spec, cfg.seed * 1000 + slot, cfg.cpus)
        p = ctx.Process(target=worker_main, args=(plan, slot, barrier, times, progress, results),
                        name=f"memd-bench-{slot}", daemon=True)
        p.start()
        procs.append(p)
    try:
        t_start, t_end = _start_together(barrier, times, cfg, results)
        _show_progress(progress, t_start, t_end, f"{host}:{port}", progress_out)
        parts = _collect(results, len(shares), t_end)
    finally:
        for p in procs:
            p.join(timeout=2)
            if p.is_alive():
                p.terminate()
                p.join()
    merged = merge_results(parts, cfg.spec.multiget)
    merged.update(server=f"{host}:{port}", processes=len(shares), preload=loaded)
    return merged


def _start_together(barrier, times, cfg: BenchConfig, results) -> tuple[int, int]:
    try:
        barrier.wait(timeout=START_TIMEOUT_S)       # every worker is connected
        now = time.monotonic_ns()                   # CLOCK_MONOTONIC: same clock in every process
        times[0] = now + int(cfg.warmup * 1e9)
        times[1] = times[0] + int(cfg.duration * 1e9)
        barrier.wait(timeout=START_TIMEOUT_S)       # go
    except BrokenBarrierError:
        raise BenchError(_first_fatal(results) or "a worker process failed to start") from None
    return times[0], times[1]


def _first_fatal(results) -> str | None:
    try:
        while True:
            r = results.get(timeout=1)
            if "fatal" in r:
                return r["fatal"]
    except queue.Empty:
        return None


def _show_progress(progress, t_start: int, t_end: int, label: str, out) -> None:
    """Once a second: ops/s over the last second, across all processes."""
    last_n, last_t = 0, time.monotonic_ns()
    begin = last_t
    while True:
        now = time.monotonic_ns()
        if now >= t_end:
            return
        time.sleep(min(1.0, (t_end - now) / 1e9))
        now = time.monotonic_ns()
        n = sum(progress)
        if out and now - last_t > 0.5e9:
            # Name the phase most of the interval just shown belongs to.
            phase = "warmup" if (last_t + now) // 2 < t_start else "run"
            rate = (n - last_n) * 1e9 / (now - last_t)
            print(f"[{(now - begin) / 1e9:5.1f}s] {label} {phase:6} {rate:12,.0f} ops/s",
                  file=out, flush=True)
        last_n, last_t = n, now


def _collect(results, expected: int, t_end: int) -> list[dict]:
    parts = []
    deadline = time.monotonic() + max(0.0, (t_end - time.monotonic_ns()) / 1e9) + REPORT_GRACE_S
    while len(parts) < expected:
        try:
            r = results.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise BenchError(f"only {len(parts)} of {expected} worker processes reported") from None
        if "fatal" in r:
            raise BenchError(r["fatal"])
        parts.append(r)
    return parts


def merge_results(parts: list[dict], multiget: int) -> dict:
    """Sum counts, add rates (each process timed its own window), merge histograms."""
    hist = LatencyHistogram()
    for p in parts:
        hist.merge(LatencyHistogram.from_sparse(p["hist"]))
    total = {k: sum(p[k] for p in parts) for k in ("gets", "sets", "hits", "errors", "get_keys", "conns_lost")}
    ops = total["gets"] + total["sets"] + total["errors"]

    def rate(count_of) -> float:
        return sum(count_of(p) / p["elapsed_s"] for p in parts if p["elapsed_s"] > 0)

    samples = [s for p in parts for s in p["error_samples"]][:5]
    return {
        "ops": ops,
        "ops_s": rate(lambda p: p["gets"] + p["sets"] + p["errors"]),
        # Keys looked up or stored per second: ops_s x multiget width, like mcload.
        "keys_s": rate(lambda p: p["get_keys"] + p["sets"]),
        **total,
        "multiget": multiget,
        "hit_rate": total["hits"] / total["get_keys"] if total["get_keys"] else None,
        "elapsed_s": max((p["elapsed_s"] for p in parts), default=0.0),
        "latency_us": {
            "avg": hist.mean_us(),
            "p50": hist.percentile_us(50),
            "p90": hist.percentile_us(90),
            "p99": hist.percentile_us(99),
            "p99.9": hist.percentile_us(99.9),
            "max": hist.max_us(),
        },
        "error_samples": samples,
    }


# -- reporting --------------------------------------------------------------

# (label, how to read it from a result, format, ratio is meaningful)
ROWS = [
    ("ops/s", lambda r: r["ops_s"], "{:,.0f}", True),
    ("keys/s", lambda r: r["keys_s"], "{:,.0f}", True),
    ("gets", lambda r: r["gets"], "{:,}", True),
    ("sets", lambda r: r["sets"], "{:,}", True),
    ("hit rate", lambda r: r["hit_rate"], "{:.2%}", True),
    ("errors", lambda r: r["errors"], "{:,}", False),
    ("latency avg us", lambda r: r["latency_us"]["avg"], "{:,.1f}", True),
    ("latency p50 us", lambda r: r["latency_us"]["p50"], "{:,.1f}", True),
    ("latency p99 us", lambda r: r["latency_us"]["p99"], "{:,.1f}", True),
    ("latency p99.9 us", lambda r: r["latency_us"]["p99.9"], "{:,.1f}", True),
    ("latency max us", lambda r: r["latency_us"]["max"], "{:,.1f}", True),
]


def ratios(first: dict, second: dict) -> dict:
    """first / second for every metric where a ratio means something."""
    out = {}
    for label, get, _fmt, meaningful in ROWS:
        a, b = get(first), get(second)
        out[label] = a / b if meaningful and a is not None and b else None
    return out


def format_table(runs: list[dict]) -> str:
    width = max(16, *(len(r["server"]) + 2 for r in runs))
    head = f"{'metric':18}" + "".join(f"{r['server']:>{width}}" for r in runs)
    two = len(runs) == 2
    rat = ratios(runs[0], runs[1]) if two else {}
    if two:
        head += f"{'ratio 1st/2nd':>16}"
    lines = [head, "-" * len(head)]
    for label, get, fmt, _ in ROWS:
        cells = "".join(f"{'-' if get(r) is None else fmt.format(get(r)):>{width}}" for r in runs)
        line = f"{label:18}" + cells
        if two:
            line += f"{'-' if rat[label] is None else format(rat[label], '.2f'):>16}"
        lines.append(line)
    for r in runs:
        if r["error_samples"]:
            lines.append(f"{r['server']} errors, e.g.: " + "; ".join(r["error_samples"]))
    return "\n".join(lines)


def describe(cfg: BenchConfig) -> str:
    s = cfg.spec
    dist = s.distribution + (f" s={s.zipf_s}" if s.distribution == "zipf" else "")
    sizes = (f"{s.value_sizes[0]}" if len(set(s.value_sizes)) == 1
             else f"{min(s.value_sizes)}..{max(s.value_sizes)} ({len(s.value_sizes)} sizes)")
    return (f"{cfg.connections} conns x pipeline {cfg.pipeline}, {cfg.processes} process(es), "
            f"{cfg.duration:g}s + {cfg.warmup:g}s warmup; get {s.get_ratio:.0%}"
            + (f" x{s.multiget} keys" if s.multiget > 1 else "")
            + f"; {s.keys:,} keys of {s.key_size} B ({dist}); values {sizes} B")


# -- command line -----------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="memd-bench",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Load generator for memcached-protocol servers (memd, memcached).")
    ap.add_argument("--server", action="append", metavar="HOST:PORT",
                    help="target; give twice to compare two servers (default 127.0.0.1:11211)")
    ap.add_argument("-c", "--connections", type=int, default=50)
    ap.add_argument("-d", "--pipeline", type=int, default=1,
                    help="requests in flight per connection (1 = no pipelining)")
    ap.add_argument("--get-ratio", type=float, default=None,
                    help="fraction of requests that are gets (default 0.9; 1.0 with --multiget)")
    ap.add_argument("--keys", type=int, default=10000, help="distinct keys")
    ap.add_argument("--key-size", type=int, default=16, help="key length in bytes")
    ap.add_argument("--distribution", choices=("uniform", "zipf"), default="uniform")
    ap.add_argument("--zipf-s", type=float, default=0.99, help="zipf exponent")
    ap.add_argument("--value-size", default="100", help="N, a mix N,M,..., or a range LO-HI")
    ap.add_argument("--multiget", type=int, default=1, help="keys per get request")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    ap.add_argument("--processes", type=int, default=1, help="worker processes")
    ap.add_argument("--preload", action=argparse.BooleanOptionalAction, default=True,
                    help="store every key before the run")
    ap.add_argument("--seed", type=int, default=1, help="request stream seed (same for every server)")
    ap.add_argument("--cpus", help="pin worker processes to these CPUs, e.g. 1 or 2-3")
    ap.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    ap.add_argument("-q", "--quiet", action="store_true", help="no live progress on stderr")
    return ap


def config_from_args(a: argparse.Namespace) -> BenchConfig:
    get_ratio = a.get_ratio if a.get_ratio is not None else (1.0 if a.multiget > 1 else 0.9)
    spec = WorkloadSpec(keys=a.keys, key_size=a.key_size, get_ratio=get_ratio,
                        multiget=a.multiget, value_sizes=parse_value_sizes(a.value_size, a.seed),
                        distribution=a.distribution, zipf_s=a.zipf_s)
    return BenchConfig(spec=spec, connections=a.connections, pipeline=a.pipeline,
                       duration=a.duration, warmup=a.warmup, processes=a.processes,
                       preload=a.preload, seed=a.seed, cpus=parse_cpus(a.cpus))


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        cfg = config_from_args(a)
        servers = a.server or [f"127.0.0.1:{DEFAULT_PORT}"]
        for s in servers:
            parse_server(s)
    except ValueError as e:
        ap.error(str(e))
    progress_out = None if a.quiet else sys.stderr
    if progress_out:
        print("memd-bench: " + describe(cfg), file=progress_out, flush=True)
    try:
        runs = [run_benchmark(s, cfg, progress_out) for s in servers]
    except BenchError as e:
        print(f"memd-bench: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if a.json:
        doc = {"config": {**asdict(cfg), "description": describe(cfg)}, "runs": runs}
        if len(runs) == 2:
            doc["ratio_first_to_second"] = ratios(runs[0], runs[1])
        text = json.dumps(doc, indent=2)
    else:
        text = format_table(runs)
    try:
        print(text, flush=True)
    except BrokenPipeError:       # `memd-bench | head` is not an error
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
