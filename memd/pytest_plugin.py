"""pytest fixtures for suites that need a memcached-compatible server.

Installed with memd (the ``pytest11`` entry point), so a test just asks::

    def test_cache(memd_server):
        client = pymemcache.Client(memd_server.address)

``memd_server``
    A fresh node per test (empty cache, its own port).  Options through the
    ``memd`` marker: ``@pytest.mark.memd(memory_mb=8, auth={"u": "p"},
    tls=(cert, key[, ca]), flags=["-I", "2m"])``.
``memd_session_server``
    One node for the whole session (faster; tests share its cache).
``memd_factory``
    ``memd_factory(**options)`` starts more nodes (a fleet); all stop at the
    end of the test.

Each yields a ``memd.testing.RunningNode``: ``.address`` (host, port),
``.host``, ``.port``, ``.node``.
"""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from .testing import serve


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "memd(memory_mb=None, auth=None, tls=None, flags=()): options of the "
                   "memd_server fixture's node")


def _start(stack: ExitStack, flags=(), **options):
    return stack.enter_context(serve(*flags, **options))


@pytest.fixture
def memd_server(request):
    marker = request.node.get_closest_marker("memd")
    options = dict(marker.kwargs) if marker else {}
    with ExitStack() as stack:
        yield _start(stack, **options)


@pytest.fixture(scope="session")
def memd_session_server():
    with ExitStack() as stack:
        yield _start(stack)


@pytest.fixture
def memd_factory():
    with ExitStack() as stack:
        yield lambda flags=(), **options: _start(stack, flags, **options)
