"""memcached's classic text protocol, sans-IO (docs/design.md).

``TextProtocol.receive(data)`` takes whatever bytes arrived and returns the
reply chunks of every command they completed, so the server can answer a
whole pipelined read with one send.  Partial input waits in the
connection's receive buffer (an unfinished line, or a value still arriving
over many reads); past the output bound (memd.protocol.wire) parsing stops
and the rest of the input waits unparsed until the replies are sent.

Parsing follows memcached 1.6.18's proto_text.c rather than protocol.txt's
prose wherever the two differ, because clients meet the implementation:
tokens split on spaces only, a NUL ends the line, at most 24 tokens, numbers
as C's strtol/strtoul read them (see memd.numbers), and the same error for
every malformed case.  A line longer than 2048 bytes without a newline
closes the connection unless it is a get (memcached allows long multi-gets).
"""

from __future__ import annotations

import re
from urllib.parse import quote_from_bytes

from .. import hotkeys, stats as stats_mod
from ..watch import KINDS as WATCH_KINDS
from ..cache import store as st
from ..numbers import strtol32, strtoul32, strtoull
from .wire import KEY_MAX, Connection

MAX_TOKENS = 24
LINE_MAX = 2048           # longest partial line memcached buffers before closing
GET_LINE_MAX = 1 << 20    # bound for the long multi-get lines memcached does allow
MAX_CLASS_ID = 63         # memcached's MAX_NUMBER_OF_SLAB_CLASSES - 1
AUTH_DATA_MAX = 4096      # longest "<user> <password>" accepted before authentication

ERROR = b"ERROR\r\n"
BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
BAD_CHUNK = b"CLIENT_ERROR bad data chunk\r\n"
TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
NO_MEMORY = b"SERVER_ERROR out of memory storing object\r\n"
END = b"END\r\n"

STORE_REPLIES = {
    st.STORED: b"STORED\r\n", st.NOT_STORED: b"NOT_STORED\r\n", st.EXISTS: b"EXISTS\r\n",
    st.NOT_FOUND: b"NOT_FOUND\r\n", st.TOO_LARGE: TOO_LARGE, st.NO_MEMORY: NO_MEMORY,
}
STORE_MODES = {b"set": st.SET, b"add": st.ADD, b"replace": st.REPLACE,
               b"append": st.APPEND, b"prepend": st.PREPEND, b"cas": st.CAS}


GET_COMMANDS = (b"get", b"gets", b"gat", b"gats", b"bget")
# A key the fast paths below take as it is: no space, CR, LF or NUL, and
# 1..KEY_MAX bytes.  Anything else takes the general path, which has
# memcached's rules for it.
_PLAIN_KEY = rb"[^ \r\n\x00]{1,%d}" % KEY_MAX
# A run of well-formed single-key gets ("get <key>\r\n" ...), the bulk of a
# pipelined read: matched and split in C instead of line by line.
_GET_LINE = rb"get %s\r\n" % _PLAIN_KEY
_GET_RUN = re.compile(rb"(?:%s)+" % _GET_LINE).match
# one such line, the whole input: a lone get, which the server answers itself
# on a connection at rest (TextProtocol.at_rest)
LONE_GET = re.compile(_GET_LINE).fullmatch
# a storage line the set fast path can take as it is: a plain key and three
# plain decimal numbers of at most 9 digits (so flags fit 32 bits and
# exptime is positive), CRLF; anything else takes the general path
_SIMPLE_SET = re.compile(rb"set (%s) (\d{1,9}) (\d{1,9}) (\d{1,9})\r\n" % _PLAIN_KEY).match


def _uriencode(key: bytes) -> bytes:
    return quote_from_bytes(key, safe="").encode()


METADUMP_STEP = 1024      # item ids a dump step looks at (~10 ms here); other clients go between


def metadump(store, classes):
    """`lru_crawler metadump` lines, one bounded step at a time.

    Each ``next()`` looks at no more than METADUMP_STEP item ids and returns
    their lines (possibly none), so however large the store, one step is a
    short pause and the server serves other clients between steps; the dump
    is produced only as fast as its reader takes it.  Walks item ids rather
    than LRU links so that items changing between steps cannot break the
    walk.  ``size`` is reported as memcached computes it (its 56-byte header
    included) so tools reading dumps see the same numbers.
    """
    wanted = set(classes)
    i = 0
    while i < store.slabs.n_ids:
        chunk = []
        stop = min(i + METADUMP_STEP, store.slabs.n_ids)
        now = store.clock()
        iflags, id_class = store.iflags, store.id_class
        for item in range(i, stop):
            if not iflags[item] & st.LINKED or id_class[item] not in wanted:
                continue
            if store.is_dead(item, now):
                continue
            exp = store.exptime[item]
            chunk.append(b"key=%s exp=%d la=%d cas=%d fetch=%s cls=%d size=%d\n" % (
                _uriencode(store.key_of(item)), exp if exp else -1, store.atime[item],
                store.cas[item], b"yes" if iflags[item] & st.FETCHED else b"no",
                id_class[item], st.MEMCACHED_ITEM_OVERHEAD + store.klen[item] + store.vlen[item]))
        i = stop
        yield b"".join(chunk)
    yield END


CACHEDUMP_MAX = 2 * 1024 * 1024    # memcached caps a cachedump at 2 MB
CACHEDUMP_STEP = 2000              # items listed per step


def cachedump(store, cls_id: int, limit: int):
    """`stats cachedump` ITEM lines, most recent first, in bounded steps.

    Between steps other clients run and may bump or remove items.  The walk
    goes on from the item it stopped at only if that item is unchanged (still
    linked in the class, same CAS and access time); a bump would have moved
    it to the head and a resumed walk would list items twice, so then the
    dump ends there.  (memcached holds its LRU lock for the whole, 2 MB
    bounded, walk; memd gives the other clients their turn instead.)
    """
    lru_next = store.lru.next
    item = store.lru.head[cls_id] if cls_id else st.NIL
    listed = size = 0
    while item != st.NIL:
        chunk = []
        for _ in range(CACHEDUMP_STEP):
            if item == st.NIL:
                break
            line = b"ITEM %s [%d b; %d s]\r\n" % (store.key_of(item), store.vlen[item],
                                                  store.exptime[item])
            size += len(line)
            if (limit and listed >= limit) or size > CACHEDUMP_MAX:
                item = st.NIL
                break
            chunk.append(line)
            listed += 1
            item = lru_next[item]
        if item == st.NIL:
            chunk.append(END)
            yield b"".join(chunk)
            return
        mark = (store.cas[item], store.atime[item])
        yield b"".join(chunk)
        if not (store.iflags[item] & st.LINKED and store.id_class[item] == cls_id
                and (store.cas[item], store.atime[item]) == mark):
            break
    yield END


def tokenize(line: bytes) -> list[bytes]:
    """memcached's tokenize_command: split on ' ' only; a NUL ends the line.

    memcached stops after 23 tokens and leaves the rest unsplit as a 24th
    (only the get family reads on); that is reproduced here, so every other
    command with too many tokens fails as it does there.
    """
    if b"\0" in line:
        line = line[:line.index(b"\0")]
    tokens = line.split(b" ")
    if b"" in tokens:
        tokens = [t for t in tokens if t]
    if len(tokens) >= MAX_TOKENS and tokens[0] not in GET_COMMANDS:
        rest = line.lstrip(b" ")
        for _ in range(MAX_TOKENS - 1):
            rest = rest.split(b" ", 1)[1].lstrip(b" ")
        tokens = tokens[:MAX_TOKENS - 1] + [rest]
    return tokens


class _Discard:
    """An output that keeps nothing: lookups whose replies memcached drops."""

    @staticmethod
    def append(chunk) -> None:
        pass


class TextProtocol(Connection):
    """One text connection's reader (lines, then a value block when a storage
    command asks for one) and command dispatcher."""

    def __init__(self, node, meta=None) -> None:
        super().__init__(node)
        self._long_get = False         # the partial line is a long multi-get (checked once)
        self._need = 0                 # bytes the pending data block needs
        self._on_data = None           # callback for the pending data block
        self.watching = False          # a watch connection only receives log lines
        self.meta = meta
        self._commands = {
            b"get": self.cmd_get, b"gets": self.cmd_gets, b"gat": self.cmd_gat,
            b"gats": self.cmd_gats, b"bget": self.cmd_get,
            b"set": self.cmd_store, b"add": self.cmd_store, b"replace": self.cmd_store,
            b"append": self.cmd_store, b"prepend": self.cmd_store, b"cas": self.cmd_store,
            b"delete": self.cmd_delete, b"incr": self.cmd_arith, b"decr": self.cmd_arith,
            b"touch": self.cmd_touch, b"flush_all": self.cmd_flush_all,
            b"version": self.cmd_version, b"quit": self.cmd_quit,
            b"verbosity": self.cmd_verbosity, b"stats": self.cmd_stats,
            b"shutdown": self.cmd_shutdown, b"cache_memlimit": self.cmd_memlimit,
            b"config": self.cmd_config, b"slabs": self.cmd_slabs,
            b"lru_crawler": self.cmd_lru_crawler, b"watch": self.cmd_watch,
        }

    @property
    def state(self) -> str:
        return "conn_watch" if self.watching else super().state

    def _reading_value(self) -> bool:
        return self._on_data is not None

    def at_rest(self) -> bool:
        """Nothing in hand: no input or reply held, no value block pending,
        authenticated, not watching, not closing.  The server asks this after
        each ``receive`` or ``resume`` (the only calls that change those) and,
        while it holds, takes an input that is exactly one single-key ``get``
        (``LONE_GET``) itself: it answers the lone gets of a whole epoll pass
        with one ``fetch_text`` call, so a multi-get's set-up is paid once a
        pass instead of once a request, and such a get costs no call here.
        (Watchers, which want each get's own line, are checked by the server
        once a pass.)"""
        return not (self._on_data is not None or self._cont is not None or self._held is not None
                    or self._swallow or self.rbuf.data or self.watching or self.closed
                    or not self.authenticated)

    # -- input ------------------------------------------------------------------

    def _receive_more(self, data):
        """Input after some was held: add it to the receive buffer; return the
        whole of it once a command can go on, else None."""
        rbuf = self.rbuf
        rbuf.add(data)
        if self._on_data is not None:
            return rbuf.take() if len(rbuf) >= self._need else None
        if rbuf.line_end() < 0:
            n = len(rbuf)
            if n > LINE_MAX and not self._long_get:
                self._check_long_line(bytes(rbuf.data[:300]), n)
            elif n > GET_LINE_MAX:
                self._hang_up()
            return None
        self._long_get = False
        return rbuf.take()

    def _parse(self, buf: bytes, pos: int) -> None:
        if self._on_data is not None:
            # a value block completes first
            need = self._need
            if len(buf) - pos < need:
                self.rbuf.keep(buf, pos)
                return
            cb, self._on_data = self._on_data, None
            cb(buf[pos:pos + need])
            pos += need
            if self.closed:
                return
        if self.watching:
            return                       # memcached ignores what a watcher sends
        if self.authenticated and buf.startswith(b"get ", pos):
            m = _GET_RUN(buf, pos)
            if m is not None and m.end() == len(buf):
                # the commonest read of all: nothing but single-key gets
                self._get_run(buf, pos, m.end())
                return
        self._parse_lines(buf, pos)

    def _get_run(self, buf: bytes, pos: int, end: int) -> int:
        """Answer the run of single-key gets in ``buf[pos:end]`` with one store
        call; return where parsing goes on, or -1 when the output bound
        stopped the run (the rest of the input is held)."""
        keys = buf[pos + 4:end - 2].split(b"\r\nget ")
        out = self.out
        before = len(out)
        store = self.store
        done = store.fetch_text(keys, out, False, True,
                                self.out_room() if out else self.out_limit, self.fd)
        self.fetched(before, store.text_bytes)
        self.commands += done
        if done < len(keys):
            # each line is "get " + key + CRLF
            self.hold(buf, pos + 6 * done + sum(map(len, keys[:done])))
            return -1
        return end

    def _parse_lines(self, buf: bytes, pos: int) -> None:
        n = len(buf)
        authenticated = self.authenticated
        while pos < n:
            if authenticated and buf.startswith(b"get ", pos):
                m = _GET_RUN(buf, pos)
                if m is not None:
                    pos = self._get_run(buf, pos, m.end())
                    if pos < 0:
                        return
                    if self.out_full():
                        self.hold(buf, pos)
                        return
                    continue
            elif authenticated and buf.startswith(b"set ", pos):
                # the other hot path: a simple set with its data block here
                m = _SIMPLE_SET(buf, pos)
                if m is not None:
                    end = self._fast_set(m, buf)
                    if end:
                        self.commands += 1
                        pos = end
                        continue
            eol = buf.find(b"\n", pos)
            if eol < 0:
                self.rbuf.keep(buf, pos)
                if n - pos > LINE_MAX:
                    self._check_long_line(buf[pos:pos + 300], n - pos)
                return
            end = eol - 1 if eol > pos and buf[eol - 1] == 13 else eol
            line = buf[pos:end]
            pos = eol + 1
            self.commands += 1
            if authenticated and line[:4] == b"get " and b"\0" not in line:
                # the hot path: a well-formed get needs no general tokenizing
                keys = line[4:].split(b" ")
                if b"" not in keys and max(map(len, keys)) <= KEY_MAX:
                    self._multi_get(keys, False)
                    if self._cont is not None or self.out_full():
                        self.hold(buf, pos)
                        return
                    continue
            if not self._run_line(line, authenticated):
                return
            if self._on_data is not None:
                pos = self._feed_block(buf, pos)
                if pos < 0:
                    return
                authenticated = self.authenticated
            elif self._swallow:
                pos = self._swallowed(buf, pos)
            elif self.watching:
                return
            if self._cont is not None or self.out_full():
                self.hold(buf, pos)
                return

    def _run_line(self, line: bytes, authenticated: bool) -> bool:
        """A command line the fast paths did not take, tokenized and handed to
        its command; False once the connection is to be closed."""
        tokens = tokenize(line)
        if not tokens or len(tokens[0]) < 2:
            self.out.append(ERROR)
            return True
        if not authenticated:
            self._auth_gate(tokens)
        else:
            handler = self._commands.get(tokens[0])
            if handler is not None:
                handler(tokens)
            elif tokens[0][0] == 0x6D and len(tokens[0]) == 2:   # m?: meta commands
                self.meta_command(tokens)
            elif tokens[-1].startswith(b"HTTP/") and tokens[0][0] not in b"gsacidtm":
                self.closed = True          # memcached hangs up on HTTP requests
                return False
            else:
                self.out.append(ERROR)
        return not self.closed

    def _feed_block(self, buf: bytes, pos: int) -> int:
        """Hand a storage command the data block at ``pos``: the position after
        it, or -1 with the rest kept until the block is complete."""
        need = self._need
        if len(buf) - pos < need:
            self.rbuf.keep(buf, pos)
            return -1
        cb, self._on_data = self._on_data, None
        cb(buf[pos:pos + need])
        return pos + need

    def _fast_set(self, m, buf: bytes) -> int:
        """Store the simple set ``m`` matched (_SIMPLE_SET) if its data block
        is in ``buf`` with its CRLF; return where parsing goes on, or 0 to
        leave the line to the general path (which has every error rule)."""
        key, flags, exptime, vlen = m.groups()
        pos = m.end()
        end = pos + int(vlen)
        if buf[end:end + 2] != b"\r\n":
            return 0
        store = self.store
        # (the common "0" needs no int())
        flags = 0 if flags == b"0" else int(flags)
        if store.too_large(len(key), end - pos, flags):
            return 0
        self.out.append(STORE_REPLIES[store.write(
            st.SET, key, flags, 0 if exptime == b"0" else int(exptime), buf[pos:end],
            cfd=self.fd)[0]])
        return end + 2

    def _check_long_line(self, head: bytes, length: int) -> None:
        """memcached closes on a 2 KB line without a newline unless it is a
        (long multi-)get; memd also bounds those, at GET_LINE_MAX, and allows
        none before authentication (so an unauthenticated peer is held to a
        few KiB)."""
        head = head[:200]
        stripped = head.lstrip(b" ")
        if (len(head) - len(stripped) > 100 or not self.authenticated
                or not (stripped.startswith(b"get ") or stripped.startswith(b"gets "))
                or length > GET_LINE_MAX):
            self._hang_up()
        else:
            self._long_get = True     # checked once; from now on only the bound

    def _hang_up(self) -> None:
        self.closed = True
        self.rbuf.clear()

    def expect_data(self, length: int, callback) -> None:
        """Have ``callback(block)`` called with the next ``length`` bytes."""
        self._need = length
        self._on_data = callback

    # -- retrieval ----------------------------------------------------------------

    def cmd_get(self, tokens) -> None:
        self._get(tokens[1:], False)

    def cmd_gets(self, tokens) -> None:
        self._get(tokens[1:], True)

    def _get(self, keys, with_cas: bool) -> None:
        if not keys:
            self.out.append(ERROR)
            return
        if max(map(len, keys)) > KEY_MAX:
            # memcached looks up (and counts) the keys before the bad one,
            # then releases every reply still queued on the connection, so
            # earlier replies of the same read vanish too
            good = 0
            while len(keys[good]) <= KEY_MAX:
                good += 1
            self.store.fetch_text(keys[:good], _Discard, with_cas, cfd=self.fd)
            self.out.clear()
            self.out.append(BAD_FORMAT)
            return
        self._multi_get(keys, with_cas)

    def _multi_get(self, keys, with_cas: bool) -> None:
        """VALUE blocks and END; past the output bound the rest of the keys
        become a continuation, looked up as the reader takes the replies."""
        out, store = self.out, self.store
        before = len(out)
        done = store.fetch_text(keys, out, with_cas, False, self.out_room(), self.fd)
        if done == len(keys):
            out.append(END)
            self.fetched(before, store.text_bytes + 5)
        else:
            self._cont = self._more_gets(iter(keys[done:]), with_cas)

    def _more_gets(self, it, with_cas: bool):
        fetch_text = self.store.fetch_text
        while True:
            yield True
            if not fetch_text(it, self.out, with_cas, False, self.out_limit, self.fd):
                break
        self.out.append(END)

    def cmd_gat(self, tokens) -> None:
        self._gat(tokens, False)

    def cmd_gats(self, tokens) -> None:
        self._gat(tokens, True)

    def _gat(self, tokens, with_cas: bool) -> None:
        if len(tokens) < 2:
            self.out.append(ERROR)
            return
        exptime = strtol32(tokens[1])
        if exptime is None:
            self.out.append(b"CLIENT_ERROR invalid exptime argument\r\n")
            return
        keys = tokens[2:]
        if keys and max(map(len, keys)) > KEY_MAX:
            # memcached works through the keys in order: the ones before
            # the bad key are touched, but only the error is answered
            for key in keys:
                if len(key) > KEY_MAX:
                    break
                self.store.get(key, exptime, self.fd)
            self.out.append(BAD_FORMAT)
            return
        steps = self._gat_steps(keys, exptime, with_cas)
        if next(steps, None) is not None:
            self._cont = steps

    def _gat_steps(self, keys, exptime: int, with_cas: bool):
        store = self.store
        for key in keys:
            item = store.get(key, exptime, self.fd)
            if item < 0:
                continue
            out = self.out
            if with_cas:
                out.append(b"VALUE %s %d %d %d\r\n" % (key, store.flags[item], store.vlen[item],
                                                       store.cas[item]))
                out.append(store.value_of(item))
                out.append(b"\r\n")
            else:
                out.append(store.text_value(item))
            if self.out_full():
                yield True
        self.out.append(END)

    # -- storage -------------------------------------------------------------------

    def cmd_store(self, tokens) -> None:
        mode = STORE_MODES[tokens[0]]
        n = len(tokens)
        if mode == st.CAS:
            if n not in (6, 7):
                self.out.append(ERROR)
                return
        elif n not in (5, 6):
            self.out.append(ERROR)
            return
        noreply = tokens[-1] == b"noreply"
        key = tokens[1]
        if len(key) > KEY_MAX:
            self._say(noreply, BAD_FORMAT)
            return
        flags = strtoul32(tokens[2])
        exptime = strtol32(tokens[3])
        vlen = strtol32(tokens[4])
        if flags is None or exptime is None or vlen is None:
            self._say(noreply, BAD_FORMAT)
            return
        cas = 0
        if mode == st.CAS:
            cas = strtoull(tokens[5])
            if cas is None:
                self._say(noreply, BAD_FORMAT)
                return
        if vlen < 0 or vlen > 0x7FFFFFFD:
            self._say(noreply, BAD_FORMAT)
            return
        store = self.store
        if store.too_large(len(key), vlen, flags):
            # refuse before reading: swallow the data without buffering it
            store.refuse_too_large(key, mode == st.SET)
            self._say(noreply, TOO_LARGE)
            self.swallow(vlen + 2)
            return

        def on_data(block: bytes) -> None:
            if block[-2:] != b"\r\n":
                self._say(noreply, BAD_CHUNK)
                return
            self._stored(store.store(mode, key, flags, exptime, block[:-2], cas,
                                     cfd=self.fd), noreply)

        self.expect_data(vlen + 2, on_data)

    def _stored(self, result: int, noreply: bool) -> None:
        if not noreply:
            self.out.append(STORE_REPLIES[result])

    def _say(self, noreply: bool, msg: bytes) -> None:
        # memcached's noreply silences errors too
        if not noreply:
            self.out.append(msg)

    # -- other item commands ----------------------------------------------------------

    def cmd_delete(self, tokens) -> None:
        n = len(tokens)
        if not 2 <= n <= 4:
            self.out.append(ERROR)
            return
        # memcached only looks for noreply when there is more than a key
        noreply = n > 2 and tokens[-1] == b"noreply"
        if n > 2:
            hold_is_zero = tokens[2] == b"0"
            valid = (n == 3 and (hold_is_zero or noreply)) or (n == 4 and hold_is_zero and noreply)
            if not valid:
                self._say(noreply, b"CLIENT_ERROR bad command line format.  "
                                     b"Usage: delete <key> [noreply]\r\n")
                return
        key = tokens[1]
        if len(key) > KEY_MAX:
            self._say(noreply, BAD_FORMAT)
            return
        result = self.store.delete(key)
        self._say(noreply, b"DELETED\r\n" if result == st.DELETED else b"NOT_FOUND\r\n")

    def _key_and_noreply(self, tokens):
        """The shared preamble of `<cmd> <key> <arg> [noreply]` commands:
        (key, noreply), or None once the error reply is out."""
        if len(tokens) not in (3, 4):
            self.out.append(ERROR)
            return None
        noreply = tokens[-1] == b"noreply"
        if len(tokens[1]) > KEY_MAX:
            self._say(noreply, BAD_FORMAT)
            return None
        return tokens[1], noreply

    def cmd_arith(self, tokens) -> None:
        parsed = self._key_and_noreply(tokens)
        if parsed is None:
            return
        key, noreply = parsed
        delta = strtoull(tokens[2])
        if delta is None:
            self._say(noreply, b"CLIENT_ERROR invalid numeric delta argument\r\n")
            return
        result, value = self.store.incr_decr(key, delta, tokens[0] == b"incr",
                                             cfd=self.fd)
        if result == st.STORED:
            msg = b"%d\r\n" % value
        elif result == st.NOT_FOUND:
            msg = b"NOT_FOUND\r\n"
        elif result == st.NON_NUMERIC:
            msg = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
        else:
            msg = b"SERVER_ERROR out of memory\r\n"
        self._say(noreply, msg)

    def cmd_touch(self, tokens) -> None:
        parsed = self._key_and_noreply(tokens)
        if parsed is None:
            return
        key, noreply = parsed
        exptime = strtol32(tokens[2])
        if exptime is None:
            self._say(noreply, b"CLIENT_ERROR invalid exptime argument\r\n")
            return
        item = self.store.touch(key, exptime)
        self._say(noreply, b"TOUCHED\r\n" if item >= 0 else b"NOT_FOUND\r\n")

    def cmd_flush_all(self, tokens) -> None:
        n = len(tokens)
        if n > 3:
            self.out.append(ERROR)
            return
        noreply = tokens[-1] == b"noreply"
        if not self.node.settings.flush_enabled:
            self._say(noreply, b"CLIENT_ERROR flush_all not allowed\r\n")
            return
        delay = 0
        if n != (2 if noreply else 1):
            delay = strtol32(tokens[1])
            if delay is None:
                self._say(noreply, b"CLIENT_ERROR invalid exptime argument\r\n")
                return
        self.store.flush_all(delay)
        self._say(noreply, b"OK\r\n")

    # -- node commands --------------------------------------------------------------

    def cmd_version(self, tokens) -> None:
        self.out.append(b"VERSION %s\r\n" % self.node.version.encode())

    def cmd_quit(self, tokens) -> None:
        self.closed = True

    def cmd_verbosity(self, tokens) -> None:
        n = len(tokens)
        if n not in (2, 3):
            self.out.append(ERROR)
            return
        noreply = tokens[-1] == b"noreply"
        level = strtoul32(tokens[1])
        if level is None:
            self._say(noreply, BAD_FORMAT)
            return
        self.node.settings.verbosity = min(level, 2)
        self._say(noreply, b"OK\r\n")

    def cmd_memlimit(self, tokens) -> None:
        n = len(tokens)
        if n not in (2, 3):
            self.out.append(ERROR)
            return
        noreply = tokens[-1] == b"noreply"
        limit = strtoul32(tokens[1])
        if limit is None:
            self._say(noreply, ERROR)
        elif limit < 8:
            self._say(noreply, b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n")
        elif limit > 1000000000:
            self._say(noreply, b"MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes\r\n")
        else:
            self.store.slabs.mem_limit = limit << 20
            self.node.settings.memory_limit_mb = limit
            self._say(noreply, b"OK\r\n")

    def cmd_shutdown(self, tokens) -> None:
        if not self.node.settings.enable_shutdown:
            self.out.append(b"ERROR: shutdown not enabled\r\n")
        elif len(tokens) == 1 or (len(tokens) == 2 and tokens[1] == b"graceful"):
            self.node.request_shutdown()
            self.closed = True
        else:
            self.out.append(b"CLIENT_ERROR invalid shutdown mode\r\n")

    def cmd_config(self, tokens) -> None:
        cluster = self.node.cluster
        if cluster is None or len(tokens) != 3 or tokens[1] != b"get":
            self.out.append(ERROR)
            return
        self.out.append(cluster.reply(tokens[2]))

    def cmd_stats(self, tokens) -> None:
        node = self.node
        if len(tokens) == 1:
            self.out.append(stats_mod.render(stats_mod.general(node)))
            return
        sub = tokens[1]
        if sub == b"reset":
            node.reset_stats()
            self.out.append(b"RESET\r\n")
        elif sub == b"detail":
            reply = node.stats_detail(tokens[2] if len(tokens) > 2 else b"")
            self.out.append(reply if reply is not None
                            else b"CLIENT_ERROR usage: stats detail on|off|dump\r\n")
        elif sub == b"settings":
            self.out.append(stats_mod.render(stats_mod.settings(node)))
        elif sub == b"items":
            self.out.append(stats_mod.render(stats_mod.items(node)))
        elif sub == b"slabs":
            self.out.append(stats_mod.render(stats_mod.slabs(node)))
        elif sub == b"sizes":
            self.out.append(b"STAT sizes_status disabled\r\nEND\r\n")
        elif sub == b"conns":
            self.out.append(stats_mod.render(stats_mod.conns(node, self.fd)))
        elif sub == b"cachedump":
            self._cachedump(tokens)
        elif sub == b"hotkeys":
            self.out.append(hotkeys.reply(self.store.hotkeys, tokens[2:]))
        elif sub in node.stats_groups:
            self.out.append(stats_mod.render(node.stats_groups[sub](node)))
        else:
            self.out.append(ERROR)

    def _cachedump(self, tokens) -> None:
        """`stats cachedump <class> <limit>`: ITEM lines, most recent first."""
        if len(tokens) < 4:
            self.out.append(b"CLIENT_ERROR bad command line\r\n")
            return
        cls_id = strtoul32(tokens[2])
        limit = strtoul32(tokens[3])
        if cls_id is None or limit is None:
            self.out.append(b"CLIENT_ERROR bad command line format\r\n")
            return
        if cls_id >= len(self.store.slabs.classes):
            self.out.append(b"CLIENT_ERROR Illegal slab id\r\n")
            return
        self._cont = cachedump(self.store, cls_id, limit)

    # -- operations: slabs, lru_crawler, watch -------------------------------------------

    REASSIGN_REPLIES = {
        "OK": b"OK\r\n",
        "BUSY": b"BUSY currently processing reassign request\r\n",
        "BADCLASS": b"BADCLASS invalid src or dst class id\r\n",
        "NOSPARE": b"NOSPARE source class has no spare pages\r\n",
        "SAME": b"SAME src and dst class are identical\r\n",
    }

    def cmd_slabs(self, tokens) -> None:
        n = len(tokens)
        if n == 4 and tokens[1] == b"reassign":
            src, dst = strtol32(tokens[2]), strtol32(tokens[3])
            if src is None or dst is None:
                self.out.append(BAD_FORMAT)
                return
            self.out.append(self.REASSIGN_REPLIES[self.node.rebalancer.reassign(src, dst)])
        elif n >= 3 and tokens[1] == b"automove":
            level = strtoull(tokens[2]) or 0     # memcached: strtoul, so junk is 0
            if level > 2:
                self.out.append(ERROR)
                return
            self.node.rebalancer.automove = level
            self.out.append(b"OK\r\n")
        else:
            self.out.append(ERROR)

    def cmd_lru_crawler(self, tokens) -> None:
        node = self.node
        n = len(tokens)
        sub = tokens[1] if n > 1 else b""
        if sub in (b"crawl", b"metadump") and n == 3:
            classes = self._class_filter(tokens[2])
            if classes is None:
                self.out.append(b"BADCLASS invalid class id\r\n")
            elif sub == b"metadump":
                self._cont = metadump(self.store, classes)
            elif not node.crawler_enabled:
                self.out.append(b"ERROR lru crawler disabled\r\n")
            else:
                self.store.crawl_requested = True
                self.out.append(b"OK\r\n")
        elif sub == b"enable" and n == 2:
            if node.crawler_enabled:
                self.out.append(b"ERROR failed to start lru crawler thread\r\n")
            else:
                node.crawler_enabled = True
                self.out.append(b"OK\r\n")
        elif sub == b"disable" and n == 2:
            node.crawler_enabled = False      # memcached: OK even when already off
            self.out.append(b"OK\r\n")
        elif sub in (b"sleep", b"tocrawl") and n == 3:
            self.out.append(b"OK\r\n" if strtoul32(tokens[2]) is not None else ERROR)
        else:
            self.out.append(ERROR)

    def _class_filter(self, arg: bytes):
        """``all``/``hash`` → every class; ``1,2,3`` → those; None if invalid.

        Valid ids are memcached's (1..62), whether or not this node has that
        many classes, so the same command is valid on both."""
        if arg in (b"all", b"hash"):
            return range(1, len(self.store.slabs.classes))
        ids = []
        for part in arg.split(b","):
            cid = strtoul32(part)
            if cid is None or not 1 <= cid < MAX_CLASS_ID:
                return None
            ids.append(cid)
        return ids

    def cmd_watch(self, tokens) -> None:
        kinds = set()
        for word in tokens[1:]:
            name = word.decode("latin-1")
            if name not in WATCH_KINDS:
                self.out.append(ERROR)
                return
            kinds.add(name)
        self.node.watch.add(self.fd, kinds or {"fetchers"})
        self.watching = True
        self.out.append(b"OK\r\n")

    # -- meta and auth hooks --------------------------------------------------------------

    def meta_command(self, tokens) -> None:
        if tokens[0] == b"mn":
            self.out.append(b"MN\r\n")
        elif self.meta is not None:
            self.meta.dispatch(self, tokens)
        else:
            self.out.append(ERROR)

    def _auth_gate(self, tokens) -> None:
        """Before authenticating, memcached's text protocol only takes a set
        whose data is ``<user> <password>``; everything else is refused
        without closing, as memcached does."""
        vlen = strtol32(tokens[4]) if tokens[0] == b"set" and len(tokens) in (5, 6) else None
        if vlen is None or vlen < 0:
            self.out.append(b"CLIENT_ERROR unauthenticated\r\n")
            return
        if vlen > AUTH_DATA_MAX:
            # not a credential: do not buffer what an unauthenticated peer declares
            self.out.append(b"CLIENT_ERROR unauthenticated\r\n")
            self.closed = True
            return

        def on_data(block: bytes) -> None:
            self.node.counters["auth_cmds"] += 1
            if block[-2:] != b"\r\n":
                self.out.append(b"CLIENT_ERROR bad command line termination\r\n")
                return
            parts = [p for p in block[:-2].split(b" ") if p]
            if len(parts) < 2:
                self.node.counters["auth_errors"] += 1
                self.out.append(b"CLIENT_ERROR bad authentication token format\r\n")
            elif self.node.auth.check(parts[0], parts[1]):
                self.now_authenticated()
                self.out.append(b"STORED\r\n")
            else:
                self.node.counters["auth_errors"] += 1
                self.out.append(b"CLIENT_ERROR authentication failure\r\n")

        self.expect_data(vlen + 2, on_data)
