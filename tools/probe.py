"""Health probe that speaks the protocol: exit 0 when a node answers ``version``.

    python -m tools.probe                 # 127.0.0.1:11211
    python -m tools.probe memd1:11211

Used by the image's HEALTHCHECK and the Kubernetes readiness and liveness
probes: a node that accepts connections but does not answer is unhealthy,
which a bare TCP check would miss.
"""

from __future__ import annotations

import sys

from memd.cluster.discovery import split_address
from tools.fleet import ping


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    host, port = split_address(args[0] if args else "127.0.0.1:11211")
    return 0 if ping(host, port, timeout=2.0) else 1


if __name__ == "__main__":
    sys.exit(main())
