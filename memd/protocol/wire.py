"""What every wire protocol shares: the receive buffer, the output bound,
the swallowing of a refused value, key limits, continuations.

``Connection`` is the base of ``TextProtocol`` and ``BinaryProtocol``; it
holds the connection's state between reads, so the two readers only parse
their own format and call the cache (docs/design.md, "Connection life cycle").

The server's side of the contract:

* ``receive(data) -> list`` consumes a read and returns the reply chunks it
  produced (a list, possibly empty; never joined, so a big reply is not
  copied).  Parsing stops once the chunks pass ``out_limit`` bytes: the rest
  of the input is kept *unparsed* and ``blocked`` is True.
* ``resume() -> list`` is called once the server has sent everything: one
  more step of a long reply (a multi-get, a dump), then the kept input.
  The server calls it only while ``blocked`` and only with nothing queued,
  so a connection holds at most ``out_limit`` plus one value's reply.
* ``closed``: hang up after sending.  ``held_bytes()``: input held now.

``feed(data) -> bytes`` runs all of that to the end and joins the reply;
tests and tools use it, the server does not.
"""

from __future__ import annotations

KEY_MAX = 250                 # memcached's KEY_MAX_LENGTH, for every protocol
DEFAULT_OUT_LIMIT = 4 << 20   # reply bytes produced before parsing pauses
# Before a client has authenticated it may make the node hold only this much
# input and output: enough for any credential, nothing to build a bloat on.
PREAUTH_INPUT = 4096
PREAUTH_OUTPUT = 16 << 10


class ReceiveBuffer:
    """Input waiting for the rest of a line or of a value: one growing
    bytearray per connection (about one byte of memory per byte held, however
    the peer split it), and how far the line end was already searched for, so
    a line trickled a byte at a time costs O(n) in all (h11's _receivebuffer)."""

    __slots__ = ("data", "searched")

    def __init__(self) -> None:
        self.data = bytearray()
        self.searched = 0

    def __len__(self) -> int:
        return len(self.data)

    def keep(self, buf, pos: int) -> None:
        """Start over holding ``buf[pos:]`` (what a parse left unfinished)."""
        self.data = bytearray(memoryview(buf)[pos:])
        self.searched = 0

    def add(self, chunk) -> None:
        self.data += chunk

    def line_end(self) -> int:
        """Index of the first LF, or -1 (remembering that none is before the end)."""
        i = self.data.find(b"\n", self.searched)
        if i < 0:
            self.searched = len(self.data)
        return i

    def take(self) -> bytes:
        """Everything held, as bytes; the buffer is empty (and its memory freed)."""
        data = bytes(self.data)
        self.data = bytearray()
        self.searched = 0
        return data

    def clear(self) -> None:
        self.data = bytearray()
        self.searched = 0


class Connection:
    """State every protocol keeps between reads; subclasses provide
    ``_parse(buf, pos)`` and ``_receive_more(data)``."""

    def __init__(self, node) -> None:
        self.node = node
        self.store = node.store
        self.closed = False            # the server closes after sending the reply
        self.out: list = []            # reply chunks not yet taken by the server
        self.out_bytes = 0             # bytes of out[:_counted]
        self._counted = 0
        # what the last taken replies add up to, when every chunk was
        # counted on the way (the server then need not add them up), else -1
        self.taken_bytes = -1
        self.authenticated = node.auth is None
        self.out_limit = self._limit()
        self.fd = 0                    # set by the server (watch and stats conns)
        self.commands = 0              # commands parsed, ever (the server's idle clock)
        self.rbuf = ReceiveBuffer()
        self._swallow = 0              # bytes of a refused value still to discard
        self._held = None              # input parsing stopped before (output bound)
        self._held_pos = 0
        self._cont = None              # a long reply's remaining steps (an iterator)

    def _limit(self) -> int:
        if not self.authenticated:
            return PREAUTH_OUTPUT
        return getattr(self.node.settings, "conn_output_limit", DEFAULT_OUT_LIMIT)

    def now_authenticated(self) -> None:
        self.authenticated = True
        self.out_limit = self._limit()

    @property
    def state(self) -> str:
        """What the connection waits for, under memcached's `stats conns` names."""
        if self.blocked:
            return "conn_mwrite"
        if self._swallow:
            return "conn_swallow"
        if self.rbuf.data:
            return "conn_nread" if self._reading_value() else "conn_read"
        return "conn_new_cmd"

    # -- the server's side -------------------------------------------------------

    def at_rest(self) -> bool:
        """Whether the next input may be taken as a lone get (TextProtocol.at_rest)."""
        return False

    @property
    def blocked(self) -> bool:
        """Parsing paused with work left (a long reply, or input not parsed yet)."""
        return self._cont is not None or self._held is not None

    def receive(self, data) -> list:
        if self.closed:
            return []
        if self._cont is not None or self._held is not None:
            # (only feed() does this: the server does not read a blocked connection)
            self._hold_more(data)
            return self._take()
        if self._swallow:
            n = self._swallow
            if len(data) <= n:
                self._swallow = n - len(data)
                return []
            data = data[n:]
            self._swallow = 0
        if self.rbuf.data:
            data = self._receive_more(data)
            if data is None:
                return self._take()
        self._parse(data, 0)
        out = self.out              # (_take, inlined: this is every read's path)
        if not out:
            return []
        self.out = []
        self.taken_bytes = self.out_bytes if self._counted == len(out) else -1
        self.out_bytes = self._counted = 0
        return out

    def resume(self) -> list:
        cont = self._cont
        if cont is not None:
            # a step yields its reply chunk, or True when it wrote to ``out``
            chunk = next(cont, None)
            if chunk is None:
                self._cont = None
            else:
                if chunk is not True and chunk:
                    self.out.append(chunk)
                return self._take()
        if self._held is not None and not self.closed:
            buf, pos = self._held, self._held_pos
            self._held = None
            self._parse(buf, pos)
        return self._take()

    def feed(self, data) -> bytes:
        """Everything ``data`` leads to, joined (for tests and tools)."""
        chunks = self.receive(data)
        while self.blocked and not self.closed:
            chunks += self.resume()
        return b"".join(chunks)

    def held_bytes(self) -> int:
        """Input held between reads (the receive buffer and any unparsed rest)."""
        held = len(self.rbuf.data)
        if self._held is not None:
            held += len(self._held) - self._held_pos
        return held

    # -- for the parsers ---------------------------------------------------------

    def _take(self) -> list:
        out = self.out
        if not out:
            return []
        self.out = []
        self.taken_bytes = self.out_bytes if self._counted == len(out) else -1
        self.out_bytes = self._counted = 0
        return out

    def fetched(self, chunks_before: int, nbytes: int) -> None:
        """The store appended ``nbytes`` (its exact count) to ``out``, which
        held ``chunks_before`` chunks: count them without looking at them,
        if everything before them was counted."""
        if self._counted == chunks_before:
            self.out_bytes += nbytes
            self._counted = len(self.out)

    def out_full(self) -> bool:
        """Have the replies produced so far reached the output bound?
        Counts only the chunks added since the last look (amortised O(1))."""
        out = self.out
        i = self._counted
        if i != len(out):
            if i > len(out):           # a parser dropped replies it had queued
                i = self.out_bytes = 0
            self.out_bytes += sum(map(len, out[i:]))
            self._counted = len(out)
        return self.out_bytes >= self.out_limit

    def out_room(self) -> int:
        """Bytes of reply still allowed in this step (at least 1)."""
        if self.out:
            self.out_full()
            return max(self.out_limit - self.out_bytes, 1)
        return self.out_limit

    def hold(self, buf, pos: int) -> None:
        """Stop parsing at ``pos``; the server resumes once it has sent the replies."""
        if pos < len(buf):
            self._held = buf
            self._held_pos = pos

    def _hold_more(self, data) -> None:
        if self._held is None:
            self._held, self._held_pos = bytes(data), 0
        else:
            self._held = self._held[self._held_pos:] + data
            self._held_pos = 0

    def swallow(self, length: int) -> None:
        """Discard the next ``length`` bytes of input (a refused value), never
        buffering them."""
        self._swallow = length

    def _swallowed(self, buf, pos: int) -> int:
        """Swallow what ``buf`` has of a refused value; return where parsing goes on."""
        avail = len(buf) - pos
        if avail >= self._swallow:
            pos += self._swallow
            self._swallow = 0
            return pos
        self._swallow -= avail
        return len(buf)
