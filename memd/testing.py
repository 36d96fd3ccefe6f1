"""Run a memd node inside a Python process: ``memd.serve()``.

For test suites of any framework::

    with memd.serve(memory_mb=16) as node:
        client = pymemcache.Client(node.address)

The node runs its own trio loop in a background thread and listens on a
free port of 127.0.0.1 unless told otherwise; leaving the block shuts it
down gracefully (replies in flight are sent, ``--snapshot`` is written).
Signals are handled only when the node runs in the main thread, which a
background thread never is: the host process keeps its own handlers.

The pytest fixtures built on this are in ``memd.pytest_plugin``.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Iterator

from .auth import Authenticator
from .cli import UsageError, build, parse, serve_node

log = logging.getLogger("memd")

START_TIMEOUT = 10.0


class RunningNode:
    """A node started by ``serve``: where it listens, and the node itself."""

    def __init__(self, node, addresses: list[str]) -> None:
        self.node = node
        self.addresses = addresses          # as the startup line lists them
        first = addresses[0]
        if first.startswith("unix:"):
            self.host, self.port = first[5:], 0
            self.address = first[5:]
        else:
            host, _, port = first.rpartition(":")
            self.host, self.port = host.strip("[]"), int(port)
            self.address = (self.host, self.port)

    def __str__(self) -> str:
        return self.addresses[0]

    def __repr__(self) -> str:
        return f"<memd node {self}>"


def command_line(*flags: str, memory_mb: int | None = None, auth=None, tls=None,
                 host: str = "127.0.0.1", port: int = 0) -> list[str]:
    """The memd command line that ``serve`` runs with these options."""
    argv = ["-p", str(port), "-l", host]
    if memory_mb is not None:
        argv += ["-m", str(memory_mb)]
    if isinstance(auth, str):
        argv += ["-Y", auth]
    if tls is not None:
        cert, key, *ca = tls
        argv += ["--tls-cert", str(cert), "--tls-key", str(key)]
        if ca and ca[0]:
            argv += ["--tls-ca", str(ca[0])]
    return argv + [str(f) for f in flags]


@contextmanager
def serve(*flags: str, memory_mb: int | None = None, auth=None, tls=None,
          host: str = "127.0.0.1", port: int = 0) -> Iterator[RunningNode]:
    """Run a node in a background thread for the duration of the block.

    ``flags``: any of memd's command-line flags (``"-I", "2m"``).
    ``memory_mb``: ``-m``.  ``auth``: a ``{user: password}`` dict, or the
    path of a ``-Y`` file.  ``tls``: ``(cert, key)`` or ``(cert, key, ca)``
    PEM paths (the CA makes it mutual TLS).  A bad value raises ValueError
    with the message memd would print.
    """
    import trio

    try:
        args, warnings = parse(command_line(*flags, memory_mb=memory_mb, auth=auth, tls=tls,
                                            host=host, port=port))
        for line in warnings:
            log.warning("%s", line)
        node, ssl_context = build(args)
    except UsageError as exc:
        raise ValueError(str(exc)) from None
    if isinstance(auth, dict):
        node.auth = Authenticator([(u.encode(), p.encode()) for u, p in auth.items()])
    ready = threading.Event()
    started: list = []
    failure: list[BaseException] = []

    def on_ready(line: str, server) -> None:
        log.info("%s", line)
        started.append(server.addresses())
        ready.set()

    def run() -> None:
        try:
            trio.run(serve_node, node, args, ssl_context, on_ready)
        except BaseException as exc:        # reported to the caller below
            failure.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name=f"memd-{port}", daemon=True)
    thread.start()
    if not ready.wait(START_TIMEOUT) or failure:
        node.request_shutdown()
        raise RuntimeError(f"memd did not start: {failure[0] if failure else 'timeout'}")
    try:
        yield RunningNode(node, started[0])
    finally:
        node.request_shutdown()
        thread.join(START_TIMEOUT)
