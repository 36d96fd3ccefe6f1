"""Shared fixtures: memcached (the oracle) and memd server processes.

Fixtures
--------
memcached_server_factory / memd_server_factory
    Function-scoped factories: call with extra flags (``"-I", "2k"``) to get a
    running ServerProcess; every process started is killed at teardown.
memcached_server / memd_server
    Session-scoped default instances (no extra flags).  Tests that share them
    must isolate themselves with unique key prefixes (see ``key_prefix``) or
    ``flush_all``.
server_kind / any_server
    ``any_server`` is parametrized over both kinds, for tests that must pass
    against memcached as well as memd (memcached passing proves the test).
clock / conn
    In process, no sockets: a FakeClock, and a text+meta session on a fresh
    Node driven by it (``conn(bytes) -> reply``, with ``.node`` and ``.proto``).

When memd cannot start (not written yet, crashed on import) the memd fixtures
fail with "memd did not start: <stderr>"; the memcached fixtures skip when the
binary is not installed.
"""

from __future__ import annotations

import itertools
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import servers  # noqa: E402
from memd.cache.clock import FakeClock  # noqa: E402
from memd.node import Node  # noqa: E402
from memd.protocol.meta import MetaCommands  # noqa: E402
from memd.protocol.text import TextProtocol  # noqa: E402


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def conn(clock):
    node = Node(clock=clock)
    proto = TextProtocol(node, MetaCommands(node))

    def send(data: bytes) -> bytes:
        return proto.feed(data)

    send.node = node
    send.proto = proto
    return send


def _require_memcached() -> None:
    if not servers.memcached_available():
        pytest.skip(servers.MEMCACHED_MISSING)


def _start(kind: str, flags: tuple[str, ...]) -> servers.ServerProcess:
    if kind == "memcached":
        _require_memcached()
    try:
        return servers.start(kind, *flags)
    except servers.ServerStartError as e:
        # The message already reads "<kind> did not start ...: <stderr>".
        pytest.fail(str(e), pytrace=False)


class _Factory:
    """Starts servers of one kind; kills them all on teardown."""

    def __init__(self, kind: str):
        self.kind = kind
        self.started: list[servers.ServerProcess] = []

    def __call__(self, *flags: str) -> servers.ServerProcess:
        s = _start(self.kind, tuple(flags))
        self.started.append(s)
        return s

    def close(self) -> None:
        for s in self.started:
            s.cleanup()
        self.started.clear()


@pytest.fixture
def memcached_server_factory():
    f = _Factory("memcached")
    yield f
    f.close()


@pytest.fixture
def memd_server_factory():
    f = _Factory("memd")
    yield f
    f.close()


@pytest.fixture
def server_factory():
    """Factory taking the kind first: server_factory("memd", "-I", "2k")."""
    factories = {"memcached": _Factory("memcached"), "memd": _Factory("memd")}

    def make(kind: str, *flags: str) -> servers.ServerProcess:
        return factories[kind](*flags)

    yield make
    for f in factories.values():
        f.close()


@pytest.fixture(scope="session")
def memcached_server():
    s = _start("memcached", ())
    yield s
    s.cleanup()


@pytest.fixture(scope="session")
def memd_server():
    s = _start("memd", ())
    yield s
    s.cleanup()


def _diff_flags() -> tuple[str, ...]:
    return ()


@pytest.fixture(scope="session")
def diff_pair():
    """(memcached, memd) started with the same flags, for differential tests.

    With MEMD_DIFF_SELFTEST=1 the second server is another memcached: the
    differential harness must then pass, which proves the generators keep the
    byte stream in step and the normalisers do not hide real differences.
    """
    second = "memcached" if os.environ.get("MEMD_DIFF_SELFTEST") == "1" else "memd"
    mc = _start("memcached", _diff_flags())
    try:
        md = _start(second, _diff_flags())
    except BaseException:
        mc.cleanup()
        raise
    yield mc, md
    md.cleanup()
    mc.cleanup()


@pytest.fixture(params=["memcached", "memd"])
def server_kind(request):
    return request.param


@pytest.fixture
def any_server(server_kind, request):
    """The session-scoped server of the parametrized kind."""
    return request.getfixturevalue(f"{server_kind}_server")


_prefix_counter = itertools.count()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix no other test in this session uses (isolation without flush)."""
    return f"t{os.getpid()}_{next(_prefix_counter)}_"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "teardown" or not report.failed:
        return
    # A failing test shows what every live server said on stderr: a memd
    # traceback is usually the real cause of a differential mismatch.
    for s in list(servers.RUNNING):
        text = s.stderr_text(4000)
        if text.strip():
            report.sections.append((f"stderr of {s!r}", text))


def pytest_sessionfinish(session, exitstatus):
    # Belt and braces: nothing outlives the test session.
    for s in list(servers.RUNNING):
        s.cleanup()
