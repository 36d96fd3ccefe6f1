"""Coverage-guided fuzzing of memd's sans-IO protocols with atheris (libFuzzer).

    python tools/fuzz.py                      # text, meta and binary, 60 s in all
    python tools/fuzz.py --seconds 600 --target binary --out /tmp/fuzz-out

Each input is one connection's bytes, cut into reads at fuzzer-chosen points
and fed to ``protocol_for(node, first_byte).feed`` the way the server does.
A *crash* is any exception out of ``feed``, a reply that is not bytes, or a
protocol holding more bytes between reads than the parser's bounds allow
(a pending value or a long multi-get line).  Crashes do not stop the run:
each distinct one (by exception type and innermost memd frame) is saved as
``<out>/crash-<target>-<hash>.bin`` with the traceback beside it in ``.txt``,
and the run goes on to find the next.  Replay one with ``--replay FILE``.

Not part of the test suite (it needs atheris, and it runs for minutes).  The
parent process runs one libFuzzer child per target, because libFuzzer ends
its process when its time is up; the parent then prints the summary.
Without atheris installed it falls back to a random mutator over the same
seeds (no coverage feedback, so it finds much less).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import traceback

TARGETS = ("text", "meta", "binary")

SEEDS = {
    "text": [
        b"set k 0 0 5\r\nhello\r\nget k\r\n", b"gets k j\r\ncas k 0 0 1 1\r\nx\r\n",
        b"incr n 5\r\ndecr n 1\r\ntouch k 10\r\ngat 10 k\r\nappend k 0 0 1\r\nx\r\n",
        b"stats\r\nstats items\r\nstats slabs\r\nstats settings\r\nflush_all 10\r\n",
        b"delete k 0 noreply\r\nverbosity 1\r\nversion\r\nquit\r\n",
        b"get " + b"k " * 50 + b"\r\n",
    ],
    "meta": [
        b"ms k 5 T10 F3 c\r\nhello\r\nmg k v f t c k s O123 q\r\nmn\r\n",
        b"ma n N30 J13 D2 MI v\r\nmd k q I T30\r\nmg k v R30 h l\r\nme k\r\n",
        b"ms a2V5 2 b MA\r\nhi\r\nmg a2V5 b v k\r\nms k S2 MS I\r\nxx\r\n",
    ],
    "binary": [
        struct.pack(">BBHBBHIIQ", 0x80, 0x01, 1, 8, 0, 0, 14, 0, 0) + b"\0" * 8 + b"k" + b"hello",
        struct.pack(">BBHBBHIIQ", 0x80, 0x00, 1, 0, 0, 0, 1, 7, 0) + b"k",
        struct.pack(">BBHBBHIIQ", 0x80, 0x05, 1, 20, 0, 0, 21, 0, 0) + b"\0" * 20 + b"n",
        struct.pack(">BBHBBHIIQ", 0x80, 0x0A, 0, 0, 0, 0, 0, 0, 0),
        struct.pack(">BBHBBHIIQ", 0x80, 0x10, 0, 0, 0, 0, 0, 0, 0),
    ],
}

DICT_TOKENS = [
    "get", "gets", "gat", "gats", "set", "add", "replace", "append", "prepend", "cas",
    "delete", "incr", "decr", "touch", "flush_all", "version", "verbosity", "stats",
    "items", "slabs", "settings", "conns", "cache_memlimit", "noreply", "mg", "ms", "md",
    "ma", "mn", "me", " v", " t", " f", " c", " k", " s", " q", " b", " O", " T", " N",
    " R", " M", " I", " E", " D", " J", " S", "MS", "ME", "MA", "MP", "MR", "MI", "MD",
    "\r\n", "4294967296", "18446744073709551615", "-1", "2147483647", "1048576",
]

ITEM_MAX = 1 << 20      # the default -I the fuzzed node runs with


def held_bound() -> int:
    """What a protocol may hold between reads: a pending value (the item size
    limit plus CRLF) or a partial multi-get line, plus a read's slack.  memd
    is imported here, not at module level, so atheris can instrument it."""
    from memd.protocol.text import GET_LINE_MAX
    return max(GET_LINE_MAX, ITEM_MAX + 2) + 4096


def held_bytes(proto) -> int:
    """Input bytes the protocol holds between reads (its own accounting)."""
    return proto.held_bytes()


class BoundExceeded(AssertionError):
    pass


def split_input(target: str, data: bytes) -> tuple[bytes, list[int]]:
    """The connection's bytes and where to cut them into reads.

    The first byte (if any) gives how many cuts; then 2 bytes per cut; the
    rest is the stream.  Meta inputs start with "m" so most lines are meta
    commands; binary ones with the request magic.
    """
    if not data:
        return (b"\x80" if target == "binary" else b"m"), []
    n = data[0] % 8
    cuts_raw, body = data[1:1 + 2 * n], data[1 + 2 * n:]
    cuts = [int.from_bytes(cuts_raw[i:i + 2], "little") for i in range(0, len(cuts_raw) - 1, 2)]
    if target == "binary":
        body = b"\x80" + body
    elif target == "meta":
        body = b"m" + body
    elif not body or body[0] == 0x80:
        body = b"g" + body
    return body, cuts


def run_one(node, target: str, data: bytes) -> None:
    from memd.protocol import protocol_for
    bound = held_bound()
    stream, cuts = split_input(target, data)
    proto = protocol_for(node, stream[0])
    pos = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(stream))) + [len(stream)]:
        if proto.closed:
            break
        chunk = stream[pos:cut]
        pos = cut
        if not chunk:
            continue
        reply = proto.feed(chunk)
        if not isinstance(reply, (bytes, bytearray)):
            raise TypeError(f"feed returned {type(reply).__name__}, not bytes")
        held = held_bytes(proto)
        if held > bound + len(chunk):
            raise BoundExceeded(f"protocol holds {held} bytes between reads")


def signature(exc: BaseException) -> str:
    """Exception type plus the innermost frame inside memd: one per distinct bug."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/memd/" in f.filename]
    where = f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__name__}@{where}"


class CrashLog:
    def __init__(self, out: str, target: str) -> None:
        self.out = out
        self.target = target
        self.seen: set[str] = set()
        self.total = 0

    def record(self, data: bytes, exc: BaseException) -> None:
        self.total += 1
        sig = signature(exc)
        if sig in self.seen:
            return
        self.seen.add(sig)
        digest = hashlib.sha1(data).hexdigest()[:12]
        base = os.path.join(self.out, f"crash-{self.target}-{digest}")
        with open(base + ".bin", "wb") as f:
            f.write(data)
        with open(base + ".txt", "w") as f:
            f.write(f"{sig}\n\n" + "".join(traceback.format_exception(exc)))
        print(f"\nCRASH [{self.target}] {sig}: {exc!r} -> {base}.bin", flush=True)
        with open(os.path.join(self.out, f"crashes-{self.target}.jsonl"), "a") as f:
            f.write(json.dumps({"signature": sig, "file": base + ".bin",
                                "error": repr(exc)[:300]}) + "\n")


def _dict_entry(tok: bytes) -> str:
    """libFuzzer's dictionary syntax: quoted, non-printables as \\xHH."""
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else "\\x%02X" % b
                         for b in tok) + '"'


def make_node():
    from memd.node import Node, NodeSettings
    return Node(NodeSettings(enable_shutdown=False))


def worker(target: str, seconds: int, out: str) -> None:
    """One libFuzzer run (this process ends when its time is up)."""
    import atheris
    with atheris.instrument_imports(include=["memd"]):
        import memd.node  # noqa: F401
        import memd.protocol  # noqa: F401
        import memd.protocol.text  # noqa: F401
        import memd.protocol.meta  # noqa: F401
        try:
            import memd.protocol.binary  # noqa: F401
        except ImportError:
            if target == "binary":
                print("memd.protocol.binary does not exist; nothing to fuzz", flush=True)
                return
    crashes = CrashLog(out, target)
    state = {"node": make_node(), "runs": 0}

    def one_input(data: bytes) -> None:
        state["runs"] += 1
        if state["runs"] % 20000 == 0:
            state["node"] = make_node()        # bound the store's growth over a long run
        try:
            run_one(state["node"], target, data)
        except Exception as exc:   # every exception out of feed is a finding
            crashes.record(data, exc)
            state["node"] = make_node()

    corpus = os.path.join(out, f"corpus-{target}")
    os.makedirs(corpus, exist_ok=True)
    for i, seed in enumerate(SEEDS[target]):
        with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
            f.write(b"\x00" + (seed[1:] if target in ("binary", "meta") else seed))
    dict_path = os.path.join(out, "memd.dict")
    with open(dict_path, "w") as f:
        for tok in DICT_TOKENS:
            f.write(_dict_entry(tok.encode()) + "\n")
    args = [sys.argv[0], corpus, f"-max_total_time={seconds}", f"-dict={dict_path}",
            "-max_len=4096", "-rss_limit_mb=2048", "-print_final_stats=1",
            f"-artifact_prefix={out}/libfuzzer-{target}-"]
    atheris.Setup(args, one_input)
    atheris.Fuzz()


def fallback(target: str, seconds: int, out: str) -> dict:
    """Random mutation of the seeds, for machines without atheris."""
    rng = random.Random(1)
    crashes = CrashLog(out, target)
    node = make_node()
    runs = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        data = bytearray(b"\x00" + rng.choice(SEEDS[target]))
        for _ in range(rng.randrange(1, 10)):
            op = rng.randrange(4)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
            elif op == 1:
                data[pos:pos] = rng.choice(DICT_TOKENS).encode()
            elif op == 2:
                del data[pos:pos + rng.randrange(1, 8)]
            else:
                data[pos:pos] = rng.randbytes(rng.randrange(1, 16))
        runs += 1
        try:
            run_one(node, target, bytes(data))
        except Exception as exc:
            crashes.record(bytes(data), exc)
            node = make_node()
    return {"runs": runs, "crashes": crashes.total, "distinct": len(crashes.seen)}


def replay(path: str, target: str) -> None:
    data = open(path, "rb").read()
    run_one(make_node(), target, data)
    print("no crash")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=60, help="total fuzzing time (default 60)")
    p.add_argument("--target", choices=TARGETS + ("all",), default="all")
    p.add_argument("--out", help="directory for crashes and corpora (default: a new "
                                 "temporary directory, printed at the start)")
    p.add_argument("--replay", metavar="FILE", help="run one saved input (with --target)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.replay:
        replay(args.replay, "text" if args.target == "all" else args.target)
        return
    if args.out is None:
        # not the working directory: a run from the checkout must leave the tree clean
        args.out = tempfile.mkdtemp(prefix="memd-fuzz-")
        print(f"crashes and corpora go to {args.out}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    if args.worker:
        worker(args.target, args.seconds, args.out)
        return
    targets = TARGETS if args.target == "all" else (args.target,)
    per = max(1, args.seconds // len(targets))
    try:
        import atheris  # noqa: F401
        have_atheris = True
    except ImportError:
        have_atheris = False
        print("atheris is not installed (pip install atheris): using the random "
              "fallback, which has no coverage feedback", flush=True)
    summary = {}
    for target in targets:
        for name in os.listdir(args.out):
            if name == f"crashes-{target}.jsonl":
                os.unlink(os.path.join(args.out, name))
        started = time.monotonic()
        if have_atheris:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                                   "--target", target, "--seconds", str(per), "--out", args.out],
                                  capture_output=True, text=True)
            stats = _libfuzzer_stats(proc.stderr)
            if proc.returncode not in (0,) and not stats.get("runs"):
                print(proc.stderr[-3000:])
        else:
            stats = fallback(target, per, args.out)
        found = []
        path = os.path.join(args.out, f"crashes-{target}.jsonl")
        if os.path.exists(path):
            found = [json.loads(line) for line in open(path)]
        stats["distinct_crashes"] = len(found)
        stats["seconds"] = round(time.monotonic() - started, 1)
        summary[target] = (stats, found)
    print("\nfuzz summary")
    print(f"{'target':8} {'seconds':>8} {'runs':>10} {'coverage':>9} {'features':>9} {'crashes':>8}")
    for target, (stats, found) in summary.items():
        print(f"{target:8} {stats['seconds']:>8} {stats.get('runs', '?'):>10} "
              f"{stats.get('cov', '-'):>9} {stats.get('ft', '-'):>9} {stats['distinct_crashes']:>8}")
        for c in found:
            print(f"    {c['signature']}: {c['error']}\n      input: {c['file']}")
    if any(found for _, found in summary.values()):
        sys.exit(1)


def _libfuzzer_stats(stderr: str) -> dict:
    """runs, coverage (cov) and features (ft) from libFuzzer's log."""
    stats: dict = {}
    for line in stderr.splitlines():
        if line.startswith("stat::number_of_executed_units:"):
            stats["runs"] = int(line.split(":")[-1])
        parts = line.split()
        if len(parts) > 3 and parts[0].startswith("#") and parts[1] in ("pulse", "NEW", "REDUCE",
                                                                         "DONE", "INITED"):
            for key, val in zip(parts, parts[1:]):
                if key in ("cov:", "ft:"):
                    stats[key[:-1]] = val
    return stats


if __name__ == "__main__":
    main()
