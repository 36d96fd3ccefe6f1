"""What every connection of a node shares: settings, the store, counters.

The protocols read and update this; the server owns its lifetime.  No I/O.
docs/design.md describes the layers.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from . import __version__
from .cache.prefixes import PrefixStats
from .cache.rebalance import Rebalancer
from .cache.store import ItemStore, StoreSettings
from .watch import WatchHub

# Clients parse the version to pick features, so report the memcached
# release whose behaviour memd reproduces, with memd's own after it.
VERSION = f"1.6.18-memd-{__version__}"


@dataclass
class NodeSettings:
    port: int = 11211
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    memory_limit_mb: int = 64
    conn_limit: int = 1024
    max_item_size: int = 1 << 20
    factor: float = 1.25
    slab_min_size: int = 48
    evictions: bool = True
    verbosity: int = 0
    enable_shutdown: bool = False
    threads: int = 1
    idle_timeout: int = 0
    flush_enabled: bool = True
    recent_replies_mb: int = -1     # -1: the store's default (a sixteenth of the memory limit)
    detail_delimiter: str = ":"     # -D: between a key's prefix and the rest, for `stats detail`
    unix_socket: str | None = None  # -s: listen on this UNIX socket instead of TCP
    unix_mask: int = 0o700          # -a: its access mask
    backlog: int = 1024             # -b
    protocol: str = "auto"          # -B: auto (by the first byte), ascii or binary
    tls: bool = False               # the listeners speak TLS (set by the CLI)
    tls_cert: str | None = None     # what `stats settings` reports as ssl_*
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_verify_mode: int = 0        # memcached's ssl_verify_mode, 0-3
    tls_min_version: int = 2        # memcached's ssl_min_version, 0-3 (TLS 1.0-1.3)
    tls_ciphers: str | None = None
    # Reply bytes one connection may have produced and not yet sent before
    # memd stops reading and parsing its input (see memd.protocol.wire).
    # memcached's nearest knob is -o read_buf_mem_limit, a node-wide cap on
    # read buffers; memcached bounds output per connection by not reading
    # while its output is queued, as memd does past this.
    conn_output_limit: int = 4 << 20

    def store_settings(self) -> StoreSettings:
        return StoreSettings(
            mem_limit=self.memory_limit_mb << 20,
            item_size_max=self.max_item_size,
            factor=self.factor,
            min_size=self.slab_min_size,
            evictions=self.evictions,
            recent_bytes=self.recent_replies_mb << 20 if self.recent_replies_mb >= 0 else -1,
        )


def listen_entry(text: str) -> tuple[str, int | None, bool]:
    """One ``-l`` entry as memcached reads it: ``[notls:]host[:port]``, an IPv6
    host in brackets when a port follows.  (host, port or None, TLS allowed)."""
    tls = not text.startswith("notls:")
    text = text if tls else text[len("notls:"):]
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad listen address: {text!r}")
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    if not host or (port is not None and not (port.isdigit() and int(port) <= 65535)):
        raise ValueError(f"bad listen address: {text!r}")
    return host, None if port is None else int(port), tls


class ConnInfo:
    """One connection as `stats conns` reports it."""

    __slots__ = ("fd", "addr", "listen_addr", "last_cmd", "proto", "sending")

    def __init__(self, fd: int, addr: str, listen_addr: str) -> None:
        self.fd = fd
        self.addr = addr
        self.listen_addr = listen_addr
        self.last_cmd = time.monotonic()
        self.proto = None          # the connection's protocol, once its first byte came
        self.sending = False       # replies queued that the socket has not taken

    def state(self, asking_fd: int) -> str:
        """memcached's name for what the connection is doing; the one asking
        for `stats conns` is parsing that command."""
        if self.fd == asking_fd:
            return "conn_parse_cmd"
        if self.sending:
            return "conn_mwrite"
        if self.proto is None:
            return "conn_new_cmd"
        return self.proto.state


class Node:
    def __init__(self, settings: NodeSettings | None = None, store: ItemStore | None = None,
                 clock=None) -> None:
        self.settings = settings or NodeSettings()
        self.store = store or ItemStore(self.settings.store_settings(), clock)
        self.rebalancer = Rebalancer(self.store, automove=1)
        self.watch = WatchHub(self.store)
        self.crawler_enabled = True
        self.started = time.time()
        self.pid = os.getpid()
        self.version = VERSION
        # connection counters (the server updates them)
        self.curr_connections = 0
        self.total_connections = 0
        self.rejected_connections = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.conns: dict[int, ConnInfo] = {}
        self.listeners: list[str] = []
        self.listener_fds: dict[str, int] = {}
        # (input held, reply bytes queued) over all connections; the server replaces it
        self.buffered = lambda: (0, 0)
        # hooks filled in by the server / CLI
        self.cluster = None            # memd.cluster.config.ClusterConfig
        self.auth = None               # memd.auth.Authenticator
        self.shutdown_requested = False
        # `stats <name>` groups beyond the built-in ones: name -> node -> (name, value) pairs
        # (memd has no extstore, so `stats extstore` is empty, as in memcached without it)
        self.stats_groups = {b"extstore": lambda node: []}
        self.counters = {"cmd_meta": 0, "auth_cmds": 0, "auth_errors": 0}
        self.prefixes = PrefixStats(self.settings.detail_delimiter.encode()[:1] or b":")

    def request_shutdown(self) -> None:
        self.shutdown_requested = True

    def reset_stats(self) -> None:
        """`stats reset` (every protocol's): the store's counters and the node's."""
        self.store.reset_stats()
        for k in self.counters:
            self.counters[k] = 0
        self.total_connections = self.rejected_connections = 0

    def stats_detail(self, arg: bytes) -> bytes | None:
        """`stats detail on|off|dump`: the reply, or None for a bad argument.
        Off stops the counting and keeps the figures, as memcached does."""
        if arg == b"on":
            self.store.detail = self.prefixes
            return b"OK\r\n"
        if arg == b"off":
            self.store.detail = None
            return b"OK\r\n"
        if arg == b"dump":
            return self.prefixes.dump()
        return None
