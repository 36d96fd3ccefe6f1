"""A fixed, deterministic lookup workload for instruction and cache-miss counts.

    valgrind --tool=callgrind --cache-sim=yes --LL=4194304,16,64 \\
        python -m tools.lookup_trace --items 200000 --keys 50000
    (and once more with --dry: the difference is the lookups alone)

Timings on a shared machine move by tens of percent; simulated instruction
and cache-miss counts of the same work do not.  The store is filled with
``--items`` items (20-byte keys, 100-byte values), then ``--keys`` random
keys of it are read through ``fetch_text`` in 100-key batches (the text
multi-get path; recent replies off, so every key takes the index), and with
``--find`` also one by one through ``store.find``.  The simulated last-level
cache is set small (4 MiB) so that 200,000 items behave as a million do
against the real 32 MiB one, at a fifth of the time under valgrind.
"""

from __future__ import annotations

import argparse
import random
import sys

from memd.cache import store as S
from memd.cache.clock import FakeClock
from memd.cache.store import ItemStore, StoreSettings

VALUE = b"v" * 100


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--keys", type=int, default=50_000)
    ap.add_argument("--find", action="store_true", help="store.find instead of fetch_text")
    ap.add_argument("--dry", action="store_true", help="everything but the lookups")
    args = ap.parse_args(argv)
    store = ItemStore(StoreSettings(mem_limit=4 << 30, recent_bytes=0), FakeClock())
    put = store.store
    for i in range(args.items):
        put(S.SET, b"key:%016d" % i, 0, 0, VALUE)
    rnd = random.Random(1)
    keys = [b"key:%016d" % rnd.randrange(args.items) for _ in range(args.keys)]
    hits = 0
    if args.dry:
        return 0
    if args.find:
        find = store.find
        for k in keys:
            hits += find(k) >= 0
    else:
        fetch = store.fetch_text
        for i in range(0, len(keys), 100):
            out: list = []
            fetch(keys[i:i + 100], out)
            hits += len(out)
    assert hits == len(keys)
    return 0


if __name__ == "__main__":
    sys.exit(main())
