"""One blocking connection to a node: TCP or TLS, logged in, one reply at a time.

Blocking sockets on purpose: a shell waits for each answer anyway, and
``top`` polls a handful of nodes once a second (from threads).  Every read
has a timeout, so a node that never answers costs the user seconds, not a
hung terminal.

Authentication follows the node: memcached's text-protocol login (a ``set``
whose value is ``<user> <password>``, what memd and ``memcached -Y`` take)
by default, or SASL PLAIN on the binary protocol (``--sasl``, what
``memcached -S`` requires), after which the connection speaks binary and
``binary.BinarySession`` translates the typed text commands.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from ..cluster.discovery import split_address
from . import commands
from .commands import Reply


class ConnectFailed(ConnectionError):
    """The node could not be reached or refused the login (exit code 2)."""


@dataclass
class Options:
    """How to reach nodes: shared by every connection of a shell or of top."""

    timeout: float = 5.0
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False
    user: str | None = None
    password: str | None = None
    sasl: bool = False

    def ssl_context(self) -> ssl.SSLContext | None:
        if not (self.tls or self.tls_ca or self.tls_cert):
            return None
        ctx = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return ctx


class Connection:
    def __init__(self, address: str, options: Options | None = None) -> None:
        self.address = address
        self.options = options or Options()
        self.host, self.port = split_address(address)
        self.sock: socket.socket | None = None
        self._file = None
        self.binary = None             # a binary.BinarySession after SASL

    # -- lifecycle -----------------------------------------------------------------

    def connect(self) -> "Connection":
        opts = self.options
        try:
            sock = socket.create_connection((self.host, self.port), timeout=opts.timeout)
            ctx = opts.ssl_context()
            if ctx is not None:
                sock = ctx.wrap_socket(sock, server_hostname=self.host)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {self.address}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._file = sock.makefile("rb")
        if opts.user is not None:
            self._login(opts.user, opts.password or "")
        return self

    def close(self) -> None:
        for thing in (self._file, self.sock):
            if thing is not None:
                try:
                    thing.close()
                except OSError:
                    pass
        self.sock = self._file = None

    def reconnect(self) -> None:
        self.close()
        self.connect()

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def __enter__(self) -> "Connection":
        return self.connect() if self.sock is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- authentication ---------------------------------------------------------------

    def _login(self, user: str, password: str) -> None:
        if self.options.sasl:
            from .binary import BinarySession
            self.binary = BinarySession(self)
            ok, message = self.binary.sasl_plain(user, password)
        else:
            secret = f"{user} {password}".encode()
            reply = self.request(b"set auth 0 0 %d" % len(secret), secret)
            ok, message = reply.first == b"STORED", reply.first.decode(errors="replace")
        if not ok:
            self.close()
            raise ConnectFailed(f"login to {self.address} refused: {message}")

    # -- bytes -------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.sock is None:
            self.connect()
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.close()
            raise ConnectionError(f"{self.address}: {exc}") from exc

    def readline(self) -> bytes:
        try:
            return self._file.readline()
        except OSError as exc:       # socket.timeout is an OSError
            self.close()
            raise ConnectionError(f"{self.address}: {exc or 'timed out'}") from exc

    def read(self, n: int) -> bytes:
        try:
            data = self._file.read(n)
        except OSError as exc:
            self.close()
            raise ConnectionError(f"{self.address}: {exc or 'timed out'}") from exc
        if len(data) < n:
            self.close()
            raise ConnectionError(f"{self.address}: connection closed mid-reply")
        return data

    # -- requests ------------------------------------------------------------------------

    def request(self, line: bytes, data: bytes | None = None) -> Reply:
        """Send one command line (and its data block) as typed; read its reply."""
        tokens = commands.tokens_of(line)
        if self.binary is not None:
            reply = self.binary.request(tokens, data)
            reply.node = self.address
            return reply
        out = line + b"\r\n"
        if data is not None:
            out += data + b"\r\n"
        quiet = commands.is_quiet(tokens)
        if quiet:
            out += b"mn\r\n"         # closes a reply that may never come
        self.send(out)
        if tokens and tokens[0].lower() == b"quit":
            self.close()
            return Reply(node=self.address)
        reply = commands.read_reply(tokens, self.readline, self.read, quiet_closer=quiet)
        if quiet and reply.lines and reply.lines[-1][0] == b"MN":
            # the MN was the shell's, not the user's: show only what the node said
            reply.lines.pop()
            reply.raw = reply.raw[:-4]
        reply.node = self.address
        return reply

    def stats(self, group: str = "") -> dict[str, str]:
        """``stats [group]`` as {name: value} (strings, as the node sent them)."""
        reply = self.request(b"stats " + group.encode() if group else b"stats")
        if reply.error:
            raise CommandFailed(reply.first.decode(errors="replace"))
        out = {}
        for line, _ in reply.lines:
            parts = line.decode(errors="replace").split(" ", 2)
            if parts[0] == "STAT" and len(parts) == 3:
                out[parts[1]] = parts[2]
        return out

    def version(self) -> str:
        reply = self.request(b"version")
        first = reply.first.decode(errors="replace")
        return first[8:] if first.startswith("VERSION ") else first


class CommandFailed(RuntimeError):
    """A node answered a command the shell sent for itself with an error."""
