"""A two-node memd fleet, one node per core, against one memcached -t 2.

    python -m tools.multicore_compare [--reps 3] [--secs 5]
                                      [--scenarios c50,mget100,c50big,mget100big]

memd is one event loop per process; the way it uses a second core is a
second node, with the client's consistent-hashing ring spreading the keys.
This measures what that gives on one host:

- memd: two nodes, pinned to cpu0 and cpu1.  The keys are split by the
  cluster client's own ring (``HashRing`` over the two nodes' addresses), and
  one ``ringload`` process (C, tools/ringload.c) per node sends that node
  only the keys the ring gives it: the load a memd cluster client would
  send, without measuring a Python client.
- memcached -t 2: the same two ringload processes with the same two key
  lists, both aimed at the one memcached.

The load generators are not pinned: on a 2-core machine they share the
cores with the servers, in both setups alike.  So the figures are a ratio
from one run on a shared machine, not what either server does with cores to
itself.  Scenarios (50 connections in all, 25 per ringload process, one
request in flight each): c50 — gets (90%) and sets of single keys; mget100 —
gets of 100 keys; over 10,000 keys, or 1,000,000 for the *big* ones.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from memd.cluster.ring import HashRing
from tools.soak import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
RINGLOAD = os.path.join(tempfile.gettempdir(), "ringload-bin")
MEMD = [sys.executable, "-m", "memd", "-l", "127.0.0.1", "-m", "1024", "-p", "{port}"]
MEMCACHED = ["memcached", "-U", "0", "-l", "127.0.0.1", "-m", "2048", "-t", "2", "-u", "root",
             "-p", "{port}"]
SCENARIOS = {            # name: (keys, keys per get, reported figure)
    "c50": (10_000, 1, "ops_s"),
    "mget100": (10_000, 100, "keys_s"),
    "c50big": (1_000_000, 1, "ops_s"),
    "mget100big": (1_000_000, 100, "keys_s"),
}
CONNS_PER_LOADER = 25


def build_ringload() -> None:
    src = os.path.join(HERE, "ringload.c")
    if not os.path.exists(RINGLOAD) or os.path.getmtime(RINGLOAD) < os.path.getmtime(src):
        subprocess.run(["gcc", "-O2", "-o", RINGLOAD, src], check=True)


def start(argv: list[str], port: int, cpu: str | None) -> subprocess.Popen:
    argv = [a.format(port=port) for a in argv]
    if cpu is not None:
        argv = ["taskset", "-c", cpu] + argv
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return p
        except OSError:
            if p.poll() is not None:
                sys.exit("server exited at start: %s" % " ".join(argv))
            time.sleep(0.05)
    p.kill()
    sys.exit("server did not listen: %s" % " ".join(argv))


def stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def split_keys(n_keys: int, nodes: list[str], tmp: str) -> list[str]:
    """Key files, one per node, as the cluster client's ring assigns keys."""
    ring = HashRing(nodes)
    lists: dict[str, list[bytes]] = {node: [] for node in nodes}
    for i in range(n_keys):
        key = b"key:%016d" % i
        lists[ring.get_node(key)].append(key)
    paths = []
    for j, node in enumerate(nodes):
        path = os.path.join(tmp, "keys%d.txt" % j)
        with open(path, "wb") as f:
            f.write(b"\n".join(lists[node]) + b"\n")
        paths.append(path)
    return paths


def run_loaders(ports: list[int], keyfiles: list[str], mget: int, secs: float) -> dict:
    procs = [subprocess.Popen([RINGLOAD, "-p", str(port), "-f", path, "-c", str(CONNS_PER_LOADER),
                               "-m", str(mget), "-t", str(secs), "-w", "1"],
                              stdout=subprocess.PIPE, text=True)
             for port, path in zip(ports, keyfiles)]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=secs + 600)
        line = next((l for l in out.splitlines() if l.startswith("RESULT")), "")
        results.append({k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)})
    return {"ops_s": sum(r.get("ops_s", 0) for r in results),
            "keys_s": sum(r.get("keys_s", 0) for r in results),
            "p99_us": max(r.get("p99_us", 0) for r in results),
            # every key was set first: a get that misses would mean a lost key
            "hit_rate": sum(r.get("hits", 0) for r in results)
            / max(sum(r.get("keys_s", 0) for r in results) * secs, 1)}


def one(server: str, scenario: str, secs: float, tmp: str, memd_cmd: list[str]) -> dict:
    n_keys, mget, _ = SCENARIOS[scenario]
    ports = [free_port(), free_port()]
    if server == "memd":
        # one node per core; keys split by the ring over the two addresses
        servers = [start(memd_cmd, ports[0], "0"), start(memd_cmd, ports[1], "1")]
        targets = ports
    else:
        servers = [start(MEMCACHED, ports[0], None)]
        targets = [ports[0], ports[0]]
    try:
        keyfiles = split_keys(n_keys, ["127.0.0.1:%d" % p for p in ports], tmp)
        return run_loaders(targets, keyfiles, mget, secs)
    finally:
        for p in servers:
            stop(p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default="c50,mget100,c50big,mget100big")
    ap.add_argument("--secs", type=float, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--memd", default=" ".join(MEMD),
                    help="command of one memd node, with {port} in it")
    args = ap.parse_args(argv)
    build_ringload()
    memd_cmd = args.memd.split()
    print("memd: 2 nodes (cpu0, cpu1); memcached: -t 2; load: 2 ringload processes x %d "
          "connections, unpinned (they share the 2 cores)" % CONNS_PER_LOADER, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for sc in args.scenarios.split(","):
            field = SCENARIOS[sc][2]
            got: dict[str, list[dict]] = {"memd": [], "memcached": []}
            for rep in range(args.reps):
                order = ["memd", "memcached"] if rep % 2 == 0 else ["memcached", "memd"]
                for server in order:
                    got[server].append(one(server, sc, args.secs, tmp, memd_cmd))
            med = {s: statistics.median(r[field] for r in got[s]) for s in got}
            p99 = {s: statistics.median(r["p99_us"] for r in got[s]) for s in got}
            print("%-10s memd x2 %12s  memcached -t 2 %12s %-6s ratio %.2f   p99 us %s / %s "
                  "(ratio %.2f)   hits %.3f / %.3f   reps memd %s" % (
                      sc, format(round(med["memd"]), ","), format(round(med["memcached"]), ","),
                      field, med["memd"] / max(med["memcached"], 1), format(round(p99["memd"]), ","),
                      format(round(p99["memcached"]), ","), p99["memd"] / max(p99["memcached"], 1),
                      min(r["hit_rate"] for r in got["memd"]),
                      min(r["hit_rate"] for r in got["memcached"]),
                      [round(r[field]) for r in got["memd"]]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
