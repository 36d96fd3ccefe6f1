"""Replies made readable: pure functions from parsed replies to rich renderables.

Numbers keep their exact value in one column and get a unit in the next:
bytes as KiB/MiB/GiB, ages and uptimes as durations, hit ratios as
percentages (computed from the hit and miss counters), so a reader can
still copy the exact figure.
"""

from __future__ import annotations

import time

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .commands import Reply, is_error_line

STYLE_ERROR = "bold red"
STYLE_MISS = "yellow"
STYLE_OK = "green"
STYLE_KEY = "cyan"
STYLE_DIM = "dim"

OK_LINES = (b"STORED", b"DELETED", b"TOUCHED", b"OK", b"RESET", b"HD", b"MN")
MISS_LINES = (b"NOT_FOUND", b"NOT_STORED", b"EXISTS", b"END", b"EN", b"NF", b"NS", b"EX")

# -- units -----------------------------------------------------------------------------

BYTE_STATS = {"bytes", "limit_maxbytes", "bytes_read", "bytes_written", "total_malloced",
              "mem_requested", "chunk_size", "item_size_max", "maxbytes", "max_item_size",
              "read_buf_bytes", "read_buf_bytes_free", "response_obj_bytes"}
DURATION_STATS = {"uptime", "age", "evicted_time", "age_hot", "age_warm", "oldest_item_age",
                  "hotkeys_window", "hotkeys_window_age", "idle_timeout"}
# counters whose pair makes a hit ratio: (name shown, hits, misses)
RATIOS = [("get_hit_ratio", "get_hits", "get_misses"),
          ("delete_hit_ratio", "delete_hits", "delete_misses"),
          ("incr_hit_ratio", "incr_hits", "incr_misses"),
          ("touch_hit_ratio", "touch_hits", "touch_misses")]
# never added up across nodes: identities, clocks, settings
NOT_SUMMED = {"pid", "uptime", "time", "version", "libevent", "pointer_size", "threads",
              "hash_power_level", "max_connections", "reserved_fds", "accepting_conns",
              "hash_is_expanding", "slab_reassign_running", "lru_crawler_running",
              "malloc_fails", "log_watchers"}


def number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 0:
        return "never" if s == -1 else f"{s}s"
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{days}d"] if days else []
    if hours or days:
        parts.append(f"{hours}h")
    if (minutes or hours or days) and not days:
        parts.append(f"{minutes}m")
    if not (days or hours):
        parts.append(f"{s}s")
    return " ".join(parts)


def fmt_count(n: float) -> str:
    """1234567 -> 1.2M: for narrow columns (top)."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}" if n == int(n) or abs(n) >= 10 else f"{n:.1f}"


def fmt_ratio(hits: float, misses: float) -> str:
    total = hits + misses
    return f"{100.0 * hits / total:.1f}%" if total else "-"


def readable(name: str, value) -> str:
    """The unit column of a stat: '' when the raw value says it all."""
    field = name.rsplit(":", 1)[-1]
    n = number(value)
    if n is None:
        return ""
    if field in BYTE_STATS or field.endswith("_bytes"):
        return fmt_bytes(n)
    if field in DURATION_STATS:
        return fmt_duration(n)
    if field == "time":
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(n))
    if field.startswith("rusage_"):
        return f"{n:.2f} s"
    return ""


def ratios(stats: dict) -> list[tuple[str, str]]:
    out = []
    for name, hits, misses in RATIOS:
        h, m = number(stats.get(hits)), number(stats.get(misses))
        if h is not None and m is not None and (h + m or name == "get_hit_ratio"):
            out.append((name, fmt_ratio(h, m)))
    return out


# -- stats -----------------------------------------------------------------------------

def stats_table(stats: dict, title: str | None = None) -> Table:
    """``stats`` (or any group without a table of its own) as name / value / unit."""
    table = Table(title=title, show_edge=False, header_style="bold")
    table.add_column("stat", style=STYLE_KEY)
    table.add_column("value", justify="right")
    table.add_column("", style=STYLE_DIM)
    for name, value in stats.items():
        table.add_row(name, str(value), readable(name, value))
    for name, ratio in ratios(stats):
        table.add_row(name, ratio, "", style="bold")
    return table


def fleet_total(per_node: dict[str, dict]) -> dict[str, str]:
    """The fleet column: numeric stats summed unless summing makes no sense."""
    names: list[str] = []
    for stats in per_node.values():
        for name in stats:
            if name not in names:
                names.append(name)
    total = {}
    for name in names:
        values = [number(s.get(name)) for s in per_node.values()]
        if name in NOT_SUMMED or any(v is None for v in values):
            total[name] = ""
        else:
            t = sum(values)
            total[name] = f"{t:.6f}".rstrip("0").rstrip(".") if t != int(t) else str(int(t))
    return total


def fleet_stats_table(per_node: dict[str, dict], title: str | None = None) -> Table:
    """One row per stat: the fleet total, then one column per node.  Cells show a
    value with a unit in its unit form (64.0 MiB, 2h 5m) so that four columns fit
    in 80; ``--json`` has the exact figures."""
    total = fleet_total(per_node)
    table = Table(title=title, show_edge=False, header_style="bold")
    table.add_column("stat", style=STYLE_KEY, no_wrap=True)
    table.add_column("total", justify="right", style="bold")
    for node in per_node:
        table.add_column(node, justify="right")
    for name in total:
        table.add_row(name, _cell(name, total[name]),
                      *(_cell(name, s.get(name, "")) for s in per_node.values()))
    for name, hits, misses in RATIOS:
        h, m = number(total.get(hits)), number(total.get(misses))
        if h is None or m is None or not (h + m or name == "get_hit_ratio"):
            continue
        cells = [fmt_ratio(h, m)] + [fmt_ratio(number(s.get(hits)) or 0, number(s.get(misses)) or 0)
                                     for s in per_node.values()]
        table.add_row(name, *cells, style="bold")
    return table


def _cell(name: str, value) -> str:
    field = name.rsplit(":", 1)[-1]
    if field == "time" or field.startswith("rusage_"):
        return str(value)
    return readable(name, value) or str(value)


def per_class(stats: dict) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """``stats slabs``/``stats items`` → ({class: {field: value}}, the global lines)."""
    classes: dict[str, dict[str, str]] = {}
    rest = {}
    for name, value in stats.items():
        parts = name.split(":")
        if len(parts) == 3 and parts[0] == "items":
            classes.setdefault(parts[1], {})[parts[2]] = value
        elif len(parts) == 2 and parts[0].isdigit():
            classes.setdefault(parts[0], {})[parts[1]] = value
        else:
            rest[name] = value
    return classes, rest


SLAB_COLUMNS = [("chunk_size", "chunk"), ("total_pages", "pages"), ("used_chunks", "used"),
                ("free_chunks", "free"), ("mem_requested", "requested"), ("get_hits", "get hits"),
                ("cmd_set", "sets")]
ITEM_COLUMNS = [("number", "items"), ("age", "age"), ("evicted", "evicted"),
                ("evicted_time", "evicted age"), ("expired_unfetched", "exp unfetched"),
                ("outofmemory", "oom"), ("reclaimed", "reclaimed")]


def class_table(stats: dict, columns, title: str) -> Group:
    """``stats slabs``/``stats items``: one row per slab class, the fields a reader
    scans first as columns with units; the group's global lines below."""
    classes, rest = per_class(stats)
    table = Table(title=title, show_edge=False, header_style="bold")
    table.add_column("class", justify="right", style=STYLE_KEY)
    for _, heading in columns:
        table.add_column(heading, justify="right")
    for cls in sorted(classes, key=int):
        fields = classes[cls]
        row = [cls]
        for name, _ in columns:
            value = fields.get(name, "")
            row.append(readable(name, value) or str(value))
        table.add_row(*row)
    parts = [table]
    if rest:
        parts.append(stats_table(rest))
    return Group(*parts)


def hotkeys_table(stats: dict) -> Group:
    from ..hotkeys import label_key
    table = Table(title="hot keys", show_edge=False, header_style="bold")
    table.add_column("#", justify="right", style=STYLE_DIM)
    table.add_column("key", style=STYLE_KEY)
    table.add_column("requests (est.)", justify="right")
    settings = {}
    rank = 0
    for name, value in stats.items():
        if name.startswith("hotkey:"):
            rank += 1
            key = label_key(name[7:])
            table.add_row(str(rank), key.decode(errors="backslashreplace"), str(value))
        else:
            settings[name] = value
    return Group(stats_table(settings), table)


def stats_view(group: str, stats: dict):
    """The right table for a ``stats [group]`` reply."""
    if group == "slabs":
        return class_table(stats, SLAB_COLUMNS, "stats slabs")
    if group == "items":
        return class_table(stats, ITEM_COLUMNS, "stats items")
    if group == "hotkeys":
        return hotkeys_table(stats)
    return stats_table(stats, title=f"stats {group}".strip())


def parse_stat_lines(reply: Reply) -> dict[str, str]:
    out = {}
    for line, _ in reply.lines:
        parts = line.decode(errors="replace").split(" ", 2)
        if parts[0] == "STAT" and len(parts) >= 2:
            out[parts[1]] = parts[2] if len(parts) == 3 else ""
    return out


# -- values and plain replies ----------------------------------------------------------

def value_text(data: bytes) -> Text:
    """A value as text when it is UTF-8 without control bytes, else escaped."""
    try:
        text = data.decode("utf-8")
        if text.isprintable() or all(c.isprintable() or c in "\t\n" for c in text):
            return Text(text)
    except UnicodeDecodeError:
        pass
    return Text(repr(data)[2:-1], style="magenta")


def values_table(reply: Reply, meta: dict[bytes, dict] | None = None) -> Table | Text:
    """VALUE blocks as key / value / flags / bytes / cas / ttl.

    ``meta`` gives each key's remaining TTL and CAS as read with ``me``
    (None when the node could not say)."""
    meta = meta or {}
    table = Table(show_edge=False, header_style="bold")
    for name, justify in (("key", "left"), ("value", "left"), ("flags", "right"),
                          ("bytes", "right"), ("cas", "right"), ("ttl", "right")):
        table.add_column(name, justify=justify, style=STYLE_KEY if name == "key" else None)
    rows = 0
    for line, data in reply.lines:
        parts = line.split()
        if parts[:1] != [b"VALUE"] or data is None:
            continue
        key = parts[1]
        info = meta.get(key, {})
        cas = parts[4].decode() if len(parts) > 4 else info.get("cas", "")
        ttl = info.get("ttl")
        table.add_row(key.decode(errors="backslashreplace"), value_text(data), parts[2].decode(),
                      parts[3].decode(), str(cas),
                      "" if ttl is None else fmt_duration(ttl))
        rows += 1
    if not rows:
        return Text("(miss)", style=STYLE_MISS)
    return table


def missed_keys(keys: list[bytes], reply: Reply) -> list[bytes]:
    hit = {line.split()[1] for line, _ in reply.lines if line.startswith(b"VALUE ")}
    return [k for k in keys if k not in hit]


def line_style(line: bytes) -> str | None:
    if is_error_line(line):
        return STYLE_ERROR
    word = line.split(b" ", 1)[0]
    if word in OK_LINES:
        return STYLE_OK
    if word in MISS_LINES:
        return STYLE_MISS
    return None


def reply_text(reply: Reply) -> Text:
    """Any reply, line by line, coloured by what each line means."""
    text = Text()
    for line, data in reply.lines:
        text.append(line.decode(errors="backslashreplace") + "\n", style=line_style(line))
        if data is not None:
            text.append_text(value_text(data))
            text.append("\n")
    if not reply.lines:
        text.append("(no reply)\n", style=STYLE_DIM)
    return text


def parse_me(line: bytes) -> dict | None:
    """``ME key exp=N la=N cas=N fetch=yes cls=N size=N`` → {"ttl": N (-1: never), "cas": N}.

    memcached 1.6.18 (and memd after it) prints ``exp`` as now - expiry time,
    the remaining TTL negated, and -1 for "never"; a live item's positive
    ``exp`` can only come from a node that prints it the other way round.
    (A key with exactly one second left reads as "never" for that second.)"""
    parts = line.split()
    if parts[:1] != [b"ME"]:
        return None
    out = {}
    for part in parts[2:]:
        name, _, value = part.partition(b"=")
        if name == b"exp":
            exp = int(value)
            out["ttl"] = -exp if exp < -1 else exp
        elif name == b"cas":
            out["cas"] = int(value)
    return out


def nodes_table(rows: list[dict]) -> Table:
    table = Table(title="nodes", show_edge=False, header_style="bold")
    for name in ("node", "state", "version", "items", "uptime"):
        table.add_column(name, justify="left" if name in ("node", "state", "version") else "right")
    for r in rows:
        state = r.get("state", "")
        table.add_row(r["node"], Text(state, style=STYLE_OK if state == "live" else STYLE_ERROR),
                      r.get("version", ""), str(r.get("items", "")),
                      fmt_duration(r["uptime"]) if r.get("uptime") is not None else "")
    return table
