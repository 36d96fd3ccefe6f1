"""Long runs, outside the default test run (`pytest -m slow` runs them).

They check correctness over time, never speed: a soak with hostile clients
must end with the node alive, no traceback and no wrong value read back.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_a_two_minute_soak_loses_nothing_and_keeps_the_node_up():
    done = subprocess.run([sys.executable, "-m", "tools.soak", "--minutes", "2",
                           "--connections", "100", "--sample", "20"],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "wrong values read back: 0" in done.stdout
    assert "RESULT: ok" in done.stdout
