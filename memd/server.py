"""The node's network side: the only module that awaits (docs/design.md).

Plain TCP connections are served by ONE trio task from its own
``select.epoll`` (about 1.6x the throughput of a task per connection here).
For each ready socket it reads once, hands the bytes to the connection's
sans-IO protocol, and sends the reply chunks that read produced; it blocks
in ``trio.lowlevel.wait_readable`` on the epoll fd only when nothing is
ready and no connection has a paused reply to go on with.  Each connection
queues its unsent chunks and is not read while any are queued; a protocol
paused at its output bound is resumed one step per pass once its queue is
sent (the connection life cycle in docs/design.md).  Trio still owns
accepting, TLS connections (a task each, via ``trio.SSLStream``), timers,
signals and shutdown.

A failure inside one connection's protocol closes that connection and is
logged; it never reaches the loop serving the others.
"""

from __future__ import annotations

import errno
import logging
import select
import signal
import socket
import time
from collections import deque
from itertools import islice

import trio

from .node import ConnInfo, Node
from .protocol import protocol_for
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
EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLHUP = select.EPOLLHUP
EPOLLERR = select.EPOLLERR
TICK = 0.1                     # seconds between housekeeping rounds
RECLAIM_BUDGET = 2_000         # chunks the reclaimer looks at per tick (20k/s)
SHUTDOWN_DRAIN = 2.0           # seconds to finish pending replies at shutdown
TLS_HANDSHAKE_TIMEOUT = 10.0   # a peer that never finishes its handshake is dropped
CLUSTER_REFRESH_TICKS = 10     # re-read --cluster-file about once a second


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
                 "recv_size", "mask")

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


def coalesce(chunks: list):
    """Small replies are joined (one send, one TLS record); a big one stays
    in pieces so its values are not copied again."""
    if len(chunks) == 1:
        return chunks
    if len(chunks) <= SENDMSG_MAX and sum(map(len, chunks)) <= JOIN_MAX:
        return [b"".join(chunks)]
    return chunks


class Server:
    def __init__(self, node: Node, ssl_context=None, tls_port: int | None = None) -> None:
        self.node = node
        self.settings = node.settings
        self.ssl_context = ssl_context
        self.tls_port = tls_port
        self.conns: dict[int, Conn] = {}
        self.runnable: set[Conn] = set()   # paused at the output bound, queue sent
        node.buffered = self.buffered
        self.tls_tasks: dict[int, tuple[ConnInfo, trio.CancelScope]] = {}
        self.ep = select.epoll()
        self.listeners: list[trio.socket.SocketType] = []
        self.bound: list[tuple[str, int]] = []
        self._stopping = False

    # -- lifetime --------------------------------------------------------------

    async def bind(self) -> None:
        """Open the listening sockets (port 0 picks a free one, reported in ``bound``)."""
        st = self.settings
        plain_is_tls = self.ssl_context is not None and self.tls_port is None
        ports = [(st.port, plain_is_tls)]
        if self.tls_port is not None:
            ports.append((self.tls_port, True))
        for host in st.listen:
            for port, tls in ports:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                lsock = trio.socket.socket(family, socket.SOCK_STREAM)
                lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                await lsock.bind((host, port))
                lsock.listen(1024)
                lsock.is_tls = tls
                self.listeners.append(lsock)
                name = lsock.getsockname()
                self.bound.append((name[0], name[1]))
                self.node.listeners.append(f"tcp:{name[0]}:{name[1]}")
                self.node.listener_fds[f"tcp:{name[0]}:{name[1]}"] = lsock.fileno()
                log.info("listening on %s:%d%s", name[0], name[1], " (TLS)" if tls else "")

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if not self.listeners:
            await self.bind()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._accept_scope = trio.CancelScope()
            self._accepting_done = trio.Event()
            nursery.start_soon(self._accepting)
            nursery.start_soon(self._io_loop)
            nursery.start_soon(self._housekeeping)
            nursery.start_soon(self._signals)
            task_status.started(self.bound)
            while not self.node.shutdown_requested:
                await trio.sleep(0.05)
            await self._shutdown()
            nursery.cancel_scope.cancel()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for signum in sigs:
                if signum == signal.SIGHUP:
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
        while any(c.queue for c in self.conns.values()) and time.monotonic() < deadline:
            for conn in list(self.conns.values()):
                if conn.queue:
                    self._drain(conn)
            await trio.sleep(0.01)
        for conn in list(self.conns.values()):
            self._close(conn)
        self.ep.close()
        if hasattr(self.node, "on_shutdown"):
            self.node.on_shutdown()

    # -- accepting ---------------------------------------------------------------

    async def _accept_loop(self, lsock) -> None:
        node = self.node
        listen_addr = "tcp:%s:%d" % lsock.getsockname()[:2]
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
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            node.curr_connections += 1
            node.total_connections += 1
            peer = "tcp:%s:%d" % addr[:2] if isinstance(addr, tuple) else str(addr)
            info = ConnInfo(sock.fileno(), peer, listen_addr)
            node.conns[info.fd] = info
            log.debug("<%d new client connection from %s", info.fd, peer)
            if lsock.is_tls:
                self.nursery.start_soon(self._serve_tls, sock, info)
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
        watch = node.watch
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
            for fd, ev in events:
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
                watch.current_fd = fd
                proto = conn.proto
                data = bytes(rview[:n])
                if trace:
                    # -vv: what memcached -vv shows, a line per request and reply
                    log.debug("<%d %r", fd, data[:120])
                try:
                    if proto is None:
                        proto = conn.proto = conn.info.proto = protocol_for(node, data[0])
                        proto.fd = fd
                    chunks = proto.receive(data)
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
                    chunks = coalesce(chunks)
                    if len(chunks) == 1:
                        replies.append((conn, chunks[0]))
                        continue
                self._queue(conn, chunks)
                self._drain(conn)
            if runnable:
                # connections paused at their output bound whose replies are
                # all sent: one more step each, then the others get their turn
                for conn in list(runnable):
                    runnable.discard(conn)
                    watch.current_fd = conn.fd
                    try:
                        chunks = conn.proto.resume()
                    except Exception:
                        log.exception("connection %d: protocol failure; closing it", conn.fd)
                        self._close(conn)
                        continue
                    if conn.proto.closed:
                        conn.closing = True
                    self._queue(conn, chunks)
                    self._drain(conn)
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
            node.bytes_read += nread
            node.bytes_written += nwritten
            if store.watch is not None:
                for wfd, lines in watch.take():
                    wconn = conns.get(wfd)
                    if wconn is not None and not wconn.queue:
                        self._queue(wconn, [lines])
                        self._drain(wconn)
                    elif wconn is not None:
                        watch.skipped += lines.count(b"\n")
            await checkpoint()

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

    # -- TLS connections: a trio task each (TLS is not the hot path) ---------------------

    async def _serve_tls(self, sock: socket.socket, info: ConnInfo) -> None:
        stream = trio.SSLStream(trio.SocketStream(trio.socket.from_stdlib_socket(sock)),
                                self.ssl_context, server_side=True)
        scope = trio.CancelScope()
        self.tls_tasks[info.fd] = (info, scope)   # the idle timeout cancels it
        try:
            with scope:
                with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
                    await stream.do_handshake()
                await self._tls_session(stream, info)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                trio.TooSlowError) as exc:
            log.debug("<%d TLS connection ended: %r", info.fd, exc)
        except Exception:
            log.exception("TLS connection %d: protocol failure; closing it", info.fd)
        finally:
            self.tls_tasks.pop(info.fd, None)
            self._forget(info)
            self.node.watch.remove(info.fd)
            with trio.move_on_after(1) as closing:
                closing.shield = True
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass

    async def _tls_session(self, stream: trio.SSLStream, info: ConnInfo) -> None:
        """The epoll loop's cycle, awaiting on the stream: read, parse, send
        everything, resume a paused protocol only once its replies are sent
        (so the same output bound holds), read again."""
        node = self.node
        watch = node.watch
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
                proto = info.proto = protocol_for(node, data[0])
                proto.fd = info.fd
            seen = proto.commands
            watch.current_fd = info.fd
            chunks = proto.receive(data)
            if proto.commands != seen:
                info.last_cmd = time.monotonic()
            while True:
                info.sending = True
                for chunk in coalesce(chunks):
                    await stream.send_all(chunk)
                    node.bytes_written += len(chunk)
                info.sending = False
                if proto.closed or not proto.blocked:
                    break
                watch.current_fd = info.fd
                chunks = proto.resume()
            if proto.closed:
                return

    # -- housekeeping -------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Once a tick: reclaim expired items, end idle connections, refresh membership."""
        store = self.node.store
        ticks = 0
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
                for info, scope in list(self.tls_tasks.values()):
                    if info.last_cmd < cutoff:
                        log.info("<%d idle timeout (TLS)", info.fd)
                        scope.cancel()
            ticks += 1
            cluster = self.node.cluster
            if cluster is not None and ticks % CLUSTER_REFRESH_TICKS == 0:
                try:
                    cluster.refresh()
                except Exception:
                    log.exception("cluster membership refresh failed")
            for hook in getattr(self.node, "tick_hooks", ()):
                hook()
