"""Certificates for the TLS tests, made by the openssl recipe of docs/security.md.

The tests run the recipe's shell block itself, so a recipe that stopped
producing certificates clients accept would fail them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "security.md"


def recipe() -> str:
    text = DOC.read_text()
    section = text[text.index("### Certificates clients accept"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def make_pki(directory: Path) -> dict[str, str]:
    """Run the recipe in ``directory``; the paths of what it made."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["bash", "-euc", recipe()], cwd=directory, check=True, capture_output=True)
    return {name: str(directory / name) for name in
            ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
