"""pymemcache's own integration suite, run against memd (and memcached).

pymemcache ships `pymemcache/test/test_integration.py` with a conftest that
takes `--server/--port` and marks the tests `integration`.  We run it in a
subprocess against a server started for the purpose.  The memcached run is the
sanity check of this harness: if it does not pass there, the harness is wrong,
not memd.  The TLS test is skipped by pymemcache itself (needs a TLS server).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pymemcache_test = pytest.importorskip("pymemcache.test")
TEST_DIR = Path(pymemcache_test.__file__).resolve().parent
SUITE = TEST_DIR / "test_integration.py"

# The whole suite takes a few seconds against memcached; the bound is for a
# server that hangs.
SUITE_TIMEOUT = 180


def run_pymemcache_suite(server, tmp_path: Path) -> subprocess.CompletedProcess:
    # An empty ini file of our own: otherwise pytest could pick up this
    # project's pyproject (its addopts/markers) depending on the cwd.
    ini = tmp_path / "pytest.ini"
    ini.write_text("[pytest]\nmarkers =\n    integration: needs a running server\n")
    argv = [
        sys.executable, "-m", "pytest", str(SUITE),
        "-c", str(ini), "--rootdir", str(TEST_DIR),
        "--server", server.host, "--port", str(server.port),
        "-m", "integration", "-p", "no:cacheprovider", "-q", "-rfEs",
        "--override-ini", "addopts=",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SUITE_TIMEOUT
    )


@pytest.mark.parametrize("kind", ["memcached", "memd"])
def test_pymemcache_integration_suite_passes(server_factory, tmp_path, kind):
    server = server_factory(kind)
    proc = run_pymemcache_suite(server, tmp_path)
    out = proc.stdout + proc.stderr
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    passed = re.search(r"(\d+) passed", summary)
    assert proc.returncode == 0, f"pymemcache suite failed against {kind}:\n{out[-12000:]}"
    # Dozens of tests (client classes x key prefixes x serdes); a handful
    # passing would mean the options or markers were not applied.
    assert passed and int(passed.group(1)) >= 40, out[-4000:]
    assert "failed" not in summary and "error" not in summary, summary
