"""twemproxy (nutcracker) in front of a memd fleet: one address for any client.

    python -m tools.twemproxy config --config-endpoint memd1:11211 > nutcracker.yml
    python -m tools.twemproxy config --cluster-file deploy/compose/cluster
    python -m tools.twemproxy run --config-endpoint memd1:11211 --listen 0.0.0.0:22121

PHP, Java, Go or any memcached client then talks to one address and
twemproxy routes each key to the node ``ClusterClient(ring="ketama")``
would pick: md5 ketama, and every server carries its memd identity as its
twemproxy name (``memd1`` for ``memd1:11211``, ``host:port`` otherwise),
which is what twemproxy hashes, exactly as libmemcached does. So the
placement depends on the node names only, never on their addresses.

twemproxy resolves server addresses once, when it starts, and never reads
its configuration again. ``run`` therefore supervises it: every few seconds
it reads the membership and resolves the names itself, and when either
changes it writes a new configuration and restarts nutcracker (clients
reconnect; memcached clients do that on their own). Hosts are ejected
never (``auto_eject_hosts: false``): ejecting one would move its keys to
other nodes, where they go stale once it is back.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterable

from memd.cluster import discovery
from memd.cluster.config import NodeEntry, parse_cluster_file, resolve_ip
from memd.cluster.ring import ketama_label

log = logging.getLogger("memd.twemproxy")

POOL = "memd"


def server_line(node: NodeEntry, ip: str = "") -> str:
    """``addr:port:1 name``: connect to ``addr``; hash ``name`` (the memd identity)."""
    addr = ip or node.ip or node.host
    return f"{addr}:{node.port}:1 {ketama_label(node.name)}"


def render_config(nodes: Iterable[NodeEntry], listen: str = "127.0.0.1:22121",
                  resolve: Callable[[str], str] | None = None,
                  timeout_ms: int = 1000) -> str:
    """nutcracker YAML for one pool over ``nodes``.

    With ``resolve``, host names are written as the addresses it returns
    (twemproxy would otherwise resolve them once, at start); the server
    names, so the placement, stay the host names either way.
    """
    lines = [
        f"{POOL}:",
        f"  listen: {listen}",
        "  hash: md5",
        "  distribution: ketama",
        f"  timeout: {timeout_ms}",
        "  preconnect: false",
        "  auto_eject_hosts: false",
        "  server_retry_timeout: 1000",
        "  server_failure_limit: 2",
        "  servers:",
    ]
    for node in nodes:
        ip = resolve(node.host) if resolve is not None and not node.ip else ""
        lines.append(f"   - {server_line(node, ip)}")
    return "\n".join(lines) + "\n"


def membership(args: argparse.Namespace) -> list[NodeEntry]:
    """The fleet, from a node's ``config get cluster`` or a cluster file."""
    if args.cluster_file:
        with open(args.cluster_file, encoding="utf-8") as f:
            return parse_cluster_file(f.read(), args.cluster_file)[0]
    info = discovery.fetch_cluster_config(args.config_endpoint)
    return [NodeEntry(n.host, n.ip, n.port) for n in info.nodes]


def _wait_for_membership(args: argparse.Namespace, deadline: float) -> list[NodeEntry]:
    while True:
        try:
            nodes = membership(args)
            if nodes:
                return nodes
            raise discovery.DiscoveryError("empty membership")
        except (OSError, ValueError, discovery.DiscoveryError) as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("membership not available yet: %s", exc)
            time.sleep(1)


def run(args: argparse.Namespace) -> int:
    """Generate, start nutcracker, restart it when the fleet or an address changes."""
    exe = shutil.which(args.nutcracker)
    if exe is None:
        print(f"{args.nutcracker} not found (apt-get install nutcracker)", file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="twemproxy-")
    conf = os.path.join(workdir, "nutcracker.yml")
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    proc: subprocess.Popen | None = None
    current = None
    try:
        nodes = _wait_for_membership(args, time.monotonic() + args.wait)
        while not stopping:
            text = render_config(nodes, args.listen, resolve_ip)
            if text != current or proc is None or proc.poll() is not None:
                if proc is not None and proc.poll() is None:
                    log.warning("fleet or addresses changed: restarting nutcracker")
                    proc.terminate()
                    proc.wait(10)
                with open(conf, "w") as f:
                    f.write(text)
                current = text
                proc = subprocess.Popen([exe, "-c", conf, "-s", str(args.stats_port), "-v", "4",
                                         "-o", "/dev/stderr"])
            time.sleep(args.poll)
            try:
                nodes = membership(args) or nodes
            except (OSError, ValueError, discovery.DiscoveryError) as exc:
                log.warning("membership poll failed, keeping %d nodes: %s", len(nodes), exc)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.twemproxy", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["config", "run"])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config-endpoint", metavar="HOST:PORT", help="a memd node to ask `config get cluster`")
    src.add_argument("--cluster-file", metavar="FILE", help="a memd cluster file")
    p.add_argument("--listen", default="127.0.0.1:22121", help="twemproxy's client address")
    p.add_argument("--resolve", action="store_true", help="config: write resolved addresses")
    p.add_argument("--nutcracker", default="nutcracker", help="run: the nutcracker binary")
    p.add_argument("--stats-port", type=int, default=22222, help="run: nutcracker's stats port")
    p.add_argument("--poll", type=float, default=5.0, help="run: seconds between membership checks")
    p.add_argument("--wait", type=float, default=60.0, help="run: seconds to wait for the fleet at start")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s twemproxy %(levelname)s %(message)s")
    if args.command == "config":
        try:
            nodes = membership(args)
        except (OSError, ValueError, discovery.DiscoveryError) as exc:
            print(f"cannot read the membership: {exc}", file=sys.stderr)
            return 1
        sys.stdout.write(render_config(nodes, args.listen, resolve_ip if args.resolve else None))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
