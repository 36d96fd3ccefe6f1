"""Storage engine measurements: memory per item, lookup rates, fill pauses.

    python -m tools.storage_bench [--runs 3] [--items 1000000] [--fill 2000000]
                                  [--lookup-sizes 10000,1000000,4000000]

(a) RSS per item: VmRSS growth of this process around storing N items of
    20-byte keys and 100-byte values (keys made on the fly, so no key list is
    counted).  Each run happens in a fresh child process, so one run's freed
    memory does not flatter the next.
(b) Lookups per second: ``store.find`` one key at a time, and ``fetch_text``
    on 100-key batches (the text multi-get path), over stores filled with
    each of ``--lookup-sizes`` items (random keys of the store, so over a
    large store nearly every lookup misses the CPU caches).  Recent replies
    are off here: this measures the index and the item layout.  Rates are
    per second of the process's CPU time (``time.process_time``), so time
    other jobs on a shared machine take is not counted against them.
(c) Pauses: the longest gaps between consecutive ``store()`` calls while
    filling 2M items, gc enabled as in production, with the item count at
    which each happened (index growth, page allocation, gc would show here),
    by the wall clock and by the thread's CPU time.

Each measurement runs ``--runs`` times; min and median are printed (the
machine is shared, so the minimum is the least disturbed figure).
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import multiprocessing as mp
import statistics
import sys
import time

from memd.cache import store as S
from memd.cache.clock import FakeClock
from memd.cache.store import ItemStore, StoreSettings


def vm_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def key_of(i: int) -> bytes:
    return b"key:%016d" % i          # 20 bytes


VALUE = b"v" * 100


def _fill(store: ItemStore, n: int) -> None:
    put = store.store
    for i in range(n):
        put(S.SET, b"key:%016d" % i, 0, 0, VALUE)


def _rss_child(n: int, conn) -> None:
    gc.collect()
    store = ItemStore(StoreSettings(mem_limit=4 << 30), FakeClock())
    gc.collect()
    before = vm_rss()
    _fill(store, n)
    gc.collect()
    after = vm_rss()
    assert store.curr_items == n and store.evictions == 0
    conn.send({"per_item": (after - before) / n, "rss_growth": after - before,
               "accounted": store.slabs.accounted, "bytes_per_id": store.slabs.bytes_per_id,
               "index_buckets": len(store.index.buckets)})
    conn.close()


def _lookup_child(n: int, seconds: float, conn) -> None:
    store = ItemStore(StoreSettings(mem_limit=4 << 30, recent_bytes=0), FakeClock())
    _fill(store, n)
    gc.collect()
    import random
    rnd = random.Random(1)
    keys = [key_of(rnd.randrange(n)) for _ in range(100_000)]
    batches = [keys[i:i + 100] for i in range(0, len(keys), 100)]
    find = store.find
    # rates per second of this process's CPU time: on a shared machine the
    # wall clock also counts the time other jobs had the CPU
    clock = time.process_time
    # find: one key per call
    done = 0
    t0 = clock()
    while clock() - t0 < seconds:
        for k in keys[:20_000]:
            find(k)
        done += 20_000
    find_rate = done / (clock() - t0)
    # fetch_text: 100-key batches, as a text "get k1 ... k100" does
    done = 0
    fetch = store.fetch_text
    t0 = clock()
    while clock() - t0 < seconds:
        for b in batches[:200]:
            out: list = []
            fetch(b, out)
        done += 200 * 100
    fetch_rate = done / (clock() - t0)
    # the same with a dict, for scale
    d = {key_of(i): i for i in range(0, n, 10)}
    get = d.get
    t0 = clock()
    for _ in range(5):
        for k in keys:
            get(k)
    dict_rate = 5 * len(keys) / (clock() - t0)
    conn.send({"find_per_s": find_rate, "fetch_text_keys_per_s": fetch_rate,
               "dict_get_per_s": dict_rate})
    conn.close()


def _pause_child(n: int, conn) -> None:
    gc.collect()
    store = ItemStore(StoreSettings(mem_limit=4 << 30), FakeClock())
    put = store.store
    clock, cpu = time.perf_counter, time.thread_time
    # min-heaps of the 5 longest gaps: by the wall clock (what a client
    # sees) and by this thread's CPU time (the store's own work: on a shared
    # machine the wall clock also counts the time other jobs had the CPU)
    top: list[tuple[float, int]] = []
    top_cpu: list[tuple[float, int]] = []
    last, last_cpu = clock(), cpu()
    t0 = last
    for i in range(n):
        put(S.SET, b"key:%016d" % i, 0, 0, VALUE)
        now, now_cpu = clock(), cpu()
        for heap, gap in ((top, now - last), (top_cpu, now_cpu - last_cpu)):
            if len(heap) < 5:
                heapq.heappush(heap, (gap, i))
            elif gap > heap[0][0]:
                heapq.heapreplace(heap, (gap, i))
        last, last_cpu = now, now_cpu
    total = clock() - t0
    conn.send({"max_pause_ms": max(top)[0] * 1000, "max_cpu_pause_ms": max(top_cpu)[0] * 1000,
               "top5": [(round(g * 1000, 2), i) for g, i in sorted(top, reverse=True)],
               "top5_cpu": [(round(g * 1000, 2), i) for g, i in sorted(top_cpu, reverse=True)],
               "fill_s": total, "sets_per_s": n / total})
    conn.close()


def run_child(target, *args) -> dict:
    parent, child = mp.Pipe(duplex=False)
    p = mp.get_context("fork").Process(target=target, args=(*args, child))
    p.start()
    child.close()
    result = parent.recv()
    p.join()
    return result


def summarize(name: str, values: list[float], fmt: str = "{:.1f}") -> str:
    return "%-30s min %s  median %s  max %s" % (
        name, fmt.format(min(values)), fmt.format(statistics.median(values)),
        fmt.format(max(values)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--items", type=int, default=1_000_000, help="items for (a)")
    ap.add_argument("--fill", type=int, default=2_000_000, help="items for (c)")
    ap.add_argument("--seconds", type=float, default=2.0, help="per lookup measurement")
    ap.add_argument("--lookup-sizes", default="10000,1000000,4000000",
                    help="store sizes (items) for (b), comma-separated")
    ap.add_argument("--only", choices=["rss", "lookup", "pause"], action="append")
    ap.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    args = ap.parse_args(argv)
    only = set(args.only or ["rss", "lookup", "pause"])
    raw: dict[str, list] = {}

    print("Python %s; 20-byte keys / 100-byte values; (a) over %d items, (b) over %s items, "
          "(c) fills %d items; %d runs each" % (sys.version.split()[0], args.items,
                                                args.lookup_sizes, args.fill, args.runs),
          flush=True)

    def runs(name, fn, *fn_args):
        out = []
        for i in range(args.runs):
            # progress on stderr: a full run takes minutes
            print(f"  {name}: run {i + 1}/{args.runs}...", file=sys.stderr, flush=True)
            out.append(run_child(fn, *fn_args))
        return out

    if "rss" in only:
        rs = runs("(a) memory", _rss_child, args.items)
        raw["rss"] = rs
        print("(a) memory")
        print("  " + summarize("RSS bytes per item", [r["per_item"] for r in rs]))
        r = rs[0]
        print("  metadata bytes per id: %d; -m accounted: %.1f MiB; index buckets: %d" % (
            r["bytes_per_id"], r["accounted"] / 2 ** 20, r["index_buckets"]))
    if "lookup" in only:
        raw["lookup"] = {}
        for size in (int(x) for x in args.lookup_sizes.split(",")):
            ls = runs("(b) lookups over %s items" % format(size, ","), _lookup_child, size, args.seconds)
            raw["lookup"][size] = ls
            print("(b) lookups per second over %s items" % format(size, ","))
            print("  " + summarize("store.find /s", [x["find_per_s"] for x in ls], "{:,.0f}"))
            print("  " + summarize("fetch_text keys/s (100/batch)",
                                   [x["fetch_text_keys_per_s"] for x in ls], "{:,.0f}"))
            print("  " + summarize("dict.get /s (for scale)",
                                   [x["dict_get_per_s"] for x in ls], "{:,.0f}"))
    if "pause" in only:
        ps = runs("(c) pauses", _pause_child, args.fill)
        raw["pause"] = ps
        print("(c) pauses filling %d items, gc enabled" % args.fill)
        print("  " + summarize("longest pause ms", [p["max_pause_ms"] for p in ps], "{:.2f}"))
        print("  " + summarize("longest pause, CPU ms", [p["max_cpu_pause_ms"] for p in ps],
                               "{:.2f}"))
        print("  " + summarize("sets/s during fill", [p["sets_per_s"] for p in ps], "{:,.0f}"))
        for i, p in enumerate(ps):
            print("  run %d top 5 (ms @ item#): %s; by CPU time: %s" % (
                i + 1, ", ".join("%.2f@%d" % (g, n) for g, n in p["top5"]),
                ", ".join("%.2f@%d" % (g, n) for g, n in p["top5_cpu"])))
    if args.json:
        print(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
