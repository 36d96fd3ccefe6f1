"""Meta-command flag parsing and the small helpers the meta commands share.

Flags are parsed once per command, in one pass over the tokens, the way
memcached 1.6.18 pre-parses them: a repeated flag (or a byte >= 127) and an
unknown flag stop the parse at once; a bad numeric token is remembered and
parsing goes on, so the *last* such error is the one reported.  The reply is
then built by a second pass in the order the client gave the flags.
"""

from __future__ import annotations

import base64
from bisect import bisect_left

from ..cache.slabs import PAGE_SIZE, class_sizes
from ..numbers import strtol32, strtoul32, strtoull
from .wire import KEY_MAX

MAX_TOKENS = 20              # memcached's MFLAG_MAX_OPT_LENGTH, counted with its end token
OPAQUE_MAX = 32              # longest O token, the 'O' included

# A bit of our own in the store's per-item flags: the key was given in base64
# (memcached's ITEM_KEY_BINARY), so k and me show it base64-encoded.  The
# store uses 1, 2, 4 and 8; this stays clear of them.
KEY_BINARY = 0x80

BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
BAD_TOKEN = b"CLIENT_ERROR bad token in command line format\r\n"
INVALID_FLAG = b"CLIENT_ERROR invalid flag\r\n"
DUPLICATE_FLAG = b"CLIENT_ERROR duplicate flag\r\n"
BAD_KEY = b"CLIENT_ERROR error decoding key\r\n"
M_LENGTH = b"CLIENT_ERROR incorrect length for M token\r\n"
BAD_INITIAL = b"CLIENT_ERROR invalid numeric initial value\r\n"
BAD_DELTA = b"CLIENT_ERROR invalid numeric delta value\r\n"

# first bytes of flags
_b, _c, _f, _h, _k, _l, _q, _s, _t, _u, _v = b"bcfhklqstuv"
_C, _D, _F, _I, _J, _L, _M, _N, _O, _P, _R, _T = b"CDFIJLMNOPRT"

# memcached's base64 decode table: 64 symbols, '=' as 0, all else skipped
_DTABLE = [0x80] * 256
for _i, _ch in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"):
    _DTABLE[_ch] = _i
_DTABLE[ord("=")] = 0


def b64decode(src: bytes) -> bytes | None:
    """memcached's base64_decode: bytes outside the alphabet are skipped, the
    count of the rest must be a multiple of 4, decoding stops after the first
    padded block, and more than two '=' in a block is an error.  None on error."""
    dt = _DTABLE
    syms = [dt[ch] for ch in src if dt[ch] != 0x80]
    if not syms or len(syms) % 4:
        return None
    if len(syms) == len(src) and b"=" not in src:
        return base64.b64decode(src)          # the common case, at C speed
    out = bytearray()
    block = []
    pad = 0
    for ch in src:
        v = dt[ch]
        if v == 0x80:
            continue
        if ch == 0x3D:
            pad += 1
        block.append(v)
        if len(block) == 4:
            a, b, c, d = block
            out += bytes(((a << 2 | b >> 4) & 0xFF, (b << 4 | c >> 2) & 0xFF, (c << 6 | d) & 0xFF))
            block = []
            if pad:
                if pad > 2:
                    return None
                del out[-pad:]
                break
    return bytes(out)


def b64encode(key) -> bytes:
    return base64.b64encode(bytes(key))


class MetaFlags:
    """What one meta command's flags asked for."""

    __slots__ = ("key", "binary", "value", "no_reply", "no_update", "vivify",
                 "autoviv", "new_ttl", "exptime", "recache", "client_flags",
                 "has_cas", "cas", "mode", "delta", "initial", "set_stale",
                 "ttl_raw")

    def __init__(self, key) -> None:
        self.key = key
        self.binary = False
        self.value = False
        self.no_reply = False
        self.no_update = False
        self.vivify = False
        self.autoviv = 0          # N: absolute expiry for a vivified item
        self.new_ttl = False
        self.exptime = 0          # T: absolute expiry
        self.ttl_raw = 0          # T: as the client sent it (for ms, which converts itself)
        self.recache = 0          # R: absolute time
        self.client_flags = 0
        self.has_cas = False
        self.cas = 0
        self.mode = 0
        self.delta = 1
        self.initial = 0
        self.set_stale = False


def preparse(tokens, start: int, store, now: int):
    """(MetaFlags, None) or (MetaFlags or None, error reply line)."""
    f = MetaFlags(tokens[1])
    seen = 0
    err = None
    has_error = False
    for i in range(start, len(tokens)):
        tok = tokens[i]
        o = tok[0]
        bit = 1 << o
        if o >= 127 or seen & bit:
            return None, DUPLICATE_FLAG
        seen |= bit
        if o == _v:
            f.value = True
        elif o == _q:
            f.no_reply = True
        elif o in (_k, _s, _t, _c, _f, _O, _P, _L, _h, _l):
            pass
        elif o == _b:
            key = b64decode(tokens[1])
            if key is None:
                err = BAD_KEY
                has_error = True
            else:
                f.key = key
            f.binary = True
        elif o == _T or o == _N or o == _R:
            n = strtol32(tok[1:])
            if n is None:
                err = BAD_TOKEN
                has_error = True
            elif o == _T:
                f.new_ttl = True
                f.ttl_raw = n
                f.exptime = store.abs_exptime(n, now)
            elif o == _N:
                f.vivify = True
                f.autoviv = store.abs_exptime(n, now)
            else:
                f.recache = store.abs_exptime(n, now)
        elif o == _u:
            f.no_update = True
        elif o == _F:
            n = strtoul32(tok[1:])
            if n is None:
                has_error = True      # memcached keeps the caller's message here
            else:
                f.client_flags = n
        elif o == _C:
            n = strtoull(tok[1:])
            if n is None:
                err = BAD_TOKEN
                has_error = True
            else:
                f.has_cas = True
                f.cas = n
        elif o == _M:
            if len(tok) != 2:
                err = M_LENGTH
                has_error = True
            else:
                f.mode = tok[1]
        elif o == _J:
            n = strtoull(tok[1:])
            if n is None:
                err = BAD_INITIAL
                has_error = True
            else:
                f.initial = n
        elif o == _D:
            n = strtoull(tok[1:])
            if n is None:
                err = BAD_DELTA
                has_error = True
            else:
                f.delta = n
        elif o == _I:
            f.set_stale = True
        else:
            return None, INVALID_FLAG
    if has_error:
        return f, err or BAD_FORMAT
    return f, None


def key_token(f: MetaFlags) -> bytes:
    """The k flag for a key as the client gave it."""
    if f.binary:
        return b" k" + b64encode(f.key) + b" b"
    return b" k" + f.key


def memcached_size(nkey: int, nbytes: int, client_flags: int) -> int:
    """memcached's ITEM_ntotal: header 48 + CAS 8 + key + NUL + value + CRLF,
    plus 4 when the client flags are not zero."""
    return 48 + 8 + nkey + 1 + nbytes + 2 + (4 if client_flags else 0)


_class_tables: dict = {}


def memcached_class(size: int, factor: float, min_size: int, item_size_max: int) -> int:
    """The slab class memcached 1.6.18 would put an item of ``size`` in.

    memcached's largest class is its chunk maximum, half a page (bigger items
    are chained chunks), where memd's is a whole page; so the table is the
    same rule as memd's allocator (slabs.class_sizes) with that largest size.
    """
    k = (factor, min_size, item_size_max)
    table = _class_tables.get(k)
    if table is None:
        table = class_sizes(max(PAGE_SIZE, item_size_max) // 2, factor, min_size)
        _class_tables[k] = table
    return min(bisect_left(table, size), len(table) - 1) + 1
