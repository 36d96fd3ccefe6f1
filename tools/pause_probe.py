"""Find stalls: fill a node until it evicts, then time every request of a probe.

A loader keeps storing new keys (so the node is full and evicting, its index
large, its reclaimer and rebalancer busy) while a probe connection does one
get at a time and records each round trip.  A stall anywhere in the node
(garbage collection, table growth, reclaim, page moves) shows up as the
probe's longest round trip.

    python -m tools.pause_probe --items 2000000 --memory 320 --seconds 20

Starts its own memd on 127.0.0.1 unless --server is given.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                sys.exit("memd exited at start")
            time.sleep(0.05)
    sys.exit("memd did not listen")


def _drain(sock: socket.socket, replies: int, marker: bytes = b"STORED\r\n") -> None:
    buf = b""
    seen = 0
    while seen < replies:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
        seen += buf.count(marker)
        buf = buf[buf.rfind(b"\n") + 1:]


def fill(addr, items: int, value: bytes, batch: int = 2000) -> float:
    """Pipelined sets of ``items`` keys; returns seconds taken."""
    start = time.monotonic()
    with socket.create_connection(addr) as sock:
        for first in range(0, items, batch):
            n = min(batch, items - first)
            sock.sendall(b"".join(b"set key:%016d 0 0 %d noreply\r\n%s\r\n" % (i, len(value), value)
                                  for i in range(first, first + n)))
        sock.sendall(b"set fill:done 0 0 1\r\nx\r\n")
        _drain(sock, 1)
    return time.monotonic() - start


def loader(addr, first: int, value: bytes, stop: threading.Event) -> None:
    """Keep storing new keys: every one of them makes the node evict."""
    i = first
    with socket.create_connection(addr) as sock:
        while not stop.is_set():
            sock.sendall(b"".join(b"set key:%016d 0 0 %d\r\n%s\r\n" % (k, len(value), value)
                                  for k in range(i, i + 200)))
            _drain(sock, 200)
            i += 200


def probe(addr, seconds: float, items: int) -> list[float]:
    """One get at a time for ``seconds``; the round trip of each, in seconds."""
    times = []
    with socket.create_connection(addr) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        end = time.monotonic() + seconds
        k = 0
        while time.monotonic() < end:
            k = (k + 7919) % items
            t = time.perf_counter()
            sock.sendall(b"get key:%016d\r\n" % k)
            buf = b""
            while not buf.endswith(b"END\r\n"):
                buf += sock.recv(65536)
            times.append(time.perf_counter() - t)
    return times


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", help="host:port of a running node (default: start memd)")
    ap.add_argument("--items", type=int, default=2_000_000)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--memory", type=int, default=320, help="-m for the node it starts (MB)")
    ap.add_argument("--seconds", type=float, default=20)
    a = ap.parse_args(argv)
    proc = None
    if a.server:
        host, port = a.server.rsplit(":", 1)
        addr = (host, int(port))
    else:
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "memd", "-p", str(port), "-m", str(a.memory)])
        addr = ("127.0.0.1", port)
        _wait_listening(port, proc)
    try:
        value = b"v" * a.value_size
        took = fill(addr, a.items, value)
        print(f"filled {a.items:,} items in {took:.1f} s")
        stop = threading.Event()
        load = threading.Thread(target=loader, args=(addr, a.items, value, stop), daemon=True)
        load.start()
        times = sorted(probe(addr, a.seconds, a.items))
        stop.set()
        load.join(5)
        n = len(times)
        pct = lambda q: times[min(n - 1, int(q * n))] * 1e3
        with socket.create_connection(addr) as sock:
            sock.sendall(b"stats\r\n")
            stats = b""
            while not stats.endswith(b"END\r\n"):
                stats += sock.recv(65536)
        st = dict(line.split(b" ")[1:3] for line in stats.split(b"\r\n") if line.startswith(b"STAT"))
        print(f"probe: {n:,} gets  p50 {pct(0.5):.2f} ms  p99 {pct(0.99):.2f} ms  "
              f"p99.9 {pct(0.999):.2f} ms  longest {times[-1] * 1e3:.1f} ms")
        print(f"node: curr_items {int(st[b'curr_items']):,}  evictions {int(st[b'evictions']):,}  "
              f"hash_power_level {int(st[b'hash_power_level'])}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
