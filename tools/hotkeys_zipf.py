"""Does a node (or a fleet) find the hottest keys of a zipf load?

``find_top(client)`` writes ``keys`` keys, reads them with a zipf
distribution (rank r is requested in proportion to 1 / r**s), then asks the
cache for its hottest keys and compares them with the load's true top
``n``.  ``client`` is a ``ClusterClient`` (merged ``hot_keys()``) or a
pymemcache ``Client`` of one node (``stats hotkeys``).  The scenario runner
of issue 15 calls it; ``python -m tools.hotkeys_zipf HOST:PORT[,HOST:PORT...]``
runs it from a shell.
"""

from __future__ import annotations

import argparse
import itertools
import random
from collections import Counter

from memd import hotkeys


def zipf_sampler(keys: int, s: float, rng: random.Random):
    """``draw(k)``: k ranks (0 hottest) drawn from a zipf(s) law over ``keys`` ranks."""
    cum = list(itertools.accumulate(1.0 / (r + 1) ** s for r in range(keys)))
    ranks = range(keys)
    return lambda k: rng.choices(ranks, cum_weights=cum, k=k)


def reported_hot_keys(client, n: int) -> list[tuple[bytes, int]]:
    """The cache's own answer: merged over a fleet, or one node's ``stats hotkeys``."""
    if hasattr(client, "hot_keys"):
        return client.hot_keys(n)
    return hotkeys.parse_stats(client.stats("hotkeys", str(n)))[:n]


def find_top(client, *, n: int = 10, keys: int = 10_000, requests: int = 200_000,
             s: float = 1.1, batch: int = 100, seed: int = 1, prefix: str = "zipf") -> dict:
    """Run the load, then return the true and the reported top ``n`` and how many
    of the true ones were found (``recall``, 0..1)."""
    rng = random.Random(seed)
    names = [f"{prefix}:{i}" for i in range(keys)]
    rng.shuffle(names)                 # a key's name says nothing of its rank
    for i in range(0, keys, 500):
        client.set_many({k: b"v" for k in names[i:i + 500]})
    draw = zipf_sampler(keys, s, rng)
    true = Counter()
    done = 0
    while done < requests:
        picked = [names[r] for r in draw(min(batch, requests - done))]
        true.update(picked)
        if len(picked) == 1:
            client.get(picked[0])
        else:
            client.get_many(picked)
        done += len(picked)
    true_top = [k.encode() for k, _ in true.most_common(n)]
    found = reported_hot_keys(client, n)
    found_keys = {k for k, _ in found}
    return {"true": [(k, true[k.decode()]) for k in true_top], "found": found,
            "recall": sum(k in found_keys for k in true_top) / n}


def scenario_hot_keys(args) -> list[str]:
    """tools/scenarios.py's ``hot-keys``: a zipf load on a fresh 3-node fleet,
    the true top 10 beside the merged ``ClusterClient.hot_keys()``."""
    from memd.cluster.client import ClusterClient
    from tools.fleet import LocalFleet
    lines = ["## the 10 hottest keys of a zipf load (s = 1.1, 10,000 keys, 200,000 reads)", ""]
    with LocalFleet(n=3, backend=getattr(args, "backend", "auto"), extra_args=["-m", "64"]) as fleet:
        if fleet.backend != "memd":
            return lines + [f"(skipped: {fleet.backend} nodes report no hot keys)"]
        with ClusterClient(fleet.addresses) as client:
            result = find_top(client)
    lines += ["| rank | true key | requests | reported key | estimate |", "|---|---|---|---|---|"]
    for rank, ((tk, tc), (fk, fc)) in enumerate(itertools.zip_longest(
            result["true"], result["found"], fillvalue=(b"-", 0)), 1):
        lines.append(f"| {rank} | {tk.decode()} | {tc} | {fk.decode(errors='replace')} | {fc} |")
    lines += ["", f"true top 10 found: {result['recall']:.0%}"]
    return lines


def main(argv=None) -> int:
    from memd.cluster.client import ClusterClient
    ap = argparse.ArgumentParser(description="zipf load, then compare the reported hot keys")
    ap.add_argument("nodes", help="HOST:PORT[,HOST:PORT...]")
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("-s", type=float, default=1.1, help="zipf exponent")
    args = ap.parse_args(argv)
    with ClusterClient(args.nodes.split(",")) as client:
        result = find_top(client, keys=args.keys, requests=args.requests, s=args.s)
    print(f"{'true top-10':<24}{'requests':>10}   {'reported':<24}{'estimate':>10}")
    for (tk, tc), (fk, fc) in itertools.zip_longest(result["true"], result["found"],
                                                     fillvalue=(b"-", 0)):
        print(f"{tk.decode():<24}{tc:>10}   {fk.decode(errors='replace'):<24}{fc:>10}")
    print(f"recall: {result['recall']:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
