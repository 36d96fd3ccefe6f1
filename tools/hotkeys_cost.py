"""What counting hot keys costs per request, through the protocol in process.

Feeds compare.py's two loads (``c50``: single gets with 10% sets over 10k
keys; ``mget100``: 100-key gets) to a TextProtocol on a fresh Node, no
sockets, and prints wall time per request.  Run it under callgrind twice
(N requests and 0) for instructions per request, which a busy machine does
not blur:

    python -m tools.hotkeys_cost --callgrind c50 20000 [--baseline DIR] [--seeds 3]

does that for ``on`` and ``off`` (and for a checkout without the hook given
as ``--baseline``, e.g. ``git worktree add /tmp/base main``), once per
PYTHONHASHSEED (dict layouts move instruction counts by a few hundred), and
prints instructions per request.  ``on``/``off`` switch the sketch (off
leaves the hook in place); ``--warm`` requests are sent before the counted
ones, and the same requests are built for every mode (seeded).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import time

from memd.node import Node
from memd.protocol.meta import MetaCommands
from memd.protocol.text import TextProtocol

KEYS = 10_000
VALUE = b"x" * 100


def requests(load: str, n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if load == "mget100":
            out.append(b"get " + b" ".join(b"key:%d" % rng.randrange(KEYS) for _ in range(100))
                       + b"\r\n")
        elif rng.random() < 0.1:
            out.append(b"set key:%d 0 0 %d\r\n%s\r\n" % (rng.randrange(KEYS), len(VALUE), VALUE))
        else:
            out.append(b"get key:%d\r\n" % rng.randrange(KEYS))
    return out


def instructions(root: str, load: str, n: int, mode: str, seed: int) -> int:
    """Instructions callgrind counts for one in-process run from checkout ``root``."""
    env = dict(os.environ, PYTHONPATH=root, PYTHONHASHSEED=str(seed))
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                          sys.executable, os.path.abspath(__file__), load, str(n), mode],
                         cwd=root, env=env, capture_output=True, text=True, check=True).stderr
    return int(re.search(r"Collected : (\d+)", out).group(1))


def callgrind(load: str, n: int, baseline: str | None, seeds: int) -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    variants = [("on", here, "on"), ("off", here, "off")]
    if baseline:
        variants.append(("no hook", baseline, "none"))
    for name, root, mode in variants:
        per_request = [(instructions(root, load, n, mode, seed) -
                        instructions(root, load, 0, mode, seed)) / n for seed in range(seeds)]
        print(f"{load} {name:>8}: {statistics.median(per_request):10.0f} instructions/request"
              f"  (per seed: {', '.join(f'{x:.0f}' for x in per_request)})", flush=True)


def main(argv=None) -> None:
    if argv is None and "--callgrind" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--callgrind", action="store_true")
        ap.add_argument("load", choices=("c50", "mget100"))
        ap.add_argument("n", type=int)
        ap.add_argument("--baseline")
        ap.add_argument("--seeds", type=int, default=3)
        a = ap.parse_args()
        callgrind(a.load, a.n, a.baseline, a.seeds)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("load", choices=("c50", "mget100"))
    ap.add_argument("n", type=int)
    ap.add_argument("mode", choices=("on", "off", "none"), nargs="?", default="on",
                    help="none: the node has no hotkeys attribute (a checkout without the hook)")
    ap.add_argument("--warm", type=int, help="requests before the counted ones "
                    "(default 2000 single gets, 100 multi-gets)")
    args = ap.parse_args(argv)
    if args.warm is None:
        args.warm = 100 if args.load == "mget100" else 2000
    node = Node()
    proto = TextProtocol(node, MetaCommands(node))
    for i in range(KEYS):
        proto.feed(b"set key:%d 0 0 %d\r\n%s\r\n" % (i, len(VALUE), VALUE))
    hot = getattr(node.store, "hotkeys", None)
    if hot is not None and args.mode == "off":
        hot.set_enabled(False)
    feed = proto.feed
    for r in requests(args.load, args.warm, seed=2):
        feed(r)
    reqs = requests(args.load, args.n)
    t0 = time.perf_counter()
    for r in reqs:
        feed(r)
    dt = time.perf_counter() - t0
    if args.n:
        print(f"{args.load} {args.mode}: {dt / args.n * 1e6:.2f} us/request over {args.n}")
    if hot is not None and hot.enabled:
        print("hottest:", hot.top(3))


if __name__ == "__main__":
    main()
