"""The binary protocol, for nodes that only take SASL (``memcached -S``).

After SASL PLAIN the connection speaks binary, so the typed text commands
are translated to binary requests and the answers written back in the text
protocol's words (``STORED``, ``VALUE k f n``, ``STAT``...), so that
rendering, exit codes and ``--raw`` (which then shows the text form) work
the same.  Only what an operator types at a shell is translated: the
classic key commands, stats, version, verbosity, flush_all; meta commands
and ``watch`` exist only in the text protocol.
"""

from __future__ import annotations

import struct

from .commands import Reply

HEADER = struct.Struct(">BBHBBHIIQ")
REQUEST, RESPONSE = 0x80, 0x81
OP = {"get": 0x00, "set": 0x01, "add": 0x02, "replace": 0x03, "delete": 0x04, "incr": 0x05,
      "decr": 0x06, "quit": 0x07, "flush_all": 0x08, "noop": 0x0a, "version": 0x0b,
      "append": 0x0e, "prepend": 0x0f, "stats": 0x10, "verbosity": 0x1b, "touch": 0x1c,
      "gat": 0x1d, "sasl_auth": 0x21}
NOT_FOUND, EXISTS, TOO_LARGE, INVALID, NOT_STORED, NON_NUMERIC = 1, 2, 3, 4, 5, 6
AUTH_ERROR, UNKNOWN_COMMAND, OUT_OF_MEMORY = 0x20, 0x81, 0x82

COMMON_ERRORS = {
    TOO_LARGE: b"SERVER_ERROR object too large for cache",
    INVALID: b"CLIENT_ERROR bad command line format",
    NON_NUMERIC: b"CLIENT_ERROR cannot increment or decrement non-numeric value",
    AUTH_ERROR: b"CLIENT_ERROR unauthenticated",
    UNKNOWN_COMMAND: b"ERROR",
    OUT_OF_MEMORY: b"SERVER_ERROR out of memory storing object",
}


class BinarySession:
    def __init__(self, conn) -> None:
        self.conn = conn          # a connection.Connection: send/read

    # -- frames ---------------------------------------------------------------------------

    def send(self, opcode: int, key: bytes = b"", extras: bytes = b"", value: bytes = b"",
             cas: int = 0) -> None:
        body = len(extras) + len(key) + len(value)
        self.conn.send(HEADER.pack(REQUEST, opcode, len(key), len(extras), 0, 0, body, 0, cas)
                       + extras + key + value)

    def receive(self):
        """(status, extras, key, value, cas) of the next response."""
        magic, _op, klen, elen, _dt, status, body, _opaque, cas = HEADER.unpack(
            self.conn.read(HEADER.size))
        if magic != RESPONSE:
            raise ConnectionError(f"{self.conn.address}: not a binary response")
        data = self.conn.read(body) if body else b""
        return status, data[:elen], data[elen:elen + klen], data[elen + klen:], cas

    def call(self, opcode: int, key: bytes = b"", extras: bytes = b"", value: bytes = b"",
             cas: int = 0):
        self.send(opcode, key, extras, value, cas)
        return self.receive()

    def sasl_plain(self, user: str, password: str) -> tuple[bool, str]:
        status, _e, _k, value, _c = self.call(OP["sasl_auth"], b"PLAIN", value=b"\0%s\0%s" % (
            user.encode(), password.encode()))
        return status == 0, value.decode(errors="replace") or f"status 0x{status:02x}"

    # -- text commands -> binary ----------------------------------------------------------

    def request(self, tokens: list[bytes], data: bytes | None) -> Reply:
        cmd = tokens[0].lower().decode(errors="replace") if tokens else ""
        handler = getattr(self, "_cmd_" + cmd, None)
        try:
            lines = handler(tokens, data) if handler else [
                b"CLIENT_ERROR memd-cli: '%s' has no binary form (the node is SASL-only)"
                % cmd.encode()]
        except (ValueError, IndexError, struct.error):
            lines = [b"CLIENT_ERROR bad command line format"]
        reply = Reply()
        raw = []
        for item in lines:
            line, block = item if isinstance(item, tuple) else (item, None)
            reply.lines.append((line, block))
            raw.append(line + b"\r\n" + (block + b"\r\n" if block is not None else b""))
        reply.raw = b"".join(raw)
        return reply

    def _values(self, keys, opcode: int, extras: bytes, with_cas: bool):
        out = []
        for key in keys:
            status, ext, _k, value, cas = self.call(opcode, key, extras)
            if status == 0:
                flags = struct.unpack(">I", ext[:4])[0] if len(ext) >= 4 else 0
                line = b"VALUE %s %d %d" % (key, flags, len(value))
                out.append((line + (b" %d" % cas if with_cas else b""), value))
            elif status != NOT_FOUND:
                return [COMMON_ERRORS.get(status, b"SERVER_ERROR status 0x%02x" % status)]
        return out + [b"END"]

    def _cmd_get(self, tokens, data):
        return self._values(tokens[1:], OP["get"], b"", tokens[0].lower() == b"gets")

    _cmd_gets = _cmd_get

    def _cmd_gat(self, tokens, data):
        extras = struct.pack(">I", int(tokens[1]))
        return self._values(tokens[2:], OP["gat"], extras, tokens[0].lower() == b"gats")

    _cmd_gats = _cmd_gat

    def _store(self, tokens, data, op: str, cas: int = 0):
        key, flags, exptime = tokens[1], int(tokens[2]), int(tokens[3])
        extras = b"" if op in ("append", "prepend") else struct.pack(">II", flags, exptime)
        status = self.call(OP[op], key, extras, data or b"", cas)[0]
        if status == 0:
            return [b"STORED"]
        if cas and status == NOT_FOUND:
            return [b"NOT_FOUND"]
        if cas and status == EXISTS:
            return [b"EXISTS"]
        if status in (NOT_FOUND, EXISTS, NOT_STORED):
            return [b"NOT_STORED"]
        return [COMMON_ERRORS.get(status, b"SERVER_ERROR status 0x%02x" % status)]

    def _cmd_set(self, tokens, data):
        return self._store(tokens, data, tokens[0].lower().decode())

    _cmd_add = _cmd_replace = _cmd_append = _cmd_prepend = _cmd_set

    def _cmd_cas(self, tokens, data):
        return self._store(tokens, data, "set", cas=int(tokens[5]))

    def _simple(self, status: int, ok: bytes):
        if status == 0:
            return [ok]
        if status == NOT_FOUND:
            return [b"NOT_FOUND"]
        return [COMMON_ERRORS.get(status, b"SERVER_ERROR status 0x%02x" % status)]

    def _cmd_delete(self, tokens, data):
        return self._simple(self.call(OP["delete"], tokens[1])[0], b"DELETED")

    def _cmd_touch(self, tokens, data):
        extras = struct.pack(">I", int(tokens[2]))
        return self._simple(self.call(OP["touch"], tokens[1], extras)[0], b"TOUCHED")

    def _cmd_incr(self, tokens, data):
        extras = struct.pack(">QQI", int(tokens[2]), 0, 0xFFFFFFFF)   # never create
        status, _e, _k, value, _c = self.call(OP[tokens[0].lower().decode()], tokens[1], extras)
        return self._simple(status, b"%d" % struct.unpack(">Q", value)[0] if status == 0 else b"")

    _cmd_decr = _cmd_incr

    def _cmd_flush_all(self, tokens, data):
        extras = struct.pack(">I", int(tokens[1])) if len(tokens) > 1 and tokens[1].isdigit() \
            else b""
        return self._simple(self.call(OP["flush_all"], extras=extras)[0], b"OK")

    def _cmd_verbosity(self, tokens, data):
        extras = struct.pack(">I", int(tokens[1]))
        return self._simple(self.call(OP["verbosity"], extras=extras)[0], b"OK")

    def _cmd_version(self, tokens, data):
        status, _e, _k, value, _c = self.call(OP["version"])
        return self._simple(status, b"VERSION " + value)

    def _cmd_stats(self, tokens, data):
        self.send(OP["stats"], b" ".join(tokens[1:]))
        lines = []
        while True:
            status, _e, key, value, _c = self.receive()
            if status != 0:
                return [COMMON_ERRORS.get(status, b"SERVER_ERROR status 0x%02x" % status)]
            if not key:
                return lines + [b"END"]
            lines.append(b"STAT %s %s" % (key, value))

    def _cmd_quit(self, tokens, data):
        self.send(OP["quit"])
        self.conn.close()
        return []
