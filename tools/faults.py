"""Fault runner: what clients of a local fleet see when nodes die, hang and flap.

    python -m tools.faults                     # memd nodes, 3 clients, ~2 min
    python -m tools.faults --dead-timeout 2 --scale 0.5 --backend memcached

For each client (memd's ClusterClient with default settings, the same with
``failover="miss"``, pymemcache's ``HashClient``) a fresh three-node fleet on
127.0.0.x is started, every key written once, and a checked load
(tools/fleetload.py: reads, sets, deletes; each value checked against what
was acknowledged before the read) runs through the fault sequence:

    steady -> kill node 1 (SIGKILL) -> restart it (empty)
           -> hang node 2 (SIGSTOP 10 s) -> resume it (SIGCONT)
           -> node 3 flaps (SIGSTOP 2 s, SIGCONT 2 s, for 12 s) -> all up

It prints a markdown table: reads, misses, stale reads and client
exceptions per phase.  Only 127.0.0.x is used; every node is stopped at the
end, a stopped node is always continued first.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

from tools.fleet import LocalFleet
from tools.fleetload import Counts, Load, table


def cluster_client(fleet: LocalFleet, dead_timeout: float | None, **kw: Any):
    from memd.cluster import ClusterClient

    if dead_timeout is not None:
        kw["dead_timeout"] = dead_timeout
    return ClusterClient(fleet.addresses, **kw)


def hash_client(fleet: LocalFleet, dead_timeout: float | None):
    from pymemcache.client.hash import HashClient

    servers = [(n.host, n.port) for n in fleet.nodes]
    return HashClient(servers, use_pooling=True, connect_timeout=1, timeout=1,
                      retry_attempts=2, retry_timeout=1,
                      dead_timeout=30 if dead_timeout is None else dead_timeout,
                      default_noreply=False)


class SplitClient:
    """Writes through one ClusterClient, reads through another: what two
    independent processes see, since each keeps its own journal."""

    def __init__(self, writer: Any, reader: Any) -> None:
        self.writer, self.reader = writer, reader
        self.set, self.delete = writer.set, writer.delete
        self.get, self.get_many = reader.get, reader.get_many

    def close(self) -> None:
        self.writer.close()
        self.reader.close()


CLIENTS: dict[str, Callable[..., Any]] = {
    "memd (default)": lambda f, d: cluster_client(f, d),
    "memd failover=miss": lambda f, d: cluster_client(f, d, failover="miss"),
    "pymemcache HashClient": hash_client,
    "memd, two processes": lambda f, d: SplitClient(cluster_client(f, d), cluster_client(f, d)),
    "memd replicas=2": lambda f, d: cluster_client(f, d, replicas=2),
}
DEFAULT_CLIENTS = ["memd (default)", "memd failover=miss", "pymemcache HashClient"]


class Flapper:
    """SIGSTOP / SIGCONT a process every ``period`` seconds until stopped."""

    def __init__(self, pid: int, period: float) -> None:
        self.pid, self.period = pid, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        stopped = False
        while not self._stop.wait(self.period):
            os.kill(self.pid, signal.SIGCONT if stopped else signal.SIGSTOP)
            stopped = not stopped
        os.kill(self.pid, signal.SIGCONT)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def fault_steps(fleet: LocalFleet, scale: float = 1.0, hang: float = 10.0,
                flap: float = 12.0, flap_period: float = 2.0,
                settle: float = 5.0) -> list[tuple[str, float, Callable[[], None] | None]]:
    """The fault sequence as (phase, seconds, action) steps for ``Load.run_phases``."""
    pid = lambda i: fleet.nodes[i].proc.pid  # noqa: E731
    flapper: list[Flapper] = []

    def start_flap() -> None:
        flapper.append(Flapper(pid(2), flap_period))
        flapper[0].start()

    def stop_flap() -> None:
        flapper[0].stop()

    return [
        ("steady", 2 * scale, None),
        ("node killed", 4 * scale, lambda: fleet.kill(0)),
        ("killed node restarted", 4 * scale, lambda: fleet.restart(0)),
        (f"node hung {hang:g} s", hang, lambda: os.kill(pid(1), signal.SIGSTOP)),
        ("hung node resumed", 4 * scale, lambda: os.kill(pid(1), signal.SIGCONT)),
        ("node flapping", flap, start_flap),
        ("all up", settle, stop_flap),
    ]


def run_one(make_client: Callable[..., Any], *, backend: str = "auto", scale: float = 1.0,
            dead_timeout: float | None = None, hang: float = 10.0, flap: float = 12.0,
            flap_period: float = 2.0, keys: int = 600, threads: int = 4,
            settle: float | None = None,
            extra_args: list[str] | None = None) -> dict[str, Counts]:
    """One client through the whole fault sequence on a fresh fleet."""
    with LocalFleet(n=3, backend=backend, extra_args=extra_args or ["-m", "32"]) as fleet:
        client = make_client(fleet, dead_timeout)
        try:
            load = Load(client, keys=keys, threads=threads)
            load.populate()
            # The last phase lasts long enough for every dead node to be
            # probed and rejoin, so stale reads after a return are counted.
            wait = (30.0 if dead_timeout is None else dead_timeout) + 3.0
            steps = fault_steps(fleet, scale, hang=hang, flap=flap, flap_period=flap_period,
                                settle=settle if settle is not None else wait)
            try:
                return load.run_phases(steps)
            finally:
                for node in fleet.nodes:  # never leave a node stopped
                    if node.proc is not None and node.proc.poll() is None:
                        os.kill(node.proc.pid, signal.SIGCONT)
        finally:
            client.close()


def total(phases: dict[str, Counts]) -> Counts:
    out = Counts()
    for c in phases.values():
        out.add(c)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.faults", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=["auto", "memd", "memcached"], default="auto")
    p.add_argument("--clients", default=";".join(DEFAULT_CLIENTS),
                   help="';'-separated subset of: " + "; ".join(CLIENTS))
    p.add_argument("--dead-timeout", type=float, default=None,
                   help="clients' dead_timeout (default: each client's own, 30 s)")
    p.add_argument("--scale", type=float, default=1.0, help="stretch the short phases")
    p.add_argument("--hang", type=float, default=10.0)
    p.add_argument("--flap", type=float, default=12.0, help="seconds of flapping")
    p.add_argument("--flap-period", type=float, default=2.0, help="seconds stopped, then running")
    p.add_argument("--keys", type=int, default=600)
    p.add_argument("--threads", type=int, default=4)
    args = p.parse_args(argv)
    rows = {}
    for name in args.clients.split(";"):
        name = name.strip()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        phases = run_one(CLIENTS[name], backend=args.backend, scale=args.scale,
                         dead_timeout=args.dead_timeout, hang=args.hang, flap=args.flap,
                         flap_period=args.flap_period,
                         keys=args.keys, threads=args.threads)
        phases["total"] = total(phases)
        rows[name] = phases
        print(f"  done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    print(table(rows))
    return 1 if any(p["total"].stale or p["total"].bad for n, p in rows.items()
                    if n.startswith("memd (default)")) else 0


if __name__ == "__main__":
    sys.exit(main())
