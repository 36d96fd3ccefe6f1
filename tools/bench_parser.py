"""Incremental reply parser for memd-bench (memcached text protocol).

The load generator never needs the values themselves, only how many replies
have completed and what kind they were.  Replies arrive in request order, so
counting terminators is enough to match them to requests:

    END\\r\\n      ends a get (single or multi-key)
    STORED\\r\\n   ends a set
    anything else on a line of its own (ERROR, CLIENT_ERROR ..., SERVER_ERROR
    ..., NOT_STORED, EXISTS, NOT_FOUND) ends one request as an error.

The one trap is value data: it is arbitrary bytes and may contain
"\\r\\nEND\\r\\n", so after a `VALUE <key> <flags> <bytes> [<cas>]` line the
parser skips exactly <bytes> + 2 bytes without looking at them.  A skip that
runs past the end of a chunk is remembered, so a 1 MB value costs no copying.
"""

from __future__ import annotations

_E = ord("E")
_S = ord("S")
_V = ord("V")


class ReplyParser:
    """Feed it received bytes; it returns how many replies completed.

    Running totals (`gets`, `sets`, `hits`, `errors`) are plain attributes so
    the worker can zero them when the measured window opens.
    """

    __slots__ = ("_tail", "_skip", "gets", "sets", "hits", "errors", "last_error")

    def __init__(self) -> None:
        self._tail = b""      # an incomplete line kept for the next feed
        self._skip = 0        # value bytes (+ CRLF) still to pass over
        self.gets = 0         # completed get replies (END)
        self.sets = 0         # completed set replies (STORED)
        self.hits = 0         # VALUE blocks seen
        self.errors = 0       # replies that were neither END nor STORED
        self.last_error = b""

    def reset_counts(self) -> None:
        self.gets = self.sets = self.hits = self.errors = 0

    def feed(self, data: bytes) -> int:
        skip = self._skip
        if skip:
            if len(data) <= skip:
                self._skip = skip - len(data)
                return 0
            data = data[skip:]
            self._skip = 0
        if self._tail:
            data = self._tail + data
            self._tail = b""

        done = gets = sets = hits = 0
        pos = 0
        end = len(data)
        find, rfind, startswith = data.find, data.rfind, data.startswith
        while pos < end:
            nl = find(b"\n", pos)
            if nl < 0:
                self._tail = data[pos:]
                break
            first = data[pos]
            # VALUE first: a multi-get reply is mostly VALUE lines.  Only
            # VALUE (and VERSION, never requested) lines start with "V".
            if first == _V:
                hits += 1
                # "VALUE <key> <flags> <bytes>": replies to get (memd-bench
                # never sends gets) carry no <cas>, so <bytes> is the last
                # field.  int() ignores the trailing \r.
                length = data[rfind(b" ", pos, nl) + 1:nl]
                try:
                    pos = nl + 3 + int(length)     # line, data, CRLF
                except ValueError:
                    raise ValueError(f"malformed VALUE line: {data[pos:nl]!r}") from None
                if pos > end:
                    self._skip = pos - end
                    break
                continue
            if first == _E and nl - pos == 4 and startswith(b"END\r", pos):
                gets += 1
                done += 1
            elif first == _S and nl - pos == 7 and startswith(b"STORED\r", pos):
                sets += 1
                done += 1
            else:
                self.errors += 1
                self.last_error = data[pos:nl].rstrip()
                done += 1
            pos = nl + 1
        self.gets += gets
        self.sets += sets
        self.hits += hits
        return done
