"""Try a node the way a hostile or merely slow client would, beside memcached.

Reproduces the table of issue 12 and prints memd's figures next to those of
memcached 1.6.18 started with the same flags (``-m 64 -c 200``), each server
fresh for every row, on free 127.0.0.1 ports:

(a) a client pipelines ``--gets`` ``get big`` (a ``--big-kib`` value) and never
    reads: the node's RSS growth, and another client's p99 and longest wait;
(b) ``--conns`` connections each declare a ``--declared-kib`` value and send it
    one byte per send: RSS bytes per byte the node received, and RSS once they
    have closed;
(c) the same trickle through a binary SASL PLAIN body before logging in
    (memd with ``-Y``; memcached with ``-S`` only if SASL is set up, else "—");
(d) ``lru_crawler metadump all`` over ``--items`` items (``-m --dump-memory``
    so that both hold them all), one nobody reads, then one read as fast as
    it comes: another client's longest wait;
(e) ``--snapshot`` (memd) / ``-e`` (memcached): graceful stop, warm start,
    overwrite k, delete d, kill -9, start: what k and d are afterwards.

    python -m tools.bounds_probe                  # full size, a few minutes
    python -m tools.bounds_probe --quick          # small sizes, under a minute
    python -m tools.bounds_probe --only a,d --servers memd --memd-src /tmp/old-checkout

Every phase is bounded in time, every server it starts is stopped at the end
(also on Ctrl-C), and ``--json FILE`` writes the figures for other tools.
Not part of the test suite (tests/test_bounds_probe.py runs it at tiny sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from tools.soak import free_port, rss_kib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["-m", "64", "-c", "200"]
MiB = 1 << 20
NOTHING = "—"

FULL = dict(gets=4000, big_kib=250, hold=8.0, conns=150, declared_kib=100,
            trickle_seconds=20.0, items=1_000_000)
QUICK = dict(gets=1000, big_kib=250, hold=3.0, conns=50, declared_kib=100,
             trickle_seconds=4.0, items=200_000)


def recv_until(sock: socket.socket, end: bytes, buf: bytes = b"") -> bytes:
    while not buf.endswith(end):
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed by the server")
        buf += chunk
    return buf


# -- servers -------------------------------------------------------------------------------


class Server:
    """One memd or memcached process on a free port, its stderr in a temp file."""

    def __init__(self, kind: str, extra: list[str], src: str, workdir: str):
        self.kind = kind
        self.port = free_port()
        self.addr = ("127.0.0.1", self.port)
        if kind == "memd":
            self.argv = [sys.executable, "-m", "memd", "-l", "127.0.0.1", "-p", str(self.port)]
        else:
            self.argv = ["memcached", "-U", "0", "-l", "127.0.0.1", "-p", str(self.port)]
            if os.geteuid() == 0:
                self.argv += ["-u", "root"]
        flags = FLAGS if "-m" not in extra else [f for f in FLAGS if f not in ("-m", "64")]
        self.argv += flags + extra
        self.env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.cwd = src                 # `python -m` puts the cwd first on sys.path
        self.log = tempfile.NamedTemporaryFile(prefix=f"{kind}-", suffix=".log", dir=workdir,
                                               delete=False)
        self.proc = None
        self.login = b""               # sent first on every command connection (-Y nodes)

    def start(self) -> "Server":
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log, env=self.env, cwd=self.cwd)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start: {self.log_text()[-500:]}")
            try:
                socket.create_connection(self.addr, 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not listen within 15 s")

    def rss(self) -> int:
        return rss_kib(self.proc.pid) * 1024

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        with open(self.log.name, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def command(self, line: bytes, end: bytes = b"\r\n") -> bytes:
        with socket.create_connection(self.addr, timeout=30) as s:
            if self.login:
                s.sendall(self.login)
                recv_until(s, b"STORED\r\n")
            s.sendall(line)
            return recv_until(s, end)

    def stats(self) -> dict[str, str]:
        out = {}
        for line in self.command(b"stats\r\n", b"END\r\n").split(b"\r\n"):
            parts = line.split(b" ", 2)
            if parts[0] == b"STAT" and len(parts) == 3:
                out[parts[1].decode()] = parts[2].decode()
        return out

    def get(self, key: bytes) -> bytes | None:
        reply = self.command(b"get " + key + b"\r\n", b"END\r\n")
        if reply == b"END\r\n":
            return None
        head, _, rest = reply.partition(b"\r\n")
        return rest[:int(head.split()[3])]

    def signal(self, sig: int, wait: float = 30) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(wait)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


class Servers:
    """Starts servers for the phases and stops every one of them at the end."""

    def __init__(self, src: str):
        self.src = src
        self.workdir = tempfile.mkdtemp(prefix="bounds-probe-")
        self.started: list[Server] = []

    def start(self, kind: str, *extra: str) -> Server:
        server = Server(kind, list(extra), self.src, self.workdir)
        self.started.append(server)
        return server.start()

    def close(self) -> None:
        for server in self.started:
            server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- what the phases watch -----------------------------------------------------------------


class Sampler(threading.Thread):
    """A node's RSS every 20 ms: the peak and the latest."""

    def __init__(self, server: Server):
        super().__init__(daemon=True)
        self.server = server
        self.peak = self.last = server.rss()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            rss = self.server.rss()
            if rss:
                self.last = rss
                self.peak = max(self.peak, rss)

    def stop(self) -> None:
        self.done.set()
        self.join(2)


class Bystander(threading.Thread):
    """Another client: one small get at a time, each round trip recorded.

    A request still unanswered when the phase ends counts with the time it has
    waited so far, so a node that stalls past the phase is not flattered.
    """

    KEY = b"probe:bystander"

    def __init__(self, server: Server):
        super().__init__(daemon=True)
        server.command(b"set %s 0 0 4\r\nping\r\n" % self.KEY)
        self.sock = socket.create_connection(server.addr, timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.times: list[float] = []
        self.waiting_since = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                self.waiting_since = time.perf_counter()
                self.sock.sendall(b"get %s\r\n" % self.KEY)
                recv_until(self.sock, b"END\r\n")
                self.times.append(time.perf_counter() - self.waiting_since)
                self.waiting_since = None
        except OSError:
            pass

    def stop(self, grace: float = 0.5) -> dict:
        """Stop asking; a request in flight gets ``grace`` seconds to be answered."""
        self.done.set()
        self.join(grace)
        times = sorted(self.times)
        stalled = self.waiting_since is not None
        if stalled:
            times.append(time.perf_counter() - self.waiting_since)
            times.sort()
        self.sock.close()
        if not times:
            return {"requests": 0, "still_waiting": stalled}
        return {"requests": len(self.times), "still_waiting": stalled,
                "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))] * 1e3,
                "max_ms": times[-1] * 1e3}


def watch(server: Server) -> tuple[int, Sampler, Bystander]:
    """The node's RSS once settled, then its RSS sampler and a bystander, both running."""
    time.sleep(0.3)
    base = server.rss()
    sampler = Sampler(server)
    sampler.start()
    bystander = Bystander(server)
    bystander.start()
    return base, sampler, bystander


# -- (a) unread pipelined gets ---------------------------------------------------------------


def unread_gets(server: Server, a) -> dict:
    big = b"b" * (a.big_kib * 1024)
    server.command(b"set big 0 0 %d\r\n%s\r\n" % (len(big), big))
    base, sampler, bystander = watch(server)
    time.sleep(0.3)
    flood = socket.create_connection(server.addr, timeout=a.hold)
    capped = False
    try:
        try:
            flood.sendall(b"get big\r\n" * a.gets)
        except socket.timeout:
            pass                       # the node stopped reading: that is allowed
        end = time.monotonic() + a.hold
        while time.monotonic() < end and server.alive():
            if sampler.peak - base > a.rss_cap_mib * MiB:
                capped = True
                break
            time.sleep(0.05)
        # the whole stall, not just the part inside the hold
        waits = bystander.stop(grace=a.grace)
    finally:
        flood.close()
    time.sleep(a.settle)
    sampler.stop()                     # the peak includes what was built after the close
    return {"rss_base_mib": base / MiB, "rss_growth_mib": (sampler.peak - base) / MiB,
            "rss_after_close_mib": server.rss() / MiB, "capped": capped,
            "alive": server.alive(), **waits}


# -- (b) and (c) trickled bodies -------------------------------------------------------------


def text_header(i: int, size: int) -> bytes:
    return b"set trickle:%d 0 0 %d\r\n" % (i, size)


def sasl_header(i: int, size: int) -> bytes:
    mech = b"PLAIN"
    # magic, opcode SASL_AUTH, key length, extras, datatype, vbucket, body, opaque, cas
    return struct.pack(">BBHBBHIIQ", 0x80, 0x21, len(mech), 0, 0, 0, len(mech) + size, i, 0) + mech


def trickle(server: Server, a, header) -> dict:
    size = a.declared_kib * 1024
    time.sleep(0.3)
    before = server.rss()
    socks = []
    try:
        for i in range(a.conns):
            s = socket.create_connection(server.addr, timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(header(i, size))
            socks.append(s)
        time.sleep(0.3)
        opened = server.rss()
        read_before = bytes_read(server)
        sampler = Sampler(server)
        sampler.start()
        sent = closed = 0
        end = time.monotonic() + a.trickle_seconds
        while time.monotonic() < end and socks and sent < size * a.conns:
            for s in list(socks):
                try:
                    sent += s.send(b"x")
                except OSError:        # the node closed it (a bound, or the idle timeout)
                    socks.remove(s)
                    s.close()
                    closed += 1
        time.sleep(0.5)
        read_after = bytes_read(server)
        # the node's own count when it answers stats (a -S memcached does not)
        received = sent if read_before is None else read_after - read_before
        held = server.rss()
        sampler.stop()
    finally:
        for s in socks:
            s.close()
    time.sleep(a.settle)
    after = server.rss()
    return {"rss_before_mib": before / MiB, "rss_opened_mib": opened / MiB,
            "rss_held_mib": held / MiB, "rss_peak_mib": sampler.peak / MiB,
            "received": received, "sent": sent, "closed_by_node": closed,
            "rss_per_byte": (held - opened) / received if received else None,
            "rss_after_close_mib": after / MiB,
            "after_close_over_before_mib": (after - before) / MiB}


def bytes_read(server: Server) -> int | None:
    try:
        return int(server.stats()["bytes_read"])
    except (OSError, KeyError, ValueError):
        return None


def memcached_has_sasl(server: Server) -> bool:
    """True if a memcached started with -S lists PLAIN among its mechanisms."""
    frame = struct.pack(">BBHBBHIIQ", 0x80, 0x20, 0, 0, 0, 0, 0, 0, 0)
    try:
        with socket.create_connection(server.addr, timeout=5) as s:
            s.sendall(frame)
            head = s.recv(24)
            if len(head) < 24:
                return False
            status, body = struct.unpack_from(">H", head, 6)[0], struct.unpack_from(">I", head, 8)[0]
            mechs = s.recv(body) if body else b""
    except OSError:
        return False
    return status == 0 and b"PLAIN" in mechs


# -- (d) metadump ----------------------------------------------------------------------------


def fill(server: Server, items: int, batch: int = 5000) -> float:
    started = time.monotonic()
    with socket.create_connection(server.addr, timeout=120) as s:
        for first in range(0, items, batch):
            s.sendall(b"".join(b"set md:%08d 0 0 8 noreply\r\n%08d\r\n" % (i, i)
                               for i in range(first, min(items, first + batch))))
        s.sendall(b"mn\r\n")
        recv_until(s, b"MN\r\n")
    return time.monotonic() - started


def metadump(server: Server, a) -> dict:
    took = fill(server, a.items)
    held = int(server.stats()["curr_items"])
    out = {"items_stored": a.items, "items_held": held, "fill_s": took}

    # a dump nobody reads (first, so its RSS is not hidden by memory a read dump freed)
    base, sampler, bystander = watch(server)
    with socket.create_connection(server.addr, timeout=10) as s:
        s.sendall(b"lru_crawler metadump all\r\n")
        time.sleep(a.hold)
        out["unread_dump"] = {**bystander.stop(), "rss_growth_mib": (sampler.peak - base) / MiB}
    sampler.stop()
    time.sleep(a.settle)

    # read as fast as it comes
    bystander = Bystander(server)
    bystander.start()
    started = time.monotonic()
    lines = 0
    with socket.create_connection(server.addr, timeout=120) as s:
        s.sendall(b"lru_crawler metadump all\r\n")
        tail = b""
        deadline = started + 300
        while time.monotonic() < deadline:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            lines += chunk.count(b"\n")
            tail = (tail + chunk)[-5:]
            if tail == b"END\r\n":
                break
    out["read_dump"] = {"seconds": time.monotonic() - started, "lines": lines,
                        **bystander.stop()}
    out["alive"] = server.alive()
    return out


# -- (e) a crash after a warm start ------------------------------------------------------------


def crash_sequence(servers: Servers, kind: str) -> dict:
    """Graceful stop, warm start, overwrite k, delete d, kill -9, start."""
    if kind == "memd":
        extra = ["--snapshot", os.path.join(servers.workdir, "memd.snap")]
        graceful = signal.SIGTERM
        settle = 0.0
    else:
        extra = ["-e", os.path.join(servers.workdir, "memcached.mem")]
        graceful = signal.SIGUSR1          # memcached writes its restart metadata on SIGUSR1
        settle = 2.1                       # its restart check refuses a stop within the same second tick
    first = servers.start(kind, *extra)
    time.sleep(settle)
    first.command(b"set k 0 0 3\r\nold\r\nset d 0 0 1\r\nx\r\n", b"STORED\r\nSTORED\r\n")
    time.sleep(settle)
    first.signal(graceful)
    time.sleep(settle)
    warm = servers.start(kind, *extra)
    out = {"warm_k": _shown(warm.get(b"k")), "warm_d": _shown(warm.get(b"d"))}
    warm.command(b"set k 0 0 3\r\nnew\r\n")
    warm.command(b"delete d\r\n")
    warm.signal(signal.SIGKILL)
    after = servers.start(kind, *extra)
    out.update(after_k=_shown(after.get(b"k")), after_d=_shown(after.get(b"d")))
    out["resurrected"] = out["after_k"] == "old" or out["after_d"] != "miss"
    return out


def _shown(value: bytes | None) -> str:
    return "miss" if value is None else value.decode("ascii", "replace")


# -- the run -----------------------------------------------------------------------------------


def run(a) -> dict:
    results: dict[str, dict] = {}
    servers = Servers(a.memd_src)
    try:
        for kind in a.servers:
            r = results.setdefault(kind, {})
            if "a" in a.only:
                with phase(r, "a", kind):
                    r["a"] = unread_gets(servers.start(kind), a)
            if "b" in a.only:
                with phase(r, "b", kind):
                    r["b"] = trickle(servers.start(kind), a, text_header)
            if "c" in a.only:
                with phase(r, "c", kind):
                    r["c"] = sasl_trickle(servers, kind, a)
            if "d" in a.only:
                with phase(r, "d", kind):
                    r["d"] = metadump(servers.start(kind, "-m", str(a.dump_memory)), a)
            if "e" in a.only:
                with phase(r, "e", kind):
                    r["e"] = crash_sequence(servers, kind)
    finally:
        servers.close()
    return results


def sasl_trickle(servers: Servers, kind: str, a) -> dict | None:
    if kind == "memd":
        users = os.path.join(servers.workdir, "users")
        with open(users, "w") as f:
            f.write("probe:secret\n")
        server = servers.start(kind, "-Y", users)
        server.login = b"set auth 0 0 12\r\nprobe secret\r\n"    # the text protocol's login
        return trickle(server, a, sasl_header)
    try:
        server = servers.start(kind, "-S")
    except RuntimeError as exc:
        print(f"[{kind}] (c) no SASL here: {str(exc).strip()}", file=sys.stderr)
        return None                # shown as "—"
    if not memcached_has_sasl(server):
        return None
    return trickle(server, a, sasl_header)


class phase:
    """Run one phase; a failure is recorded (and printed) instead of ending the run."""

    def __init__(self, results: dict, name: str, kind: str):
        self.results, self.name, self.kind = results, name, kind

    def __enter__(self):
        print(f"[{self.kind}] ({self.name}) ...", file=sys.stderr, flush=True)
        self.started = time.monotonic()

    def __exit__(self, typ, exc, tb):
        took = time.monotonic() - self.started
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            self.results[self.name] = {"error": f"{typ.__name__}: {exc}"}
            print(f"[{self.kind}] ({self.name}) failed after {took:.1f} s: {exc}",
                  file=sys.stderr, flush=True)
            return True
        print(f"[{self.kind}] ({self.name}) {took:.1f} s", file=sys.stderr, flush=True)
        return False


def describe(name: str, r: dict | None) -> str:
    if r is None:
        return NOTHING
    if "error" in r:
        return "error: " + r["error"]
    if name == "a":
        capped = " (capped)" if r["capped"] else ""
        dead = "; node died" if not r["alive"] else ""
        more = "+ (still waiting)" if r["still_waiting"] else ""
        return (f"RSS +{r['rss_growth_mib']:.1f} MiB{capped}; other client p99 "
                f"{r['p99_ms']:.1f} ms, max {r['max_ms']:.0f}{more} ms{dead}")
    if name in ("b", "c"):
        per = r["rss_per_byte"]
        per = NOTHING if per is None else f"{per:.1f}"
        return (f"{per} B RSS per byte received ({r['received'] / 1e6:.2f} MB received, "
                f"RSS {r['rss_opened_mib']:.0f} -> {r['rss_held_mib']:.0f} MiB); after close "
                f"{r['after_close_over_before_mib']:+.1f} MiB over before"
                + (f"; {r['closed_by_node']} closed by the node" if r["closed_by_node"] else ""))
    if name == "d":
        rd, ud = r["read_dump"], r["unread_dump"]
        return (f"{r['items_held']:,} items held; read dump {rd['seconds']:.1f} s, other client "
                f"max {rd['max_ms']:.0f} ms (p99 {rd['p99_ms']:.1f}); unread dump: other client "
                f"max {ud['max_ms']:.0f} ms, RSS +{ud['rss_growth_mib']:.0f} MiB")
    if name == "e":
        return (f"warm start k={r['warm_k']} d={r['warm_d']}; after kill -9: k={r['after_k']} "
                f"d={r['after_d']}" + (" (old data back)" if r["resurrected"] else ""))
    return json.dumps(r)


ROWS = {"a": "pipelined `get big` never read", "b": "value trickled a byte per send",
        "c": "SASL PLAIN body trickled before login", "d": "lru_crawler metadump all",
        "e": "kill -9 after a warm start"}


def report(results: dict, a) -> None:
    print(f"\nbounds probe: {', '.join(a.servers)} with {' '.join(FLAGS)}; gets={a.gets} "
          f"big={a.big_kib} KiB hold={a.hold} s conns={a.conns} declared={a.declared_kib} KiB "
          f"trickle={a.trickle_seconds} s items={a.items:,} (d with -m {a.dump_memory})")
    for name in a.only:
        print(f"\n({name}) {ROWS[name]}")
        for kind in a.servers:
            print(f"  {kind:9} {describe(name, results.get(kind, {}).get(name))}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: the whole run in < 1 min")
    ap.add_argument("--only", default="abcde", help="phases to run, e.g. a,d (default: all)")
    ap.add_argument("--servers", default="memd,memcached", help="memd, memcached or both")
    ap.add_argument("--memd-src", default=REPO, help="checkout whose memd is run (default: this one)")
    ap.add_argument("--gets", type=int, help=f"(a) pipelined gets (default {FULL['gets']})")
    ap.add_argument("--big-kib", type=int, help=f"(a) value size (default {FULL['big_kib']})")
    ap.add_argument("--hold", type=float,
                    help=f"(a, d) seconds an unread reply is held (default {FULL['hold']})")
    ap.add_argument("--conns", type=int, help=f"(b, c) trickling connections "
                                              f"(default {FULL['conns']})")
    ap.add_argument("--declared-kib", type=int,
                    help=f"(b, c) declared body size (default {FULL['declared_kib']})")
    ap.add_argument("--trickle-seconds", type=float,
                    help=f"(b, c) seconds of trickling (default {FULL['trickle_seconds']})")
    ap.add_argument("--items", type=int, help=f"(d) items stored (default {FULL['items']:,})")
    ap.add_argument("--dump-memory", type=int, default=256,
                    help="(d) -m for the dump phase, large enough to hold --items (default 256)")
    ap.add_argument("--grace", type=float, default=30,
                    help="(a) seconds the other client's last request may still take after the "
                         "hold, so a longer stall is measured whole (default 30)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds given to a node to give memory back after clients close")
    ap.add_argument("--rss-cap-mib", type=int, default=8192,
                    help="(a) stop the flood once the node has grown this much")
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args(argv)
    sizes = QUICK if a.quick else FULL
    for key, value in sizes.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    a.only = [c for c in a.only if c in ROWS]
    a.servers = [s for s in a.servers.split(",") if s]
    if "memcached" in a.servers and shutil.which("memcached") is None:
        print("memcached is not installed: memd only", file=sys.stderr)
        a.servers.remove("memcached")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    results = run(a)
    report(results, a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    failed = any("error" in (r or {}) for res in results.values() for r in res.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
