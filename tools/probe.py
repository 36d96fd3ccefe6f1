"""Health probe that speaks the protocol: exit 0 when a node answers.

    python -m tools.probe                       # 127.0.0.1:11211 answers `version`
    python -m tools.probe memd1:11211
    python -m tools.probe --cluster 127.0.0.1:11211   # ... and announces at least one member

Used by the image's HEALTHCHECK and the Kubernetes probes: a node that
accepts connections but does not answer is unhealthy, which a bare TCP
check would miss. ``--cluster`` is the readiness test of a node that finds
its fleet through DNS: until its first lookup succeeds it announces no
members, and a client bootstrapped from it would see an empty fleet.
"""

from __future__ import annotations

import argparse
import sys

from memd.cluster import discovery
from tools.fleet import ping


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("address", nargs="?", default="127.0.0.1:11211")
    p.add_argument("--cluster", action="store_true",
                   help="also require `config get cluster` to list at least one node")
    args = p.parse_args(argv)
    host, port = discovery.split_address(args.address)
    if not ping(host, port, timeout=2.0):
        return 1
    if args.cluster:
        try:
            info = discovery.fetch_cluster_config(args.address, timeout=2.0)
        except (OSError, discovery.DiscoveryError):
            return 1
        return 0 if info.nodes else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
