"""Client side of a memd fleet, plus the node's ``config get cluster`` data.

- ``ring``: consistent hashing (xxh3 ``HashRing``, libmemcached ``KetamaRing``)
- ``client``: ``ClusterClient``, pymemcache per node, replicas, failover,
  warm-up after membership changes, discovery
- ``journal``: the client's staleness records (suspect copies, stand-in holders)
- ``discovery``: parse ``config get cluster`` replies, resolve DNS members
- ``config``: the node side, ``ClusterConfig`` (sans-IO)

Nothing here imports the server or trio.
"""

from memd.cluster.ring import HashRing, KetamaRing

__all__ = ["HashRing", "KetamaRing", "ClusterClient", "ClusterConfig"]


def __getattr__(name):
    # Lazy: the node imports memd.cluster.config without paying for
    # pymemcache and threads it never uses.
    if name == "ClusterClient":
        from memd.cluster.client import ClusterClient

        return ClusterClient
    if name == "ClusterConfig":
        from memd.cluster.config import ClusterConfig

        return ClusterConfig
    raise AttributeError(name)
