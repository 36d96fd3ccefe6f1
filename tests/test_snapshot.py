"""Warm restart (memd.snapshot): unit tests on a fake clock, and the end-to-end
restart of a real node with 100k items.

The unit tests drive the store with FakeClock so expiry is exact; the
end-to-end test uses real time and keeps its margins explicit.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import time
import tracemalloc

import pytest

from memd import snapshot
from memd.cache import store as st
from memd.cache.clock import FakeClock
from memd.cache.store import ItemStore, StoreSettings

import servers

LOGGER = "memd"


def make_store(clock=None, mem_mb=64, **kw):
    return ItemStore(StoreSettings(mem_limit=mem_mb << 20, **kw), clock or FakeClock())


def items_of(store):
    """{key: (flags, exptime, value)} of every live item."""
    now = store.clock()
    out = {}
    for cls in store.slabs.classes[1:]:
        for item in store.lru.items(cls.id):
            exp = store.exptime[item]
            if exp and exp <= now:
                continue
            out[bytes(store.key_of(item))] = (store.flags[item], exp, store.value_of(item))
    return out


def snapshot_records(caplog):
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


@pytest.fixture
def snap(tmp_path):
    return str(tmp_path / "cache.snap")


# -- round trips ----------------------------------------------------------------------


def test_items_come_back_with_values_flags_and_absolute_expiry(snap):
    clock = FakeClock()
    a = make_store(clock)
    a.store(st.SET, b"forever", 7, 0, b"v1")
    a.store(st.SET, b"ttl", 0xFFFFFFFF, 100, b"v2")
    a.store(st.SET, b"empty", 3, 0, b"")
    a.store(st.SET, b"binary", 1, 50, bytes(range(256)) * 4)
    expected = items_of(a)
    assert snapshot.save(a, snap) == 4

    clock.advance(30)   # the node was down 30 s: the TTLs kept running
    b = make_store(clock)
    assert snapshot.load(b, snap) == 4
    assert items_of(b) == expected
    item = b.get(b"ttl")
    assert b.ttl_of(item) == 70


def test_items_expired_while_down_are_dropped_on_load(snap):
    clock = FakeClock()
    a = make_store(clock)
    a.store(st.SET, b"short", 0, 10, b"x")
    a.store(st.SET, b"long", 0, 1000, b"y")
    assert snapshot.save(a, snap) == 2
    clock.advance(10)
    b = make_store(clock)
    assert snapshot.load(b, snap) == 1
    assert set(items_of(b)) == {b"long"}
    assert b.curr_items == 1


def test_expired_and_flushed_items_are_not_saved(snap):
    clock = FakeClock()
    a = make_store(clock)
    a.store(st.SET, b"gone", 0, 5, b"x")
    a.store(st.SET, b"flushed", 0, 0, b"x")
    clock.advance(5)
    a.flush_all()
    clock.advance(1)
    a.store(st.SET, b"kept", 0, 0, b"x")
    assert snapshot.save(a, snap) == 1
    b = make_store(clock)
    snapshot.load(b, snap)
    assert set(items_of(b)) == {b"kept"}


def test_lru_order_survives_a_restart(snap):
    # the tail is what gets evicted first; a restart must not turn cold items hot
    clock = FakeClock()
    a = make_store(clock)
    for i in range(50):
        a.store(st.SET, b"k%d" % i, 0, 0, b"v")
    order = [bytes(a.key_of(i)) for i in a.lru.items(a.id_class[a.find(b"k0")])]
    snapshot.save(a, snap)
    b = make_store(clock)
    snapshot.load(b, snap)
    assert [bytes(b.key_of(i)) for i in b.lru.items(b.id_class[b.find(b"k0")])] == order


def test_values_spanning_many_blocks_round_trip(snap):
    clock = FakeClock()
    a = make_store(clock, mem_mb=64)
    big = {b"big%d" % i: os.urandom(900_000) for i in range(5)}
    for k, v in big.items():
        assert a.store(st.SET, k, 0, 0, v) == st.STORED
    for i in range(3000):
        a.store(st.SET, b"small%d" % i, i, 0, b"%d" % i * 50)
    expected = items_of(a)
    assert snapshot.save(a, snap) == len(expected)
    b = make_store(clock, mem_mb=64)
    assert snapshot.load(b, snap) == len(expected)
    assert items_of(b) == expected


def test_an_absolute_time_below_thirty_days_is_kept_as_absolute(snap):
    # With a clock this early the absolute expiry would read as relative
    # under memcached's exptime rule; load must still restore the deadline.
    clock = FakeClock(start=1000)
    a = make_store(clock)
    a.store(st.SET, b"k", 0, 100, b"v")
    assert a.exptime[a.find(b"k")] == 1100
    snapshot.save(a, snap)
    clock.advance(40)
    b = make_store(clock)
    snapshot.load(b, snap)
    assert b.exptime[b.find(b"k")] == 1100


def test_loading_does_not_count_as_client_traffic(snap):
    clock = FakeClock()
    a = make_store(clock)
    for i in range(100):
        a.store(st.SET, b"k%d" % i, 0, 0, b"v")
    snapshot.save(a, snap)
    b = make_store(clock)
    snapshot.load(b, snap)
    assert b.curr_items == 100
    assert b.cmd_set == 0 and b.total_items == 0


def test_a_smaller_cache_keeps_what_fits_without_failing(snap):
    clock = FakeClock()
    a = make_store(clock, mem_mb=64)
    for i in range(20_000):
        a.store(st.SET, b"k%d" % i, 0, 0, b"x" * 1000)
    assert snapshot.save(a, snap) == 20_000
    b = make_store(clock, mem_mb=8)
    n = snapshot.load(b, snap)
    assert 0 < n <= 20_000
    assert 0 < b.curr_items < 20_000     # evictions made room; the newest stay
    assert b.find(b"k19999") >= 0


def test_saving_streams_in_bounded_memory(snap):
    # ~40 MB of items must not be gathered into one buffer before writing
    clock = FakeClock()
    a = make_store(clock, mem_mb=128)
    for i in range(40_000):
        a.store(st.SET, b"key%d" % i, 0, 0, b"v" * 1000)
    tracemalloc.start()
    try:
        assert snapshot.save(a, snap) == 40_000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert os.path.getsize(snap) > 40_000_000
    assert peak < 8 << 20


def test_save_replaces_the_file_atomically_and_leaves_no_temporary(snap, tmp_path):
    clock = FakeClock()
    a = make_store(clock)
    a.store(st.SET, b"one", 0, 0, b"1")
    snapshot.save(a, snap)
    a.store(st.SET, b"two", 0, 0, b"2")
    snapshot.save(a, snap)
    assert sorted(os.listdir(tmp_path)) == ["cache.snap"]
    b = make_store(clock)
    assert snapshot.load(b, snap) == 2


def test_a_failed_save_logs_once_and_keeps_the_old_snapshot(snap, tmp_path, caplog):
    clock = FakeClock()
    a = make_store(clock)
    a.store(st.SET, b"one", 0, 0, b"1")
    snapshot.save(a, snap)
    before = open(snap, "rb").read()
    os.mkdir(snap + ".tmp")            # the temporary cannot be created
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert snapshot.save(a, snap) == -1
    assert len(snapshot_records(caplog)) == 1
    assert open(snap, "rb").read() == before
    assert snapshot.save(a, str(tmp_path / "no" / "such" / "dir")) == -1


# -- one start per snapshot: a crash never resurrects data -----------------------------


def test_a_loaded_snapshot_is_removed_so_it_serves_one_start_only(snap, caplog):
    clock = FakeClock()
    a = make_store(clock)
    a.store(st.SET, b"k", 0, 0, b"old")
    snapshot.save(a, snap)
    b = make_store(clock)
    assert snapshot.load(b, snap) == 1
    assert not os.path.exists(snap)
    # a start after a crash (no graceful shutdown wrote the file again) is empty
    c = make_store(clock)
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert snapshot.load(c, snap) == 0
    assert items_of(c) == {}
    assert "does not exist" in snapshot_records(caplog)[0].getMessage()


def test_a_snapshot_that_cannot_be_removed_is_not_loaded(snap, caplog, monkeypatch):
    # loading a file that stays valid would hand its items to the start after a crash
    clock = _good_file(snap, n=10)

    def refuse(path, *a, **kw):
        if not os.path.exists(path):
            raise FileNotFoundError(2, "No such file or directory", path)
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(snapshot.os, "unlink", refuse)
    msg = _load_bad(snap, clock, caplog)
    assert "cannot be removed" in msg
    assert os.path.exists(snap)


def test_a_damaged_snapshot_is_left_in_place_for_the_operator(snap, caplog):
    clock = _good_file(snap)
    data = bytearray(open(snap, "rb").read())
    data[-5] ^= 0x41
    with open(snap, "wb") as f:
        f.write(data)
    _load_bad(snap, clock, caplog)
    assert open(snap, "rb").read() == data


def test_the_temporary_of_an_interrupted_save_is_removed_unread(snap, tmp_path, caplog):
    # the worst case: the save wrote everything but was killed before the rename
    clock = _good_file(snap, n=50)
    os.rename(snap, snap + ".tmp")
    caplog.set_level(logging.INFO, logger=LOGGER)
    b = make_store(clock)
    assert snapshot.load(b, snap) == 0
    assert items_of(b) == {}
    assert os.listdir(tmp_path) == []
    messages = [r.getMessage() for r in snapshot_records(caplog)]
    assert any("interrupted save" in m for m in messages), messages


# -- bad files: one log line, empty cache, never an exception ---------------------------


def _good_file(snap, n=2000):
    clock = FakeClock()
    a = make_store(clock)
    for i in range(n):
        a.store(st.SET, b"key%d" % i, i, 0, b"value%d" % i * 40)
    assert snapshot.save(a, snap) == n
    return clock


def _load_bad(snap, clock, caplog):
    caplog.clear()
    caplog.set_level(logging.INFO, logger=LOGGER)
    b = make_store(clock)
    assert snapshot.load(b, snap) == 0
    assert b.curr_items == 0
    assert items_of(b) == {}
    records = snapshot_records(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    assert "\n" not in records[0].getMessage()
    return records[0].getMessage()


def test_a_missing_file_logs_one_line_and_starts_empty(snap, caplog):
    msg = _load_bad(snap, FakeClock(), caplog)
    assert "does not exist" in msg


@pytest.mark.parametrize("keep", [0, 5, 23, 24, 36, 1000, 50_000, -20, -1])
def test_a_truncated_file_logs_one_line_and_starts_empty(snap, caplog, keep):
    # cuts inside the header, at the first block, mid-block, inside and before
    # the trailer: every one must be noticed, including a clean cut at a
    # block boundary (only the trailer's record count reveals it)
    clock = _good_file(snap)
    data = open(snap, "rb").read()
    with open(snap, "wb") as f:
        f.write(data[:keep] if keep >= 0 else data[:len(data) + keep])
    _load_bad(snap, clock, caplog)


def test_a_file_cut_at_a_block_boundary_is_detected(snap, caplog):
    clock = _good_file(snap, n=30_000)            # several 1 MiB blocks
    data = open(snap, "rb").read()
    # walk the blocks and cut right after the first one
    pos = snapshot.HEADER.size + snapshot.HEADER_CRC.size
    _n, body_len, _crc = snapshot.BLOCK.unpack_from(data, pos)
    cut = pos + snapshot.BLOCK.size + body_len
    tail = snapshot.TOTAL.pack(_n)
    forged = data[:cut] + snapshot.BLOCK.pack(0, 8, 0) + tail   # trailer with a wrong CRC
    with open(snap, "wb") as f:
        f.write(forged)
    _load_bad(snap, clock, caplog)
    import zlib
    # even with a valid trailer CRC, a trailer whose count disagrees is refused
    forged = data[:cut] + snapshot.BLOCK.pack(0, 8, zlib.crc32(snapshot.TOTAL.pack(30_000))) + \
        snapshot.TOTAL.pack(30_000)
    with open(snap, "wb") as f:
        f.write(forged)
    _load_bad(snap, clock, caplog)


@pytest.mark.parametrize("where", [3, 12, 26, 30, 200, 40_000, -5])
def test_a_flipped_byte_logs_one_line_and_starts_empty(snap, caplog, where):
    clock = _good_file(snap)
    data = bytearray(open(snap, "rb").read())
    data[where] ^= 0x41
    with open(snap, "wb") as f:
        f.write(data)
    _load_bad(snap, clock, caplog)


@pytest.mark.parametrize("content", [b"", b"garbage", b"MEMDSNAP", os.urandom(5000),
                                     b"\x00" * 100])
def test_a_file_that_is_not_a_snapshot_logs_one_line(snap, caplog, content):
    with open(snap, "wb") as f:
        f.write(content)
    _load_bad(snap, FakeClock(), caplog)


def test_a_huge_declared_block_length_is_not_allocated(snap, caplog):
    clock = _good_file(snap)
    data = bytearray(open(snap, "rb").read())
    pos = snapshot.HEADER.size + snapshot.HEADER_CRC.size
    struct.pack_into("<I", data, pos + 4, 0xFFFFFFF0)
    with open(snap, "wb") as f:
        f.write(data)
    tracemalloc.start()
    try:
        msg = _load_bad(snap, clock, caplog)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "truncated" in msg
    assert peak < 16 << 20


def test_extra_bytes_after_the_trailer_are_refused(snap, caplog):
    clock = _good_file(snap)
    with open(snap, "ab") as f:
        f.write(b"x")
    _load_bad(snap, clock, caplog)


def test_a_newer_format_version_is_refused(snap, caplog):
    import zlib
    clock = _good_file(snap)
    data = bytearray(open(snap, "rb").read())
    head = snapshot.HEADER.pack(snapshot.MAGIC, snapshot.VERSION + 1, 0, 0)
    data[:snapshot.HEADER.size + 4] = head + struct.pack("<I", zlib.crc32(head))
    with open(snap, "wb") as f:
        f.write(data)
    assert "version" in _load_bad(snap, clock, caplog)


def test_a_directory_in_place_of_the_file_logs_one_line(snap, caplog):
    os.mkdir(snap)
    _load_bad(snap, FakeClock(), caplog)


# -- end to end: a real node, SIGTERM, restart ------------------------------------------


N_ITEMS = 100_000
SHORT_TTL = 12
#: Seconds the in-time checks need before the short-TTL items expire.
SHORT_MARGIN = 4


def _ttl_of(i: int) -> int:
    return (0, 3600, SHORT_TTL, 1)[i % 4]


def _value(i: int) -> bytes:
    return b"value-%d-" % i + b"x" * (i % 300)


def _recv_until(sock, buf: bytearray, done) -> bytearray:
    while not done(buf):
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return buf


def _store_all(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        batch = 5000
        for start in range(0, N_ITEMS, batch):
            cmds = []
            for i in range(start, min(start + batch, N_ITEMS)):
                v = _value(i)
                cmds.append(b"set key%d %d %d %d\r\n%s\r\n" % (i, (i * 7919) & 0xFFFFFFFF,
                                                                 _ttl_of(i), len(v), v))
            s.sendall(b"".join(cmds))
            n = min(batch, N_ITEMS - start)
            buf = _recv_until(s, bytearray(), lambda b: b.count(b"\r\n") >= n)
            assert buf.count(b"STORED\r\n") == n, bytes(buf[:200])


def _get_all(port: int, keys: list[int]) -> dict[int, tuple[int, bytes]]:
    found = {}
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        step = 100
        for start in range(0, len(keys), step * 50):
            chunk = keys[start:start + step * 50]
            reqs = [b"get " + b" ".join(b"key%d" % k for k in chunk[j:j + step]) + b"\r\n"
                    for j in range(0, len(chunk), step)]
            s.sendall(b"".join(reqs))
            buf = _recv_until(s, bytearray(), lambda b: b.count(b"END\r\n") >= len(reqs)
                              and b.endswith(b"END\r\n"))
            pos = 0
            data = bytes(buf)
            while True:
                if data.startswith(b"END\r\n", pos):
                    pos += 5
                    if pos >= len(data):
                        break
                    continue
                eol = data.index(b"\r\n", pos)
                _, key, flags, n = data[pos:eol].split(b" ")
                v = data[eol + 2:eol + 2 + int(n)]
                found[int(key[3:])] = (int(flags), v)
                pos = eol + 2 + int(n) + 2
    return found


def _command(port: int, line: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(line)
        buf = _recv_until(s, bytearray(), lambda b: b.endswith(b"\r\n") and
                          (not line.startswith(b"stats") or b.endswith(b"END\r\n")))
    return bytes(buf)


def _curr_items(port: int) -> int:
    for line in _command(port, b"stats\r\n").split(b"\r\n"):
        if line.startswith(b"STAT curr_items "):
            return int(line.split()[2])
    raise AssertionError("no curr_items")


def _sigterm_and_wait(proc: servers.ServerProcess) -> None:
    proc.proc.send_signal(signal.SIGTERM)
    proc.proc.wait(timeout=20)
    assert proc.proc.returncode == 0, proc.stderr_text()


def test_a_node_restarted_with_its_snapshot_serves_the_same_items(tmp_path):
    snap = str(tmp_path / "node.snap")
    t0 = time.time()
    first = servers.start_memd("--snapshot", snap)
    try:
        _store_all(first.port)
        stored_at = time.time()
        # the 1 s items must be dead before the node goes down (they must not come back)
        time.sleep(max(0.0, stored_at + 2.05 - time.time()))
        _sigterm_and_wait(first)
    finally:
        first.cleanup()
    assert os.path.getsize(snap) > 0

    second = servers.start_memd("--snapshot", snap)
    try:
        # On a busy machine the restart can outlast the short TTLs.  Then
        # they are checked only for what matters most: gone on their
        # original schedule, not SHORT_TTL after the restart.  The margin
        # leaves time to read every item before the short ones expire.
        in_time = time.time() + SHORT_MARGIN < t0 + SHORT_TTL
        if not in_time:
            time.sleep(max(0.0, stored_at + SHORT_TTL + 1.1 - time.time()))
        gone = (1,) if in_time else (1, SHORT_TTL)
        alive = [i for i in range(N_ITEMS) if _ttl_of(i) not in gone]
        if in_time:  # (expired items may still be counted until reaped)
            assert _curr_items(second.port) == len(alive)
        got = _get_all(second.port, list(range(N_ITEMS)))
        assert sorted(got) == alive
        for i in alive:
            assert got[i] == ((i * 7919) & 0xFFFFFFFF, _value(i)), i

        # remaining TTLs: through meta's t flag when memd has it, else by expiry
        reply = _command(second.port, b"mg key1 t\r\n")
        if reply.startswith((b"HD", b"VA")):
            for i, ttl in ((1, 3600), (2, SHORT_TTL), (0, -1)):
                if _ttl_of(i) in gone or (ttl == SHORT_TTL and time.time() > t0 + SHORT_TTL - 1):
                    continue  # expired, or about to: nothing left to read
                reply = _command(second.port, b"mg key%d t\r\n" % i)
                t = int(reply.split(b" t")[1].split()[0])
                if ttl == -1:
                    assert t == -1
                else:
                    assert ttl - (time.time() - t0) - 2 <= t <= ttl, (i, t)

        # the short-TTL items expire on their original schedule, not SHORT_TTL after restart
        time.sleep(max(0.0, stored_at + SHORT_TTL + 1.1 - time.time()))
        got = _get_all(second.port, alive)
        assert sorted(got) == [i for i in alive if _ttl_of(i) != SHORT_TTL]
        assert "Traceback" not in second.stderr_text()
    finally:
        second.cleanup()


def _warnings_in(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if " WARNING " in ln or " ERROR " in ln
            or "Traceback" in ln]


def test_a_node_given_a_truncated_snapshot_starts_empty_with_one_log_line(tmp_path):
    snap = str(tmp_path / "node.snap")
    _good_file(snap, n=5000)
    data = open(snap, "rb").read()
    with open(snap, "wb") as f:
        f.write(data[:len(data) // 2])
    node = servers.start_memd("--snapshot", snap)
    try:
        assert _curr_items(node.port) == 0
        assert _command(node.port, b"set a 0 0 1\r\nx\r\n") == b"STORED\r\n"
        lines = _warnings_in(node.stderr_text())
        assert len(lines) == 1 and "snapshot" in lines[0], lines
    finally:
        node.cleanup()


def test_a_node_given_a_corrupt_snapshot_starts_empty_with_one_log_line(tmp_path):
    snap = str(tmp_path / "node.snap")
    _good_file(snap, n=5000)
    data = bytearray(open(snap, "rb").read())
    data[len(data) // 3] ^= 0xFF
    with open(snap, "wb") as f:
        f.write(data)
    node = servers.start_memd("--snapshot", snap)
    try:
        assert _curr_items(node.port) == 0
        lines = _warnings_in(node.stderr_text())
        assert len(lines) == 1 and "corrupt" in lines[0], lines
    finally:
        node.cleanup()


# -- end to end: kill -9 after a warm start ----------------------------------------------


def _get(port: int, key: bytes) -> bytes | None:
    reply = _command(port, b"get " + key + b"\r\n")
    while not reply.endswith(b"END\r\n"):
        reply = _command(port, b"get " + key + b"\r\n")
    if reply == b"END\r\n":
        return None
    head, _, rest = reply.partition(b"\r\n")
    return rest[:int(head.split()[3])]


def test_a_kill_after_a_warm_start_never_brings_back_overwritten_or_deleted_keys(tmp_path):
    # the sequence of issue 12: SIGTERM, start warm, overwrite k, delete d, kill -9, start
    snap = str(tmp_path / "node.snap")
    first = servers.start_memd("--snapshot", snap)
    try:
        assert _command(first.port, b"set k 0 0 3\r\nold\r\n") == b"STORED\r\n"
        assert _command(first.port, b"set d 0 0 1\r\nx\r\n") == b"STORED\r\n"
        _sigterm_and_wait(first)
    finally:
        first.cleanup()

    warm = servers.start_memd("--snapshot", snap)
    try:
        assert _get(warm.port, b"k") == b"old"          # the warm start worked
        assert _get(warm.port, b"d") == b"x"
        assert _command(warm.port, b"set k 0 0 3\r\nnew\r\n") == b"STORED\r\n"
        assert _command(warm.port, b"delete d\r\n") == b"DELETED\r\n"
        warm.proc.kill()
        warm.proc.wait(timeout=10)
    finally:
        warm.cleanup()

    after = servers.start_memd("--snapshot", snap)
    try:
        assert _get(after.port, b"k") != b"old"
        assert _get(after.port, b"d") is None
        assert _curr_items(after.port) == 0              # the crash meant a clean start
        assert "Traceback" not in after.stderr_text()
    finally:
        after.cleanup()


def test_a_node_removes_an_interrupted_save_and_never_loads_it(tmp_path):
    # a save killed after writing every block but before its rename leaves a
    # complete FILE.tmp: the next start must remove it unread
    snap = str(tmp_path / "node.snap")
    first = servers.start_memd("--snapshot", snap)
    try:
        assert _command(first.port, b"set k 0 0 3\r\nold\r\n") == b"STORED\r\n"
        _sigterm_and_wait(first)
    finally:
        first.cleanup()
    os.rename(snap, snap + ".tmp")

    node = servers.start_memd("--snapshot", snap)
    try:
        assert _get(node.port, b"k") is None
        assert _curr_items(node.port) == 0
        assert not os.path.exists(snap + ".tmp")
        assert "interrupted save" in node.stderr_text()
    finally:
        node.cleanup()
