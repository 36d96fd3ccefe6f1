"""The `stats` family of replies, under memcached 1.6.18's names and order.

Every group is a list of (name, value) pairs built from the node and its
store; ``render`` turns one into ``STAT name value\\r\\n``... ``END\\r\\n``.
Names memd has no mechanism for (segmented-LRU moves, extstore, napi ids)
are reported as 0 so that dashboards and exporters find every field.
"""

from __future__ import annotations

import os
import time

try:
    import resource
except ImportError:            # Windows: os.times() has the same two figures
    resource = None

from .node import Node


def render(pairs) -> bytes:
    return b"".join(b"STAT %s %s\r\n" % (str(k).encode(), str(v).encode())
                    for k, v in pairs) + b"END\r\n"


def _rusage() -> tuple[str, str]:
    if resource is None:
        t = os.times()
        return f"{t.user:.6f}", f"{t.system:.6f}"
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return f"{ru.ru_utime:.6f}", f"{ru.ru_stime:.6f}"


def general(node: Node) -> list:
    s = node.store
    st = node.settings
    now = time.time()
    user, system = _rusage()
    c = node.counters
    slabs = s.slabs
    rb = s.rebalancer
    held, queued = node.buffered()
    return [
        ("pid", node.pid), ("uptime", int(now - node.started)), ("time", int(now)),
        ("version", node.version), ("libevent", "trio"), ("pointer_size", 64),
        ("rusage_user", user), ("rusage_system", system),
        ("max_connections", st.conn_limit), ("curr_connections", node.curr_connections),
        ("total_connections", node.total_connections),
        ("rejected_connections", node.rejected_connections),
        ("connection_structures", node.curr_connections + len(node.listeners)),
        ("response_obj_oom", 0), ("response_obj_count", 0),
        # memd's own accounting: reply bytes queued on sockets, input held
        # between reads (memcached's read buffers and response objects)
        ("response_obj_bytes", queued),
        ("read_buf_count", 0), ("read_buf_bytes", held), ("read_buf_bytes_free", 0),
        ("read_buf_oom", 0), ("reserved_fds", 5),
        ("cmd_get", s.cmd_get), ("cmd_set", s.cmd_set), ("cmd_flush", s.cmd_flush),
        ("cmd_touch", s.cmd_touch), ("cmd_meta", c["cmd_meta"]),
        ("get_hits", s.get_hits), ("get_misses", s.get_misses),
        ("get_expired", s.get_expired), ("get_flushed", s.get_flushed),
        ("delete_misses", s.delete_misses), ("delete_hits", s.delete_hits),
        ("incr_misses", s.incr_misses), ("incr_hits", s.incr_hits),
        ("decr_misses", s.decr_misses), ("decr_hits", s.decr_hits),
        ("cas_misses", s.cas_misses), ("cas_hits", s.cas_hits), ("cas_badval", s.cas_badval),
        ("touch_hits", s.touch_hits), ("touch_misses", s.touch_misses),
        ("store_too_large", s.store_too_large), ("store_no_memory", s.store_no_memory),
        ("auth_cmds", c["auth_cmds"]), ("auth_errors", c["auth_errors"]),
        ("bytes_read", node.bytes_read), ("bytes_written", node.bytes_written),
        ("limit_maxbytes", slabs.mem_limit), ("accepting_conns", 1),
        ("listen_disabled_num", 0), ("time_in_listen_disabled_us", 0),
        ("threads", st.threads), ("conn_yields", 0),
        ("hash_power_level", s.index.power), ("hash_bytes", 4 << s.index.power),
        ("hash_is_expanding", int(s.index.expanding)),
        ("slab_reassign_rescues", rb.rescues if rb else 0), ("slab_reassign_chunk_rescues", 0),
        ("slab_reassign_evictions_nomem", rb.evictions_nomem if rb else 0),
        ("slab_reassign_inline_reclaim", 0),
        ("slab_reassign_busy_items", 0), ("slab_reassign_busy_deletes", 0),
        ("slab_reassign_running", int(bool(rb and rb.moving))),
        ("slabs_moved", rb.slabs_moved if rb else 0),
        ("lru_crawler_running", 0), ("lru_crawler_starts", 0),
        ("lru_maintainer_juggles", 0), ("malloc_fails", 0),
        ("log_worker_dropped", 0), ("log_worker_written", 0),
        ("log_watcher_skipped", node.watch.skipped), ("log_watcher_sent", node.watch.sent),
        ("log_watchers", len(node.watch.watchers)),
        ("unexpected_napi_ids", 0), ("round_robin_fallback", 0),
        ("bytes", s.bytes), ("curr_items", s.curr_items), ("total_items", s.total_items),
        ("slab_global_page_pool", 0),
        ("expired_unfetched", s.expired_unfetched), ("evicted_unfetched", s.evicted_unfetched),
        ("evicted_active", s.evicted_active), ("evictions", s.evictions),
        ("reclaimed", s.reclaimed), ("crawler_reclaimed", s.crawler_reclaimed),
        ("crawler_items_checked", 0), ("lrutail_reflocked", 0),
        ("moves_to_cold", 0), ("moves_to_warm", 0), ("moves_within_lru", 0),
        ("direct_reclaims", 0), ("lru_bumps_dropped", 0),
    ]


def settings(node: Node) -> list:
    st = node.settings
    s = node.store
    return [
        ("maxbytes", s.slabs.mem_limit), ("maxconns", st.conn_limit), ("tcpport", st.port),
        ("udpport", 0), ("inter", ",".join(st.listen) or "NULL"), ("verbosity", st.verbosity),
        ("oldest", s.oldest_live), ("evictions", "on" if s.settings.evictions else "off"),
        ("domain_socket", st.unix_socket or "NULL"), ("umask", f"{st.unix_mask:o}"),
        ("shutdown_command", "yes" if st.enable_shutdown else "no"),
        ("growth_factor", f"{st.factor:.2f}"), ("chunk_size", st.slab_min_size),
        ("num_threads", st.threads), ("num_threads_per_udp", st.threads),
        ("stat_key_prefix", st.detail_delimiter),
        ("detail_enabled", "yes" if s.detail is not None else "no"), ("reqs_per_event", 20),
        ("cas_enabled", "yes"), ("tcp_backlog", st.backlog),
        ("binding_protocol", {"auto": "auto-negotiate"}.get(st.protocol, st.protocol)),
        ("auth_enabled_sasl", "yes" if node.auth is not None else "no"),
        ("auth_enabled_ascii", "yes" if node.auth is not None else "no"),
        ("item_size_max", st.max_item_size), ("maxconns_fast", "yes"),
        ("hashpower_init", 0), ("slab_reassign", "yes"),
        ("slab_automove", s.rebalancer.automove if s.rebalancer else 0), ("slab_automove_ratio", "0.80"),
        ("slab_automove_window", 30), ("slab_chunk_max", s.slabs.sizes[-1]),
        ("lru_crawler", "yes" if node.crawler_enabled else "no"), ("lru_crawler_sleep", 100), ("lru_crawler_tocrawl", 0),
        ("tail_repair_time", 0), ("flush_enabled", "yes" if st.flush_enabled else "no"),
        ("dump_enabled", "yes"), ("hash_algorithm", "xxh3"),
        ("lru_maintainer_thread", "no"), ("lru_segmented", "no"),
        ("hot_lru_pct", 20), ("warm_lru_pct", 40), ("hot_max_factor", "0.20"),
        ("warm_max_factor", "2.00"), ("temp_lru", "no"), ("temporary_ttl", 61),
        ("idle_timeout", st.idle_timeout), ("watcher_logbuf_size", 262144),
        ("worker_logbuf_size", 65536), ("read_buf_mem_limit", 0), ("track_sizes", "no"),
        ("inline_ascii_response", "no"),
        # extstore is not part of memd; its settings are reported at memcached's defaults
        ("ext_item_size", 512), ("ext_item_age", 4294967295), ("ext_low_ttl", 0),
        ("ext_recache_rate", 2000), ("ext_wbuf_size", 4194304), ("ext_compact_under", 0),
        ("ext_drop_under", 0), ("ext_max_sleep", 1000000), ("ext_max_frag", "0.80"),
        ("slab_automove_freeratio", "0.010"), ("ext_drop_unread", "no"),
        ("ssl_enabled", "yes" if st.tls else "no"),
        ("ssl_chain_cert", st.tls_cert or "(null)"), ("ssl_key", st.tls_key or "(null)"),
        ("ssl_verify_mode", st.tls_verify_mode), ("ssl_keyformat", 1),
        ("ssl_ciphers", st.tls_ciphers or "NULL"), ("ssl_ca_cert", st.tls_ca or "NULL"),
        ("ssl_wbuf_size", 16384), ("ssl_session_cache", "no"), ("ssl_kernel_tls", "no"),
        ("ssl_min_version", f"tlsv1.{st.tls_min_version}"),
        ("num_napi_ids", "(null)"), ("memory_file", "(null)"),
    ]


def items(node: Node) -> list:
    s = node.store
    now = s.clock()
    out = []
    for cls in s.slabs.classes[1:]:
        n = s.lru.count[cls.id]
        if not n:
            continue
        tail = s.lru.tail[cls.id]
        age = now - s.atime[tail] if tail >= 0 else 0
        p = f"items:{cls.id}:"
        out += [
            (p + "number", n), (p + "number_hot", 0), (p + "number_warm", 0),
            (p + "number_cold", n), (p + "age_hot", 0), (p + "age_warm", 0), (p + "age", age),
            (p + "mem_requested", cls.requested), (p + "evicted", cls.evicted),
            (p + "evicted_nonzero", cls.evicted_nonzero), (p + "evicted_time", cls.evicted_time),
            (p + "outofmemory", cls.outofmemory), (p + "tailrepairs", 0),
            (p + "reclaimed", cls.reclaimed), (p + "expired_unfetched", cls.expired_unfetched),
            (p + "evicted_unfetched", cls.evicted_unfetched), (p + "evicted_active", 0),
            (p + "crawler_reclaimed", cls.crawler_reclaimed), (p + "crawler_items_checked", 0),
            (p + "lrutail_reflocked", 0), (p + "moves_to_cold", 0), (p + "moves_to_warm", 0),
            (p + "moves_within_lru", 0), (p + "direct_reclaims", 0), (p + "hits_to_hot", 0),
            (p + "hits_to_warm", 0), (p + "hits_to_cold", s.class_get_hits[cls.id]),
            (p + "hits_to_temp", 0),
        ]
    return out


def slabs(node: Node) -> list:
    s = node.store
    out = []
    active = 0
    for cls in s.slabs.classes[1:]:
        if not cls.pages:
            continue
        active += 1
        p = f"{cls.id}:"
        out += [
            (p + "chunk_size", cls.chunk_size), (p + "chunks_per_page", cls.per_page),
            (p + "total_pages", len(cls.pages)), (p + "total_chunks", cls.total_chunks),
            (p + "used_chunks", cls.used), (p + "free_chunks", cls.free_chunks),
            (p + "free_chunks_end", cls.end_left), (p + "get_hits", s.class_get_hits[cls.id]),
            (p + "cmd_set", cls.cmd_set), (p + "delete_hits", cls.delete_hits),
            (p + "incr_hits", cls.incr_hits), (p + "decr_hits", cls.decr_hits),
            (p + "cas_hits", cls.cas_hits), (p + "cas_badval", cls.cas_badval),
            (p + "touch_hits", cls.touch_hits),
        ]
    out += [("active_slabs", active), ("total_malloced", s.slabs.malloced)]
    return out


def conns(node: Node, asking_fd: int = -1) -> list:
    now = time.monotonic()
    out = []
    for listen in node.listeners:
        fd = node.listener_fds.get(listen, 0)
        out += [(f"{fd}:addr", listen), (f"{fd}:state", "conn_listening"),
                (f"{fd}:secs_since_last_cmd", 0)]
    for info in list(node.conns.values()):
        p = f"{info.fd}:"
        out += [(p + "addr", info.addr), (p + "listen_addr", info.listen_addr),
                (p + "state", info.state(asking_fd)), (p + "secs_since_last_cmd", int(now - info.last_cmd))]
    return out
