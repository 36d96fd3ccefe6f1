"""The node's network side: the only module that awaits.

Shape (docs/design.md): plain TCP connections are served by ONE trio
task from its own ``select.epoll``.  For each ready socket it reads once,
hands the bytes to the connection's sans-IO protocol, and sends everything
that read produced in one ``send``.  It blocks in
``trio.lowlevel.wait_readable`` on the epoll fd only when nothing is ready.
That gives up per-connection cancel scopes on the hot path (about 1.6x the
throughput of a task per connection here); trio still owns accepting,
TLS connections (a task each, via ``trio.SSLStream``), timers, signals and
shutdown.

Where ``select.epoll`` does not exist (macOS, Windows), or when the
environment sets ``MEMD_PORTABLE_IO=1`` (CI runs the protocol suite that way
on Linux), plain connections take the TLS connections' path instead: a trio
task each on a ``trio.SocketStream`` -- trio's own I/O, on every platform.

A failure inside one connection's protocol closes that connection and is
logged; it never reaches the loop serving the others.

Each epoll connection queues its unsent reply chunks and is not read while
any are queued; a protocol paused at its output bound is resumed one step
per pass once its queue is sent (the connection life cycle in
docs/design.md).  The trio-task path does the same by awaiting each send.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import logging
import os
import select
import signal
import socket
import stat
import threading
import time
from collections import deque
from itertools import islice

import trio

from .node import ConnInfo, Node, listen_entry
from .protocol import BINARY_REQUEST_MAGIC, protocol_for
from .protocol.text import LONE_GET
from .protocol.wire import PREAUTH_INPUT

log = logging.getLogger("memd")

# recv(RECV_SIZE) would allocate a fresh 256 KiB object per read, which glibc
# serves with mmap/munmap (above its 128 KiB threshold): two syscalls per
# read.  A plain recv(64 KiB) stays under that threshold and saves the copy
# below (0.2 µs a read), but the heap pieces it leaves behind crept the RSS
# of a 10-minute soak up by 25 MiB.  So: one reused buffer, and a copy of
# what arrived.
RECV_SIZE = 256 * 1024
TOO_MANY = b"ERROR Too many open connections\r\n"
JOIN_MAX = 256 * 1024          # replies up to this are joined and sent in one send
SENDMSG_MAX = 64               # chunks handed to one sendmsg
EPOLLIN = getattr(select, "EPOLLIN", 1)
EPOLLOUT = getattr(select, "EPOLLOUT", 4)
EPOLLHUP = getattr(select, "EPOLLHUP", 16)
EPOLLERR = getattr(select, "EPOLLERR", 8)
TICK = 0.1                     # seconds between housekeeping rounds
RECLAIM_BUDGET = 2_000         # chunks the reclaimer looks at per tick (20k/s)
SHUTDOWN_DRAIN = 2.0           # seconds to finish pending replies at shutdown
TLS_HANDSHAKE_TIMEOUT = 10.0   # a peer that never finishes its handshake is dropped
CLUSTER_POLL_SECONDS = 1.0     # re-read --cluster-file / DNS membership about once a second

# A worker-thread call that shutdown does not wait for (a DNS lookup can hang
# for its whole timeout). trio 0.23 renamed the flag.
if "abandon_on_cancel" in inspect.signature(trio.to_thread.run_sync).parameters:
    _in_thread = functools.partial(trio.to_thread.run_sync, abandon_on_cancel=True)
else:
    _in_thread = functools.partial(trio.to_thread.run_sync, cancellable=True)


class Conn:
    """A plain TCP connection served by the epoll loop.

    Its replies wait in ``queue`` (chunks as the protocol made them, never
    joined into one object; a partly sent chunk is replaced by a memoryview
    of its rest, so nothing is recopied).  While anything is queued the
    socket is not read (EPOLLOUT only), as memcached stops reading a
    connection whose output is queued; once the queue is empty a protocol
    that paused at its output bound is resumed, one step per loop pass.
    """

    __slots__ = ("sock", "fd", "proto", "queue", "queued", "info", "closing", "commands",
                 "recv_size", "mask", "at_rest")

    def __init__(self, sock: socket.socket, info: ConnInfo, recv_size: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.proto = None          # chosen from the first byte received
        self.queue = deque()       # reply chunks the socket did not take yet
        self.queued = 0            # their bytes
        self.info = info
        self.closing = False       # close once the queue is sent
        self.commands = 0          # the protocol's command count at the last look
        self.recv_size = recv_size # small until the peer has authenticated
        self.mask = EPOLLIN        # what the fd is registered for
        # the protocol's at_rest() after its last receive or resume: while
        # true, an input that is one single-key get is answered in the pass
        self.at_rest = False


def coalesce(chunks: list, total: int = -1):
    """Small replies are joined (one send, one TLS record); a big one stays
    in pieces so its values are not copied again.  ``total``: their length
    when the protocol counted it (``taken_bytes``), else -1."""
    if len(chunks) == 1:
        return chunks
    # joined whatever the chunk count: a 100-key multi-get is ~100 chunks, and
    # sending those through sendmsg in batches (outside the batched sends of
    # the epoll pass) halved mget100 (compare.py 1.0 -> 0.47 of memcached)
    if total < 0:
        total = sum(map(len, chunks))
    if total <= JOIN_MAX:
        return [b"".join(chunks)]
    return chunks


def portable_io() -> bool:
    """True where plain connections take the task-per-connection path."""
    return not hasattr(select, "epoll") or os.environ.get("MEMD_PORTABLE_IO") == "1"


class StreamConn:
    """A connection served by a trio task of its own (TLS, or the portable path)."""

    __slots__ = ("stream", "info", "scope", "sending")

    def __init__(self, stream, info: ConnInfo) -> None:
        self.stream = stream
        self.info = info
        self.scope = trio.CancelScope()     # the idle timeout cancels it
        self.sending = trio.Lock()          # replies and watch lines take turns

    async def send(self, data: bytes, node: Node) -> None:
        async with self.sending:
            await self.stream.send_all(data)
        node.bytes_written += len(data)

    async def send_watch(self, lines: bytes, node: Node) -> None:
        """`watch` lines, sent from a task of their own: a connection gone
        meanwhile ends only this send (its own task sees it close)."""
        try:
            await self.send(lines, node)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


class Server:
    def __init__(self, node: Node, ssl_context=None, tls_port: int | None = None) -> None:
        self.node = node
        self.settings = node.settings
        self.ssl_context = ssl_context
        self.tls_port = tls_port
        self.conns: dict[int, Conn] = {}
        self.streams: dict[int, StreamConn] = {}
        self.runnable: set[Conn] = set()   # paused at the output bound, queue sent
        node.buffered = self.buffered
        self.portable = portable_io()
        self.ep = None if self.portable else select.epoll()
        self.listeners: list[trio.socket.SocketType] = []
        self.bound: list[tuple[str, int]] = []
        self._stopping = False

    # -- lifetime --------------------------------------------------------------

    async def bind(self) -> None:
        """Open the listening sockets (port 0 picks a free one, reported in ``bound``).

        With a UNIX socket (-s) there is no TCP listener, as in memcached.
        """
        st = self.settings
        if st.unix_socket:
            await self._bind_unix(st.unix_socket, st.unix_mask)
            return
        plain_is_tls = self.ssl_context is not None and self.tls_port is None
        ports = [(st.port, plain_is_tls)]
        if self.tls_port is not None:
            ports.append((self.tls_port, True))
        for entry in st.listen:
            host, own_port, tls_allowed = listen_entry(entry)
            for port, tls in ([(own_port, plain_is_tls)] if own_port is not None else ports):
                tls = tls and tls_allowed
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                lsock = trio.socket.socket(family, socket.SOCK_STREAM)
                lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                await lsock.bind((host, port))
                name = lsock.getsockname()
                self.bound.append((name[0], name[1]))
                self._listen(lsock, "tcp:%s:%d" % name[:2], tls)

    async def _bind_unix(self, path: str, mask: int) -> None:
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)              # a stale socket from an earlier run
        except FileNotFoundError:
            pass
        lsock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(~mask & 0o777)        # as memcached: the mask applies from creation on
        try:
            await lsock.bind(path)
        finally:
            os.umask(old)
        self._listen(lsock, f"unix:{path}", False)

    def _listen(self, lsock, name: str, tls: bool) -> None:
        lsock.listen(self.settings.backlog)
        lsock.is_tls = tls
        lsock.name = name
        self.listeners.append(lsock)
        self.node.listeners.append(name)
        self.node.listener_fds[name] = lsock.fileno()
        log.info("listening on %s%s", name, " (TLS)" if tls else "")

    def addresses(self, tls: bool = False) -> list[str]:
        """Every bound address as ``host:port`` (``[v6]:port``, ``unix:PATH``);
        with ``tls``, only those that speak TLS."""
        out = []
        for lsock in self.listeners:
            if tls and not lsock.is_tls:
                continue
            kind, _, rest = lsock.name.partition(":")
            host, _, port = rest.rpartition(":")
            out.append(lsock.name if kind == "unix" else
                       f"[{host}]:{port}" if ":" in host else rest)
        return out

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        # Handlers go in before the sockets listen: a client may connect (the
        # kernel accepts into the backlog) and signal at once, and a signal
        # must never find the default action (SIGHUP would kill the node).
        # Signals reach only the main thread; a node run in another leaves them alone.
        with contextlib.ExitStack() as stack:
            sigs = None
            if threading.current_thread() is threading.main_thread():
                hup = getattr(signal, "SIGHUP", None)      # not on Windows
                sigs = stack.enter_context(trio.open_signal_receiver(
                    *[s for s in (signal.SIGTERM, signal.SIGINT, hup) if s is not None]))
            if not self.listeners:
                await self.bind()
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self._accept_scope = trio.CancelScope()
                self._accepting_done = trio.Event()
                nursery.start_soon(self._accepting)
                nursery.start_soon(self._stream_watchers if self.portable else self._io_loop)
                nursery.start_soon(self._housekeeping)
                if self.node.cluster is not None:
                    nursery.start_soon(self._watch_cluster)
                if sigs is not None:
                    nursery.start_soon(self._signals, sigs)
                task_status.started(self.bound)
                while not self.node.shutdown_requested:
                    await trio.sleep(0.05)
                await self._shutdown()
                nursery.cancel_scope.cancel()

    async def _signals(self, sigs) -> None:
        async for signum in sigs:
            if signum == getattr(signal, "SIGHUP", None):
                self._reload()
            else:
                log.info("signal %d: shutting down", signum)
                self.node.request_shutdown()

    def _reload(self) -> None:
        auth = self.node.auth
        if auth is not None:
            auth.reload()
            log.info("reloaded the auth file")

    async def _accepting(self) -> None:
        with self._accept_scope:
            async with trio.open_nursery() as nursery:
                for lsock in self.listeners:
                    nursery.start_soon(self._accept_loop, lsock)
        self._accepting_done.set()

    async def _shutdown(self) -> None:
        """Stop accepting, give pending replies a moment to leave, close."""
        self._stopping = True
        # the accept tasks must be gone before their sockets are closed
        self._accept_scope.cancel()
        await self._accepting_done.wait()
        for lsock in self.listeners:
            lsock.close()
        deadline = time.monotonic() + SHUTDOWN_DRAIN
        while time.monotonic() < deadline and (
                any(c.queue for c in self.conns.values())
                or any(s.sending.locked() for s in self.streams.values())):
            for conn in list(self.conns.values()):
                if conn.queue:
                    self._drain(conn)
            await trio.sleep(0.01)
        for conn in list(self.conns.values()):
            self._close(conn)
        if self.ep is not None:
            self.ep.close()
        if self.settings.unix_socket:
            try:
                os.unlink(self.settings.unix_socket)
            except OSError:
                pass
        if hasattr(self.node, "on_shutdown"):
            self.node.on_shutdown()

    # -- accepting ---------------------------------------------------------------

    async def _accept_loop(self, lsock) -> None:
        node = self.node
        listen_addr = lsock.name
        unix = listen_addr.startswith("unix:")
        while True:
            try:
                tsock, addr = await lsock.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                if self._stopping:
                    return
                raise
            sock = socket.socket(fileno=tsock.detach())
            if node.curr_connections >= self.settings.conn_limit:
                node.rejected_connections += 1
                try:
                    sock.setblocking(False)
                    sock.send(TOO_MANY)
                except OSError:
                    pass
                sock.close()
                continue
            if not unix:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            node.curr_connections += 1
            node.total_connections += 1
            peer = listen_addr if unix else "tcp:%s:%d" % addr[:2]
            info = ConnInfo(sock.fileno(), peer, listen_addr)
            node.conns[info.fd] = info
            log.debug("<%d new client connection from %s", info.fd, peer)
            if lsock.is_tls or self.portable:
                self.nursery.start_soon(self._serve_stream, sock, info, lsock.is_tls)
            else:
                sock.setblocking(False)
                conn = Conn(sock, info, PREAUTH_INPUT if node.auth is not None else RECV_SIZE)
                self.conns[conn.fd] = conn
                self.ep.register(conn.fd, EPOLLIN)

    # -- the epoll loop -------------------------------------------------------------

    async def _io_loop(self) -> None:
        ep = self.ep
        conns = self.conns
        runnable = self.runnable
        node = self.node
        wait_readable = trio.lowlevel.wait_readable
        rbuf = bytearray(RECV_SIZE)
        rview = memoryview(rbuf)
        checkpoint = trio.lowlevel.checkpoint
        store = node.store
        trace = log.isEnabledFor(logging.DEBUG)
        while True:
            events = ep.poll(0)
            if not events and not runnable:
                await wait_readable(ep.fileno())
                continue
            now = time.monotonic()
            nread = nwritten = 0
            # Replies are sent after every ready socket has been read, not
            # each right after its read.  Sent together they reach the
            # clients' threads while those are awake, which saves most of the
            # cross-CPU wakeups: kernel time per request fell from 6.9 to
            # 5.7 µs and 50 unpipelined connections went from 81k to 91k
            # ops/s.  A reply waits at most one pass over the batch.
            replies = []
            # lone single-key gets (LONE_GET on a connection at rest), answered together
            lone_conns = []
            lone_keys = []
            batch = events
            read_now = None
            # (a watcher wants each get's own line; -vv each request's)
            lone_ok = store.watch is None and not trace
            while True:
                for fd, ev in batch:
                    conn = conns.get(fd)
                    if conn is None:
                        continue
                    if conn.mask != EPOLLIN:
                        # sending (EPOLLOUT) or paused: never read here
                        if conn.queue:
                            self._drain(conn)
                        elif ev & (EPOLLHUP | EPOLLERR):
                            self._close(conn)
                        continue
                    sock = conn.sock
                    try:
                        n = sock.recv_into(rbuf, conn.recv_size)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        self._close(conn)
                        continue
                    if not n:
                        self._close(conn)
                        continue
                    nread += n
                    if conn.at_rest and lone_ok and LONE_GET(rbuf, 0, n) is not None:
                        # the commonest request: no protocol call at all (and
                        # matched in the buffer: only the key is copied out)
                        conn.info.last_cmd = now
                        lone_conns.append(conn)
                        lone_keys.append(rview[4:n - 2].tobytes())
                        continue
                    proto = conn.proto
                    data = bytes(rview[:n])
                    if trace:
                        # -vv: what memcached -vv shows, a line per request and reply
                        log.debug("<%d %r", fd, data[:120])
                    try:
                        if proto is None:
                            proto = conn.proto = conn.info.proto = self._protocol(data[0], fd)
                        chunks = proto.receive(data)
                        conn.at_rest = proto.at_rest()
                    except Exception:
                        log.exception("connection %d: protocol failure; closing it", fd)
                        self._close(conn)
                        continue
                    if trace:
                        log.debug(">%d %r", fd, b"".join(chunks)[:120])
                    if proto.commands != conn.commands:
                        # idle means no complete command: a slow-loris trickle is idle
                        conn.commands = proto.commands
                        conn.info.last_cmd = now
                        if conn.recv_size != RECV_SIZE and proto.authenticated:
                            conn.recv_size = RECV_SIZE
                    if proto.closed:
                        conn.closing = True
                    elif chunks and proto._cont is None and proto._held is None:
                        # the common case: a reply of a few chunks, nothing left to do
                        if len(chunks) == 1:
                            replies.append((conn, chunks[0]))
                            continue
                        chunks = coalesce(chunks, proto.taken_bytes)
                        if len(chunks) == 1:
                            replies.append((conn, chunks[0]))
                            continue
                    self._queue(conn, chunks)
                    self._drain(conn)
                if read_now is not None or len(events) < 2:
                    break
                # One more look before replying: requests that arrived while
                # this pass read the others join it, rather than wait behind
                # the whole of the next pass (those were c50's slowest 10%:
                # its p99 went from 1.50 to 1.15-1.25x memcached's).  A
                # connection read once this pass waits for the next, so its
                # replies keep their order.
                read_now = dict(events)
                batch = [e for e in ep.poll(0) if e[0] not in read_now]
                if not batch:
                    break
            if lone_keys:
                self._answer_lone_gets(lone_conns, lone_keys, replies)
            if runnable:
                # connections paused at their output bound whose replies are
                # all sent: one more step each, then the others get their turn
                for conn in list(runnable):
                    runnable.discard(conn)
                    try:
                        chunks = conn.proto.resume()
                        conn.at_rest = conn.proto.at_rest()
                    except Exception:
                        log.exception("connection %d: protocol failure; closing it", conn.fd)
                        self._close(conn)
                        continue
                    if conn.proto.closed:
                        conn.closing = True
                    self._queue(conn, chunks)
                    self._drain(conn)
            # counted before the replies leave: a client that has its reply
            # and then scrapes the metrics must find its request counted
            node.bytes_read += nread
            for conn, reply in replies:
                # one reply, one send, usually all taken
                try:
                    sent = conn.sock.send(reply)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    self._close(conn)
                    continue
                nwritten += sent
                if sent < len(reply):
                    conn.queue.append(memoryview(reply)[sent:])
                    conn.queued = len(reply) - sent
                    self._want(conn, EPOLLOUT)      # stop reading until drained
            node.bytes_written += nwritten
            if store.watch is not None:
                self._deliver_watch()
            await checkpoint()

    def _answer_lone_gets(self, conns: list, keys: list, replies: list) -> None:
        """One store call for the lone gets of a pass, as for one multi-get:
        a lone get through the parser paid fetch_text's set-up (a third of its
        cost) by itself.  The gets are of different connections, all read
        before any reply of this pass is sent, so answering them together
        reorders nothing a client can see.  Each key leaves its VALUE block,
        if any, and its END, in one chunk: each connection's reply joins ``replies``."""
        store = self.node.store
        out: list = []
        try:
            if store.watch is None:
                store.fetch_text(keys, out, False, True, joined=True)
            else:
                # a watcher arrived during this pass: its lines name each
                # get's own connection, so one call a get
                for conn, key in zip(conns, keys):
                    store.fetch_text([key], out, False, True, cfd=conn.fd, joined=True)
        except Exception:
            log.exception("lone gets of %d connections failed; closing them", len(conns))
            for conn in conns:
                self._close(conn)
            return
        replies += zip(conns, out)      # a chunk a get (joined)

    def _protocol(self, first_byte: int, fd: int):
        """A new connection's protocol: by its first byte, unless -B fixes it."""
        binding = self.settings.protocol
        if binding != "auto":
            first_byte = BINARY_REQUEST_MAGIC if binding == "binary" else 0
        proto = protocol_for(self.node, first_byte)
        proto.fd = fd
        return proto

    def _deliver_watch(self) -> None:
        """Hand `watch` lines to the watching connections; one that is still
        busy sending loses them (counted), as memcached's watchers do."""
        watch = self.node.watch
        for wfd, lines in watch.take():
            wconn = self.conns.get(wfd)
            stream = self.streams.get(wfd)
            if wconn is not None and not wconn.queue:
                self._queue(wconn, [lines])
                self._drain(wconn)
            elif stream is not None and not stream.sending.locked():
                self.nursery.start_soon(stream.send_watch, lines, self.node)
            elif wconn is not None or stream is not None:
                watch.skipped += lines.count(b"\n")

    async def _stream_watchers(self) -> None:
        """The portable path's stand-in for the epoll loop's watch flush."""
        while True:
            await trio.sleep(0.01)
            if self.node.store.watch is not None:
                self._deliver_watch()

    def _want(self, conn: Conn, mask: int) -> None:
        if conn.mask != mask:
            conn.mask = mask
            self.ep.modify(conn.fd, mask)

    def _queue(self, conn: Conn, chunks: list) -> None:
        if chunks:
            for chunk in coalesce(chunks):
                if chunk:
                    conn.queue.append(chunk)
                    conn.queued += len(chunk)

    def _drain(self, conn: Conn) -> None:
        """Send what the socket takes of the queue, then settle what the
        connection waits for: the socket (EPOLLOUT), its turn to produce
        more (paused, in ``runnable``), or its next request (EPOLLIN)."""
        queue = conn.queue
        sock = conn.sock
        while queue:
            try:
                if len(queue) == 1:
                    offered = len(queue[0])
                    sent = sock.send(queue[0])
                else:
                    batch = list(islice(queue, SENDMSG_MAX))
                    offered = sum(map(len, batch))
                    sent = sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            self.node.bytes_written += sent
            conn.queued -= sent
            left = sent
            while left:
                head = queue[0]
                if left >= len(head):
                    queue.popleft()
                    left -= len(head)
                else:
                    queue[0] = memoryview(head)[left:]     # no copy of the rest
                    left = 0
            if sent < offered:
                break                                   # the socket is full
        proto = conn.proto
        if queue:
            self._want(conn, EPOLLOUT)                  # stop reading until drained
            conn.info.sending = True
            return
        conn.info.sending = False
        if conn.closing:
            self._close(conn)
        elif proto is not None and proto.blocked:
            self._want(conn, 0)                         # paused: neither read nor written
            self.runnable.add(conn)
        else:
            self._want(conn, EPOLLIN)

    def _close(self, conn: Conn) -> None:
        if self.conns.pop(conn.fd, None) is None:
            return
        self.runnable.discard(conn)
        try:
            self.ep.unregister(conn.fd)
        except (OSError, ValueError):
            pass
        self._forget(conn.info)
        self.node.watch.remove(conn.fd)
        conn.queue.clear()
        conn.sock.close()

    def _forget(self, info: ConnInfo) -> None:
        node = self.node
        if node.conns.pop(info.fd, None) is not None:
            node.curr_connections -= 1
            log.debug("<%d connection closed", info.fd)

    def buffered(self) -> tuple[int, int]:
        """(input held, reply bytes queued) over every connection: `stats`
        reports them as read_buf_bytes and response_obj_bytes."""
        held = queued = 0
        for info in self.node.conns.values():
            if info.proto is not None:
                held += info.proto.held_bytes()
        for conn in self.conns.values():
            queued += conn.queued
        return held, queued

    # -- a trio task per connection: TLS, and every plain one on the portable path ----------

    async def _serve_stream(self, sock: socket.socket, info: ConnInfo, tls: bool) -> None:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        if tls:
            stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
        conn = StreamConn(stream, info)
        self.streams[info.fd] = conn
        try:
            with conn.scope:
                if tls:
                    with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
                        await stream.do_handshake()
                await self._session(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                trio.TooSlowError) as exc:
            log.debug("<%d connection ended: %r", info.fd, exc)
        except Exception:
            log.exception("connection %d: protocol failure; closing it", info.fd)
        finally:
            self.streams.pop(info.fd, None)
            self.node.watch.remove(info.fd)
            self._forget(info)
            with trio.move_on_after(1) as closing:
                closing.shield = True
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass

    async def _session(self, conn: StreamConn) -> None:
        """The epoll loop's cycle, awaiting on the stream: read, parse, send
        everything, resume a paused protocol only once its replies are sent
        (so the same output bound holds), read again."""
        node = self.node
        info = conn.info
        stream = conn.stream
        proto = None
        while True:
            if node.auth is not None and (proto is None or not proto.authenticated):
                data = await stream.receive_some(PREAUTH_INPUT)
            else:
                data = await stream.receive_some(RECV_SIZE)
            if not data:
                return
            node.bytes_read += len(data)
            if proto is None:
                proto = info.proto = self._protocol(data[0], info.fd)
            seen = proto.commands
            chunks = proto.receive(data)
            if proto.commands != seen:
                info.last_cmd = time.monotonic()
            while True:
                info.sending = True
                for chunk in coalesce(chunks):
                    await conn.send(chunk, node)
                info.sending = False
                if proto.closed or not proto.blocked:
                    break
                chunks = proto.resume()
            if proto.closed:
                return

    # -- housekeeping -------------------------------------------------------------------

    async def _watch_cluster(self) -> None:
        """Membership polling in a worker thread: file reads and DNS lookups
        block, and a slow resolver must not hold up a single client."""
        cluster = self.node.cluster
        while True:
            try:
                await _in_thread(cluster.poll)
            except Exception:
                log.exception("cluster membership poll failed")
            await trio.sleep(CLUSTER_POLL_SECONDS)

    async def _housekeeping(self) -> None:
        """Once a tick: reclaim expired items, end idle connections."""
        store = self.node.store
        while True:
            await trio.sleep(TICK)
            if self.node.crawler_enabled:
                store.reclaim_step(RECLAIM_BUDGET)
            self.node.rebalancer.step()
            idle = self.settings.idle_timeout
            if idle:
                cutoff = time.monotonic() - idle
                for conn in list(self.conns.values()):
                    if conn.info.last_cmd < cutoff:
                        log.info("<%d idle timeout", conn.fd)
                        self._close(conn)
                for sconn in list(self.streams.values()):
                    if sconn.info.last_cmd < cutoff:
                        log.info("<%d idle timeout", sconn.info.fd)
                        sconn.scope.cancel()
            for hook in getattr(self.node, "tick_hooks", ()):
                hook()
