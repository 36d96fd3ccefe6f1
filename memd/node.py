"""What every connection of a node shares: settings, the store, counters.

The protocols read and update this; the server owns its lifetime.  No I/O.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from . import __version__
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

    __slots__ = ("fd", "addr", "listen_addr", "state", "last_cmd")

    def __init__(self, fd: int, addr: str, listen_addr: str) -> None:
        self.fd = fd
        self.addr = addr
        self.listen_addr = listen_addr
        self.state = "conn_parse_cmd"
        self.last_cmd = time.monotonic()


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
        # hooks filled in by the server / CLI
        self.cluster = None            # memd.cluster.config.ClusterConfig
        self.auth = None               # memd.auth.Authenticator
        self.shutdown_requested = False
        # `stats <name>` groups beyond the built-in ones: name -> node -> (name, value) pairs
        # (memd has no extstore, so `stats extstore` is empty, as in memcached without it)
        self.stats_groups = {b"extstore": lambda node: []}
        self.counters = {"cmd_meta": 0, "store_too_large": 0, "store_no_memory": 0,
                         "auth_cmds": 0, "auth_errors": 0}

    def request_shutdown(self) -> None:
        self.shutdown_requested = True
