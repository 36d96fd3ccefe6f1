"""tools/bounds_probe.py at tiny sizes: every phase runs, measures and cleans up.

The figures at these sizes say nothing about the bounds (the tests of the
bounds themselves do); this checks that the tool works end to end, so the
full-size run documented in docs/operations.md can be repeated.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import servers
from tools import bounds_probe

TINY = ["--gets", "20", "--big-kib", "50", "--hold", "0.3", "--conns", "4",
        "--declared-kib", "4", "--trickle-seconds", "0.3", "--items", "2000",
        "--settle", "0.1"]


def run_probe(tmp_path, server: str, only: str = "abcde") -> dict:
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "-m", "tools.bounds_probe", *TINY, "--servers", server,
                           "--only", only, "--json", str(out)], cwd=str(servers.REPO_ROOT),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in only:                                # the printed table has every row
        assert f"({name}) {bounds_probe.ROWS[name]}\n  {server}" in done.stdout
    return json.loads(out.read_text())[server]


def test_every_phase_measures_memd_and_a_crash_after_a_warm_start_is_clean(tmp_path):
    figures = run_probe(tmp_path, "memd")
    a = figures["a"]
    assert a["alive"] and a["requests"] > 0 and a["max_ms"] >= a["p99_ms"] > 0
    for name in ("b", "c"):
        trickled = figures[name]
        assert trickled["sent"] > 0 and trickled["received"] > 0
        assert trickled["rss_per_byte"] is not None
    d = figures["d"]
    assert d["items_held"] == 2000 and d["alive"]
    assert d["read_dump"]["lines"] >= 2000          # one line per item, then END
    assert d["unread_dump"]["requests"] > 0
    e = figures["e"]
    assert (e["warm_k"], e["warm_d"]) == ("old", "x")
    assert e["after_k"] != "old" and e["after_d"] == "miss" and not e["resurrected"]


@pytest.mark.skipif(not servers.memcached_available(), reason=servers.MEMCACHED_MISSING)
def test_the_same_phases_run_against_memcached(tmp_path):
    figures = run_probe(tmp_path, "memcached", "abcd")
    assert figures["a"]["alive"] and figures["a"]["requests"] > 0
    assert figures["b"]["received"] > 0
    # SASL needs a cyrus-sasl setup for memcached; without one the row is "—"
    assert figures["c"] is None or figures["c"]["received"] > 0
    assert figures["d"]["items_held"] == 2000
