"""README, followed as a new user would: start `memd` as it says, type its telnet
session, run its Python example, use the flags its table lists.

The only change to README's commands: `-p 0` instead of the fixed port 11211
(tests never take well-known ports); the port comes from the startup line.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from memd.cli import build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
READY = re.compile(r"^memd ready: .*listen=127\.0\.0\.1:(\d+) ")
COMMANDS = {"set", "add", "replace", "append", "prepend", "cas", "get", "gets", "gat", "gats",
            "incr", "decr", "delete", "touch", "stats", "version", "flush_all", "quit",
            "mg", "ms", "md", "ma", "mn", "verbosity"}
STORAGE = {"set", "add", "replace", "append", "prepend", "cas", "ms"}


@pytest.fixture(scope="module")
def readme_node():
    """`memd`, started as README's quick start does (plus -p 0)."""
    proc = subprocess.Popen([sys.executable, "-m", "memd", "-p", "0"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:
            m = READY.match(line)
            if m:
                break
        else:
            pytest.fail("memd printed no startup line")
        yield ("127.0.0.1", int(m.group(1)))
    finally:
        proc.terminate()
        proc.wait(10)


def telnet_session() -> list[tuple[list[str], list[str]]]:
    """README's telnet block as (lines typed, reply lines expected)."""
    block = re.search(r"```\n\$ telnet [^\n]*\n(.*?)```", README, re.S).group(1)
    steps: list[tuple[list[str], list[str]]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        typed = [lines[i]]
        if lines[i].split()[0] in STORAGE:
            i += 1
            typed.append(lines[i])         # the data line
        i += 1
        reply = []
        while i < len(lines) and lines[i].split()[0] not in COMMANDS:
            reply.append(lines[i])
            i += 1
        steps.append((typed, reply))
    return steps


def _matches(expected: list[str], got: list[str]) -> bool:
    """Expected lines in order; `...` stands for any number of lines."""
    pattern = "".join(".*?" if e == "..." else re.escape(e + "\n") for e in expected)
    return re.fullmatch(pattern, "".join(g + "\n" for g in got), re.S) is not None


def test_readme_telnet_session_answers_as_shown(readme_node):
    steps = telnet_session()
    assert len(steps) >= 5 and steps[-1][0] == ["quit"]
    with socket.create_connection(readme_node, timeout=5) as s:
        f = s.makefile("rb")
        for typed, expected in steps:
            s.sendall(b"".join(t.encode() + b"\r\n" for t in typed))    # telnet sends CR LF
            if typed == ["quit"]:
                assert f.read() == b""
                continue
            last = expected[-1]
            got = []
            while not got or got[-1] != last:
                line = f.readline()
                assert line, f"connection closed after {got}"
                got.append(line.decode().rstrip("\r\n"))
            assert _matches(expected, got), (typed, expected, got)


def test_readme_python_example_runs(readme_node):
    code = re.search(r"```python\n(from pymemcache.client.base import Client\n.*?)```",
                     README, re.S).group(1)
    exec(code.replace("11211", str(readme_node[1])), {})


def test_every_flag_in_readme_table_exists_and_every_flag_is_in_the_table():
    table = README[README.index("## Flags"):README.index("## In your tests")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", " ".join(r.split("|")[1] for r in rows)))
    named = {"-v" if re.fullmatch("-v+", n) else n for n in named}     # -vv is -v twice
    ours = {o for a in build_parser()._actions for o in a.option_strings}
    assert named <= ours, named - ours
    # every memd flag is in the table, by one of its spellings
    missing = [a.option_strings for a in build_parser()._actions
               if a.option_strings and not set(a.option_strings) & named
               ]
    assert not missing
