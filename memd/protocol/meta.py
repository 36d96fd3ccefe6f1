"""memcached's meta commands (mg, ms, md, ma, me); mn is answered by the text parser.

They parse their flags, call the store (which owns the counting, see
docs/design.md) and render the reply.

Behaviour follows memcached 1.6.18 as it answers on the wire (checked by
sending it bytes), not protocol.txt where the two differ:

- mg's q hides only EN; ms/md/ma's q hides only HD (and ma's VA).
- errors are never hidden by q.
- md and ma report every flag error as "invalid or duplicate flag".
- ms takes no E flag in 1.6.18 ("invalid flag"), and only me counts in
  the cmd_meta stat.
- a bad ms line is refused before the data block when the line itself is
  unusable (key, token count, length); with a usable length, flag errors
  swallow the data block as memcached does.

Items carry memcached's stale-while-revalidate state in the store's
per-item flags: STALE (md I, ms I with an older CAS), WIN_SENT (a client
was told W), and KEY_BINARY (the key arrived base64-encoded).
"""

from __future__ import annotations

from ..cache import store as st
from ..numbers import strtol32
from .wire import KEY_MAX
from .meta_flags import (
    BAD_FORMAT, KEY_BINARY, MAX_TOKENS, OPAQUE_MAX, b64decode,
    b64encode, key_token, memcached_class, memcached_size, preparse,
)

ERROR = b"ERROR\r\n"
MG_TOO_MANY = b"CLIENT_ERROR options flags are too long\r\n"
TOO_MANY = b"CLIENT_ERROR options flags too long\r\n"
OPAQUE_LONG = b"CLIENT_ERROR opaque token too long\r\n"
INVALID_OR_DUP = b"CLIENT_ERROR invalid or duplicate flag\r\n"
MS_BAD_MODE = b"CLIENT_ERROR invalid mode for ms M token\r\n"
MA_BAD_MODE = b"CLIENT_ERROR invalid mode for ma M token\r\n"
BAD_CHUNK = b"CLIENT_ERROR bad data chunk\r\n"
TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
NO_MEMORY = b"SERVER_ERROR out of memory storing object\r\n"
NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
ARITH_NO_MEMORY = b"SERVER_ERROR out of memory\r\n"

FETCHED, STALE, WIN_SENT, LINKED = st.FETCHED, st.STALE, st.WIN_SENT, st.LINKED
U32 = 0xFFFFFFFF

_T, _N, _R, _s, _t, _c, _f, _l, _h, _O, _k = b"TNRstcflhOk"

MS_MODES = {0: st.SET, 0x53: st.SET, 0x45: st.ADD, 0x41: st.APPEND,
            0x50: st.PREPEND, 0x52: st.REPLACE}          # S E A P R
MS_RESULTS = {st.STORED: b"HD", st.NOT_STORED: b"NS", st.EXISTS: b"EX", st.NOT_FOUND: b"NF"}


def echo_flags(tokens, f):
    """What a reply without item data echoes: the O(paque) and k(ey) flags,
    in request order; None when an opaque token is too long."""
    parts = []
    for tok in tokens[2:]:
        c = tok[0]
        if c == _O:
            if len(tok) > OPAQUE_MAX:
                return None
            parts.append(b" " + tok)
        elif c == _k:
            parts.append(key_token(f))
    return parts


class MetaCommands:
    def __init__(self, node) -> None:
        self.node = node
        self.store = node.store
        self._commands = {0x67: self.mg, 0x73: self.ms, 0x64: self.md,
                          0x61: self.ma, 0x65: self.me}

    def dispatch(self, proto, tokens) -> None:
        handler = self._commands.get(tokens[0][1])
        if handler is None:
            proto.out.append(ERROR)
        else:
            handler(proto, tokens)

    # -- helpers ------------------------------------------------------------------

    def _item_key(self, item: int) -> bytes:
        store = self.store
        key = store.key_of(item)
        if store.iflags[item] & KEY_BINARY:
            return b" k" + b64encode(key) + b" b"
        return b" k" + bytes(key)

    @staticmethod
    def _ttl(store, item: int, now: int) -> bytes:
        exp = store.exptime[item]
        if not exp:
            return b" t-1"
        return b" t%d" % ((exp - now) & U32)

    # -- mg -------------------------------------------------------------------------

    def mg(self, proto, tokens) -> None:
        out = proto.out
        parsed = self._mg_parse(out, tokens)
        if parsed is None:
            return
        f, key, now = parsed
        store = self.store
        item, created = self._mg_find(proto, f, key, now)
        if item < 0:
            store.miss()
            self._mg_miss(out, tokens, f)
            return
        if f is None:
            parts = [b"HD"]
            won = ttl_set = False
        else:
            parts = [b"VA %d" % store.vlen[item] if f.value else b"HD"]
            answered = self._mg_item_flags(parts, tokens, f, item, now, created)
            if answered is None:
                out.append(OPAQUE_LONG)
                return
            won, ttl_set = answered
        self._mg_win_flags(parts, item, won)
        parts.append(b"\r\n")
        if f is not None and f.value:
            parts.append(store.value_line(item))
        out.append(b"".join(parts))
        store.hit(item, now, touched=ttl_set, bump=f is None or not f.no_update)

    def _mg_parse(self, out: list, tokens):
        """(flags or None for a bare ``mg <key>``, key, now), or None with the
        error reply appended."""
        n = len(tokens)
        if n < 2:
            out.append(ERROR)
            return None
        if len(tokens[1]) > KEY_MAX:
            out.append(BAD_FORMAT)
            return None
        if n >= MAX_TOKENS:
            out.append(MG_TOO_MANY)
            return None
        store = self.store
        now = store.clock()
        if n == 2:
            return None, tokens[1], now
        f, err = preparse(tokens, 2, store, now)
        if err is not None:
            out.append(err)
            return None
        return f, f.key, now

    def _mg_find(self, proto, f, key: bytes, now: int) -> tuple[int, bool]:
        """The live item (or -1), and whether N (vivify) just created it."""
        store = self.store
        item = store.find_for_get(key, now)
        if item < 0 and f is not None and f.vivify:
            if store.store(st.SET, key, 0, 0, b"", counted=False, detail=False,
                           cfd=proto.fd) == st.STORED:
                # (memcached links the stub without counting a set)
                item = store.find(key, now)
                return item, item >= 0
        return item, False

    @staticmethod
    def _mg_miss(out: list, tokens, f) -> None:
        if f is None:
            out.append(b"EN\r\n")
            return
        echoed = echo_flags(tokens, f)
        if echoed is None:
            out.append(OPAQUE_LONG)
            return
        if not f.no_reply:
            out.append(b"".join([b"EN"] + echoed + [b"\r\n"]))

    def _mg_item_flags(self, parts: list, tokens, f, item: int, now: int, created: bool):
        """Append the return flags in the client's order and apply T, N and R:
        (won, ttl_set), or None on an opaque too long (flags before it have
        taken effect, as in memcached)."""
        store = self.store
        iflags = store.iflags
        won = ttl_set = False
        for tok in tokens[2:]:
            c = tok[0]
            if c == _c:
                parts.append(b" c%d" % store.cas[item])
            elif c == _f:
                parts.append(b" f%d" % store.flags[item])
            elif c == _s:
                parts.append(b" s%d" % store.vlen[item])
            elif c == _t:
                parts.append(self._ttl(store, item, now))
            elif c == _O:
                if len(tok) > OPAQUE_MAX:
                    return None
                parts.append(b" " + tok)
            elif c == _k:
                parts.append(self._item_key(item))
            elif c == _T:
                ttl_set = True
                store.set_exptime(item, f.exptime)
            elif c == _N:
                if created:
                    store.set_exptime(item, f.autoviv)
                    won = True
            elif c == _R:
                e = store.exptime[item]
                if not iflags[item] & WIN_SENT and not created and e and e < f.recache:
                    won = True
            elif c == _l:
                parts.append(b" l%d" % ((now - store.atime[item]) & U32))
            elif c == _h:
                parts.append(b" h1" if iflags[item] & FETCHED else b" h0")
        return won, ttl_set

    def _mg_win_flags(self, parts: list, item: int, won: bool) -> None:
        """Z (a win already sent), X (stale, which wins unless one was sent)
        and W, which marks the win as sent."""
        iflags = self.store.iflags
        fl = iflags[item]
        if fl & WIN_SENT:
            parts.append(b" Z")
        if fl & STALE:
            parts.append(b" X")
            if not fl & WIN_SENT:
                won = True
        if won:
            parts.append(b" W")
            iflags[item] = fl | WIN_SENT

    # -- ms -------------------------------------------------------------------------

    def ms(self, proto, tokens) -> None:
        out = proto.out
        n = len(tokens)
        if n < 2:
            out.append(ERROR)
            return
        if len(tokens[1]) > KEY_MAX or n == 2:
            out.append(BAD_FORMAT)
            return
        if n >= MAX_TOKENS:
            out.append(TOO_MANY)
            return
        vlen = strtol32(tokens[2])
        if vlen is None or vlen < 0 or vlen > 0x7FFFFFFD:
            out.append(BAD_FORMAT)
            return
        store = self.store
        now = store.clock()
        f, err = preparse(tokens, 3, store, now)
        if err is not None:
            return self._ms_refuse(proto, err, vlen)
        opaque_error = False
        for tok in tokens[3:]:
            if tok[0] == _O and len(tok) > OPAQUE_MAX:
                opaque_error = True
        mode = MS_MODES.get(f.mode)
        if mode is None:
            return self._ms_refuse(proto, MS_BAD_MODE, vlen)
        if f.has_cas and mode in (st.SET, st.REPLACE):
            mode = st.CAS
        if opaque_error:
            return self._ms_refuse(proto, OPAQUE_LONG, vlen)
        key = f.key
        if store.too_large(len(key), vlen):
            # memcached drops the old value on a refused ms, whatever its mode
            store.refuse_too_large(key, True, detail=False)
            return self._ms_refuse(proto, TOO_LARGE, vlen)

        def on_data(block: bytes) -> None:
            if block[-2:] != b"\r\n":
                out.append(BAD_CHUNK)
                return
            self._ms_store(proto, tokens, f, mode, block[:-2])

        proto.expect_data(vlen + 2, on_data)

    @staticmethod
    def _ms_refuse(proto, err: bytes, vlen: int) -> None:
        proto.out.append(err)
        proto.swallow(vlen + 2)

    def _ms_store(self, proto, tokens, f, mode: int, value) -> None:
        store = self.store
        key = f.key
        stale_store = False
        if mode == st.CAS and f.set_stale:
            # I with an older CAS: take the value but keep the item marked stale
            old = store.find(key)
            if old >= 0 and f.cas < store.cas[old]:
                stale_store = True
                old_exp = store.exptime[old]
                old_flags = store.iflags[old]
                result, cas = store.write(st.SET, key, f.client_flags, 0, value, detail=False,
                                          cfd=proto.fd)
            else:
                result, cas = store.write(mode, key, f.client_flags, f.ttl_raw, value, f.cas,
                                          detail=False, cfd=proto.fd)
        else:
            result, cas = store.write(mode, key, f.client_flags, f.ttl_raw, value, f.cas,
                                      detail=False, cfd=proto.fd)
        if result == st.TOO_LARGE or result == st.NO_MEMORY:
            proto.out.append(NO_MEMORY)
            return
        if result == st.STORED:
            # memcached 1.6.18 builds an appended item afresh without the
            # binary-key mark, even when the append itself came with b
            binary = f.binary and mode not in (st.APPEND, st.PREPEND)
            if stale_store or binary:
                item = store.find(key)
                if item >= 0:
                    if stale_store:
                        store.set_exptime(item, old_exp)
                        store.iflags[item] |= STALE | (old_flags & WIN_SENT)
                    if binary:
                        store.iflags[item] |= KEY_BINARY
            if f.no_reply:
                return
        parts = [MS_RESULTS[result]]
        for tok in tokens[3:]:
            c = tok[0]
            if c == _O:
                parts.append(b" " + tok)
            elif c == _k:
                parts.append(key_token(f))
            elif c == _c:
                parts.append(b" c%d" % cas)
        parts.append(b"\r\n")
        proto.out.append(b"".join(parts))

    # -- md -------------------------------------------------------------------------

    def _checked_flags(self, proto, tokens):
        """md and ma share their checks: (flags, now), or None once the error
        reply is out."""
        out = proto.out
        n = len(tokens)
        if n < 2:
            out.append(ERROR)
            return None
        if len(tokens[1]) > KEY_MAX:
            out.append(BAD_FORMAT)
            return None
        if n >= MAX_TOKENS:
            out.append(TOO_MANY)
            return None
        now = self.store.clock()
        f, err = preparse(tokens, 2, self.store, now)
        if err is not None:
            out.append(INVALID_OR_DUP)
            return None
        return f, now

    def md(self, proto, tokens) -> None:
        checked = self._checked_flags(proto, tokens)
        if checked is None:
            return
        f, now = checked
        out = proto.out
        store = self.store
        suffix = echo_flags(tokens, f)
        if suffix is None:
            out.append(OPAQUE_LONG)
            return
        key = f.key
        if f.set_stale:
            result = store.invalidate_stale(key, f.cas if f.has_cas else 0,
                                            f.exptime if f.new_ttl else None)
        else:
            result = store.delete(key, f.cas if f.has_cas else 0, detail=False,
                                  bad_cas_is_miss=True)
        if result == st.NOT_FOUND:
            status = b"NF"
        elif result == st.EXISTS:
            status = b"EX"
        else:
            if f.no_reply:
                return
            status = b"HD"
        suffix.append(b"\r\n")
        out.append(status + b"".join(suffix))

    # -- ma -------------------------------------------------------------------------

    def ma(self, proto, tokens) -> None:
        checked = self._checked_flags(proto, tokens)
        if checked is None:
            return
        f, now = checked
        out = proto.out
        store = self.store
        m = f.mode
        if m in (0, 0x49, 0x2B):         # none, I, +
            incr = True
        elif m in (0x44, 0x2D):          # D, -
            incr = False
        else:
            out.append(MA_BAD_MODE)
            return
        key = f.key
        created = False
        status = None
        digits = b""
        result, value, _, created = store.arith(key, f.delta, incr, f.cas if f.has_cas else 0,
                                                (f.initial, 0) if f.vivify else None,
                                                cfd=proto.fd)
        if result == st.STORED:
            digits = b"%d" % value
            item = store.find(key, now)
        elif result == st.NOT_FOUND:
            status = b"NF"
            item = -1
        elif result == st.EXISTS:
            status = b"EX"
            item = -1
        elif result == st.NON_NUMERIC:
            out.append(NON_NUMERIC)
            return
        elif result == st.NOT_STORED:
            out.append(b"SERVER_ERROR Out of memory allocating new item\r\n")
            return
        else:
            out.append(ARITH_NO_MEMORY)
            return
        if status is None and item >= 0:
            if f.no_reply and not created:
                # q hides a successful delta (not a vivify); T still applies
                for tok in tokens[2:]:
                    c = tok[0]
                    if c == _T:
                        store.set_exptime(item, f.exptime)
                    elif c == _N and created:
                        store.set_exptime(item, f.autoviv)
                return
            parts = [b"VA %d" % len(digits) if f.value else b"HD"]
            for tok in tokens[2:]:
                c = tok[0]
                if c == _c:
                    parts.append(b" c%d" % store.cas[item])
                elif c == _t:
                    parts.append(self._ttl(store, item, now))
                elif c == _T:
                    store.set_exptime(item, f.exptime)
                elif c == _N:
                    if created:
                        store.set_exptime(item, f.autoviv)
                elif c == _O:
                    if len(tok) > OPAQUE_MAX:
                        out.append(OPAQUE_LONG)
                        return
                    parts.append(b" " + tok)
                elif c == _k:
                    parts.append(key_token(f))
            if f.value:
                parts.append(b"\r\n")
                parts.append(digits)
            parts.append(b"\r\n")
            out.append(b"".join(parts))
            return
        echoed = echo_flags(tokens, f)
        if echoed is None:
            out.append(OPAQUE_LONG)
            return
        parts = [status or b"NS"] + echoed
        parts.append(b"\r\n")
        out.append(b"".join(parts))

    # -- me -------------------------------------------------------------------------

    def me(self, proto, tokens) -> None:
        out = proto.out
        n = len(tokens)
        if n < 2 or len(tokens[1]) > KEY_MAX:
            out.append(BAD_FORMAT)
            return
        key = tokens[1]
        if n >= 3 and tokens[2] == b"b":
            key = b64decode(key)
            if key is None:
                out.append(BAD_FORMAT)
                return
        store = self.store
        now = store.clock()
        item = store.find(key, now)
        self.node.counters["cmd_meta"] += 1
        if item < 0:
            out.append(b"EN\r\n")
            return
        k = store.key_of(item)
        if store.iflags[item] & KEY_BINARY:
            k = b64encode(k)
        exp = store.exptime[item]
        if exp:
            exp = (now - exp) & U32
            if exp >= 1 << 31:
                exp -= 1 << 32
        else:
            exp = -1
        flags = store.flags[item]
        size = memcached_size(len(k) if not store.iflags[item] & KEY_BINARY
                              else store.klen[item], store.vlen[item], flags)
        s = store.settings
        cls = memcached_class(size, s.factor, s.min_size, s.item_size_max)
        out.append(b"ME %s exp=%d la=%d cas=%d fetch=%s cls=%d size=%d\r\n" % (
            bytes(k), exp, (now - store.atime[item]) & U32, store.cas[item],
            b"yes" if store.iflags[item] & FETCHED else b"no", cls, size))
