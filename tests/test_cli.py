"""The command line: memcached's flags, one-line errors with status 2, and a
graceful exit on SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from memd.cli import build_parser, parse_size, settings_from
from memd.node import Node

import servers


def run_memd(*args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memd", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args", [
    ["--bogus"], ["-p", "x"], ["-p", "70000"], ["-m", "0"], ["-I", "1x"], ["-I", "512"],
    ["-U", "11211"], ["-c", "-1"], ["-o", "nonsense=1"], ["-f", "1.0"],
])
def test_a_bad_flag_prints_one_line_and_exits_2(args):
    done = run_memd(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memd: error:"), done.stderr


def test_version_and_help():
    done = run_memd("-V")
    assert done.returncode == 0 and "1.6.18" in done.stdout
    done = run_memd("-h")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())      # argparse wraps lines
    for flag in ("--port", "--listen", "--memory-limit", "--conn-limit", "--max-item-size",
                 "--factor", "--slab-min-size", "--disable-evictions", "--udp-port",
                 "--enable-shutdown", "--threads", "one node per core"):
        assert flag in text


def test_memcached_flags_mean_what_they_mean_in_memcached():
    args = build_parser().parse_args(["-p", "11311", "-l", "127.0.0.1,127.0.0.2", "-m", "128",
                                      "-c", "10", "-I", "2m", "-f", "1.5", "-n", "64", "-M",
                                      "-vv", "-A", "-t", "4"])
    s = settings_from(args)
    assert (s.port, s.listen, s.memory_limit_mb, s.conn_limit) == (11311, ["127.0.0.1", "127.0.0.2"], 128, 10)
    assert (s.max_item_size, s.factor, s.slab_min_size) == (2 << 20, 1.5, 64)
    assert (s.evictions, s.verbosity, s.enable_shutdown, s.threads) == (False, 2, True, 4)
    assert parse_size("1k") == 1024 and parse_size("1m") == 1 << 20 and parse_size("4096") == 4096


def test_recent_replies_budget_defaults_to_a_sixteenth_of_memory_and_can_be_turned_off():
    default = Node(settings_from(build_parser().parse_args(["-m", "128"])))
    assert default.store.recent.budget == 8 << 20
    off = Node(settings_from(build_parser().parse_args(["--recent-replies-mb", "0"])))
    assert off.store.recent.budget == 0
    off.store.store(0, b"k", 0, 0, b"v")
    out = []
    off.store.fetch_text([b"k", b"k"], out)
    assert out == [b"VALUE k 0 1\r\nv\r\n"] * 2 and not off.store.recent.replies


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_shuts_down_gracefully_with_status_0(signum):
    port = servers.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "memd", "-p", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "memd did not listen"
                time.sleep(0.05)
        conn.sendall(b"set k 0 0 1\r\nv\r\n")
        assert conn.recv(100) == b"STORED\r\n"
        time.sleep(0.3)               # the signal handlers are installed once trio runs
        proc.send_signal(signum)
        assert proc.wait(10) == 0
        assert conn.recv(100) == b""  # the open connection was closed, not reset mid-reply
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
