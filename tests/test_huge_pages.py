"""The memd command starts itself over once with glibc's huge-page tunable
(memd/hugepages.py), keeps its command line and pid, and serves; the
environment can turn it off, and a tunable already there is kept."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from memd import hugepages
from test_cli import start_memd, stop

pytestmark = pytest.mark.skipif(
    not hugepages.wanted({}) if sys.platform.startswith("linux") else True,
    reason="needs Linux with glibc >= 2.35 and transparent huge pages not 'never'")


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [p.decode().partition("=") for p in f.read().split(b"\0") if p]
    return {k: v for k, _, v in pairs}


def _env(**changes) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MEMD_HUGE_PAGES")}
    env.update(changes)
    return env


def _answers(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"set k 0 0 1\r\nv\r\nget k\r\n")
        got = b""
        while not got.endswith(b"END\r\n"):
            got += s.recv(4096)
    return got


def test_the_command_restarts_itself_with_the_huge_page_tunable_and_serves():
    proc, m = start_memd("-p", "0", "-m", "16", env=_env())
    try:
        # the same pid (an exec, not a child) with the tunable; glibc shortens
        # the variable in place to its first entry once it has read it
        env = _environ(proc.pid)
        assert env["GLIBC_TUNABLES"] == hugepages.TUNABLE.split(":")[0]
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[1:5] == [b"-m", b"memd", b"-p", b"0"]
        assert _answers(int(m.group(2).rsplit(":", 1)[1])) == b"STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n"
    finally:
        stop(proc)


def test_memd_huge_pages_0_keeps_ordinary_pages():
    proc, m = start_memd("-p", "0", "-m", "16", env=_env(MEMD_HUGE_PAGES="0"))
    try:
        assert "GLIBC_TUNABLES" not in _environ(proc.pid)
        assert _answers(int(m.group(2).rsplit(":", 1)[1])).startswith(b"STORED")
    finally:
        stop(proc)


def test_other_glibc_tunables_are_kept_and_one_already_set_is_not_set_again(monkeypatch):
    started = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: started.append((path, argv, env)))
    monkeypatch.setattr(os, "environ", _env(GLIBC_TUNABLES="glibc.malloc.arena_max=2"))
    hugepages.restart_with_huge_pages()
    (path, argv, env), = started
    assert (path, argv) == (sys.executable, sys.orig_argv)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + hugepages.TUNABLE
    os.environ["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=0"
    hugepages.restart_with_huge_pages()
    assert len(started) == 1
