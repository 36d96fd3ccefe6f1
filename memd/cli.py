"""Command line: memcached's flags and meanings, plus memd's own long options."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .node import VERSION, Node, NodeSettings

DESCRIPTION = (
    "memd: a memcached-compatible cache node. memd runs one event loop per "
    "process; to use several cores, run one node per core (each on its own "
    "port or address) and spread keys across them with a consistent-hashing "
    "client (memd.cluster).")


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"memd: error: {message} (see memd --help)\n")


def parse_size(text: str) -> int:
    """memcached's -I syntax: bytes, or a number with a k or m suffix."""
    t = text.strip().lower()
    mult = 1
    if t.endswith("k"):
        mult, t = 1 << 10, t[:-1]
    elif t.endswith("m"):
        mult, t = 1 << 20, t[:-1]
    try:
        value = int(t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size: {text!r}") from None
    if value < 1024:
        raise argparse.ArgumentTypeError("item max size cannot be less than 1024 bytes")
    if value > 1 << 30:
        raise argparse.ArgumentTypeError("cannot set item size limit higher than 1 gigabyte")
    return value


def _int_at_least(text: str, minimum: int, rule: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{rule}: {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "must be greater than 0")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "must not be negative")


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="memd", description=DESCRIPTION)
    p.add_argument("-p", "--port", type=port_number, default=11211,
                   help="TCP port to listen on (default: 11211; 0 picks a free one)")
    p.add_argument("-l", "--listen", default="127.0.0.1",
                   help="interface(s) to listen on, comma separated (default: 127.0.0.1)")
    p.add_argument("-m", "--memory-limit", type=positive_int, default=64, metavar="MB",
                   help="item memory in megabytes, metadata included (default: 64)")
    p.add_argument("-c", "--conn-limit", type=positive_int, default=1024,
                   help="max simultaneous connections (default: 1024)")
    p.add_argument("-I", "--max-item-size", type=parse_size, default=1 << 20, metavar="SIZE",
                   help="max item size, k/m suffixes allowed (default: 1m)")
    p.add_argument("-f", "--factor", type=float, default=1.25,
                   help="chunk size growth factor (default: 1.25)")
    p.add_argument("-n", "--slab-min-size", type=positive_int, default=48, metavar="BYTES",
                   help="min space for key+value+flags (default: 48)")
    p.add_argument("-M", "--disable-evictions", action="store_true",
                   help="return an error on memory exhausted instead of evicting")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="verbose (-v) or very verbose (-vv) logging to stderr")
    p.add_argument("-U", "--udp-port", type=int, default=0,
                   help="UDP port; memd has no UDP support, so only 0 (off) is accepted")
    p.add_argument("-A", "--enable-shutdown", action="store_true",
                   help="enable the shutdown command")
    p.add_argument("-t", "--threads", type=positive_int, default=1,
                   help="accepted for compatibility; memd runs one event loop per process "
                        "(run one node per core instead)")
    p.add_argument("-u", "--user", help="accepted for compatibility; memd does not change user")
    p.add_argument("-o", "--extended", action="append", default=[], metavar="OPTS",
                   help="memcached extended options, comma separated: idle_timeout=N, "
                        "ssl_chain_cert=FILE, ssl_key=FILE, ssl_ca_cert=FILE")
    p.add_argument("--recent-replies-mb", type=non_negative_int, metavar="MB",
                   help="memory for the replies of recently read keys, which repeated "
                        "gets are answered from (default: a sixteenth of -m; 0: off)")
    p.add_argument("--max-conn-output", type=parse_size, default=4 << 20, metavar="SIZE",
                   help="reply bytes a connection may have unsent before memd stops reading it "
                        "(default 4m; memcached: -o read_buf_mem_limit is node-wide)")
    p.add_argument("--idle-timeout", type=int, default=0,
                   help="close connections idle this many seconds (default: 0, never)")
    p.add_argument("-Y", "--auth-file", help="user:password file; enables authentication")
    p.add_argument("-Z", "--enable-ssl", action="store_true", help="enable TLS (memcached's -Z)")
    p.add_argument("--tls-cert", help="TLS certificate chain (PEM)")
    p.add_argument("--tls-key", help="TLS private key (PEM)")
    p.add_argument("--tls-ca", help="CA bundle; clients must present a certificate it signed")
    p.add_argument("--tls-port", type=port_number, help="serve TLS on this port, plain on -p")
    p.add_argument("--cluster-nodes", help="host:port,... announced by `config get cluster`")
    p.add_argument("--cluster-file", help="file of host:port lines announced by `config get cluster`"
                                          " (re-read when it changes)")
    p.add_argument("--metrics-port", type=port_number,
                   help="serve Prometheus metrics over HTTP on this port")
    p.add_argument("--snapshot", metavar="FILE",
                   help="load the cache from FILE at start, write it there on graceful shutdown")
    p.add_argument("-V", "--version", action="version", version=f"memd {__version__} ({VERSION})")
    return p


def apply_extended(args, parser) -> None:
    for group in args.extended:
        for opt in group.split(","):
            key, _, value = opt.partition("=")
            if key == "idle_timeout":
                args.idle_timeout = int(value)
            elif key == "ssl_chain_cert":
                args.tls_cert = value
            elif key == "ssl_key":
                args.tls_key = value
            elif key == "ssl_ca_cert":
                args.tls_ca = value
            elif key in ("modern", "no_modern", "slab_reassign", "slab_automove", "lru_crawler",
                         "lru_maintainer", "hashpower", "maxconns_fast"):
                pass        # memcached tunables memd has no equivalent knob for
            else:
                parser.error(f"unknown extended option: {key}")


def settings_from(args) -> NodeSettings:
    return NodeSettings(
        port=args.port,
        listen=[h.strip() for h in args.listen.split(",") if h.strip()],
        memory_limit_mb=args.memory_limit,
        conn_limit=args.conn_limit,
        max_item_size=args.max_item_size,
        factor=args.factor,
        slab_min_size=args.slab_min_size,
        evictions=not args.disable_evictions,
        verbosity=args.verbose,
        enable_shutdown=args.enable_shutdown,
        threads=args.threads,
        idle_timeout=args.idle_timeout,
        recent_replies_mb=-1 if args.recent_replies_mb is None else args.recent_replies_mb,
        conn_output_limit=args.max_conn_output,
    )


def make_node(args, parser) -> Node:
    node = Node(settings_from(args))
    if args.cluster_nodes or args.cluster_file:
        from .cluster.config import ClusterConfig
        node.cluster = ClusterConfig.from_options(args.cluster_nodes, args.cluster_file)
    if args.auth_file:
        from .auth import Authenticator
        try:
            node.auth = Authenticator.from_file(args.auth_file)
        except OSError as exc:
            parser.error(f"cannot read auth file: {exc}")
    return node


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_extended(args, parser)
    if args.udp_port:
        parser.error("UDP is not supported by memd; use -U 0 (the default)")
    if args.factor <= 1.0:
        parser.error("factor must be greater than 1")
    if args.max_item_size > (args.memory_limit << 20) // 2 and args.max_item_size > 1 << 20:
        parser.error("cannot set item size limit higher than 1/2 of memory max")
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING if not args.verbose else (logging.INFO if args.verbose == 1 else logging.DEBUG),
        format="%(asctime)s memd[%(process)d] %(levelname)s %(message)s")
    node = make_node(args, parser)
    ssl_context = None
    if args.enable_ssl or args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            parser.error("TLS needs both --tls-cert and --tls-key")
        from .tls import server_context
        try:
            ssl_context = server_context(args.tls_cert, args.tls_key, args.tls_ca)
        except (OSError, ValueError) as exc:
            parser.error(f"cannot load TLS certificate: {exc}")
        st = node.settings
        st.tls, st.tls_cert, st.tls_key, st.tls_ca = True, args.tls_cert, args.tls_key, args.tls_ca

    if args.snapshot:
        from . import snapshot
        snapshot.load(node.store, args.snapshot)
        node.on_shutdown = lambda: snapshot.save(node.store, args.snapshot)
    if args.metrics_port is not None:
        from .metrics import start_metrics_server
        start_metrics_server(node, args.metrics_port, node.settings.listen[0])

    import trio

    from .server import Server
    server = Server(node, ssl_context=ssl_context, tls_port=args.tls_port)
    try:
        trio.run(server.serve)
    except OSError as exc:
        # a port in use, an address we cannot bind: one line, as memcached does
        print(f"memd: failed to listen: {exc}", file=sys.stderr)
        sys.exit(71)
    except KeyboardInterrupt:
        pass
