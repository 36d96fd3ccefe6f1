"""The user table behind authentication (memcached's ``-Y`` auth file).

One ``user:password`` per line, as memcached reads it: the user ends at the
first ``:``, the password at the first CR or LF.  The text protocol's auth
``set`` and the binary protocol's SASL PLAIN both ask ``check``.

``reload`` (the server calls it on SIGHUP) swaps the table in only once the
new file has been read and parsed, so an unreadable or malformed file
leaves the old users working, as memcached's authfile_load does.

Differences from memcached, on purpose: memd has no 8-entry limit (memcached
silently drops the 9th user on), and blank lines are skipped rather than
refused.
"""

from __future__ import annotations

import hmac
import logging

log = logging.getLogger("memd")


class AuthFileError(OSError):
    """The auth file could not be read or has a line without ``user:``.

    An OSError so that callers handling "cannot read the file" handle this
    too (memd.cli reports both the same way).
    """


def parse(data: bytes) -> list[tuple[bytes, bytes]]:
    entries = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        line = raw.split(b"\r", 1)[0]
        if not line:
            continue
        user, sep, password = line.partition(b":")
        if not sep:
            raise AuthFileError(f"line {n}: expected user:password")
        entries.append((user, password))
    return entries


class Authenticator:
    def __init__(self, entries, path: str | None = None) -> None:
        self.path = path
        self.entries: list[tuple[bytes, bytes]] = list(entries)

    @classmethod
    def from_file(cls, path: str) -> "Authenticator":
        return cls(cls._load(path), path)

    @staticmethod
    def _load(path: str) -> list[tuple[bytes, bytes]]:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise AuthFileError(f"{path}: {exc.strerror or exc}") from exc
        try:
            return parse(data)
        except AuthFileError as exc:
            raise AuthFileError(f"{path}: {exc}") from None

    def reload(self) -> bool:
        """Re-read the file; keep the current table if that fails."""
        if self.path is None:
            return False
        try:
            entries = self._load(self.path)
        except AuthFileError as exc:
            log.warning("auth file not reloaded, keeping %d user(s): %s",
                        len(self.entries), exc)
            return False
        self.entries = entries
        return True

    def check(self, user: bytes, password: bytes) -> bool:
        """True if some entry matches both; every entry is compared, each in
        constant time, so timing says nothing about which part was wrong."""
        ok = False
        for u, p in self.entries:
            user_ok = hmac.compare_digest(u, user)
            pass_ok = hmac.compare_digest(p, password)
            ok |= user_ok & pass_ok
        return ok
