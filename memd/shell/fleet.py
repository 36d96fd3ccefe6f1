"""Where a command goes: one node, or a fleet behind memd's ClusterClient ring.

Both targets answer the same questions (``request``, ``stats``, ``nodes``,
``owners``), so the shell and ``top`` do not care which they talk to.

In a fleet the ClusterClient does what it does for applications: discovery
(``--cluster``: ``config get cluster`` polled), the ring (``--ring``), dead
node detection and, when it takes them, ``replicas``.  The shell asks it
which node owns a key and then sends the typed bytes itself, on a
connection of its own to that node, so that the reply is shown exactly.
A multi-key get is split by owner and the VALUE blocks merged under one END,
as the application would see them; a command without a key (``version``,
``flush_all``, ``stats``) goes to every live node.
"""

from __future__ import annotations

import inspect

from ..cluster.client import ClusterClient
from . import commands
from .commands import Reply
from .connection import Connection, Options

WRITES = commands.STORAGE + (b"cas", b"delete", b"incr", b"decr", b"touch", b"ms", b"md", b"ma")


def _stats_dicts(replies: list[Reply]) -> dict[str, dict[str, str]]:
    from .render import parse_stat_lines
    return {r.node: parse_stat_lines(r) for r in replies if not r.error}


class _Target:
    options: Options
    conns: dict[str, Connection]

    def conn(self, address: str) -> Connection:
        c = self.conns.get(address)
        if c is None:
            c = self.conns[address] = Connection(address, self.options)
        if not c.connected:
            c.connect()
        return c

    def drop_connections(self) -> None:
        for c in self.conns.values():
            c.close()

    close = drop_connections

    def node_row(self, address: str, state: str = "live") -> dict:
        row = {"node": address, "state": state}
        if state != "live":
            return row
        try:
            c = self.conn(address)
            stats = c.stats()
        except ConnectionError:
            row["state"] = "down"
            return row
        row["version"] = stats.get("version", "")
        row["items"] = int(stats.get("curr_items", 0))
        row["uptime"] = int(stats.get("uptime", 0))
        return row

    def stats(self, group: str = "") -> dict[str, dict[str, str]]:
        line = b"stats " + group.encode() if group else b"stats"
        return _stats_dicts(self.broadcast(line))


class SingleNode(_Target):
    fleet = False

    def __init__(self, address: str, options: Options) -> None:
        self.address = address
        self.options = options
        self.conns: dict[str, Connection] = {}
        self.unreachable: list[str] = []

    @property
    def addresses(self) -> list[str]:
        return [self.address]

    def connect(self) -> None:
        self.conn(self.address)

    def request(self, line: bytes, data: bytes | None = None) -> list[Reply]:
        return [self.conn(self.address).request(line, data)]

    broadcast = request

    def owners(self, key: bytes) -> list[str]:
        return [self.address]

    def nodes(self) -> list[dict]:
        return [self.node_row(self.address)]


class Fleet(_Target):
    fleet = True

    def __init__(self, options: Options, *, nodes: list[str] | None = None,
                 cluster: str | None = None, ring: str = "xxhash",
                 replicas: int | None = None) -> None:
        self.options = options
        self.conns = {}
        self.unreachable: list[str] = []     # errors met since the shell last looked
        kwargs = {"ring": ring, "connect_timeout": options.timeout, "timeout": options.timeout}
        ctx = options.ssl_context()
        if ctx is not None:
            kwargs["tls_context"] = ctx
        accepted = inspect.signature(ClusterClient).parameters
        if replicas is not None:
            if "replicas" in accepted:
                kwargs["replicas"] = replicas
            elif replicas > 1:
                raise ValueError("this memd's ClusterClient does not take replicas yet")
        self.replicas = replicas or 1
        if cluster:
            self.client = ClusterClient(config_endpoint=cluster, **kwargs)
        else:
            self.client = ClusterClient(nodes or [], **kwargs)

    @property
    def addresses(self) -> list[str]:
        return self.client.servers

    def connect(self) -> None:
        """Reach every member; a fleet with some nodes down is still usable
        (they are reported), one with none reachable is not."""
        errors = []
        for address in self.live():
            try:
                self.conn(address)
            except ConnectionError as exc:
                errors.append(exc)
        if errors and len(errors) == len(self.live()):
            raise errors[0]
        self.unreachable.extend(str(e) for e in errors)

    def live(self) -> list[str]:
        states = self.client.node_states()
        return [a for a in self.addresses if states.get(a, "live") == "live"]

    def owners(self, key: bytes) -> list[str]:
        """The node(s) that hold a key: the ring's pick, then its replicas."""
        nodes_for = getattr(self.client, "nodes_for", None)
        if nodes_for is not None:
            return list(nodes_for(key))
        if self.replicas > 1:
            return self.client._ring.get_nodes(key, self.replicas)
        node = self.client.node_for(key)
        return [node] if node else []

    def request(self, line: bytes, data: bytes | None = None) -> list[Reply]:
        tokens = commands.tokens_of(line)
        keys = commands.keys_of(tokens)
        if not keys:
            return self.broadcast(line, data)
        cmd = tokens[0].lower()
        if cmd in commands.READS and len(keys) > 1:
            return [self._split_get(tokens, keys)]
        owners = self.owners(keys[0])
        if not owners:
            raise ConnectionError("no live node owns this key")
        targets = owners if cmd in WRITES else owners[:1]
        return [self.conn(node).request(line, data) for node in targets]

    def broadcast(self, line: bytes, data: bytes | None = None) -> list[Reply]:
        """Every live node's reply; nodes that cannot be reached are noted in
        ``unreachable`` rather than failing the others."""
        replies = []
        for node in self.live():
            try:
                replies.append(self.conn(node).request(line, data))
            except ConnectionError as exc:
                self.unreachable.append(str(exc))
        if not replies and self.unreachable:
            raise ConnectionError(self.unreachable.pop())
        return replies

    def _split_get(self, tokens: list[bytes], keys: list[bytes]) -> Reply:
        head = tokens[:len(tokens) - len(keys)]
        groups: dict[str, list[bytes]] = {}
        for key in keys:
            owners = self.owners(key)
            if owners:
                groups.setdefault(owners[0], []).append(key)
        merged = Reply(node=",".join(groups))
        raw = []
        for node, part in groups.items():
            reply = self.conn(node).request(b" ".join(head + part))
            for line, block in reply.lines:
                if line != b"END":
                    merged.lines.append((line, block))
            raw.append(reply.raw[:-5] if reply.raw.endswith(b"END\r\n") else reply.raw)
        merged.lines.append((b"END", None))
        merged.raw = b"".join(raw) + b"END\r\n"
        return merged

    def nodes(self) -> list[dict]:
        states = self.client.node_states()
        return [self.node_row(a, states.get(a, "live")) for a in self.addresses]

    def hot_keys(self, n: int = 20) -> list[tuple[bytes, int]]:
        """ClusterClient.hot_keys over the shell's own connections, which carry
        its login and TLS settings."""
        from .. import hotkeys
        from .render import parse_stat_lines
        replies = self.broadcast(b"stats hotkeys %d" % (2 * n))
        return hotkeys.merge((hotkeys.parse_stats(parse_stat_lines(r)) for r in replies
                              if not r.error), n)

    def close(self) -> None:
        self.drop_connections()
        self.client.close()
