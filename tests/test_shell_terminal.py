"""memd-cli in a real terminal: tmux runs it in an 80x24 pane, send-keys types,
capture-pane reads the screen.  Against a real node and a local 3-node fleet.

Waits poll the screen up to a generous deadline (a busy machine is slow to
draw); nothing here asserts on time.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest
from pymemcache.client.base import Client

from memd.cluster.client import ClusterClient
from tools.fleet import LocalFleet, memd_available

import servers

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")

WAIT = 30.0


class Pane:
    """One tmux server (its own socket) with one 80x24 window running ``argv``."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.socket = f"memd-test-{os.getpid()}-{id(self)}"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        command = f"env {exports} {shlex.join(argv)}; echo PROCESS-EXITED; stty -a; sleep 60"
        self._tmux("new-session", "-d", "-s", "t", "-x", "80", "-y", "24", command)

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True,
                              capture_output=True, text=True).stdout

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", "t", "-l", text)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t")

    def scrollback(self) -> str:
        """The screen and everything that scrolled off it."""
        return self._tmux("capture-pane", "-p", "-S", "-", "-t", "t")

    def wait_for(self, predicate, what: str) -> str:
        deadline = time.monotonic() + WAIT
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"screen never showed {what}:\n{screen}")
            time.sleep(0.1)

    def wait_text(self, text: str) -> str:
        return self.wait_for(lambda s: text in s, repr(text))

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def pane_factory(tmp_path):
    panes = []
    env = {"PYTHONPATH": str(servers.REPO_ROOT), "MEMD_CLI_HISTORY": str(tmp_path / "history"),
           "TERM": "xterm-256color"}

    def start(*args: str) -> Pane:
        pane = Pane([sys.executable, "-m", "memd.shell", *args], env)
        panes.append(pane)
        return pane

    start.history = tmp_path / "history"
    yield start
    for pane in panes:
        pane.close()


def prompt_ready(pane: Pane, prompt: str) -> None:
    pane.wait_for(lambda s: s.rstrip().endswith(prompt.rstrip()), f"the prompt {prompt!r}")


def test_typing_a_set_without_a_byte_count_asks_for_the_value_and_stores_it(memd_server,
                                                                              pane_factory):
    addr = "%s:%d" % memd_server.address
    pane = pane_factory(addr)
    prompt_ready(pane, f"{addr}>")
    pane.type("set term:k 5 0")
    pane.keys("Enter")
    pane.wait_text("value>")
    pane.type("typed in a terminal, ünïcode too")
    pane.keys("Enter")
    pane.wait_text("STORED")
    client = Client(memd_server.address)
    assert client.get("term:k") == "typed in a terminal, ünïcode too".encode()
    client.close()
    pane.type("get term:k")
    pane.keys("Enter")
    screen = pane.wait_text("never")
    row = next(ln for ln in screen.splitlines() if ln.startswith(" term:k"))
    assert "typed in a terminal" in row and " 5 " in row
    pane.keys("C-d")
    pane.wait_text("PROCESS-EXITED")
    assert "set term:k 5 0" in pane_factory.history.read_text()     # history persists
    assert "ünïcode" not in pane_factory.history.read_text()        # values are not kept


def test_completion_offers_stats_slabs(memd_server, pane_factory):
    addr = "%s:%d" % memd_server.address
    pane = pane_factory(addr)
    prompt_ready(pane, f"{addr}>")
    pane.type("stats sl")
    pane.wait_for(lambda s: re.search(r"^\s+slabs\s*$", s, re.M), "the completion menu")
    pane.keys("Tab")
    pane.wait_for(lambda s: f"{addr}> stats slabs" in s, "the completed line")
    pane.keys("Enter")
    pane.wait_text("total_malloced")
    # the per-class table's header: on the shared server, earlier tests may
    # have filled enough classes to scroll it off a 24-line screen
    history = pane.scrollback()
    assert "chunk" in history and "class" in history


def test_in_a_fleet_the_prompt_shows_the_node_that_owns_the_key_being_typed(pane_factory):
    if not memd_available():
        pytest.skip("memd not importable")
    with LocalFleet(n=3, backend="memd", first_host=110, extra_args=["-m", "16"]) as fleet:
        with ClusterClient(fleet.addresses) as client:
            owner = client.node_for("user:42")
        pane = pane_factory("--nodes", ",".join(fleet.addresses))
        prompt_ready(pane, "fleet(3)>")
        pane.type("set user:42 0 0")
        pane.wait_text(f"→ {owner}")
        pane.keys("Enter")
        pane.wait_text("value>")
        pane.type("v42")
        pane.keys("Enter")
        pane.wait_text("STORED")
        host, port = owner.split(":")
        c = Client((host, int(port)))
        assert c.get("user:42") == b"v42"
        c.close()
        pane.type("where user:42")
        pane.keys("Enter")
        pane.wait_text(f"user:42 → {owner}")


def _get_rate(screen: str, addr: str) -> float | None:
    for line in screen.splitlines():
        if line.startswith(addr):
            cell = line[len(addr):].split()[0]
            if cell == "-":
                return None
            scale = {"k": 1e3, "M": 1e6}.get(cell[-1], 1)
            return float(cell.rstrip("kM")) * scale
    return None


def test_top_shows_a_nodes_ops_rising_under_load_and_leaves_the_terminal_clean(
        memd_server_factory, pane_factory):
    node = memd_server_factory()
    addr = "%s:%d" % node.address
    pane = pane_factory("top", addr)
    idle = pane.wait_for(lambda s: _get_rate(s, addr) is not None, "a first rate")
    assert _get_rate(idle, addr) < 50            # only top's own stats reach the idle node
    assert len(idle.splitlines()) <= 24
    # what README shows: top watching a node while memd-bench loads it
    bench = subprocess.Popen([sys.executable, "-m", "tools.bench", "--server", addr, "-c", "2",
                              "--keys", "200", "--distribution", "zipf", "--duration", "60",
                              "-q"], cwd=str(servers.REPO_ROOT), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL,
                             env=dict(os.environ, PYTHONPATH=str(servers.REPO_ROOT)))
    try:
        busy = pane.wait_for(lambda s: (_get_rate(s, addr) or 0) > 200, "get/s rising")
        assert "▁" in busy or "█" in busy          # the sparkline
        pane.wait_for(lambda s: re.search(r"hot key:\d+ ", s), "the node's hottest keys")
        pane.keys("i")
        pane.wait_text("sort: items")
    finally:
        bench.kill()
        bench.wait(10)
    pane.keys("C-c")
    after = pane.wait_text("PROCESS-EXITED")
    assert "GET/s" not in after                    # the alternate screen is gone
    assert re.search(r"(?<!-)\bicanon\b", after) and re.search(r"(?<!-)\becho\b", after)
