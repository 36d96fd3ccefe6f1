"""Command line: memcached 1.6.18's flags and ``-o`` options, memd's own long
options, a TOML settings file (``--config``), and the startup line.

Every flag and ``-o`` option memcached accepts is accepted here: applied where
memd has the behaviour, otherwise taken with one warning saying it has no
effect (``NO_EFFECT`` and ``OPTIONS`` below say which).  Every bad value
gives one line on stderr and exit status 2 before anything listens.
docs/operations.md has the table of what memd does with each.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__
from .hugepages import restart_with_huge_pages
from .node import VERSION, Node, NodeSettings, listen_entry

log = logging.getLogger("memd")

DESCRIPTION = (
    "memd: a memcached-compatible cache node. memd runs one event loop per "
    "process; to use several cores, run one node per core (each on its own "
    "port or address) and spread keys across them with a consistent-hashing "
    "client (memd.cluster).")


class UsageError(Exception):
    """A bad flag, option or settings-file value: one line, exit 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows a flag's default unless it is merely "not given"."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


# -- value parsers (argparse types; also used for -o values and the config file) ------

def _number(text: str, kind=int, what: str = "number"):
    try:
        return kind(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {what}: {text!r}") from None


def _int_in(minimum: int, maximum: int | None = None, rule: str | None = None):
    def parse(text: str) -> int:
        value = _number(text)
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(
                rule or (f"must be between {minimum} and {maximum}: {text!r}" if maximum is not None
                         else f"must be at least {minimum}: {text!r}"))
        return value
    return parse


positive_int = _int_in(1, rule="must be greater than 0")
non_negative_int = _int_in(0, rule="must not be negative")
port_number = _int_in(0, 65535, rule="port out of range")


def positive_float(text: str) -> float:
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


def growth_factor(text: str) -> float:
    value = _number(text, float)
    if not value > 1.0:
        raise argparse.ArgumentTypeError("factor must be greater than 1")
    return value


def parse_size(text: str) -> int:
    """memcached's -I syntax: bytes, or a number with a k or m suffix."""
    t = str(text).strip().lower()
    mult = 1
    if t.endswith("k"):
        mult, t = 1 << 10, t[:-1]
    elif t.endswith("m"):
        mult, t = 1 << 20, t[:-1]
    value = _number(t, what="size") * mult
    if value < 1024:
        raise argparse.ArgumentTypeError("item max size cannot be less than 1024 bytes")
    if value > 1 << 30:
        raise argparse.ArgumentTypeError("cannot set item size limit higher than 1 gigabyte")
    return value


def octal_mask(text: str) -> int:
    try:
        value = int(str(text), 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid octal mask: {text!r}") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"mask out of range: {text!r}")
    return value


def one_char(text: str) -> str:
    if len(text) != 1:
        raise argparse.ArgumentTypeError(f"must be a single character: {text!r}")
    return text


def readable_file(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("empty file name")
    try:
        with open(text, "rb"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {exc.strerror or exc}") from None
    return text


def writable_path(text: str) -> str:
    """A file memd will create or replace: its directory must exist and be writable."""
    if not text:
        raise argparse.ArgumentTypeError("empty file name")
    directory = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"directory does not exist: {directory}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"directory is not writable: {directory}")
    if os.path.exists(text) and not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {text}")
    return text


def listen_list(text: str) -> str:
    """-l: comma-separated ``[notls:]host[:port]`` entries."""
    entries = [e.strip() for e in str(text).split(",") if e.strip()]
    if not entries:
        raise argparse.ArgumentTypeError("no address to listen on")
    for entry in entries:
        try:
            listen_entry(entry)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def non_empty(text: str) -> str:
    if not str(text).strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def user_name(text: str) -> str:
    non_empty(text)
    try:
        import pwd
    except ImportError:              # no users to switch to (Windows)
        return text
    try:
        pwd.getpwnam(text)
    except KeyError:
        raise argparse.ArgumentTypeError(f"no such user: {text!r}") from None
    return text


# -- flags ------------------------------------------------------------------------------

# Flags memcached has and memd takes without acting on them: dest -> (flag, why).
NO_EFFECT = {
    "threads": ("-t", "memd runs one event loop per process (run one node per core)"),
    "reqs_per_event": ("-R", "memd answers every command of a read before reading again"),
    "disable_cas": ("-C", "memd always keeps CAS values"),
    "large_pages": ("-L", "memd uses transparent huge pages by default where glibc and the "
                          "kernel allow (MEMD_HUGE_PAGES=0 turns them off)"),
    "disable_dumping": ("-X", "stats cachedump and lru_crawler metadump stay available"),
    "disable_watch": ("-W", "the watch command stays available"),
    "napi_ids": ("-N", "memd has no per-NAPI-id worker threads"),
}


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    """The parser; ``defaults=False`` leaves unset flags out of the namespace
    (how ``--config`` tells which values came from where)."""
    p = OneLineErrorParser(prog="memd", description=DESCRIPTION,
                           formatter_class=HelpFormatter,
                           argument_default=None if defaults else argparse.SUPPRESS)
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    add = p.add_argument

    def switch(*names, **kw):
        """A flag without a value (off unless given)."""
        add(*names, action="store_true", default=d(False), **kw)

    add("--config", metavar="FILE", default=d(None),
        help="TOML settings file: long flag names as keys, -o options under [options]; "
             "flags on the command line override it")
    add("-p", "--port", type=port_number, default=d(11211),
        help="TCP port to listen on (0 picks a free one)")
    add("-U", "--udp-port", type=port_number, default=d(0),
        help="UDP port; memd has no UDP, so a non-zero port is accepted with a warning")
    add("-s", "--unix-socket", metavar="FILE", type=writable_path, default=d(None),
        help="UNIX socket to listen on (text, meta and binary; no TLS); disables TCP, as "
             "in memcached")
    add("-a", "--unix-mask", type=octal_mask, default=d("700"), metavar="MASK",
        help="access mask of the UNIX socket, in octal")
    switch("-A", "--enable-shutdown", help="enable the shutdown command")
    add("-l", "--listen", type=listen_list, default=d("127.0.0.1"),
        help="interface(s) to listen on, comma separated; host:port picks a port per "
             "interface, notls:host a plain listener when TLS is on (as memcached)")
    switch("-d", "--daemon",
           help="run in the background (the startup line is printed before detaching)")
    switch("-r", "--enable-coredumps",
           help="raise the core file size limit to its maximum")
    add("-u", "--user", type=user_name, default=d(None),
        help="switch to this user after binding (only when started as root)")
    add("-m", "--memory-limit", type=positive_int, default=d(64), metavar="MB",
        help="item memory in megabytes, metadata included")
    switch("-M", "--disable-evictions",
           help="return an error on memory exhausted instead of evicting")
    add("-c", "--conn-limit", type=positive_int, default=d(1024),
        help="max simultaneous connections")
    switch("-k", "--lock-memory",
           help="lock the process's memory in RAM (mlockall; a warning if refused)")
    add("-v", "--verbose", action="count", default=d(0),
        help="verbose (-v) or very verbose (-vv) logging to stderr")
    switch("-i", "--license", help="print memd's license and exit")
    add("-V", "--version", action="version", version=f"memd {__version__} ({VERSION})")
    add("-P", "--pidfile", metavar="FILE", type=writable_path, default=d(None),
        help="write the process id to FILE (removed at exit)")
    add("-f", "--factor", "--slab-growth-factor", type=growth_factor, default=d(1.25),
        help="chunk size growth factor")
    add("-n", "--slab-min-size", type=positive_int, default=d(48), metavar="BYTES",
        help="min space for key+value+flags")
    switch("-L", "--enable-largepages", dest="large_pages",
           help="accepted; huge pages are on by default (MEMD_HUGE_PAGES=0: off)")
    add("-D", "--detail-delimiter", dest="detail_delimiter", type=one_char, default=d(":"), metavar="CHAR",
        help="delimiter between key prefixes and ids in `stats detail`")
    add("-t", "--threads", type=positive_int, default=d(1),
        help="accepted; memd runs one event loop per process (run one node per core)")
    add("-R", "--max-reqs-per-event", dest="reqs_per_event", type=positive_int,
        default=d(20), help="accepted; no effect in memd")
    switch("-C", "--disable-cas", help="accepted; no effect in memd (CAS values are always kept)")
    add("-b", "--listen-backlog", type=positive_int, default=d(1024),
        help="backlog of the listening sockets")
    add("-B", "--protocol", choices=("auto", "ascii", "binary"), default=d("auto"),
        help="protocol spoken: ascii (text and meta), binary, or auto (by the first byte)")
    add("-I", "--max-item-size", type=parse_size, default=d(1 << 20), metavar="SIZE",
        help="max item size, k/m suffixes allowed")
    switch("-S", "--enable-sasl",
           help="require SASL (binary protocol only, as memcached); users from -Y or the "
             "file named by $MEMCACHED_SASL_PWDB")
    switch("-F", "--disable-flush-all", help="disable the flush_all command")
    switch("-X", "--disable-dumping",
           help="accepted; no effect in memd")
    switch("-W", "--disable-watch", help="accepted; no effect in memd")
    add("-Y", "--auth-file", type=readable_file, default=d(None),
        help="user:password file; enables authentication (re-read on SIGHUP)")
    add("-e", "--memory-file", type=writable_path, default=d(None), metavar="FILE",
        help="restartable cache: memd keeps it as a snapshot file (see --snapshot)")
    switch("-Z", "--enable-ssl", help="enable TLS (memcached's -Z)")
    add("-o", "--extended", action="append", default=d([]), metavar="OPTS",
        help="memcached's extended options, comma separated (see docs/operations.md)")
    add("-N", "--napi-ids", "--napi_ids", dest="napi_ids", type=positive_int, default=d(None),
        help="accepted; no effect in memd")
    add("--recent-replies-mb", type=non_negative_int, metavar="MB", default=d(None),
        help="memory for the replies of recently read keys, which repeated "
             "gets are answered from (default: a sixteenth of -m; 0: off)")
    add("--max-conn-output", type=parse_size, default=d(4 << 20), metavar="SIZE",
        help="reply bytes a connection may have unsent before memd stops reading it "
             "(default 4m; memcached's -o read_buf_mem_limit is node-wide, not this)")
    add("--idle-timeout", type=non_negative_int, default=d(0),
        help="close connections idle this many seconds (0: never)")
    add("--tls-cert", type=readable_file, default=d(None), help="TLS certificate chain (PEM)")
    add("--tls-key", type=readable_file, default=d(None), help="TLS private key (PEM)")
    add("--tls-ca", type=readable_file, default=d(None),
        help="CA bundle; clients must present a certificate it signed")
    add("--tls-port", type=port_number, default=d(None),
        help="serve TLS on this port, plain on -p")
    add("--cluster-nodes", type=non_empty, default=d(None),
        help="host:port,... announced by `config get cluster`")
    add("--cluster-file", type=readable_file, default=d(None),
        help="file of host:port lines announced by `config get cluster` (re-read when it changes)")
    add("--cluster-dns", metavar="NAME", type=non_empty, default=d(None),
        help="announce the targets of NAME's SRV records (_memcache._tcp.NAME: a Kubernetes "
             "headless Service), looked up every few seconds")
    add("--metrics-port", type=port_number, default=d(None),
        help="serve Prometheus metrics over HTTP on this port")
    add("--snapshot", metavar="FILE", type=writable_path, default=d(None),
        help="load the cache from FILE at start, write it there on graceful shutdown")
    return p


# -- memcached's -o options -----------------------------------------------------------

def _choice(*names):
    def parse(text: str) -> str:
        if text not in names:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(names)}: {text!r}")
        return text
    return parse


FLAG = None           # an option written without a value (``-o lru_crawler``)
ANY = str             # a value memd does not use (checked only for presence)
# options memcached also takes without a value, and the value that means
VALUE_IF_BARE = {"slab_automove": "1", "resp_obj_mem_limit": ""}

# name -> (value parser, where it goes).  Where: an attribute of the parsed
# arguments (applied), a callable (applied), or a string starting with "-"
# (no effect: the reason, logged once).
OPTIONS: dict = {
    # applied
    "idle_timeout": (non_negative_int, "idle_timeout"),
    "ssl_chain_cert": (readable_file, "ssl_chain_cert"),
    "ssl_key": (readable_file, "ssl_key"),
    "ssl_ca_cert": (readable_file, "ssl_ca_cert"),
    "ssl_verify_mode": (_int_in(0, 3), "ssl_verify_mode"),
    "ssl_min_version": (_int_in(0, 3), "ssl_min_version"),
    "ssl_ciphers": (non_empty, "ssl_ciphers"),
    "slab_automove": (_int_in(0, 2), "slab_automove"),
    "no_slab_automove": (FLAG, lambda a, v: setattr(a, "slab_automove", 0)),
    "lru_crawler": (FLAG, lambda a, v: setattr(a, "lru_crawler", True)),
    "no_lru_crawler": (FLAG, lambda a, v: setattr(a, "lru_crawler", False)),
    "maxconns_fast": (FLAG, lambda a, v: None),     # memd's only behaviour: ERROR, close
    "slab_reassign": (FLAG, lambda a, v: None),     # memd's default: pages can move
    # no effect in memd
    "no_maxconns_fast": (FLAG, "-memd always answers a connection over the limit at once"),
    "no_slab_reassign": (FLAG, "-slab pages can always be moved (slabs reassign)"),
    "hashpower": (_int_in(12, 64), "-memd's hash table grows by itself"),
    "no_hashexpand": (FLAG, "-memd's hash table always grows one bucket at a time"),
    "slab_automove_ratio": (positive_float, "-memd's automover has no ratio knob"),
    "slab_automove_window": (_int_in(3, rule="slab_automove_window must be > 2"), "-memd's automover has no window knob"),
    "slab_automove_freeratio": (positive_float, "-memd's automover has no free ratio knob"),
    "tail_repair_time": (_int_in(10, rule="cannot set tail_repair_time to less than 10 seconds"), "-memd has no item reference counts to repair"),
    "hash_algorithm": (_choice("jenkins", "murmur3", "xxh3"),
                       "-memd's index always hashes with xxh3"),
    "lru_crawler_sleep": (_int_in(0, 1000000), "-the crawler runs in memd's housekeeping tick"),
    "lru_crawler_tocrawl": (non_negative_int, "-the crawler runs in memd's housekeeping tick"),
    "lru_maintainer": (FLAG, "-memd has no segmented LRU"),
    "no_lru_maintainer": (FLAG, "-memd has no segmented LRU"),
    "hot_lru_pct": (_int_in(1, 80), "-memd has no segmented LRU"),
    "warm_lru_pct": (_int_in(1, 80), "-memd has no segmented LRU"),
    "hot_max_factor": (positive_float, "-memd has no segmented LRU"),
    "warm_max_factor": (positive_float, "-memd has no segmented LRU"),
    "temporary_ttl": (non_negative_int, "-memd has no segmented LRU"),
    "watcher_logbuf_size": (positive_int, "-memd's watchers have their own 1 MiB buffer"),
    "worker_logbuf_size": (positive_int, "-memd has no worker threads"),
    "slab_sizes": (non_empty, "-memd's slab classes follow -f and -n"),
    "slab_chunk_max": (positive_int, "-memd's slab classes follow -f and -n"),
    "track_sizes": (FLAG, "-stats sizes is not tracked by memd"),
    "inline_ascii_resp": (FLAG, "-a no-op in memcached 1.6 as well"),
    "no_inline_ascii_resp": (FLAG, "-a no-op in memcached 1.6 as well"),
    "modern": (FLAG, "-a no-op in memcached 1.6 as well"),
    "no_modern": (FLAG, "-memd has one behaviour, memcached 1.6's"),
    "no_chunked_items": (FLAG, "-memd's large items are never chunked"),
    "drop_privileges": (FLAG, "-memd has no seccomp sandbox"),
    "no_drop_privileges": (FLAG, "-memd has no seccomp sandbox"),
    "resp_obj_mem_limit": (ANY, "-deprecated in memcached too"),
    "read_buf_mem_limit": (non_negative_int, "-memd has no shared read buffer pool"),
    "sock_cookie_id": (non_negative_int, "-memd sets no socket cookie"),
    "ssl_keyformat": (_int_in(0, 3), "-keys are read as PEM"),
    "ssl_wbuf_size": (positive_int, "-trio sizes the TLS output buffer"),
    "ssl_session_cache": (FLAG, "-Python's TLS server keeps its own session cache"),
    "ssl_kernel_tls": (FLAG, "-Python's ssl module does no kernel TLS offload"),
    **{name: (parse, "-memd has no extstore (external storage)") for name, parse in (
        ("ext_path", non_empty), ("ext_page_size", positive_int), ("ext_wbuf_size", positive_int),
        ("ext_threads", positive_int), ("ext_io_depth", positive_int),
        ("ext_item_size", positive_int), ("ext_item_age", non_negative_int),
        ("ext_low_ttl", non_negative_int), ("ext_recache_rate", non_negative_int),
        ("ext_compact_under", non_negative_int), ("ext_drop_under", non_negative_int),
        ("ext_max_sleep", non_negative_int), ("ext_max_frag", positive_float),
        ("ext_drop_unread", FLAG))},
}


def split_options(groups) -> list[tuple[str, str | None]]:
    out = []
    for group in groups:
        for opt in str(group).split(","):
            key, sep, value = opt.strip().partition("=")
            if not key:
                raise UsageError(f"empty extended option in -o {group!r}")
            out.append((key, value if sep else None))
    return out


def apply_extended(args) -> list[str]:
    """Apply the -o options to ``args``; the warnings for those without effect."""
    warnings = []
    for key, value in split_options(args.extended):
        if key not in OPTIONS:
            raise UsageError(f"unknown extended option: -o {key}")
        parse, target = OPTIONS[key]
        if value is None:
            value = VALUE_IF_BARE.get(key)
        if parse is FLAG:
            if value not in (None, ""):
                raise UsageError(f"-o {key} takes no value")
        elif not value and not (key in VALUE_IF_BARE and value == VALUE_IF_BARE[key]):
            raise UsageError(f"-o {key} needs a value ({key}=...)")
        else:
            try:
                value = parse(value)
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"-o {key}: {exc}") from None
        if callable(target):
            target(args, value)
        elif target.startswith("-"):
            warnings.append(f"-o {key} has no effect in memd: {target[1:]}")
        else:
            setattr(args, target, value)
    return warnings


# -- the settings file (--config) --------------------------------------------------------

def _toml_load(path: str) -> dict:
    try:
        import tomllib
    except ImportError:                      # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"--config: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {path}: {exc}") from None


def _long_flags(parser) -> dict[str, argparse.Action]:
    """Long flag name without ``--`` -> its action."""
    out = {}
    for action in parser._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt not in ("--help", "--version", "--config"):
                out[opt[2:]] = action
    return out


def config_argv(path: str, parser) -> list[str]:
    """The TOML file as the command line it stands for (flags later override it)."""
    data = _toml_load(path)
    flags = _long_flags(parser)
    argv: list[str] = []
    for key, value in data.items():
        if key == "options":
            if not isinstance(value, dict):
                raise UsageError(f"--config {path}: [options] must be a table")
            for name, v in value.items():
                if v is False:
                    continue
                argv += ["-o", name if v is True else f"{name}={v}"]
            continue
        action = flags.get(key)
        if action is None:
            raise UsageError(f"--config {path}: unknown setting {key!r}")
        flag = "--" + key
        if isinstance(action, argparse._CountAction):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"--config {path}: {key} must be a count (0, 1, 2)")
            argv += [flag] * value
        elif action.nargs == 0:
            if not isinstance(value, bool):
                raise UsageError(f"--config {path}: {key} must be true or false")
            if value:
                argv.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for v in value if isinstance(value, list) else [value]:
                argv += [flag, str(v)]
        elif isinstance(value, (dict, bool)):
            raise UsageError(f"--config {path}: {key} must be a number or a string")
        elif isinstance(value, list):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def _config_file(argv: list[str]) -> str | None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    return known.config


def parse(argv: list[str]):
    """Parse the command line (and --config); returns (args, warnings).

    ``args.sources`` maps every setting to where its value came from:
    ``default``, ``config`` or ``command-line``.
    """
    parser = build_parser()
    path = _config_file(argv)
    from_file: list[str] = []
    if path is not None:
        from_file = config_argv(path, parser)
        try:
            parser.parse_args(from_file)
        except UsageError as exc:
            raise UsageError(f"--config {path}: {exc}") from None
    args = parser.parse_args(from_file + argv)
    bare = build_parser(defaults=False)
    on_cli = set(vars(bare.parse_args(argv)))
    in_file = set(vars(bare.parse_args(from_file)))
    args.sources = {dest: "command-line" if dest in on_cli else "config" if dest in in_file
                    else "default" for dest in vars(args)}
    args.option_sources = {k: "config" for k, _ in split_options(
        vars(bare.parse_args(from_file)).get("extended", []))}
    args.option_sources.update({k: "command-line" for k, _ in split_options(
        vars(bare.parse_args(argv)).get("extended", []))})
    args.config = path
    args.ssl_chain_cert = args.ssl_key = args.ssl_ca_cert = None
    args.ssl_verify_mode = args.ssl_min_version = args.ssl_ciphers = None
    args.slab_automove = 1
    args.lru_crawler = True
    warnings = apply_extended(args)
    warnings += check(args)
    return args, warnings


def check(args) -> list[str]:
    """Rules across flags; the warnings for flags without effect."""
    warnings = []
    if args.max_item_size > (args.memory_limit << 20) // 2 and args.max_item_size > 1 << 20:
        raise UsageError("cannot set item size limit higher than 1/2 of memory max")
    if args.enable_sasl:
        if args.protocol == "ascii" or (args.protocol == "auto"
                                        and args.sources["protocol"] != "default"):
            raise UsageError("you cannot allow the ASCII protocol while using SASL (-S)")
        args.protocol = "binary"        # as memcached: SASL means the binary protocol
        if not args.auth_file:
            pwdb = os.environ.get("MEMCACHED_SASL_PWDB")
            if not pwdb:
                raise UsageError("-S needs users: give -Y FILE or set MEMCACHED_SASL_PWDB")
            try:
                args.auth_file = readable_file(pwdb)
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"MEMCACHED_SASL_PWDB: {exc}") from None
    if args.udp_port:
        warnings.append("-U has no effect in memd: memd has no UDP; only TCP is served")
    if args.user and hasattr(os, "geteuid") and os.geteuid() != 0:
        warnings.append("-u has no effect: memd was not started as root")
    for dest, (flag, why) in NO_EFFECT.items():
        if args.sources.get(dest) != "default":
            warnings.append(f"{flag} has no effect in memd: {why}")
    tls_options = [k for k in ("ssl_chain_cert", "ssl_key", "ssl_ca_cert", "ssl_verify_mode",
                               "ssl_min_version", "ssl_ciphers") if getattr(args, k) is not None]
    if tls_options and not args.enable_ssl:
        # memcached reads -o ssl_* only when -Z turns TLS on
        warnings.append("-o ssl_* has no effect without -Z, as in memcached")
        for k in tls_options:
            setattr(args, k, None)
    if args.enable_ssl or args.tls_cert or args.tls_key:
        cert = args.tls_cert or args.ssl_chain_cert
        if not cert:
            raise UsageError("TLS needs a certificate: --tls-cert FILE or -o ssl_chain_cert=FILE")
        if args.tls_cert and not (args.tls_key or args.ssl_key):
            raise UsageError("TLS needs both --tls-cert and --tls-key")
        # memcached: the key may be part of the chain file
        args.tls_cert, args.tls_key = cert, args.tls_key or args.ssl_key or cert
        if args.ssl_ca_cert and not args.tls_ca:
            args.tls_ca = args.ssl_ca_cert
            if args.ssl_verify_mode is None:
                args.ssl_verify_mode = 0      # memcached's default: no client certificate asked
        if args.ssl_verify_mode is None:
            args.ssl_verify_mode = 2 if args.tls_ca else 0    # --tls-ca means mutual TLS
        if args.unix_socket:
            warnings.append("-s: the UNIX socket speaks plain text, without TLS, as in memcached")
    if args.memory_file and not args.snapshot:
        warnings.append("-e: memd keeps the restartable cache as a snapshot file, written on "
                        "graceful shutdown and loaded at start")
    return warnings


# -- building the node -----------------------------------------------------------------

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
        threads=1,                      # the truth: one event loop, whatever -t says
        idle_timeout=args.idle_timeout,
        flush_enabled=not args.disable_flush_all,
        recent_replies_mb=-1 if args.recent_replies_mb is None else args.recent_replies_mb,
        conn_output_limit=args.max_conn_output,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca,
        tls_verify_mode=args.ssl_verify_mode or 0,
        tls_min_version=2 if args.ssl_min_version is None else args.ssl_min_version,
        tls_ciphers=args.ssl_ciphers,
        detail_delimiter=args.detail_delimiter,
        unix_socket=args.unix_socket,
        unix_mask=args.unix_mask,
        backlog=args.listen_backlog,
        protocol=args.protocol,
    )


def make_node(args) -> Node:
    node = Node(settings_from(args))
    node.rebalancer.automove = args.slab_automove
    node.crawler_enabled = args.lru_crawler
    if args.cluster_nodes or args.cluster_file or args.cluster_dns:
        from .cluster.config import ClusterConfig
        try:
            node.cluster = ClusterConfig.from_options(
                args.cluster_nodes, args.cluster_file, args.cluster_dns)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cluster membership: {exc}") from None
    if args.auth_file:
        from .auth import Authenticator
        try:
            node.auth = Authenticator.from_file(args.auth_file)
        except OSError as exc:
            raise UsageError(f"cannot read auth file: {exc}") from None
    node.stats_groups[b"config"] = lambda n: config_sources(args)
    return node


def config_sources(args) -> list[tuple[str, str]]:
    """`stats config`: every setting with its value and where it came from."""
    flags = {a.dest: a.option_strings for a in build_parser()._actions}
    out = [("config-file", args.config or "NULL")]
    for dest in sorted(args.sources):
        names = [o[2:] for o in flags.get(dest, ()) if o.startswith("--")]
        if not names or dest in ("config", "extended", "help", "version"):
            continue
        value = getattr(args, dest)
        text = "NULL" if value is None else ",".join(value) if isinstance(value, list) else value
        if isinstance(value, bool):
            text = "yes" if value else "no"
        elif dest == "unix_mask":
            text = f"{value:o}"
        out.append((names[0], f"{text} {args.sources[dest]}"))
    out[1:] = sorted(out[1:])
    for key, source in sorted(args.option_sources.items()):
        out.append((f"options.{key}", f"{dict(split_options(args.extended)).get(key) or 'yes'} "
                                      f"{source}"))
    return out


def tls_context(args):
    if not args.tls_cert:
        return None
    from .tls import server_context
    try:
        return server_context(args.tls_cert, args.tls_key, args.tls_ca,
                              verify_mode=args.ssl_verify_mode,
                              min_version=args.ssl_min_version, ciphers=args.ssl_ciphers)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load TLS certificate: {exc}") from None


def startup_line(node: Node, bound, tls_bound, metrics) -> str:
    """The one line memd prints when it listens (format in docs/operations.md)."""
    def on(flag) -> str:
        return "on" if flag else "off"
    addrs = ",".join(bound) or "none"
    return (f"memd ready: version={node.version} listen={addrs} "
            f"memory={node.settings.memory_limit_mb}MB "
            f"tls={','.join(tls_bound) or 'off'} auth={on(node.auth is not None)} "
            f"cluster={on(node.cluster is not None)} metrics={metrics or 'off'} "
            f"snapshot={on(getattr(node, 'snapshot_path', None))}")


def _process_flags(args) -> None:
    """-r and -k: what memcached does to the process before it serves."""
    if args.enable_coredumps:
        try:
            import resource
            soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
            resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
        except (ImportError, ValueError, OSError) as exc:
            log.warning("-r: could not raise the core file limit: %s", exc)
    if args.lock_memory:
        import ctypes
        import ctypes.util
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            if libc.mlockall(1 | 2) != 0:        # MCL_CURRENT | MCL_FUTURE
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        except (OSError, AttributeError, TypeError) as exc:
            log.warning("-k: could not lock memory: %s (continuing)", exc)


def _drop_privileges(user: str) -> None:
    """-u: as memcached, switch user once the sockets are bound (only as root)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    import pwd
    pw = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)


def build(args):
    """The node and TLS context the parsed arguments describe (nothing listens yet)."""
    node = make_node(args)
    ssl_context = tls_context(args)
    node.settings.tls = ssl_context is not None
    path = args.snapshot or args.memory_file
    if path:
        from . import snapshot
        snapshot.load(node.store, path)
        node.snapshot_path = path
        node.on_shutdown = lambda: snapshot.save(node.store, path)
    return node, ssl_context


def main(argv=None) -> None:
    if argv is None:
        # the command (not a caller passing argv in-process): slab pages on
        # huge pages, which needs a fresh start (memd/hugepages.py)
        restart_with_huge_pages()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, warnings = parse(argv)
        if args.license:
            print(f"memd {__version__}: MIT license (see pyproject.toml); memcached's "
                  "behaviour is reproduced from its documentation")
            return
        if args.daemon and not hasattr(os, "fork"):
            raise UsageError("-d: this platform cannot fork; run memd under a service manager")
        logging.basicConfig(
            stream=sys.stderr,
            level=logging.WARNING if not args.verbose else (
                logging.INFO if args.verbose == 1 else logging.DEBUG),
            format="%(asctime)s memd[%(process)d] %(levelname)s %(message)s")
        for line in warnings:
            log.warning("%s", line)
        node, ssl_context = build(args)
    except UsageError as exc:
        print(f"memd: error: {exc} (see memd --help)", file=sys.stderr)
        sys.exit(2)
    _process_flags(args)
    ready = _daemonize() if args.daemon else _print_line
    sys.exit(run(node, args, ssl_context, ready))


def _print_line(line: str, server) -> None:
    print(line, file=sys.stderr, flush=True)


async def serve_node(node: Node, args, ssl_context, on_ready) -> None:
    """Bind, start metrics, write the pid file, switch user, then report
    ``on_ready(startup_line, server)``; serve until shut down."""
    import trio

    from .server import Server
    server = Server(node, ssl_context=ssl_context, tls_port=args.tls_port)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            metrics = None
            if args.metrics_port is not None:
                from .metrics import start_metrics_server
                host = listen_entry(node.settings.listen[0])[0]
                http = start_metrics_server(node, args.metrics_port, host)
                metrics = f"{host}:{http.server_port}"
            if args.pidfile:
                with open(args.pidfile, "w") as f:
                    f.write(f"{os.getpid()}\n")
            if args.user:
                _drop_privileges(args.user)
            on_ready(startup_line(node, server.addresses(), server.addresses(tls=True), metrics),
                     server)
    finally:
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except OSError:
                pass


def run(node: Node, args, ssl_context, on_ready) -> int:
    """Serve until shut down; the exit status."""
    import trio
    try:
        trio.run(serve_node, node, args, ssl_context, on_ready)
    except OSError as exc:
        # a port in use, an address we cannot bind: one line, as memcached does
        print(f"memd: failed to listen: {exc}", file=sys.stderr)
        return 71
    except KeyboardInterrupt:
        pass
    return 0


def _daemonize():
    """-d: fork; the parent waits for the child's startup line, prints it and
    exits 0 (71 if the child could not listen).  The child detaches from the
    terminal; at -v or more it keeps stderr, as memcached does."""
    rfd, wfd = os.pipe()
    if os.fork():
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            line = r.readline().decode().strip()
        if line:
            print(line, file=sys.stderr, flush=True)
        os._exit(0 if line else 71)
    os.close(rfd)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    pipe = os.fdopen(wfd, "wb")

    def ready(line: str, server) -> None:
        pipe.write(line.encode() + b"\n")
        pipe.close()
        if not logging.getLogger().isEnabledFor(logging.INFO):
            os.dup2(devnull, 2)
    return ready
