"""Warm restart: write the cache to a file at shutdown, read it back at start.

File format (all integers little-endian)::

    header   "MEMDSNAP" version:u16 reserved:u16 saved_at:u64 crc32(previous 20 bytes):u32
    block*   n_records:u32 body_len:u32 crc32(body):u32 body
    trailer  0:u32 8:u32 crc32(body):u32 body = total_records:u64

A block body is a run of records::

    klen:u8 flags:u32 exptime:u32 vlen:u32 key value

``exptime`` is absolute Unix seconds (0 = never), the way the store keeps it,
so an item's remaining time to live keeps counting down while the node is
down, exactly as in memcached's own restartable mode.

Why blocks with their own CRC: saving streams (a block is flushed once it
passes BLOCK_SIZE, so memory stays bounded whatever the cache holds), and
loading can check each block before trusting a single length inside it.
The trailer carries the record count, so a file cut at a block boundary is
as detectable as one cut in the middle of a block.

Loading is two passes over the file: the first only verifies (header, every
block CRC, trailer, no bytes after it), the second stores.  A truncated or
corrupt file therefore leaves the cache empty instead of half-loaded, which
is what an operator can reason about.  Every failure is one log line; load
never raises, because a bad snapshot must never keep a cache from starting.

Saving is atomic: a temporary file in the same directory, fsync, rename over
FILE, fsync of the directory (so the rename itself survives a power cut).

A snapshot is good for one start only.  Once the file has been verified,
load removes it (and fsyncs the directory) before storing a single item, the
way memcached removes its restart metadata when it reads it; only the next
graceful shutdown writes FILE again.  So whatever clients change after a
warm start, a crash (kill -9, OOM, power cut) at any moment leads to an
empty start, never to the old items: an overwritten key cannot get its old
value back and a deleted key cannot reappear.  A save cut short leaves only
FILE.tmp, which the next start removes without reading.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib

from .cache import store as st

log = logging.getLogger("memd")

MAGIC = b"MEMDSNAP"
VERSION = 1
HEADER = struct.Struct("<8sHHQ")         # magic, version, reserved, saved_at
HEADER_CRC = struct.Struct("<I")
BLOCK = struct.Struct("<III")            # n_records, body_len, crc32(body)
RECORD = struct.Struct("<BIII")          # klen, flags, exptime, vlen
TOTAL = struct.Struct("<Q")
BLOCK_SIZE = 1 << 20                     # flush a block once its body passes this
# A block holds whole records; one record is at most a key plus one value, and
# memd refuses values over 1 GiB (-I), so no honest block is larger than this.
MAX_BODY = (1 << 30) + BLOCK_SIZE + RECORD.size + 256
KEY_MAX = 250


class SnapshotError(Exception):
    """The file is not a complete, intact snapshot (the message says why)."""


# -- saving -------------------------------------------------------------------------


def _live_items(store):
    """Every live item, each class from its LRU tail to its head.

    Tail first so that re-storing them in this order rebuilds the same LRU
    order: the least recently used item is stored first and ends at the tail.
    """
    now = store.clock()
    dead = store.is_dead            # expired or flushed (store's own rule)
    for cls in store.slabs.classes[1:]:
        if not store.lru.count[cls.id]:
            continue
        for item in store.lru.from_tail(cls.id, 1 << 62):
            if not dead(item, now):
                yield item


def _write_block(f, body: bytearray, n: int) -> None:
    f.write(BLOCK.pack(n, len(body), zlib.crc32(body)))
    f.write(body)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass                      # some filesystems refuse fsync on a directory
    finally:
        os.close(fd)


def save(store, path: str) -> int:
    """Write every live item of ``store`` to ``path``; the number written.

    Returns -1 (after logging one line) if the file could not be written; the
    previous snapshot, if any, is then left as it was.
    """
    started = time.monotonic()
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = path + ".tmp"
    total = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as f:
            head = HEADER.pack(MAGIC, VERSION, 0, int(time.time()))
            f.write(head + HEADER_CRC.pack(zlib.crc32(head)))
            body = bytearray()
            n = 0
            pack = RECORD.pack
            key_of, value_view = store.key_of, store.value_view
            flags, exptime = store.flags, store.exptime
            for item in _live_items(store):
                key = key_of(item)
                value = value_view(item)
                body += pack(len(key), flags[item], exptime[item], len(value))
                body += key
                body += value
                n += 1
                if len(body) >= BLOCK_SIZE:
                    _write_block(f, body, n)
                    total += n
                    body = bytearray()
                    n = 0
            if n:
                _write_block(f, body, n)
                total += n
            tail = TOTAL.pack(total)
            f.write(BLOCK.pack(0, len(tail), zlib.crc32(tail)) + tail)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except OSError as exc:
        log.error("snapshot: could not write %s: %s", path, exc)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return -1
    log.info("snapshot: saved %d items to %s in %.2fs", total, path,
             time.monotonic() - started)
    return total


# -- loading --------------------------------------------------------------------------


def _read_exact(f, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise SnapshotError(f"truncated ({what}: wanted {n} bytes, found {len(data)})")
    return data


def _blocks(f, size: int):
    """Yield (n_records, body) for each verified block; check the header and trailer.

    Never trusts a declared length before comparing it with what is left of
    the file, so a corrupt length cannot make us allocate gigabytes.
    """
    raw = f.read(HEADER.size + HEADER_CRC.size)
    if len(raw) < HEADER.size + HEADER_CRC.size:
        raise SnapshotError("truncated (no complete header)")
    magic, version, _reserved, _saved_at = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise SnapshotError("not a memd snapshot (bad magic)")
    if HEADER_CRC.unpack_from(raw, HEADER.size)[0] != zlib.crc32(raw[:HEADER.size]):
        raise SnapshotError("corrupt header (checksum mismatch)")
    if version != VERSION:
        raise SnapshotError(f"unsupported snapshot version {version}")
    seen = 0
    while True:
        n, body_len, crc = BLOCK.unpack(_read_exact(f, BLOCK.size, "block header"))
        left = size - f.tell()
        if body_len > left:
            raise SnapshotError(f"truncated (a block declares {body_len} bytes, "
                                f"{left} left in the file)")
        if body_len > MAX_BODY:
            raise SnapshotError(f"corrupt (block length {body_len})")
        body = _read_exact(f, body_len, "block body")
        if zlib.crc32(body) != crc:
            raise SnapshotError(f"corrupt (checksum mismatch in the block at byte "
                                f"{f.tell() - body_len - BLOCK.size})")
        if n == 0:
            if body_len != TOTAL.size or TOTAL.unpack(body)[0] != seen:
                raise SnapshotError("corrupt (record count in the trailer does not match)")
            if f.read(1):
                raise SnapshotError("corrupt (bytes after the trailer)")
            return
        seen += n
        yield n, body


def _records(n: int, body: bytes):
    """Decode one verified block body into (key, flags, exptime, value)."""
    pos = 0
    end = len(body)
    unpack = RECORD.unpack_from
    mv = memoryview(body)
    for _ in range(n):
        if pos + RECORD.size > end:
            raise SnapshotError("corrupt (a record runs past its block)")
        klen, flags, exptime, vlen = unpack(body, pos)
        pos += RECORD.size
        if pos + klen + vlen > end:
            raise SnapshotError("corrupt (a record runs past its block)")
        key = body[pos:pos + klen]
        pos += klen
        yield key, flags, exptime, mv[pos:pos + vlen]
        pos += vlen
    if pos != end:
        raise SnapshotError("corrupt (bytes left over in a block)")


def _verify(f) -> None:
    size = os.fstat(f.fileno()).st_size
    for n, body in _blocks(f, size):
        for _ in _records(n, body):
            pass


def _wipe(store) -> None:
    """Drop every item (a load that failed half-way must not leave half a cache)."""
    for cls in store.slabs.classes[1:]:
        for item in list(store.lru.items(cls.id)):
            store.delete(store.key_of(item))


def _remove_leftover(tmp: str) -> None:
    """Remove the temporary file of a save that was cut short (never read)."""
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("snapshot: could not remove %s, left by an interrupted save: %s", tmp, exc)
        return
    log.warning("snapshot: removed %s, left by an interrupted save", tmp)
    _fsync_dir(os.path.dirname(os.path.abspath(tmp)))


def load(store, path: str) -> int:
    """Restore the items saved in ``path`` into ``store``; the number restored.

    Items that have expired by now are dropped; the others keep their
    absolute expiry time.  A missing, truncated or corrupt file logs one line
    and leaves the store empty; this function never raises for a bad file.
    An intact file is removed before anything is stored (it is good for one
    start; see the module's docstring), and if it cannot be removed it is not
    loaded.  A leftover ``path.tmp`` is removed unread.
    The store's statistics counters are left as they were: restoring is not
    client traffic, so ``cmd_set``/``total_items`` should not count it.
    """
    started = time.monotonic()
    path = os.fspath(path)
    _remove_leftover(path + ".tmp")
    counters = {name: getattr(store, name) for name in store.COUNTERS}
    try:
        with open(path, "rb") as f:
            _verify(f)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass                  # someone else removed it: nothing left to resurrect
            except OSError as exc:
                log.warning("snapshot: not loading %s: it cannot be removed (%s), so a crash "
                            "would bring its items back; starting with an empty cache",
                            path, exc)
                return 0
            _fsync_dir(os.path.dirname(os.path.abspath(path)))
            f.seek(0)
            loaded, expired, refused = _load_verified(store, f)
    except FileNotFoundError:
        log.warning("snapshot: %s does not exist; starting with an empty cache", path)
        return 0
    except (OSError, SnapshotError, struct.error, ValueError) as exc:
        _wipe(store)
        _restore_counters(store, counters)
        log.warning("snapshot: ignoring %s: %s; starting with an empty cache", path, exc)
        return 0
    _restore_counters(store, counters)
    log.info("snapshot: loaded %d items from %s in %.2fs (%d expired, %d not stored); "
             "removed it until the next graceful shutdown writes it again",
             loaded, path, time.monotonic() - started, expired, refused)
    return loaded


def _restore_counters(store, counters) -> None:
    for name, value in counters.items():
        setattr(store, name, value)


def _load_verified(store, f) -> tuple[int, int, int]:
    now = store.clock()
    put = store.store
    loaded = expired = refused = 0
    size = os.fstat(f.fileno()).st_size
    for n, body in _blocks(f, size):
        for key, flags, exp, value in _records(n, body):
            if exp and exp <= now:
                expired += 1
                continue
            if not key or len(key) > KEY_MAX:
                refused += 1
                continue
            if exp > st.REALTIME_MAXDELTA:
                # memcached's rule reads an exptime above 30 days as an
                # absolute time, so the item keeps its original deadline
                result = put(st.SET, key, flags, exp, value)
            else:
                # a clock so early that the absolute time would be read as
                # relative (only fake clocks in tests): set it directly
                result = put(st.SET, key, flags, 0, value)
                if result == st.STORED and exp:
                    store.set_exptime(store.find(key, now), exp)
            if result == st.STORED:
                loaded += 1
            elif result == st.NO_MEMORY:
                # -M and the cache is full: the rest cannot fit either
                refused += 1
            else:
                refused += 1
    return loaded, expired, refused
