"""One memd-bench load process: its share of connections on one epoll.

Each connection keeps `pipeline` requests in flight (a window: every read that
completes k replies sends k new requests at once), like mcload's default mode.
Nothing here blocks except `epoll.poll`, and no framework sits in between:
the load generator must cost the server's host as little CPU per request as a
Python process can.

Latency is "batch sent -> reply parsed": all requests sent together share one
timestamp, so the in-flight queue holds [timestamp, count] batches and a read
that completes many replies records them with one histogram update per batch.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections import deque
from dataclasses import dataclass
from threading import BrokenBarrierError

from tools.bench_hist import NBUCKETS, SUB_BITS, LatencyHistogram
from tools.bench_parser import ReplyParser
from tools.bench_workload import RequestMaker, WorkloadSpec

RECV_SIZE = 1 << 18
POLL_MAX_S = 0.1          # wake at least this often to check the clock
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_LINEAR = 2 << SUB_BITS
_SUBMASK = (1 << SUB_BITS) - 1


@dataclass(frozen=True)
class WorkerPlan:
    host: str
    port: int
    connections: int
    pipeline: int
    spec: WorkloadSpec
    seed: int
    cpus: tuple[int, ...] | None = None


class Conn:
    __slots__ = ("sock", "fd", "parser", "inflight", "outstanding", "pending")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.fd = sock.fileno()
        self.parser = ReplyParser()
        self.inflight: deque[list[int]] = deque()   # [sent_ns, count] batches
        self.outstanding = 0
        self.pending = b""      # request bytes the kernel did not take yet


def connect(host: str, port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    # Without NODELAY a window of small requests waits on delayed ACKs.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


class LoadWorker:
    """Drives its connections from t_start_ns - warmup until t_end_ns."""

    def __init__(self, conns: list[Conn], plan: WorkerPlan, progress=None, slot: int = 0):
        self.conns = {c.fd: c for c in conns}
        self.window = plan.pipeline
        self.width = plan.spec.multiget
        self.maker = RequestMaker(plan.spec, plan.seed)
        self.progress = progress          # shared array: completions so far, for live output
        self.slot = slot
        self.epoll = select.epoll()
        self.recv_view = memoryview(bytearray(RECV_SIZE))
        self.hist = [0] * NBUCKETS
        self.measuring = False
        self.completed = 0                # all replies, warmup included (progress only)
        self.conns_lost = 0
        self.lost_errors: list[str] = []
        self.dead: list[Conn] = []        # dropped connections keep their counts

    # -- the loop -----------------------------------------------------------

    def run(self, t_start_ns: int, t_end_ns: int) -> dict:
        for c in self.conns.values():
            self.epoll.register(c.fd, _IN)
        now = time.monotonic_ns()
        for c in list(self.conns.values()):
            self._top_up(c, now)
        window_open = window_close = now
        poll = self.epoll.poll
        progress, slot = self.progress, self.slot
        while self.conns:
            now = time.monotonic_ns()
            if now >= t_end_ns:
                break
            if not self.measuring and now >= t_start_ns:
                self._open_window()
                window_open = now
            wake = t_end_ns if self.measuring else t_start_ns
            for fd, ev in poll(min(POLL_MAX_S, (wake - now) / 1e9)):
                c = self.conns.get(fd)
                if c is None:
                    continue
                if ev & _OUT and c.pending:
                    self._flush(c)
                # Readable, error or hang-up: recv tells which (unless the
                # flush above already found the connection dead).
                if ev & ~_OUT and fd in self.conns:
                    self._on_readable(c)
            if progress is not None:
                progress[slot] = self.completed
        window_close = time.monotonic_ns()
        result = self._result((window_close - window_open) / 1e9 if self.measuring else 0.0)
        self._close()
        return result

    def _open_window(self) -> None:
        """Warmup is over: forget everything counted so far."""
        self.measuring = True
        self.hist = [0] * NBUCKETS
        for p in self._all_parsers():
            p.reset_counts()

    # -- per connection -----------------------------------------------------

    def _on_readable(self, c: Conn) -> None:
        try:
            data = self._recv(c)
        except BlockingIOError:
            return
        except OSError as e:
            self._drop(c, f"recv: {e}")
            return
        if not data:
            self._drop(c, "server closed the connection")
            return
        try:
            k = c.parser.feed(data)
        except ValueError as e:
            self._drop(c, str(e))
            return
        if k:
            now = time.monotonic_ns()
            self._complete(c, k, now)
            self._top_up(c, now)

    def _recv(self, c: Conn) -> bytes:
        """Everything readable now, as bytes.

        recv_into one reused buffer: a plain recv(256 KiB) allocates above
        malloc's mmap threshold, costing mmap + mremap + munmap per read,
        which tripled the syscalls per request.
        """
        view = self.recv_view
        n = c.sock.recv_into(view)
        if n < RECV_SIZE:
            return bytes(view[:n])
        chunks = [bytes(view)]
        while True:
            try:
                n = c.sock.recv_into(view)
            except BlockingIOError:
                break
            if not n:
                break             # the next read reports the close
            chunks.append(bytes(view[:n]))
            if n < RECV_SIZE:
                break
        return b"".join(chunks)

    def _complete(self, c: Conn, k: int, now: int) -> None:
        """Retire k replies, oldest batch first, recording their latency."""
        self.completed += k
        c.outstanding -= k
        inflight = c.inflight
        hist = self.hist if self.measuring else None
        while k:
            batch = inflight[0]
            take = batch[1] if batch[1] <= k else k
            if hist is not None:
                d = now - batch[0]
                if d < _LINEAR:
                    hist[d if d > 0 else 0] += take
                else:   # tools.bench_hist.bucket_index, inlined: this is per batch
                    shift = d.bit_length() - 1 - SUB_BITS
                    hist[((shift + 1) << SUB_BITS) + ((d >> shift) & _SUBMASK)] += take
            batch[1] -= take
            k -= take
            if not batch[1]:
                inflight.popleft()

    def _top_up(self, c: Conn, now: int) -> None:
        n = self.window - c.outstanding
        if n <= 0:
            return
        data = self.maker.requests(n)
        c.outstanding += n
        c.inflight.append([now, n])
        if c.pending:
            c.pending += data       # EPOLLOUT is already armed
            return
        try:
            sent = c.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self._drop(c, f"send: {e}")
            return
        if sent < len(data):
            c.pending = data[sent:]
            self.epoll.modify(c.fd, _IN | _OUT)

    def _flush(self, c: Conn) -> None:
        try:
            sent = c.sock.send(c.pending)
        except BlockingIOError:
            return
        except OSError as e:
            self._drop(c, f"send: {e}")
            return
        c.pending = c.pending[sent:]
        if not c.pending:
            self.epoll.modify(c.fd, _IN)

    def _drop(self, c: Conn, why: str) -> None:
        """A lost connection is an error, not a crash: the others keep going."""
        self.conns_lost += 1
        if len(self.lost_errors) < 5:
            self.lost_errors.append(why)
        self.epoll.unregister(c.fd)
        del self.conns[c.fd]
        c.parser.errors += 1
        self.dead.append(c)
        c.sock.close()

    # -- results ------------------------------------------------------------

    def _all_parsers(self):
        for c in list(self.conns.values()) + self.dead:
            yield c.parser

    def _result(self, elapsed_s: float) -> dict:
        gets = sets = hits = errors = 0
        last_error = b""
        for p in self._all_parsers():
            gets += p.gets
            sets += p.sets
            hits += p.hits
            errors += p.errors
            last_error = p.last_error or last_error
        if not self.measuring:
            gets = sets = hits = errors = 0
        return {
            "elapsed_s": elapsed_s,
            "gets": gets,
            "sets": sets,
            "hits": hits,
            "errors": errors,
            "get_keys": gets * self.width,
            "conns_lost": self.conns_lost,
            "error_samples": self.lost_errors
            + ([last_error.decode("latin-1")] if last_error else []),
            "hist": LatencyHistogram(self.hist).to_sparse(),
        }

    def _close(self) -> None:
        for c in self.conns.values():
            c.sock.close()
        self.conns.clear()
        self.epoll.close()


def worker_main(plan: WorkerPlan, slot: int, barrier, times, progress, results) -> None:
    """Process entry: connect, wait for the common start, run, report.

    Two barrier rounds: the first says "all connected", then the parent
    writes the start/end times into `times`, the second says "go".  Every
    process thus measures the same wall-clock window.
    """
    try:
        if plan.cpus:
            os.sched_setaffinity(0, plan.cpus)
        conns = [Conn(connect(plan.host, plan.port)) for _ in range(plan.connections)]
    except OSError as e:
        results.put({"slot": slot, "fatal": f"connect to {plan.host}:{plan.port}: {e}"})
        barrier.abort()
        return
    try:
        barrier.wait()
        barrier.wait()
    except BrokenBarrierError:
        return
    worker = LoadWorker(conns, plan, progress, slot)
    try:
        result = worker.run(times[0], times[1])
    except Exception as e:     # report, don't hang the parent waiting for us
        results.put({"slot": slot, "fatal": f"worker {slot}: {type(e).__name__}: {e}"})
        return
    result["slot"] = slot
    results.put(result)
