"""A fixed lookup workload for instruction and simulated cache-miss counts.

    python -m tools.lookup_trace --valgrind [--items 200000] [--keys 20000] [--find]

Timings on a shared machine move by tens of percent; valgrind's counts of
the same work do not.  This fills a store with ``--items`` items (20-byte
keys, 100-byte values) at full speed, then switches callgrind's
instrumentation on (``callgrind_control -i on``), warms the interpreter with
2,000 lookups and reads ``--keys`` random keys of the store through
``fetch_text`` in 100-key batches (the text multi-get path; recent replies
off, so every key takes the index, unless ``--recent``), or one by one
through ``store.find``, or (``--protocol``) as 100-key ``get`` lines fed
to the text protocol of a node made as ``memd -m 1024`` makes it: the
server's multi-get path without the socket calls.
Only the measured lookups are counted: they run under ``map()``, and
callgrind collects inside ``map_next`` only.  The simulated last-level
cache is 4 MiB, so 200,000 items (about 40 MB) are as far beyond it as a
million are beyond the real 32 MiB one.

``--valgrind`` runs itself under callgrind and prints the counts per key;
without it, it is the workload (waiting for ``--go-file`` before the
lookups when given).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time

from memd.cache import store as S
from memd.cache.clock import FakeClock
from memd.cache.store import ItemStore, StoreSettings
from memd.node import Node, NodeSettings
from memd.protocol.meta import MetaCommands
from memd.protocol.text import TextProtocol

VALUE = b"v" * 100
WARMUP = 2000
RECENT_WARMUP = 80_000
LL = "4194304,16,64"


def workload(items: int, n_keys: int, find: bool, go_file: str | None, recent: bool,
             protocol: bool, per_get: int = 100) -> None:
    if protocol:    # a node as `memd -m 1024` makes it, and its text protocol
        node = Node(NodeSettings(memory_limit_mb=1024), clock=FakeClock())
        store, proto = node.store, TextProtocol(node, MetaCommands(node))
        recent = True
    elif recent:    # as a node started with -m 1024 (compare.py's) has them
        store = ItemStore(StoreSettings(mem_limit=1 << 30), FakeClock())
    else:
        store = ItemStore(StoreSettings(mem_limit=4 << 30, recent_bytes=0), FakeClock())
    put = store.store
    for i in range(items):
        put(S.SET, b"key:%016d" % i, 0, 0, VALUE)
    rnd = random.Random(1)
    # with recent replies, warm up past their first full round: a load spread
    # over far more keys than they hold is then answered with sampling on
    warm = [b"key:%016d" % rnd.randrange(items) for _ in range(RECENT_WARMUP if recent else WARMUP)]
    keys = [b"key:%016d" % rnd.randrange(items) for _ in range(n_keys)]
    if go_file:
        print("filled", flush=True)
        while not os.path.exists(go_file):
            time.sleep(0.05)
    if protocol:
        def feed(keys: list) -> int:
            return len(proto.feed(b"get " + b" ".join(keys) + b"\r\n"))
        for i in range(0, len(warm), per_get):
            feed(warm[i:i + per_get])
        replied = sum(map(feed, [keys[i:i + per_get] for i in range(0, len(keys), per_get)]))
        assert replied > len(keys) * 100
        return
    if find:
        for k in warm:
            store.find(k)
        hits = sum(map(lambda k: store.find(k) >= 0, keys))
    else:
        # one key a call is a lone get as the parser hands it over (its own END)
        lone = per_get == 1

        def batch(keys: list) -> int:
            out: list = []
            store.fetch_text(keys, out, False, lone)
            return len(out) - lone
        for i in range(0, len(warm), per_get):
            batch(warm[i:i + per_get])
        hits = sum(map(batch, [keys[i:i + per_get] for i in range(0, len(keys), per_get)]))
    assert hits == len(keys)


def under_valgrind(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        go, out = os.path.join(tmp, "go"), args.out or os.path.join(tmp, "callgrind.out")
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes",
               "--LL=" + LL, "--toggle-collect=map_next", "--callgrind-out-file=" + out,
               sys.executable, "-m", "tools.lookup_trace", "--items", str(args.items),
               "--keys", str(args.keys), "--go-file", go] + (["--find"] if args.find else []) \
            + (["--recent"] if args.recent else []) + (["--protocol"] if args.protocol else []) \
            + ["--per-get", str(args.per_get)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "filled"
        subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        open(go, "w").close()
        _, err = p.communicate()
        if p.returncode:
            sys.stderr.write(err)
            return 1
        with open(out) as f:
            text = f.read()
    events = re.search(r"^events: (.*)$", text, re.M).group(1).split()
    totals = [int(x) for x in re.search(r"^totals: (.*)$", text, re.M).group(1).split()]
    per_key = {e: t / args.keys for e, t in zip(events, totals)}
    print("%s%s over %d items, %d keys: per key %s" % (
        "find" if args.find else
        ("TextProtocol.feed" if args.protocol else "fetch_text") + ", %d keys a get" % args.per_get,
        " (recent replies on)" if args.recent or args.protocol else "",
        args.items, args.keys,
        ", ".join("%s %.1f" % (e, per_key[e]) for e in ("Ir", "D1mr", "DLmr", "D1mw", "DLmw"))))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--find", action="store_true", help="store.find instead of fetch_text")
    ap.add_argument("--valgrind", action="store_true", help="run under callgrind, print counts")
    ap.add_argument("--go-file", help="wait for this file before the lookups")
    ap.add_argument("--out", help="keep callgrind's output here (for callgrind_annotate)")
    ap.add_argument("--recent", action="store_true",
                    help="recent replies on, as in a node with -m 1024 (off: the index alone)")
    ap.add_argument("--protocol", action="store_true",
                    help="100-key text gets through TextProtocol.feed of a -m 1024 node")
    ap.add_argument("--per-get", type=int, default=100,
                    help="keys a get: in each get line fed (--protocol), or in each fetch_text call (1: a lone get, with its END)")
    args = ap.parse_args(argv)
    if args.valgrind:
        return under_valgrind(args)
    workload(args.items, args.keys, args.find, args.go_file, args.recent, args.protocol,
             args.per_get)
    return 0


if __name__ == "__main__":
    sys.exit(main())
