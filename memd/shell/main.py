"""``memd-cli``: options, then the interactive shell, a script, or ``top``.

Exit status (scripts and ``-c``): 0 when every reply was an answer (a miss
and ``NOT_FOUND`` are answers), 1 when a reply was ``ERROR``,
``CLIENT_ERROR`` or ``SERVER_ERROR``, 2 when a node could not be reached
or the connection failed.
"""

from __future__ import annotations

import argparse
import getpass
import io
import json
import os
import sys

from rich.console import Console
from rich.text import Text

from . import commands, render
from .commands import Reply, tokens_of
from .recent import RecentKeys
from .connection import ConnectFailed, Options
from .fleet import Fleet, SingleNode

DEFAULT_ADDRESS = "127.0.0.1:11211"
EXIT_OK, EXIT_REPLY_ERROR, EXIT_CONNECTION = 0, 1, 2
TABLE_GROUPS = ("", "settings", "items", "slabs", "conns", "hotkeys", "sizes")
ENRICH_LIMIT = 100       # keys whose TTL and CAS a get's display fetches with `me`

HELP = """\
Type memcached commands as you would in telnet; they are sent as typed.
  set KEY FLAGS EXPTIME           (no byte count) asks for the value and counts it
  get KEY...                      shows value, flags, bytes, CAS and remaining TTL
  stats [settings|items|slabs|conns|hotkeys]   tables with units
Shell commands:
  nodes                           members, health, version
  where KEY                       the node(s) that own KEY
  top                             the live view (q or Ctrl-C to come back)
  help, exit                      (Ctrl-D leaves too)
"""


def build_parser(top: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="memd-cli top" if top else "memd-cli",
        description=("A live view of a node or a fleet." if top else
                     "A shell for memd and memcached nodes and fleets. "
                     "'memd-cli top' shows a live view."))
    p.add_argument("address", nargs="?", help=f"HOST:PORT (default {DEFAULT_ADDRESS})")
    if not top:
        p.add_argument("-c", "--command", action="append", default=[],
                       help="run this command and exit (repeatable); stdin is read when piped")
        p.add_argument("--raw", action="store_true", help="print the exact bytes of each reply")
        p.add_argument("--json", action="store_true", help="JSON output for stats and nodes")
        p.add_argument("--history", default=os.environ.get(
            "MEMD_CLI_HISTORY", os.path.expanduser("~/.memd_cli_history")),
            help="history file (default ~/.memd_cli_history, or $MEMD_CLI_HISTORY)")
    else:
        p.add_argument("--interval", type=float, default=1.0, help="seconds between redraws")
        p.add_argument("--sort", default="ops", help="ops, hit, items, mem, evictions, conns, name")
        p.add_argument("--once", action="store_true",
                       help="print one frame (two polls an interval apart) and exit")
    g = p.add_argument_group("fleet")
    g.add_argument("--cluster", metavar="HOST:PORT",
                   help="a configuration endpoint: members found with 'config get cluster'")
    g.add_argument("--nodes", help="a,b,c: the members, each HOST:PORT")
    g.add_argument("--ring", default="xxhash", choices=("xxhash", "ketama"),
                   help="key placement, as ClusterClient(ring=...)")
    g.add_argument("--replicas", type=int, help="copies of each key, as ClusterClient(replicas=...)")
    c = p.add_argument_group("connection")
    c.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply")
    c.add_argument("--tls", action="store_true", help="connect with TLS")
    c.add_argument("--tls-ca", help="CA bundle to verify the node's certificate")
    c.add_argument("--tls-cert", help="client certificate (PEM), for mutual TLS")
    c.add_argument("--tls-key", help="client private key (PEM)")
    c.add_argument("--tls-insecure", action="store_true",
                   help="do not verify the node's certificate")
    c.add_argument("--user", help="log in as this user")
    c.add_argument("--password", help="the password (asked for when --user is given without it)")
    c.add_argument("--sasl", action="store_true",
                   help="log in with SASL PLAIN on the binary protocol (memcached -S); "
                        "default: the text-protocol login (memd, memcached -Y)")
    return p


def options_from(args) -> Options:
    password = args.password
    if args.user is not None and password is None:
        password = getpass.getpass(f"password for {args.user}: ")
    return Options(timeout=args.timeout, tls=args.tls, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                   tls_key=args.tls_key, tls_insecure=args.tls_insecure, user=args.user,
                   password=password, sasl=args.sasl)


def target_from(args, options: Options):
    if args.cluster or args.nodes:
        nodes = [n.strip() for n in args.nodes.split(",") if n.strip()] if args.nodes else None
        return Fleet(options, nodes=nodes, cluster=args.cluster, ring=args.ring,
                     replicas=args.replicas)
    return SingleNode(args.address or DEFAULT_ADDRESS, options)


# -- running commands -------------------------------------------------------------------

class Shell:
    """Runs command lines against a target and shows the replies."""

    def __init__(self, target, console: Console, *, raw: bool = False, as_json: bool = False,
                 recent: RecentKeys | None = None, interactive: bool = False) -> None:
        self.target = target
        self.console = console
        self.raw = raw
        self.as_json = as_json
        self.recent = recent if recent is not None else RecentKeys()
        self.interactive = interactive
        self.status = EXIT_OK
        # what the shell itself has to say (unreachable nodes) goes to stderr,
        # so that --json and --raw output stays parseable
        self.errors = Console(stderr=True, highlight=False)

    # one command line (with its data block, if any)
    def run(self, line: bytes, data: bytes | None = None) -> None:
        tokens = tokens_of(line)
        if not tokens:
            return
        word = tokens[0].lower()
        for key in commands.keys_of(tokens):
            self.recent.add(key)
        if word == b"help":
            self.console.print(HELP, highlight=False, markup=False)
        elif word == b"nodes" and len(tokens) == 1:
            self.show_nodes()
        elif word == b"where" and len(tokens) == 2:
            self.show_where(tokens[1])
        elif word == b"watch":
            self.watch(line)
        elif word == b"top" and len(tokens) == 1 and self.interactive:
            from .top import run_top
            run_top(self.target)
        elif (word == b"stats" and not self.raw and len(tokens) <= 2
              and (tokens[1:] or [b""])[0].decode(errors="replace") in TABLE_GROUPS):
            self.show_stats(tokens[1].decode() if len(tokens) > 1 else "")
        else:
            for reply in self.target.request(line, data):
                self.show(reply, tokens)
        self.report_unreachable()

    def report_unreachable(self) -> None:
        """A fleet command went on without nodes it could not reach: say so (exit 2)."""
        while self.target.unreachable:
            self.status = EXIT_CONNECTION
            self.errors.print(Text(self.target.unreachable.pop(0), style=render.STYLE_ERROR))

    def watch(self, line: bytes) -> None:
        """``watch``: the node streams log lines until Ctrl-C, then the connection,
        which stays in watch mode, is dropped (the next command reconnects)."""
        if self.target.fleet:
            self.errors.print(Text("watch streams from one node: memd-cli HOST:PORT watch ...",
                                   style=render.STYLE_ERROR))
            self.status = max(self.status, EXIT_REPLY_ERROR)
            return
        conn = self.target.conn(self.target.address)
        conn.send(line + b"\r\n")
        conn.sock.settimeout(None)    # a quiet node is not a dead one: wait for Ctrl-C
        try:
            while True:
                got = conn.readline()
                if not got:
                    raise ConnectionError(f"{conn.address}: connection closed by the node")
                text = got.rstrip(b"\r\n")
                if self.raw:
                    self.show(Reply(raw=got, lines=[(text, None)], node=conn.address), [b"watch"])
                else:
                    self.console.print(render.reply_text(Reply(lines=[(text, None)])), end="")
                if commands.is_error_line(text):
                    self.status = max(self.status, EXIT_REPLY_ERROR)
                    return
        except KeyboardInterrupt:
            pass
        finally:
            conn.close()

    def _fail_if_error(self, reply: Reply) -> None:
        if reply.error:
            self.status = max(self.status, EXIT_REPLY_ERROR)

    def show(self, reply: Reply, tokens: list[bytes]) -> None:
        self._fail_if_error(reply)
        for line, block in reply.lines:
            if line.startswith(b"VALUE "):
                self.recent.add(line.split()[1])
        if self.raw:
            if self.target.fleet:
                sys.stderr.write(f"# {reply.node}\n")
                sys.stderr.flush()
            out = getattr(self.console.file, "buffer", None)
            if out is not None:
                self.console.file.flush()
                out.write(reply.raw)
                out.flush()
            else:
                self.console.file.write(reply.raw.decode("latin-1"))
            return
        if self.as_json:
            self.console.print_json(json.dumps({
                "node": reply.node, "error": reply.error,
                "lines": [line.decode(errors="replace") for line, _ in reply.lines],
                "values": {ln.split()[1].decode(errors="replace"): b.decode(errors="replace")
                           for ln, b in reply.lines if b is not None and ln.startswith(b"VALUE")},
            }))
            return
        if self.target.fleet:
            self.console.print(Text(f"({reply.node})", style=render.STYLE_DIM))
        cmd = tokens[0].lower()
        if cmd in commands.READS and not reply.error and any(
                line.startswith(b"VALUE ") for line, _ in reply.lines):
            self.console.print(render.values_table(reply, self._meta_for(reply)))
            missed = render.missed_keys(commands.keys_of(tokens), reply)
            if missed:
                self.console.print(Text("(miss: " + " ".join(
                    k.decode(errors="backslashreplace") for k in missed) + ")",
                    style=render.STYLE_MISS))
        elif cmd in commands.READS and not reply.error:
            self.console.print(Text("(miss)", style=render.STYLE_MISS))
        else:
            self.console.print(render.reply_text(reply), end="")

    def _meta_for(self, reply: Reply) -> dict:
        """Each hit's remaining TTL and CAS, from ``me`` (which counts no get, so
        looking does not change the stats being looked at)."""
        meta = {}
        keys = [line.split()[1] for line, _ in reply.lines if line.startswith(b"VALUE ")]
        for key in keys[:ENRICH_LIMIT]:
            owners = self.target.owners(key)
            if not owners:
                continue
            try:
                conn = self.target.conn(owners[0])
                if conn.binary is not None:
                    break
                info = render.parse_me(conn.request(b"me " + key).first)
            except ConnectionError:
                break
            if info is not None:
                meta[key] = info
        return meta

    def show_stats(self, group: str) -> None:
        if group == "hotkeys" and self.target.fleet:
            self.show_fleet_hot_keys()
            return
        replies = self.target.broadcast(b"stats " + group.encode() if group else b"stats")
        for reply in replies:
            self._fail_if_error(reply)
            if reply.error:
                self.console.print(Text(f"{reply.node}: ", style=render.STYLE_DIM) +
                                   render.reply_text(reply), end="")
        per_node = {r.node: render.parse_stat_lines(r) for r in replies if not r.error}
        if not per_node:
            return
        if self.as_json:
            if not self.target.fleet:
                self.console.print_json(json.dumps(_typed(next(iter(per_node.values())))))
            else:
                self.console.print_json(json.dumps({
                    "total": _typed(render.fleet_total(per_node)),
                    "nodes": {n: _typed(s) for n, s in per_node.items()}}))
            return
        if len(per_node) > 1 and group in ("", "settings", "conns"):
            self.console.print(render.fleet_stats_table(per_node, title=f"stats {group}".strip()))
            return
        for node, stats in per_node.items():
            if self.target.fleet:
                self.console.print(Text(f"({node})", style=render.STYLE_DIM))
            self.console.print(render.stats_view(group, stats))

    def show_fleet_hot_keys(self) -> None:
        hot = self.target.hot_keys(20)
        if self.as_json:
            self.console.print_json(json.dumps(
                [{"key": k.decode(errors="replace"), "requests": c} for k, c in hot]))
            return
        from rich.table import Table
        table = Table(title="fleet hot keys (merged)", show_edge=False, header_style="bold")
        for name in ("#", "key", "requests (est.)", "node"):
            table.add_column(name, justify="right" if name in ("#", "requests (est.)") else "left")
        for i, (key, count) in enumerate(hot, 1):
            table.add_row(str(i), key.decode(errors="backslashreplace"), str(count),
                          ",".join(self.target.owners(key)))
        self.console.print(table)

    def show_nodes(self) -> None:
        rows = self.target.nodes()
        if any(r["state"] != "live" for r in rows):
            self.status = EXIT_CONNECTION
        if self.as_json:
            self.console.print_json(json.dumps(rows))
        else:
            self.console.print(render.nodes_table(rows))

    def show_where(self, key: bytes) -> None:
        owners = self.target.owners(key)
        self.recent.add(key)
        if self.as_json:
            self.console.print_json(json.dumps({"key": key.decode(errors="replace"),
                                                "nodes": owners}))
            return
        text = Text(key.decode(errors="backslashreplace"), style=render.STYLE_KEY)
        text.append(" → " + (", ".join(owners) if owners else "no live node"))
        if len(owners) > 1:
            text.append(f"  (primary {owners[0]}, {len(owners) - 1} replica(s))",
                        style=render.STYLE_DIM)
        self.console.print(text)


def _typed(stats: dict) -> dict:
    out = {}
    for name, value in stats.items():
        n = render.number(value)
        out[name] = (int(n) if n is not None and n == int(n) and "." not in str(value)
                     else n if n is not None else value)
    return out


# -- scripts: -c and piped standard input ----------------------------------------------

def script_requests(stream: io.BufferedIOBase):
    """(line, data) pairs from a byte stream, as memcached would read them; a
    storage command one argument short takes the next line as its value."""
    while True:
        line = stream.readline()
        if not line:
            return
        line = line.rstrip(b"\r\n")
        tokens = tokens_of(line)
        if commands.wants_value(tokens):
            value = stream.readline().rstrip(b"\r\n")
            yield commands.with_length(tokens, value), value
            continue
        n = commands.data_length(tokens)
        if n is not None:
            data = stream.read(n)
            # the block should end the line; if it does not, send what the line
            # holds so that the node answers it as memcached would (bad data chunk)
            data += stream.readline().rstrip(b"\r\n")
            yield line, data
        else:
            yield line, None


def run_script(shell: Shell, stream) -> int:
    try:
        for line, data in script_requests(stream):
            shell.run(line, data)
    except (ConnectFailed, ConnectionError) as exc:
        shell.errors.print(Text(str(exc), style=render.STYLE_ERROR))
        return EXIT_CONNECTION
    return shell.status


# -- the interactive shell -------------------------------------------------------------

def run_interactive(shell: Shell, history_path: str) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    from .completion import ShellCompleter

    try:
        history = FileHistory(history_path)
    except OSError:
        history = InMemoryHistory()
    target = shell.target
    session = PromptSession(history=history, completer=ShellCompleter(shell.recent))
    values = PromptSession()      # values are not kept in the history file

    def owner_hint():
        if not target.fleet:
            return ""
        keys = commands.keys_of(tokens_of(session.default_buffer.text.encode()))
        if not keys:
            return ""
        owners = target.owners(keys[0])
        return "→ " + (", ".join(owners) if owners else "no live node")

    prompt = (f"fleet({len(target.addresses)})> " if target.fleet else f"{target.address}> ")
    shell.console.print(Text(f"memd-cli: connected to {', '.join(target.addresses)}. "
                             "Type help, or a memcached command.", style=render.STYLE_DIM))
    while True:
        try:
            text = session.prompt(prompt, rprompt=owner_hint)
        except KeyboardInterrupt:
            continue
        except EOFError:
            break
        line = text.strip().encode()
        tokens = tokens_of(line)
        if not tokens:
            continue
        if tokens[0].lower() in (b"exit", b"quit") and len(tokens) == 1:
            if tokens[0].lower() == b"quit":
                for reply in target.broadcast(b"quit"):
                    pass
            break
        data = None
        try:
            if commands.wants_value(tokens):
                data = values.prompt("value> ").encode()
                line = commands.with_length(tokens, data)
            else:
                n = commands.data_length(tokens)
                if n is not None:
                    parts = [values.prompt("data> ").encode()]
                    while len(b"\r\n".join(parts)) < n:
                        parts.append(values.prompt("data> ").encode())
                    data = b"\r\n".join(parts)
        except (KeyboardInterrupt, EOFError):
            continue
        try:
            shell.run(line, data)
        except (ConnectFailed, ConnectionError) as exc:
            shell.console.print(Text(f"{exc} (will reconnect on the next command)",
                                     style=render.STYLE_ERROR))
        except KeyboardInterrupt:
            # a reply may be half read: start the next command on fresh connections
            target.drop_connections()
            shell.console.print(Text("(interrupted)", style=render.STYLE_DIM))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["top"]:
        args = build_parser(top=True).parse_args(argv[1:])
        from .top import print_once, run_top
        try:
            target = target_from(args, options_from(args))
            if args.once or not sys.stdout.isatty():
                return print_once(target, interval=args.interval, sort=args.sort)
            return run_top(target, interval=args.interval, sort=args.sort)
        except (ConnectFailed, ConnectionError, ValueError) as exc:
            print(f"memd-cli: {exc}", file=sys.stderr)
            return EXIT_CONNECTION
    args = build_parser().parse_args(argv)
    console = Console(highlight=False)
    try:
        target = target_from(args, options_from(args))
        target.connect()
    except (ConnectFailed, ConnectionError, ValueError) as exc:
        Console(stderr=True).print(Text(f"memd-cli: {exc}", style=render.STYLE_ERROR))
        return EXIT_CONNECTION
    scripted = bool(args.command) or not sys.stdin.isatty()
    shell = Shell(target, console, raw=args.raw, as_json=args.json, interactive=not scripted)
    shell.report_unreachable()
    try:
        if args.command:
            return run_script(shell, io.BytesIO(b"".join(c.encode() + b"\n" for c in args.command)))
        if scripted:
            return run_script(shell, sys.stdin.buffer)
        return run_interactive(shell, args.history)
    finally:
        target.close()


if __name__ == "__main__":
    raise SystemExit(main())
