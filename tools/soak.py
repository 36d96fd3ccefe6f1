"""Soak test: minutes of churn and hostile clients against a memd it starts itself.

    python tools/soak.py                       # 10 minutes, 200 connections, -m 64
    python tools/soak.py --minutes 4 --connections 200 --memory 64

What it does
------------
* starts ``python -m memd -m <memory>`` on a free 127.0.0.1 port;
* runs ``--connections`` well-behaved clients (asyncio, one task each).  Each
  client owns its own keys, so it knows exactly what the server should hold:
  every value it writes embeds the key, a per-key sequence number and a CRC32
  of the whole value.  A value read back must be the *last acknowledged* write
  of that key, intact; a miss is allowed only because of eviction or expiry
  (both happen: the working set is far larger than -m).  Wrong key, bad
  checksum, or an older sequence number are counted as **wrong values**;
* value sizes are a mix (10 B .. 512 KiB) whose weights shift every minute, so
  pages must move between slab classes (or calcify);
* hostile clients run beside them: random garbage, slow-loris (a byte every
  200 ms), connection floods (hundreds of sockets at once), abrupt RST
  disconnects in the middle of a value, and huge declared lengths;
* every ``--sample`` seconds it reads memd's RSS from /proc and a few stats,
  and prints one row; at the end a summary (RSS growth, errors by kind).

Exit status 1 if a wrong value was read, memd died, or it logged a traceback.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIZE_BANDS = [(10, 200), (200, 4096), (4096, 65536), (65536, 512 * 1024)]
# weights per phase: the mix shifts every minute so slab classes' needs change
PHASES = [(60, 30, 9, 1), (10, 20, 50, 20), (85, 10, 4, 1), (20, 60, 15, 5)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- values that prove themselves ----------------------------------------------------------

HEAD = struct.Struct("<IQ")        # crc32 of the rest, sequence number


def make_value(key: bytes, seq: int, size: int, rng: random.Random) -> bytes:
    body = key + b"|" + rng.randbytes(max(0, size - len(key) - 1 - HEAD.size))
    return HEAD.pack(zlib.crc32(struct.pack("<Q", seq) + body), seq) + body


def check_value(key: bytes, value: bytes) -> tuple[bool, int]:
    """(intact and for this key, its sequence number)."""
    if len(value) < HEAD.size + len(key) + 1:
        return False, -1
    crc, seq = HEAD.unpack_from(value)
    body = value[HEAD.size:]
    if zlib.crc32(struct.pack("<Q", seq) + body) != crc or not body.startswith(key + b"|"):
        return False, seq
    return True, seq


# -- the well-behaved clients ----------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.ops = 0
        self.counts = Counter()
        self.latencies: list[float] = []
        self.wrong: list[str] = []

    def take_interval(self):
        lat = sorted(self.latencies)
        self.latencies = []
        p99 = lat[int(len(lat) * 0.99)] * 1000 if lat else 0.0
        return p99


class Conn:
    def __init__(self, reader, writer) -> None:
        self.r = reader
        self.w = writer

    @classmethod
    async def open(cls, port: int):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        return cls(reader, writer)

    def close(self) -> None:
        self.w.close()


async def good_client(cid: int, port: int, stats: Stats, stop: float, phase_of, timeout: float):
    rng = random.Random(cid)
    keys = [b"soak:%d:%d" % (cid, i) for i in range(400)]
    acked: dict[bytes, int] = {}          # key -> last acknowledged sequence
    deleted: set[bytes] = set()
    seq = 0
    conn = None
    while time.monotonic() < stop:
        try:
            if conn is None:
                conn = await asyncio.wait_for(Conn.open(port), timeout)
            key = rng.choice(keys)
            r = rng.random()
            started = time.perf_counter()
            if r < 0.25 or key not in acked:
                seq += 1
                weights = PHASES[phase_of() % len(PHASES)]
                lo, hi = rng.choices(SIZE_BANDS, weights)[0]
                value = make_value(key, seq, rng.randrange(lo, hi), rng)
                ttl = rng.choice([0, 0, 0, 0, 3600, 5])
                conn.w.write(b"set %s %d %d %d\r\n%s\r\n" % (key, seq & 0xFFFF, ttl, len(value),
                                                             value))
                line = await asyncio.wait_for(conn.r.readline(), timeout)
                if line == b"STORED\r\n":
                    acked[key] = seq
                    deleted.discard(key)
                    stats.counts["set"] += 1
                elif line.startswith(b"SERVER_ERROR out of memory"):
                    stats.counts["set_out_of_memory"] += 1
                else:
                    stats.counts["set_bad_reply"] += 1
                    stats.wrong.append(f"set {key!r}: {line[:80]!r}")
            elif r < 0.28:
                conn.w.write(b"delete %s\r\n" % key)
                line = await asyncio.wait_for(conn.r.readline(), timeout)
                if line in (b"DELETED\r\n", b"NOT_FOUND\r\n"):
                    acked.pop(key, None)
                    deleted.add(key)
                    stats.counts["delete"] += 1
                else:
                    stats.counts["delete_bad_reply"] += 1
            else:
                batch = [key] if r < 0.9 else rng.sample(keys, 10)
                conn.w.write(b"get " + b" ".join(batch) + b"\r\n")
                got = {}
                while True:
                    line = await asyncio.wait_for(conn.r.readline(), timeout)
                    if line == b"END\r\n":
                        break
                    if not line.startswith(b"VALUE "):
                        raise ConnectionError(f"unexpected reply {line[:80]!r}")
                    _, k, _flags, n = line.split()
                    data = await asyncio.wait_for(conn.r.readexactly(int(n) + 2), timeout)
                    got[k] = data[:-2]
                for k in batch:
                    if k in got:
                        ok, s = check_value(k, got[k])
                        if not ok:
                            stats.wrong.append(f"corrupt value for {k!r}")
                        elif k in deleted or s != acked.get(k, -1):
                            # a value older (or newer) than the last acknowledged
                            # write, or one that should have been deleted
                            stats.wrong.append(f"stale value for {k!r}: seq {s}, "
                                               f"acked {acked.get(k)}")
                        stats.counts["hit"] += 1
                    elif k in acked:
                        stats.counts["miss_after_ack"] += 1     # evicted or expired
                    else:
                        stats.counts["miss"] += 1
            stats.latencies.append(time.perf_counter() - started)
            stats.ops += 1
        except (OSError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                ValueError) as exc:
            stats.counts[f"error:{type(exc).__name__}"] += 1
            if conn is not None:
                conn.close()
                conn = None
            await asyncio.sleep(0.1)
            # what was in flight may or may not have happened: forget what we
            # believed about this client's keys rather than report a false error
            acked.clear()
            deleted.clear()
            keys = [b"soak:%d:%d:r%d" % (cid, i, seq) for i in range(400)]
    if conn is not None:
        conn.close()


# -- the hostile ones ---------------------------------------------------------------------------


async def hostile_client(hid: int, port: int, counts: Counter, stop: float):
    rng = random.Random(10_000 + hid)
    while time.monotonic() < stop:
        kind = rng.choice(["garbage", "garbage", "binary_garbage", "slowloris", "flood",
                           "rst_mid_value", "huge_length"])
        try:
            if kind == "flood":
                socks = []
                for _ in range(150):
                    try:
                        socks.append(await asyncio.open_connection("127.0.0.1", port))
                    except OSError:
                        counts["flood_connect_refused"] += 1
                        break
                await asyncio.sleep(rng.uniform(0.5, 2))
                for _, w in socks:
                    w.close()
            else:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                if kind == "garbage":
                    for _ in range(rng.randrange(1, 10)):
                        w.write(rng.randbytes(rng.randrange(1, 4096)))
                        await asyncio.sleep(0.01)
                elif kind == "binary_garbage":
                    w.write(b"\x80" + rng.randbytes(rng.randrange(23, 2000)))
                elif kind == "slowloris":
                    line = b"get " + b"k" * 3000
                    end = time.monotonic() + rng.uniform(3, 15)
                    i = 0
                    while time.monotonic() < min(end, stop) and not r.at_eof():
                        w.write(line[i % len(line):i % len(line) + 1])
                        i += 1
                        await asyncio.sleep(0.2)
                elif kind == "rst_mid_value":
                    w.write(b"set hostile:%d 0 0 200000\r\n" % hid + rng.randbytes(50_000))
                    await asyncio.sleep(0.05)
                    sock = w.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                elif kind == "huge_length":
                    w.write(b"set hostile:%d 0 0 2147483000\r\n" % hid + rng.randbytes(100_000))
                try:
                    await asyncio.wait_for(r.read(65536), 0.2)
                except (asyncio.TimeoutError, OSError):
                    pass
                w.close()
            counts[kind] += 1
        except OSError:
            counts[f"{kind}_oserror"] += 1
        await asyncio.sleep(rng.uniform(0.05, 0.5))


# -- sampling ---------------------------------------------------------------------------------------


async def read_stats(port: int) -> dict:
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, asyncio.TimeoutError):
        return {}
    try:
        w.write(b"stats\r\n")
        out = {}
        while True:
            line = await asyncio.wait_for(r.readline(), 5)
            if not line or line == b"END\r\n":
                break
            parts = line.split()
            if len(parts) == 3:
                out[parts[1].decode()] = parts[2].decode()
        return out
    except (OSError, asyncio.TimeoutError):
        return {}
    finally:
        w.close()


async def run(args, proc, port: int):
    started = time.monotonic()
    stop = started + args.minutes * 60
    stats = Stats()
    hostile_counts: Counter = Counter()

    def phase_of() -> int:
        return int((time.monotonic() - started) // 60)

    tasks = [asyncio.create_task(good_client(i, port, stats, stop, phase_of, args.timeout))
             for i in range(args.connections)]
    tasks += [asyncio.create_task(hostile_client(i, port, hostile_counts, stop))
              for i in range(args.hostile)]
    rows = []
    print(f"{'time':>6} {'RSS MiB':>8} {'items':>8} {'evictions':>10} {'ops/s':>7} "
          f"{'p99 ms':>7} {'conns':>6} {'errors':>7} {'wrong':>6}", flush=True)
    last_ops = 0
    last_t = started
    while time.monotonic() < stop and proc.poll() is None:
        await asyncio.sleep(min(args.sample, max(0.1, stop - time.monotonic())))
        now = time.monotonic()
        st = await read_stats(port)
        rss = rss_kib(proc.pid) / 1024
        p99 = stats.take_interval()
        ops = (stats.ops - last_ops) / max(now - last_t, 1e-6)
        last_ops, last_t = stats.ops, now
        errors = sum(v for k, v in stats.counts.items() if k.startswith("error:"))
        row = (now - started, rss, int(st.get("curr_items", -1)), int(st.get("evictions", -1)),
               ops, p99, int(st.get("curr_connections", -1)), errors, len(stats.wrong))
        rows.append(row)
        print(f"{row[0]:>6.0f} {row[1]:>8.1f} {row[2]:>8} {row[3]:>10} {row[4]:>7.0f} "
              f"{row[5]:>7.1f} {row[6]:>6} {row[7]:>7} {row[8]:>6}", flush=True)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return rows, stats, hostile_counts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--hostile", type=int, default=12, help="hostile client tasks (default 12)")
    p.add_argument("--memory", type=int, default=64, help="memd -m (default 64)")
    p.add_argument("--sample", type=float, default=5, help="seconds between samples")
    p.add_argument("--timeout", type=float, default=15, help="per-request timeout, seconds")
    p.add_argument("--memd-arg", action="append", default=[], help="extra memd argument")
    args = p.parse_args(argv)

    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="soak-memd-", suffix=".log", delete=False)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "memd", "-p", str(port), "-l", "127.0.0.1",
                             "-m", str(args.memory), "-c", "4096", *args.memd_arg],
                            stdout=log, stderr=log, env=env, cwd=REPO)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                print("memd did not start:", open(log.name).read()[-2000:])
                sys.exit(1)
            time.sleep(0.1)
    print(f"memd pid {proc.pid} on 127.0.0.1:{port}, -m {args.memory}; "
          f"{args.connections} clients + {args.hostile} hostile for {args.minutes} min; "
          f"memd log {log.name}", flush=True)
    rss_start = rss_kib(proc.pid) / 1024
    try:
        rows, stats, hostile = asyncio.run(run(args, proc, port))
    finally:
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    memd_log = open(log.name, errors="replace").read()
    tracebacks = memd_log.count("Traceback")

    print("\nsummary")
    print(f"  memd alive at the end: {alive}; tracebacks in its log: {tracebacks}")
    if rows:
        rss = [r[1] for r in rows]
        warm = rows[len(rows) // 3:] or rows
        print(f"  RSS MiB: at start {rss_start:.1f}, min {min(rss):.1f}, max {max(rss):.1f}, "
              f"last {rss[-1]:.1f}; over the last two thirds "
              f"{min(r[1] for r in warm):.1f}..{max(r[1] for r in warm):.1f}")
        print(f"  items at the end {rows[-1][2]}, evictions {rows[-1][3]}")
        print(f"  p99 latency per interval: median {sorted(r[5] for r in rows)[len(rows) // 2]:.1f} ms, "
              f"worst {max(r[5] for r in rows):.1f} ms")
    print(f"  good-client operations: {stats.ops} ({stats.ops / (args.minutes * 60):.0f}/s)")
    for k, v in sorted(stats.counts.items()):
        print(f"    {k}: {v}")
    print(f"  wrong values read back: {len(stats.wrong)}")
    for w in stats.wrong[:10]:
        print(f"    {w}")
    print("  hostile clients: " + ", ".join(f"{k} {v}" for k, v in sorted(hostile.items())))
    if tracebacks:
        print(memd_log[-3000:])
    ok = alive and not stats.wrong and not tracebacks
    print("RESULT:", "ok" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
