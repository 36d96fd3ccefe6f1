"""What a typed line means to the shell: no I/O here.

The shell sends what is typed, byte for byte, so that telnet habits keep
working; it only needs to know three things about a command line:

- does a data block follow it (``set k 0 0 5`` then ``hello``), or is it a
  storage command one argument short of memcached's syntax
  (``set k 0 0``), whose value the shell asks for and counts itself;
- how its reply ends (one line, lines up to ``END``, or no reply at all
  for ``noreply`` and the meta ``q`` flag, which the shell closes with an
  ``mn`` so that it always knows when to stop reading);
- whether a reply is an error (``ERROR``, ``CLIENT_ERROR``,
  ``SERVER_ERROR``; a miss or ``NOT_FOUND`` is an answer, not an error).
"""

from __future__ import annotations

from dataclasses import dataclass, field

STORAGE = (b"set", b"add", b"replace", b"append", b"prepend")
# the position of the byte count in a complete storage command line
BYTES_AT = {**{c: 4 for c in STORAGE}, b"cas": 4, b"ms": 2}
# how many tokens the complete line has (without noreply)
FULL_LEN = {**{c: 5 for c in STORAGE}, b"cas": 6}

READS = (b"get", b"gets", b"gat", b"gats")
META = (b"mg", b"ms", b"md", b"ma", b"mn", b"me")
NOREPLY_ABLE = STORAGE + (b"cas", b"delete", b"incr", b"decr", b"touch", b"flush_all",
                          b"verbosity")
ERROR_PREFIXES = (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")

# Replies made of lines up to END; the first line may instead be one of these
# single-line answers (an error, `stats reset`'s RESET, `stats detail on`'s OK)
END_TERMINATED = READS + (b"stats", b"lru_crawler", b"config")
SINGLE_LINE_ANSWERS = ERROR_PREFIXES + (b"OK", b"RESET", b"BUSY", b"BADCLASS")

KEY_COMMANDS = READS + STORAGE + (b"cas", b"delete", b"incr", b"decr", b"touch") + META[:4] \
    + (b"me",)


def tokens_of(line: bytes) -> list[bytes]:
    return line.split()


def key_positions(tokens: list[bytes]) -> range:
    """Where the keys are in a command line (empty for commands without keys)."""
    if not tokens:
        return range(0)
    cmd = tokens[0].lower()
    if cmd in (b"get", b"gets"):
        return range(1, len(tokens))
    if cmd in (b"gat", b"gats"):
        return range(2, len(tokens))
    if cmd in KEY_COMMANDS and len(tokens) > 1:
        return range(1, 2)
    return range(0)


def keys_of(tokens: list[bytes]) -> list[bytes]:
    return [tokens[i] for i in key_positions(tokens)]


def _is_count(token: bytes) -> bool:
    return token.isdigit()


def data_length(tokens: list[bytes]) -> int | None:
    """The byte count of the data block this complete line announces, else None."""
    if not tokens:
        return None
    cmd = tokens[0].lower()
    at = BYTES_AT.get(cmd)
    if at is None or len(tokens) <= at or not _is_count(tokens[at]):
        return None
    if cmd in FULL_LEN and len(tokens) < FULL_LEN[cmd]:
        return None
    return int(tokens[at])


def wants_value(tokens: list[bytes]) -> bool:
    """A storage command one argument short: the shell asks for the value and
    counts its bytes (``set k 0 0``, ``cas k 0 0 CAS``, ``ms k [flags]``)."""
    if not tokens:
        return False
    cmd = tokens[0].lower()
    if cmd in FULL_LEN:
        return len(tokens) == FULL_LEN[cmd] - 1 and all(_is_count(t) for t in tokens[2:])
    if cmd == b"ms":
        return len(tokens) == 2 or (len(tokens) > 2 and not _is_count(tokens[2]))
    return False


def with_length(tokens: list[bytes], value: bytes) -> bytes:
    """The complete command line for a short one, its value's byte count put in."""
    cmd = tokens[0].lower()
    at = BYTES_AT[cmd]
    full = tokens[:at] + [b"%d" % len(value)] + tokens[at:]
    return b" ".join(full)


def is_quiet(tokens: list[bytes]) -> bool:
    """May this command send no reply at all (noreply, or the meta q flag)?"""
    if not tokens:
        return False
    cmd = tokens[0].lower()
    if cmd in NOREPLY_ABLE:
        return tokens[-1] == b"noreply"
    if cmd in (b"mg", b"ms", b"md", b"ma"):
        return b"q" in tokens[2:]
    return False


def reply_ends_with_end(tokens: list[bytes]) -> bool:
    if not tokens:
        return False
    cmd = tokens[0].lower()
    if cmd == b"lru_crawler":
        return len(tokens) > 1 and tokens[1].lower() == b"metadump"
    if cmd == b"config":
        return len(tokens) > 1 and tokens[1].lower() == b"get"
    return cmd in END_TERMINATED


def is_error_line(line: bytes) -> bool:
    return line.startswith(ERROR_PREFIXES)


@dataclass
class Reply:
    """One reply, as read: ``raw`` the exact bytes, ``lines`` each line without
    its CRLF paired with the data block that followed it (or None)."""

    raw: bytes = b""
    lines: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    node: str = ""

    @property
    def error(self) -> bool:
        return any(is_error_line(line) for line, _ in self.lines)

    @property
    def first(self) -> bytes:
        return self.lines[0][0] if self.lines else b""


def block_length(line: bytes) -> int | None:
    """The length of the data block a reply line announces: ``VALUE k f n [cas]``,
    ``CONFIG name f n`` or meta's ``VA n flags``."""
    parts = line.split()
    try:
        if parts[0] in (b"VALUE", b"CONFIG") and len(parts) >= 4:
            return int(parts[3])
        if parts[0] == b"VA" and len(parts) >= 2:
            return int(parts[1])
    except ValueError:
        return None
    return None


def read_reply(tokens: list[bytes], readline, read, quiet_closer: bool = False) -> Reply:
    """Read one reply with ``readline()`` (a line with its CRLF) and ``read(n)``.

    ``quiet_closer``: the request was followed by ``mn``; read up to its MN.
    """
    reply = Reply()
    raw = []
    multi = reply_ends_with_end(tokens)
    while True:
        line = readline()
        if not line:
            raise ConnectionError("connection closed by the node")
        raw.append(line)
        text = line.rstrip(b"\r\n")
        data = None
        n = block_length(text)
        if n is not None:
            block = read(n + 2)
            raw.append(block)
            data = block[:-2]
        reply.lines.append((text, data))
        if quiet_closer:
            if text == b"MN":
                break
            continue
        if not multi or text == b"END":
            break
        if len(reply.lines) == 1 and text.startswith(SINGLE_LINE_ANSWERS) and text != b"END":
            break
    reply.raw = b"".join(raw)
    return reply
