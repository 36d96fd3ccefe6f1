"""Number parsing exactly as memcached's safe_strto* helpers read tokens.

memcached parses with C's strtol/strtoul, so ``+5``, ``007`` and a trailing
tab are numbers, ``12abc`` is not, values past 64 bits are errors, and a
64-bit value is then truncated to the 32 bits the field holds.  Python's
``int()`` is more lenient (underscores, Unicode digits), so tokens go
through these instead.  Each returns None where memcached reports an error.
"""

from __future__ import annotations

_SPACE = b" \t\n\v\f\r"
U64 = (1 << 64) - 1


def _strto(tok: bytes):
    """(negative, magnitude) per strtol's grammar, or None if no number."""
    i, n = 0, len(tok)
    while i < n and tok[i] in _SPACE:
        i += 1
    neg = False
    if i < n and tok[i] in b"+-":
        neg = tok[i] == 0x2D
        i += 1
    start = i
    while i < n and 0x30 <= tok[i] <= 0x39:
        i += 1
    if i == start or (i < n and tok[i] not in _SPACE):
        return None
    return neg, int(tok[start:i])


def strtoull(tok) -> int | None:
    """safe_strtoull: an unsigned 64-bit value."""
    if tok.isdigit() and len(tok) < 20:
        return int(tok)
    r = _strto(bytes(tok))
    if r is None or r[1] > U64:
        return None
    neg, value = r
    if neg:
        value = (-value) & U64
        # memcached only rejects '-' when the result looks negative signed
        if value >= 1 << 63:
            return None
    return value


def strtoul32(tok) -> int | None:
    """safe_strtoul into a uint32_t (client flags): parsed as 64 bits, truncated."""
    value = strtoull(tok)
    return None if value is None else value & 0xFFFFFFFF


def strtol32(tok) -> int | None:
    """safe_strtol into an int32_t (exptime, lengths): 64-bit parse, truncated."""
    if tok.isdigit() and len(tok) < 10:
        return int(tok)
    r = _strto(bytes(tok))
    if r is None:
        return None
    neg, value = r
    if neg:
        value = -value
    if not -(1 << 63) <= value < (1 << 63):
        return None
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value
