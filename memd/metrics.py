"""Prometheus metrics over HTTP, under memcached_exporter's metric names.

Why these names: dashboards and alerts written for memcached (through
prometheus/memcached_exporter) then work on memd unchanged, without running
an exporter process beside every node.  The mapping from `stats` fields to
metrics follows the exporter: ``get_hits`` becomes
``memcached_commands_total{command="get",status="hit"}``, ``set``'s count is
``cmd_set`` minus the CAS commands (which memcached counts in cmd_set too),
``stats items`` and ``stats slabs`` become ``memcached_slab_*{slab="N"}``.

Metrics the exporter declares as counters without a ``_total`` suffix
(``memcached_uptime_seconds``, ``memcached_slab_items_moves_*``...) are
exposed as gauges: prometheus_client would otherwise append ``_total`` and
the names would no longer match.

The HTTP server runs in prometheus_client's own daemon thread; a scrape
reads the node's counters through memd.stats (the same numbers as `stats`)
at that moment.  The event loop never waits for a scrape, and a scrape that
races a change in the cache reads a value from just before or just after it,
which is all a monitoring sample promises.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

from . import hotkeys, stats as stats_mod

log = logging.getLogger("memd")

NS = "memcached"

# (stats name, metric name, help, is_counter)
GENERAL = [
    ("uptime", "uptime_seconds", "Number of seconds since the server started.", False),
    ("time", "time_seconds", "current UNIX time according to the server.", False),
    ("bytes_read", "read_bytes_total", "Total number of bytes read by this server from network.", True),
    ("bytes_written", "written_bytes_total", "Total number of bytes sent by this server to network.", True),
    ("curr_connections", "current_connections", "Current number of open connections.", False),
    ("total_connections", "connections_total",
     "Total number of connections opened since the server started running.", True),
    ("rejected_connections", "connections_rejected_total",
     "Total number of connections rejected due to hitting the -c limit.", True),
    ("conn_yields", "connections_yielded_total",
     "Total number of connections yielded running due to hitting the -R limit.", True),
    ("listen_disabled_num", "connections_listener_disabled_total",
     "Number of times that the server has hit its connections limit and disabled its listener.", True),
    ("bytes", "current_bytes", "Current number of bytes used to store items.", False),
    ("limit_maxbytes", "limit_bytes", "Number of bytes this server is allowed to use for storage.", False),
    ("curr_items", "current_items", "Current number of items stored by this instance.", False),
    ("total_items", "items_total", "Total number of items stored during the life of this instance.", True),
    ("evictions", "items_evicted_total",
     "Total number of valid items removed from cache to free memory for new items.", True),
    ("reclaimed", "items_reclaimed_total",
     "Total number of times an entry was stored using memory from an expired entry.", True),
    ("store_too_large", "item_too_large_total",
     "The number of times an item exceeded the max-item-size when being stored.", True),
    ("store_no_memory", "item_no_memory_total",
     "The number of times an item could not be stored due to no more memory.", True),
    ("lru_crawler_starts", "lru_crawler_starts_total", "Times an LRU crawler was started.", True),
    ("direct_reclaims", "direct_reclaims_total",
     "Times worker threads had to directly reclaim or evict items.", True),
    ("crawler_items_checked", "lru_crawler_items_checked_total",
     "Total items examined by LRU Crawler.", True),
    ("crawler_reclaimed", "lru_crawler_reclaimed_total", "Total items freed by LRU Crawler.", True),
    ("moves_to_cold", "lru_crawler_moves_to_cold_total",
     "Total number of items moved from HOT/WARM to COLD LRU's.", True),
    ("moves_to_warm", "lru_crawler_moves_to_warm_total",
     "Total number of items moved from COLD to WARM LRU.", True),
    ("moves_within_lru", "lru_crawler_moves_within_lru_total",
     "Total number of items reshuffled within HOT or WARM LRU's.", True),
    ("accepting_conns", "accepting_connections",
     "The server is currently accepting new connections.", False),
]

# `stats items` fields → memcached_slab_<name>{slab}; counters end in _total
ITEMS = [
    ("number", "current_items", "Number of items currently stored in this slab class."),
    ("age", "items_age_seconds", "Number of seconds the oldest item has been in the slab class."),
    ("crawler_reclaimed", "items_crawler_reclaimed_total", "Number of items freed by the LRU Crawler."),
    ("evicted", "items_evicted_total",
     "Total number of times an item had to be evicted from the LRU before it expired."),
    ("evicted_nonzero", "items_evicted_nonzero_total",
     "Total number of times an item which had an explicit expire time set had to be evicted "
     "from the LRU before it expired."),
    ("evicted_time", "items_evicted_time_seconds",
     "Seconds since the last access for the most recent item evicted from this class."),
    ("evicted_unfetched", "items_evicted_unfetched_total", "Total number of items evicted and never fetched."),
    ("expired_unfetched", "items_expired_unfetched_total",
     "Total number of valid items evicted from the LRU which were never touched after being set."),
    ("outofmemory", "items_outofmemory_total",
     "Total number of items for this slab class that have triggered an out of memory error."),
    ("reclaimed", "items_reclaimed_total", "Total number of items reclaimed."),
    ("tailrepairs", "items_tailrepairs_total",
     "Total number of times the entries for a particular ID need repairing."),
    ("moves_to_cold", "items_moves_to_cold", "Number of items moved from HOT or WARM into COLD."),
    ("moves_to_warm", "items_moves_to_warm", "Number of items moves from COLD into WARM."),
    ("moves_within_lru", "items_moves_within_lru",
     "Number of times active items were bumped within HOT or WARM."),
    ("number_hot", "hot_items", "Number of items presently stored in the HOT LRU."),
    ("number_warm", "warm_items", "Number of items presently stored in the WARM LRU."),
    ("number_cold", "cold_items", "Number of items presently stored in the COLD LRU."),
    ("number_temp", "temporary_items", "Number of items presently stored in the TEMPORARY LRU."),
    ("age_hot", "hot_age_seconds", "Age of the oldest item in HOT LRU."),
    ("age_warm", "warm_age_seconds", "Age of the oldest item in WARM LRU."),
]
LRU_HITS = [("hits_to_hot", "hot"), ("hits_to_warm", "warm"),
            ("hits_to_cold", "cold"), ("hits_to_temp", "temporary")]

SLABS = [
    ("chunk_size", "chunk_size_bytes", "Number of bytes allocated to each chunk within this slab class."),
    ("chunks_per_page", "chunks_per_page", "Number of chunks within a single page for this slab class."),
    ("total_pages", "current_pages", "Number of pages allocated to this slab class."),
    ("total_chunks", "current_chunks", "Number of chunks allocated to this slab class."),
    ("used_chunks", "chunks_used", "Number of chunks allocated to an item."),
    ("free_chunks", "chunks_free", "Number of chunks not yet allocated items."),
    ("free_chunks_end", "chunks_free_end", "Number of free chunks at the end of the last allocated page."),
]

COMMAND_OPS = ("get", "delete", "incr", "decr", "cas", "touch")


def _num(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _family(name: str, doc: str, counter: bool, labels=None):
    cls = CounterMetricFamily if counter and name.endswith("_total") else GaugeMetricFamily
    return cls(name, doc, labels=labels)


def _per_class(pairs) -> dict[str, dict[str, str]]:
    """``[("items:5:number", 3), ...]`` or ``[("5:chunk_size", 96), ...]`` → {"5": {...}}."""
    out: dict[str, dict[str, str]] = {}
    for name, value in pairs:
        parts = name.split(":")
        if len(parts) == 3:            # items:<id>:<field>
            _, cls, field = parts
        elif len(parts) == 2:          # <id>:<field>
            cls, field = parts
        else:
            continue
        out.setdefault(cls, {})[field] = value
    return out


class NodeCollector:
    """Reads the node's stats on every scrape and yields memcached_exporter's metrics."""

    def __init__(self, node) -> None:
        self.node = node

    def collect(self):
        try:
            families = list(self._families())
            up = 1.0
        except Exception:
            # The event loop changes the cache while we read it; a scrape that
            # trips over that reports down for once rather than failing
            # the HTTP request (and the exporter's contract is the same).
            log.exception("metrics: reading the node's stats failed")
            families = []
            up = 0.0
        yield from families
        yield GaugeMetricFamily(f"{NS}_up", "Could the memcached server be reached.", value=up)

    def _families(self):
        node = self.node
        general = dict(stats_mod.general(node))
        settings = dict(stats_mod.settings(node))

        version = GaugeMetricFamily(f"{NS}_version", "The version of this memcached server.",
                                    labels=["version"])
        version.add_metric([str(general.get("version", node.version))], 1)
        yield version

        for stat, name, doc, counter in GENERAL:
            v = _num(general.get(stat))
            if v is not None:
                fam = _family(f"{NS}_{name}", doc, counter)
                fam.add_metric([], v)
                yield fam

        for stat, name, doc in (("rusage_user", "process_user_cpu_seconds_total",
                                 "Accumulated user time for this process."),
                                ("rusage_system", "process_system_cpu_seconds_total",
                                 "Accumulated system time for this process.")):
            v = _num(general.get(stat))
            if v is not None:
                yield CounterMetricFamily(f"{NS}_{name}", doc, value=v)

        v = _num(general.get("total_malloced"))
        slab_pairs = stats_mod.slabs(node)
        if v is None:
            v = _num(dict(slab_pairs).get("total_malloced"))
        if v is not None:
            yield GaugeMetricFamily(f"{NS}_malloced_bytes",
                                    "Number of bytes of memory allocated to slab pages.", value=v)

        v = _num(settings.get("maxconns"))
        if v is not None:
            yield GaugeMetricFamily(f"{NS}_max_connections", "Maximum number of clients allowed.",
                                    value=v)
        if settings.get("lru_crawler") == "yes":
            yield GaugeMetricFamily(f"{NS}_lru_crawler_enabled", "Whether the LRU crawler is enabled.",
                                    value=1)

        commands = CounterMetricFamily(
            f"{NS}_commands_total",
            "Total number of all requests broken down by command (get, set, etc.) and status.",
            labels=["command", "status"])
        for op in COMMAND_OPS:
            for suffix, status in (("_hits", "hit"), ("_misses", "miss")):
                v = _num(general.get(op + suffix))
                if v is not None:
                    commands.add_metric([op, status], v)
        for stat, op, status in (("cas_badval", "cas", "badval"), ("cmd_flush", "flush", "hit")):
            v = _num(general.get(stat))
            if v is not None:
                commands.add_metric([op, status], v)
        cmd_set = _num(general.get("cmd_set"))
        if cmd_set is not None:
            cas = sum(_num(general.get(k)) or 0 for k in ("cas_misses", "cas_hits", "cas_badval"))
            commands.add_metric(["set", "hit"], cmd_set - cas)
        yield commands

        yield from self._slab_families(stats_mod.items(node), slab_pairs)
        yield from hot_key_families(node.store.hotkeys)

    def _slab_families(self, item_pairs, slab_pairs):
        items = _per_class(item_pairs)
        slabs = _per_class(slab_pairs)
        for stat, name, doc in ITEMS:
            fam = _family(f"{NS}_slab_{name}", doc, True, labels=["slab"])
            for cls, fields in items.items():
                v = _num(fields.get(stat))
                if v is not None:
                    fam.add_metric([cls], v)
            yield fam
        hits = CounterMetricFamily(f"{NS}_slab_lru_hits_total", "Number of get_hits to the LRU.",
                                   labels=["slab", "lru"])
        for cls, fields in items.items():
            for stat, lru in LRU_HITS:
                v = _num(fields.get(stat))
                if v is not None:
                    hits.add_metric([cls, lru], v)
        yield hits
        mem = GaugeMetricFamily(f"{NS}_slab_mem_requested_bytes",
                                "Number of bytes of memory actual items take up within a slab.",
                                labels=["slab"])
        for cls, fields in items.items():
            v = _num(fields.get("mem_requested"))
            if v is not None:
                mem.add_metric([cls], v)
        yield mem
        for stat, name, doc in SLABS:
            fam = GaugeMetricFamily(f"{NS}_slab_{name}", doc, labels=["slab"])
            for cls, fields in slabs.items():
                v = _num(fields.get(stat))
                if v is not None:
                    fam.add_metric([cls], v)
            yield fam
        cmds = CounterMetricFamily(
            f"{NS}_slab_commands_total",
            "Total number of all requests broken down by command (get, set, etc.) and status per slab.",
            labels=["slab", "command", "status"])
        for cls, fields in slabs.items():
            for op in COMMAND_OPS:
                v = _num(fields.get(op + "_hits"))
                if v is not None:
                    cmds.add_metric([cls, op, "hit"], v)
            v = _num(fields.get("cas_badval"))
            if v is not None:
                cmds.add_metric([cls, "cas", "badval"], v)
            v = _num(fields.get("cmd_set"))
            if v is not None:
                cas = (_num(fields.get("cas_hits")) or 0) + (_num(fields.get("cas_badval")) or 0)
                cmds.add_metric([cls, "set", "hit"], v - cas)
        yield cmds


HOT_KEYS_EXPORTED = 10


def hot_key_families(hot):
    """memd's own (no exporter has them): the node's hottest keys as labels.

    Only the top ``HOT_KEYS_EXPORTED`` are exported, so the series a node
    adds stay bounded however many keys pass through the list; keys are
    labelled as `stats hotkeys` prints them (printable ASCII, else b64:)."""
    requests = GaugeMetricFamily(
        "memd_hot_key_requests",
        "Estimated recent requests of the node's hottest keys (sampled, halved every "
        "memd_hot_keys_window_seconds).", labels=["key"])
    for key, count, _error in hot.top(HOT_KEYS_EXPORTED):
        requests.add_metric([hotkeys.key_label(key)], count)
    yield requests
    yield GaugeMetricFamily("memd_hot_keys_window_seconds",
                            "Seconds after which hot key counts are halved.", value=hot.window)
    yield CounterMetricFamily("memd_hot_keys_sampled_total",
                              "Requests counted by the hot keys sketch.", value=hot.sampled)


def make_registry(node) -> CollectorRegistry:
    """A registry of this node's metrics plus the process's own (RSS, CPU, fds)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    ProcessCollector(registry=registry)
    return registry


def start_metrics_server(node, port: int, host: str = "127.0.0.1"):
    """Serve ``/metrics`` on host:port from a daemon thread; returns the HTTP server.

    The server's real port (useful with port 0) is ``server.server_port``.
    """
    result = start_http_server(port, addr=host, registry=make_registry(node))
    server = result[0] if isinstance(result, tuple) else result
    bound = getattr(server, "server_port", port)
    node.metrics_port = bound
    log.info("metrics on http://%s:%s/metrics", host, bound)
    return server
