"""The portable I/O path: what runs where there is no epoll (macOS, Windows).

CI also runs the whole protocol suite with MEMD_PORTABLE_IO=1 (.ci/run); these
tests keep the path covered in the default run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import memd
import wire

ROOT = Path(__file__).resolve().parent.parent


def test_a_python_without_epoll_imports_and_serves_text_meta_and_binary():
    code = textwrap.dedent('''
        import select
        import trio                           # trio picks its own I/O manager (epoll here) first
        del select.epoll                      # then memd sees what macOS and Windows have
        import memd.server
        assert memd.server.portable_io()
        import socket, memd
        with memd.serve() as node:
            s = socket.create_connection(node.address, timeout=5)
            s.sendall(b"set k 0 0 1\\r\\nv\\r\\nmg k v\\r\\n")
            data = b""
            while not data.endswith(b"VA 1\\r\\nv\\r\\n"):
                data += s.recv(100)
            b = socket.create_connection(node.address, timeout=5)
            b.sendall(bytes([0x80, 0x0a]) + bytes(22))     # binary no-op
            reply = b.recv(24)
            assert reply[:2] == bytes([0x81, 0x0a]), reply
            print("served", data)
    ''')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MEMD_PORTABLE_IO", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "STORED" in done.stdout


def test_the_environment_variable_selects_the_portable_path_on_linux(monkeypatch):
    from memd.server import portable_io
    monkeypatch.setenv("MEMD_PORTABLE_IO", "1")
    assert portable_io()
    with memd.serve("-c", "2", "--idle-timeout", "1") as node:
        # limits and the idle timeout hold on this path too
        with wire.connect(node) as a, wire.connect(node) as b:
            assert a.exchange(b"version\r\n").data.startswith(b"VERSION")
            assert b.exchange(b"version\r\n").data.startswith(b"VERSION")
            with wire.connect(node) as c:
                assert c.read_until_close().data == b"ERROR Too many open connections\r\n"
            assert a.read_until_close(timeout=5).closed       # idle for over a second
