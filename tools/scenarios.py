"""Scenario runner for a fleet that does not go cold (issue 15).

    python -m tools.scenarios                    # every scenario, memd nodes
    python -m tools.scenarios --only kill,scale-out --backend memcached

One run prints, each measured on a fresh local fleet (127.0.0.x) under a
checked load (tools/fleetload.py: every value read is checked against what
was acknowledged before the read):

- ``kill``: keys written before a node is killed under load (and not
  rewritten after), how many of them are gone afterwards, and the load's
  misses, stale reads and errors, with ``replicas=1`` and ``replicas=2``;
- ``scale-out``: hit ratio over keys written before, through a 3 -> 4
  growth under read load, with and without warm-up;
- ``rolling``: hit ratio, stale reads and client errors through
  ``rolling_restart`` (graceful snapshot, warm start, one node at a time),
  with ``replicas=2`` and ``replicas=1``.

Scenarios are functions ``(args) -> list[str]`` (lines to print) in
``SCENARIOS``; other parts of the fleet register theirs there (the hot-key
scenario is added by the hot-keys work, under the name ``hot-keys``).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

from memd.cluster import ClusterClient
from tools.fleet import LocalFleet, rolling_restart
from tools.fleetload import Load


def _fleet(args, **kw) -> LocalFleet:
    return LocalFleet(n=3, backend=args.backend, extra_args=["-m", "64"], **kw)


def scenario_kill(args) -> list[str]:
    lines = ["## keys lost when one of three nodes is killed under load", "",
             "| replicas | keys written before | lost | misses during | stale | errors |",
             "|---|---|---|---|---|---|"]
    for replicas in (1, 2):
        with _fleet(args) as fleet, ClusterClient(
                fleet.addresses, replicas=replicas, dead_timeout=args.dead_timeout) as cc:
            # Keys written before the kill and not touched by the load after
            # it: what a lost node takes with it.
            before = {f"before:{i}": b"v" for i in range(args.keys)}
            if cc.set_many(before):
                raise RuntimeError("could not write the keys before the kill")
            load = Load(cc, keys=args.keys, threads=args.threads)
            load.populate()
            counts = load.run_phases([("steady", 1.0, None),
                                      ("killed", args.seconds, lambda: fleet.kill(1))])
            got = cc.get_many(list(before))
            lost = [k for k in before if k not in got]
            c = counts["killed"]
            lines.append(f"| {replicas} | {len(before)} | {len(lost)} ({len(lost) / len(before):.1%}) "
                         f"| {c.misses} | {c.stale} | {c.errors} |")
    return lines


def scenario_scale_out(args) -> list[str]:
    lines = ["## hit ratio over keys written before, growing 3 -> 4 nodes under read load", "",
             "| warm-up | keys moved | reads | hit ratio | misses | stale | moved by the sweep |",
             "|---|---|---|---|---|---|---|"]
    for warmup in (60.0, 0.0):
        with _fleet(args) as fleet, ClusterClient(fleet.addresses, warmup=warmup) as cc:
            load = Load(cc, keys=args.keys, threads=args.threads, writes=False)
            load.populate()

            def grow() -> None:
                fleet.add_node()
                cc.set_servers(fleet.addresses)

            counts = load.run_phases([("before", 1.0, None), ("grown", args.seconds, grow)])
            moved = sum(cc.node_for(k) == fleet.addresses[3] for k in load.names)
            c = counts["grown"]
            label = f"on ({warmup:g} s)" if warmup else "off"
            deadline = time.monotonic() + 60
            while cc.sweeps and not cc.sweeps[-1]["finished"] and time.monotonic() < deadline:
                time.sleep(0.1)
            swept = (f"{cc.sweeps[-1]['moved']} keys in {cc.sweeps[-1]['seconds']:.1f} s"
                     if cc.sweeps else "-")
            lines.append(f"| {label} | {moved / len(load.names):.1%} | {c.reads} | {c.hit_ratio:.2%} "
                         f"| {c.misses} | {c.stale} | {swept} |")
    return lines


def scenario_rolling(args) -> list[str]:
    lines = ["## rolling restart (graceful snapshot, warm start, one node at a time) under load", "",
             f"client dead_timeout {args.dead_timeout:g} s; next node after "
             f"{args.dead_timeout + 1:g} s", "",
             "| replicas | reads | hit ratio | misses | stale | errors | writes | node downtime |",
             "|---|---|---|---|---|---|---|---|"]
    for replicas in (2, 1):
        with _fleet(args, snapshot=args.backend != "memcached") as fleet, ClusterClient(
                fleet.addresses, replicas=replicas, dead_timeout=args.dead_timeout) as cc:
            load = Load(cc, keys=args.keys, threads=args.threads)
            load.populate()
            downtimes: list[list[float]] = []
            counts = load.run_phases([
                ("steady", 1.0, None),
                ("rolling", 1.0, lambda: downtimes.append(
                    rolling_restart(fleet, wait=args.dead_timeout + 1)))])
            c = counts["rolling"]
            down = ", ".join(f"{d:.1f}" for d in downtimes[0])
            lines.append(f"| {replicas} | {c.reads} | {c.hit_ratio:.2%} | {c.misses} | {c.stale} "
                         f"| {c.errors} | {c.writes} | {down} s |")
    return lines


SCENARIOS: dict[str, Callable[[argparse.Namespace], list[str]]] = {
    "kill": scenario_kill,
    "scale-out": scenario_scale_out,
    "rolling": scenario_rolling,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.scenarios", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help="comma-separated scenario names")
    p.add_argument("--backend", choices=["auto", "memd", "memcached"], default="auto")
    p.add_argument("--keys", type=int, default=3000)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--seconds", type=float, default=5.0, help="load after a kill or a growth")
    p.add_argument("--dead-timeout", type=float, default=1.0,
                   help="clients' dead_timeout, so a rolling restart can move on quickly")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(SCENARIOS)
    for name in names:
        started = time.monotonic()
        print("\n".join(SCENARIOS[name.strip()](args)), flush=True)
        print(f"\n({name}: {time.monotonic() - started:.0f} s)\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
