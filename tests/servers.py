"""Start and stop cache server processes for tests.

Two kinds of server are started the same way: the real memcached binary (the
oracle for differential tests) and memd (`python -m memd`).  Each process
listens on a fresh 127.0.0.1 port, has its stderr captured in a temp file
(shown in the report when a test fails), and is always killed at teardown.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

MEMCACHED_MISSING = "memcached binary not installed (apt-get install memcached)"

# How long a server may take to accept its first connection.  memcached is
# ready in milliseconds; memd is a Python process importing trio.
START_TIMEOUT = 10.0

# Every server process started by this module and not yet stopped; conftest
# uses it to attach stderr to failure reports and to kill leftovers.
RUNNING: list["ServerProcess"] = []


class ServerStartError(RuntimeError):
    """A server process exited or never accepted a connection."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memcached_available() -> bool:
    return shutil.which("memcached") is not None


def _has_flag(flags: tuple[str, ...], *names: str) -> bool:
    return any(f in names or any(f.startswith(n + "=") for n in names) for f in flags)


class ServerProcess:
    """One running server; `kind` is "memcached" or "memd"."""

    def __init__(self, kind: str, argv: list[str], port: int, flags: tuple[str, ...]):
        self.kind = kind
        self.argv = argv
        self.port = port
        self.host = "127.0.0.1"
        self.flags = flags
        self._stderr = tempfile.NamedTemporaryFile(
            prefix=f"{kind}-{port}-", suffix=".stderr", delete=False
        )
        self.stderr_path = self._stderr.name
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __repr__(self) -> str:
        return f"<{self.kind} {self.host}:{self.port} {' '.join(self.flags)}>"

    def stderr_text(self, limit: int = 8000) -> str:
        try:
            data = Path(self.stderr_path).read_bytes()
        except OSError:
            return ""
        text = data.decode("utf-8", "replace")
        return text[-limit:]

    def start(self) -> "ServerProcess":
        env = dict(os.environ)
        # memd must be importable from the checkout even when not installed.
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            cwd=str(REPO_ROOT),
            env=env,
        )
        RUNNING.append(self)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise ServerStartError(
                    f"{self.kind} did not start (exit code {self.proc.returncode}; "
                    f"argv {self.argv}): {self.stderr_text()}"
                )
            try:
                with socket.create_connection(self.address, timeout=0.5):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"{self.kind} did not start (no connection on port {self.port} "
                    f"within {START_TIMEOUT}s; argv {self.argv}): {self.stderr_text()}"
                )
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - kill is final
                pass
        if self in RUNNING:
            RUNNING.remove(self)
        try:
            self._stderr.close()
        except OSError:
            pass

    def cleanup(self) -> None:
        self.stop()
        try:
            os.unlink(self.stderr_path)
        except OSError:
            pass


def memcached_argv(port: int, flags: tuple[str, ...]) -> list[str]:
    argv = ["memcached", "-U", "0", "-l", "127.0.0.1", "-p", str(port), "-u", "root"]
    if not _has_flag(flags, "-m", "--memory-limit"):
        argv += ["-m", "64"]
    return argv + list(flags)


def memd_argv(port: int, flags: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "memd", "-p", str(port), "-l", "127.0.0.1", *flags]


def start_memcached(*flags: str) -> ServerProcess:
    port = free_port()
    return ServerProcess("memcached", memcached_argv(port, flags), port, flags).start()


def start_memd(*flags: str) -> ServerProcess:
    port = free_port()
    return ServerProcess("memd", memd_argv(port, flags), port, flags).start()


def start(kind: str, *flags: str) -> ServerProcess:
    if kind == "memcached":
        return start_memcached(*flags)
    if kind == "memd":
        return start_memd(*flags)
    raise ValueError(kind)
