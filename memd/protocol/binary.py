"""memcached's binary protocol, sans-IO.

``BinaryProtocol.receive(data)`` consumes whatever bytes arrived and returns
the response frames of every request they completed; ``closed`` tells the
server to hang up once those are sent.  The input side (receive buffer,
output bound, swallowing) is memd.protocol.wire's, shared with the text
protocol; docs/design.md has the whole picture.

Frames are 24-byte headers (magic, opcode, key length, extras length, data
type, vbucket/status, total body, opaque, CAS) then extras, key, value.
The behaviour follows memcached 1.6.18's proto_bin.c, including its quirks,
because clients meet the implementation rather than the wiki page:

- A request is dispatched once its header, extras and key are in; only
  then is the value (if the command has one) read.  Bytes a command does
  not read (a Stat or Touch whose body is longer than its key) are parsed
  as the next request; an unknown opcode swallows ``bodylen`` bytes after
  its key, which can eat into the next request.
- Bad magic closes the connection with no reply, and the replies memcached
  had not flushed yet are lost with it (see ``_mark``).
- Key and extras longer than the body: "Unknown command", then close.  A
  wrong extras/key/body shape for the opcode, or a key over 250 bytes:
  "Invalid arguments", then close.
- A value over the item size limit is refused before it is read and then
  swallowed (never buffered), as memcached does.
- Quiet variants are silent on success (and GetQ/GATQ on a miss); errors
  are always sent.
- With authentication on, only SASL and Version are taken before a SASL
  PLAIN success; anything else gets "Auth failure." and a close.  So does,
  on purpose unlike memcached, a body over 4 KiB before authentication
  (memcached reads a SASL body up to its item size limit).
"""

from __future__ import annotations

import struct

from .. import stats as stats_mod
from ..cache import store as st
from .wire import KEY_MAX, PREAUTH_INPUT, Connection

REQ_MAGIC = 0x80
RES_MAGIC = 0x81
HEADER = struct.Struct(">BBHBBHIIQ")
HEADER_LEN = 24
MAX_SASL_MECH_LEN = 32
NO_CREATE = 0xFFFFFFFF        # incr/decr expiry meaning "do not create on a miss"

# opcodes
GET, SET, ADD, REPLACE, DELETE, INCR, DECR, QUIT, FLUSH, GETQ, NOOP, VERSION = range(12)
GETK, GETKQ, APPEND, PREPEND, STAT = 0x0C, 0x0D, 0x0E, 0x0F, 0x10
SETQ, ADDQ, REPLACEQ, DELETEQ, INCRQ, DECRQ, QUITQ, FLUSHQ = range(0x11, 0x19)
APPENDQ, PREPENDQ, VERBOSITY, TOUCH, GAT, GATQ = range(0x19, 0x1F)
SASL_LIST, SASL_AUTH, SASL_STEP, GATK, GATKQ = 0x20, 0x21, 0x22, 0x23, 0x24

# the quiet opcode → the command it is a silent form of
QUIET = {SETQ: SET, ADDQ: ADD, REPLACEQ: REPLACE, DELETEQ: DELETE, INCRQ: INCR,
         DECRQ: DECR, QUITQ: QUIT, FLUSHQ: FLUSH, APPENDQ: APPEND, PREPENDQ: PREPEND,
         GETQ: GET, GETKQ: GETK, GATQ: GAT, GATKQ: GATK}

# statuses
OK = 0x00
KEY_ENOENT = 0x01
KEY_EEXISTS = 0x02
E2BIG = 0x03
EINVAL = 0x04
NOT_STORED = 0x05
DELTA_BADVAL = 0x06
AUTH_ERROR = 0x20
AUTH_CONTINUE = 0x21
UNKNOWN_COMMAND = 0x81
ENOMEM = 0x82

# memcached's body text for each error status (write_bin_error)
ERROR_TEXT = {
    KEY_ENOENT: b"Not found", KEY_EEXISTS: b"Data exists for key.", E2BIG: b"Too large.",
    EINVAL: b"Invalid arguments", NOT_STORED: b"Not stored.",
    DELTA_BADVAL: b"Non-numeric server-side value for incr or decr",
    AUTH_ERROR: b"Auth failure.", UNKNOWN_COMMAND: b"Unknown command", ENOMEM: b"Out of memory",
}

STORE_MODES = {SET: st.SET, ADD: st.ADD, REPLACE: st.REPLACE, APPEND: st.APPEND, PREPEND: st.PREPEND}

_FLAGS = struct.Struct(">I")
_SET_EXTRAS = struct.Struct(">II")
_INCR_EXTRAS = struct.Struct(">QQI")
_U64 = struct.Struct(">Q")

# memcached (reqs_per_event = 20) flushes its queued replies after the 21st
# request of a read and every 20 after; see _count_request.
FIRST_YIELD = 21
YIELD_EVERY = 20


class BinaryProtocol(Connection):
    """One binary connection's reader (a header, then the rest of its frame)
    and command dispatcher."""

    def __init__(self, node) -> None:
        super().__init__(node)
        self._mark = 0                 # replies before this index are "flushed"
        self._requests = 0             # requests parsed in the current read
        self._need = 0                 # bytes the frame being read needs
        self._sasl_state = 0           # 0 none, 1 PLAIN started (awaiting step), 2 done
        # the request being handled
        self.opcode = 0
        self.opaque = 0

    def _reading_value(self) -> bool:
        return self._need > HEADER_LEN

    # -- input -------------------------------------------------------------------

    def receive(self, data) -> list:
        self._mark = 0
        self._requests = 0
        return super().receive(data)

    def resume(self) -> list:
        self._mark = 0                 # (the replies before were sent)
        self._requests = 0
        return super().resume()

    def _receive_more(self, data):
        rbuf = self.rbuf
        rbuf.add(data)
        return rbuf.take() if len(rbuf) >= self._need else None

    def _wait(self, buf: bytes, pos: int, need: int) -> None:
        self.rbuf.keep(buf, pos)
        self._need = need

    def _parse(self, buf: bytes, pos: int) -> None:
        n = len(buf)
        while pos < n and not self.closed:
            if n - pos < HEADER_LEN:
                self._wait(buf, pos, HEADER_LEN)
                return
            magic, opcode, keylen, extlen, _dtype, _vb, bodylen, opaque, cas = \
                HEADER.unpack_from(buf, pos)
            if magic != REQ_MAGIC:
                # memcached closes at once: replies it had not flushed are lost
                del self.out[self._mark:]
                self.closed = True
                return
            if not self.authenticated and bodylen > PREAUTH_INPUT:
                # no credential is this long: an unauthenticated peer does not
                # get to make the node hold a body up to the item size limit
                self.opcode, self.opaque = opcode, opaque
                self._error(AUTH_ERROR)
                self.closed = True
                return
            head = HEADER_LEN + extlen + keylen
            if n - pos < head:
                self._wait(buf, pos, head)
                return
            self.opcode = opcode
            self.opaque = opaque
            self._count_request()
            # checks memcached makes before looking at the opcode
            if keylen + extlen > bodylen:
                self._error(UNKNOWN_COMMAND)
                self.closed = True
                return
            if not self.authenticated and opcode not in (SASL_LIST, SASL_AUTH, SASL_STEP, VERSION):
                self._error(AUTH_ERROR)
                self.closed = True
                return
            if keylen > KEY_MAX:
                self._error(EINVAL)
                self.closed = True
                return
            extras = buf[pos + HEADER_LEN:pos + HEADER_LEN + extlen]
            key = buf[pos + HEADER_LEN + extlen:pos + head]
            vlen = bodylen - extlen - keylen
            cmd = QUIET.get(opcode, opcode)
            quiet = cmd != opcode
            handler = _VALUE_COMMANDS.get(cmd)
            if handler is not None:
                if not handler[0](extlen, keylen, bodylen):
                    self._protocol_error()
                    return
                if self._refuse_value(cmd, key, vlen):
                    pos += head
                else:
                    end = pos + HEADER_LEN + bodylen
                    if end > n:
                        self._wait(buf, pos, HEADER_LEN + bodylen)
                        return
                    handler[1](self, cmd, quiet, extras, key, buf[pos + head:end], cas)
                    pos = end
            else:
                pos += head
                handler = _COMMANDS.get(cmd)
                if handler is None:
                    # memcached swallows the whole body length after the key
                    self._error(UNKNOWN_COMMAND, swallow=bodylen)
                elif not handler[0](extlen, keylen, bodylen):
                    self._protocol_error()
                    return
                else:
                    handler[1](self, cmd, quiet, extras, key, cas, bodylen - keylen)
            if self._swallow:
                pos = self._swallowed(buf, pos)
            if self.out_full():
                self.hold(buf, pos)
                return

    def _count_request(self) -> None:
        self.commands += 1
        c = self._requests = self._requests + 1
        if c > FIRST_YIELD and (c - FIRST_YIELD - 1) % YIELD_EVERY == 0:
            # memcached yielded before this request, flushing what it had
            self._mark = len(self.out)

    def _refuse_value(self, cmd: int, key: bytes, vlen: int) -> bool:
        """Refuse a value before reading it, as memcached's item_alloc does."""
        store = self.store
        if cmd in (SASL_AUTH, SASL_STEP):
            if not self.node.auth:
                self._error(UNKNOWN_COMMAND, swallow=vlen)
                return True
            if len(key) > MAX_SASL_MECH_LEN:
                self._error(EINVAL, swallow=vlen)
                return True
            if store.too_large(len(key), vlen):
                self._error(ENOMEM, swallow=vlen)
                return True
            return False
        if store.too_large(len(key), vlen):
            store.refuse_too_large(key, cmd == SET, counted=False)
            self._error(E2BIG, swallow=vlen)
            return True
        return False

    # -- output -------------------------------------------------------------------

    def _respond(self, status: int = OK, cas: int = 0, extras: bytes = b"", key: bytes = b"",
                 value=b"") -> None:
        self.out.append(HEADER.pack(RES_MAGIC, self.opcode, len(key), len(extras), 0, status,
                                    len(extras) + len(key) + len(value), self.opaque, cas))
        if extras:
            self.out.append(extras)
        if key:
            self.out.append(key)
        if value:
            self.out.append(bytes(value))

    def _error(self, status: int, text: bytes | None = None, swallow: int = 0) -> None:
        """An error reply; then discard ``swallow`` bytes of input."""
        self._respond(status, value=ERROR_TEXT[status] if text is None else text)
        if swallow > 0:
            self._swallow = swallow
        else:
            # memcached writes an error out at once (conn_mwrite) unless it
            # has input to swallow first
            self._mark = len(self.out)

    def _protocol_error(self) -> None:
        self._error(EINVAL)
        self.closed = True

    # -- commands with a value ------------------------------------------------------

    def do_update(self, cmd, quiet, extras, key, value, cas) -> None:
        store = self.store
        if cmd in (APPEND, PREPEND):
            flags = exptime = 0
        else:
            flags, exptime = _SET_EXTRAS.unpack(extras)
        mode = STORE_MODES[cmd]
        if cas and mode in (st.SET, st.ADD, st.REPLACE):
            mode = st.CAS
        result, new_cas = store.write(mode, key, flags, exptime, value, cas, cfd=self.fd)
        if result == st.STORED:
            if not quiet:
                self._respond(cas=new_cas)
        elif result == st.EXISTS:
            self._error(KEY_EEXISTS)
        elif result == st.NOT_FOUND:
            self._error(KEY_ENOENT)
        elif result == st.NO_MEMORY:
            self._error(ENOMEM, b"Out of memory allocating item")
        elif cmd == ADD:
            self._error(KEY_EEXISTS)
        elif cmd == REPLACE:
            self._error(KEY_ENOENT)
        else:
            self._error(NOT_STORED)

    def do_sasl(self, cmd, quiet, extras, key, value, cas) -> None:
        counters = self.node.counters
        if cmd == SASL_AUTH:
            if key.upper() != b"PLAIN":
                result = AUTH_ERROR
                self._sasl_state = 0
            elif not value:
                result = AUTH_CONTINUE      # PLAIN with no initial response: ask for it
                self._sasl_state = 1
            else:
                result = OK if self._plain(value) else AUTH_ERROR
                self._sasl_state = 2
        else:   # SASL_STEP
            if self._sasl_state == 1:
                result = OK if self._plain(value) else AUTH_ERROR
                self._sasl_state = 2
            else:
                result = AUTH_ERROR          # no exchange in progress
        if result == OK:
            self.now_authenticated()
            counters["auth_cmds"] += 1
            self._respond(value=b"Authenticated")
        elif result == AUTH_CONTINUE:
            self._respond(AUTH_CONTINUE)
            self._mark = len(self.out)
        else:
            counters["auth_cmds"] += 1
            counters["auth_errors"] += 1
            self._error(AUTH_ERROR)

    def _plain(self, message: bytes) -> bool:
        """RFC 4616: [authzid] NUL authcid NUL passwd; no proxying."""
        parts = message.split(b"\0")
        if len(parts) != 3:
            return False
        authzid, user, password = parts
        if not user or (authzid and authzid != user):
            return False
        return self.node.auth.check(user, password)

    # -- commands without a value ---------------------------------------------------

    def do_get(self, cmd, quiet, extras, key, cas, _rest) -> None:
        store = self.store
        touch = cmd in (TOUCH, GAT, GATK)
        if touch:
            item = store.touch(key, _FLAGS.unpack(extras)[0])
        else:
            item = store.get(key, cfd=self.fd)
        with_key = cmd in (GETK, GATK)
        if item < 0:
            if quiet:
                return
            if with_key:
                self._respond(KEY_ENOENT, key=key)
            else:
                self._error(KEY_ENOENT)
            return
        flags = _FLAGS.pack(store.flags[item])
        self._respond(cas=store.cas[item], extras=flags, key=key if with_key else b"",
                      value=b"" if cmd == TOUCH else store.value_of(item))

    def do_delete(self, cmd, quiet, extras, key, cas, _rest) -> None:
        result = self.store.delete(key, cas)
        if result == st.DELETED:
            if not quiet:
                self._respond()
        elif result == st.EXISTS:
            self._error(KEY_EEXISTS)
        else:
            self._error(KEY_ENOENT)

    def do_arith(self, cmd, quiet, extras, key, cas, _rest) -> None:
        delta, initial, exptime = _INCR_EXTRAS.unpack(extras)
        result, value, new_cas, _ = self.store.arith(
            key, delta, cmd == INCR, cas, None if exptime == NO_CREATE else (initial, exptime),
            cfd=self.fd)
        if result == st.STORED:
            if not quiet:
                self._respond(cas=new_cas, value=_U64.pack(value))
        elif result == st.NOT_FOUND:
            self._error(KEY_ENOENT)
        elif result == st.NON_NUMERIC:
            self._error(DELTA_BADVAL)
        elif result == st.EXISTS:
            self._error(KEY_EEXISTS)
        elif result == st.NOT_STORED:
            self._error(ENOMEM, b"Out of memory allocating new item")
        else:
            self._error(ENOMEM, b"Out of memory incrementing value")

    def do_flush(self, cmd, quiet, extras, key, cas, _rest) -> None:
        if not self.node.settings.flush_enabled:
            self._error(AUTH_ERROR)
            return
        delay = _FLAGS.unpack(extras)[0] if extras else 0
        self.store.flush_all(delay)
        if not quiet:
            self._respond()

    def do_noop(self, cmd, quiet, extras, key, cas, _rest) -> None:
        self._respond()
        self._mark = len(self.out)           # a NoOp flushes memcached's pipeline

    def do_version(self, cmd, quiet, extras, key, cas, _rest) -> None:
        self._respond(value=self.node.version.encode())

    def do_quit(self, cmd, quiet, extras, key, cas, _rest) -> None:
        if not quiet:
            self._respond()
        self._mark = len(self.out)
        self.closed = True

    def do_sasl_list(self, cmd, quiet, extras, key, cas, _rest) -> None:
        if not self.node.auth:
            self._error(UNKNOWN_COMMAND, swallow=_rest)        # bodylen - keylen: 0, the frame was checked
            return
        self._respond(value=b"PLAIN")

    def do_stat(self, cmd, quiet, extras, key, cas, _rest) -> None:
        node = self.node
        if not key:
            self._stats(stats_mod.general(node))
        elif key.startswith(b"reset"):
            node.reset_stats()
            self._stats([])
        elif key.startswith(b"settings"):
            self._stats(stats_mod.settings(node))
        elif key.startswith(b"detail"):
            sub = key[6:]
            if sub.startswith(b" dump"):
                self._stats([("detailed", node.stats_detail(b"dump").decode("latin-1"))])
            elif sub.startswith(b" on") or sub.startswith(b" off"):
                node.stats_detail(sub[1:3] if sub.startswith(b" on") else b"off")
                self._stats([])
            else:
                self._error(KEY_ENOENT)
        elif key == b"items":
            self._stats(stats_mod.items(node))
        elif key == b"slabs":
            self._stats(stats_mod.slabs(node))
        elif key == b"sizes" or key == b"sizes_disable":
            self._stats([("sizes_status", "disabled")])
        else:
            self._error(KEY_ENOENT)

    def _stats(self, pairs) -> None:
        """One response per stat, then the empty-key terminator."""
        pack = HEADER.pack
        out = self.out
        op, opaque = self.opcode, self.opaque
        for name, value in pairs:
            k = name.encode() if isinstance(name, str) else name
            v = str(value).encode()
            out.append(pack(RES_MAGIC, op, len(k), 0, 0, OK, len(k) + len(v), opaque, 0) + k + v)
        out.append(pack(RES_MAGIC, op, 0, 0, 0, OK, 0, opaque, 0))


# Frame shape checks, from memcached's dispatch_bin_command: (extlen, keylen, bodylen) → ok
def _empty(e, k, b):
    return e == 0 and k == 0 and b == 0


_VALUE_COMMANDS = {
    SET: (lambda e, k, b: e == 8 and k != 0 and b >= k + 8, BinaryProtocol.do_update),
    ADD: (lambda e, k, b: e == 8 and k != 0 and b >= k + 8, BinaryProtocol.do_update),
    REPLACE: (lambda e, k, b: e == 8 and k != 0 and b >= k + 8, BinaryProtocol.do_update),
    APPEND: (lambda e, k, b: k > 0 and e == 0, BinaryProtocol.do_update),
    PREPEND: (lambda e, k, b: k > 0 and e == 0, BinaryProtocol.do_update),
    SASL_AUTH: (lambda e, k, b: e == 0 and k != 0, BinaryProtocol.do_sasl),
    SASL_STEP: (lambda e, k, b: e == 0 and k != 0, BinaryProtocol.do_sasl),
}

_GET_SHAPE = (lambda e, k, b: e == 0 and b == k and k > 0)
_TOUCH_SHAPE = (lambda e, k, b: e == 4 and k != 0)

_COMMANDS = {
    GET: (_GET_SHAPE, BinaryProtocol.do_get),
    GETK: (_GET_SHAPE, BinaryProtocol.do_get),
    TOUCH: (_TOUCH_SHAPE, BinaryProtocol.do_get),
    GAT: (_TOUCH_SHAPE, BinaryProtocol.do_get),
    GATK: (_TOUCH_SHAPE, BinaryProtocol.do_get),
    DELETE: (lambda e, k, b: k > 0 and e == 0 and b == k, BinaryProtocol.do_delete),
    INCR: (lambda e, k, b: k > 0 and e == 20 and b == k + e, BinaryProtocol.do_arith),
    DECR: (lambda e, k, b: k > 0 and e == 20 and b == k + e, BinaryProtocol.do_arith),
    FLUSH: (lambda e, k, b: k == 0 and b == e and e in (0, 4), BinaryProtocol.do_flush),
    NOOP: (_empty, BinaryProtocol.do_noop),
    VERSION: (_empty, BinaryProtocol.do_version),
    QUIT: (_empty, BinaryProtocol.do_quit),
    STAT: (lambda e, k, b: e == 0, BinaryProtocol.do_stat),
    SASL_LIST: (_empty, BinaryProtocol.do_sasl_list),
}
