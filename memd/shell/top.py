"""``memd-cli top``: a live view of a node or a fleet, redrawn every second.

Built for an 80x24 terminal: per node one row of figures (get/s, set/s, hit
ratio over the last interval, items, memory used against the limit,
evictions/s, connections), then a sparkline of its ops/s over the last
minute and the hottest keys it reports (``stats hotkeys``; memcached has
none).  Rows are dropped from the bottom, sparklines and hot keys first,
when the terminal is too small.  Keys: o h i m e c n sort by ops, hit
ratio, items, memory, evictions, connections, name; q or Ctrl-C leaves.

``TopModel`` polls (``stats`` and ``stats hotkeys 3`` per node, in
parallel, each with the shell's timeout); ``render_screen`` is a pure
function of the model; prompt_toolkit owns the terminal (alternate screen,
raw keys) and gives it back clean on any exit.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from io import StringIO

from rich.console import Console
from rich.text import Text

from .render import fmt_bytes, fmt_count, number

HISTORY = 60                          # samples kept for the sparklines: a minute at 1/s
SPARKS = "▁▂▃▄▅▆▇█"
SORTS = {"o": "ops", "h": "hit", "i": "items", "m": "mem", "e": "evictions", "c": "conns",
         "n": "name"}


def sparkline(values, width: int = HISTORY) -> str:
    values = list(values)[-width:]
    if not values:
        return ""
    top = max(values)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, int(v / top * (len(SPARKS) - 1) + 0.5))]
                   for v in values)


class NodeView:
    """What top knows of one node: the last stats, rates over the last interval."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.stats: dict[str, str] = {}
        self.at = 0.0
        self.up = False
        self.error = ""
        self.rates: dict[str, float] = {}
        self.ops_history: deque[float] = deque(maxlen=HISTORY)
        self.hot: list[tuple[bytes, int]] | None = []      # None: the node has no hot keys

    def update(self, stats: dict[str, str], at: float, hot) -> None:
        if self.stats and at > self.at:
            dt = at - self.at

            def rate(name: str) -> float:
                return max(0.0, ((number(stats.get(name)) or 0) -
                                 (number(self.stats.get(name)) or 0)) / dt)
            self.rates = {n: rate(n) for n in ("cmd_get", "cmd_set", "get_hits", "get_misses",
                                               "evictions")}
            self.ops_history.append(self.rates["cmd_get"] + self.rates["cmd_set"])
        self.stats, self.at, self.up, self.error = stats, at, True, ""
        self.hot = hot

    def failed(self, error: str) -> None:
        self.up, self.error, self.rates = False, error, {}
        self.ops_history.append(0.0)

    # figures used for sorting and display
    def ops(self) -> float:
        return self.rates.get("cmd_get", 0.0) + self.rates.get("cmd_set", 0.0)

    def hit_ratio(self) -> float | None:
        h, m = self.rates.get("get_hits"), self.rates.get("get_misses")
        if h is None or h + m == 0:
            h, m = number(self.stats.get("get_hits")), number(self.stats.get("get_misses"))
            if not h and not m:
                return None
        return h / (h + m)

    def sort_key(self, sort: str):
        s = self.stats
        return {
            "ops": -self.ops(), "hit": -(self.hit_ratio() or 0.0),
            "items": -(number(s.get("curr_items")) or 0), "mem": -(number(s.get("bytes")) or 0),
            "evictions": -self.rates.get("evictions", 0.0),
            "conns": -(number(s.get("curr_connections")) or 0), "name": 0,
        }[sort], self.address


class TopModel:
    def __init__(self, target, timeout: float | None = None) -> None:
        self.target = target
        self.views: dict[str, NodeView] = {}
        self.polls = 0
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="memd-top")

    def _poll_one(self, view: NodeView) -> None:
        try:
            conn = self.target.conn(view.address)
            stats = conn.stats()
            at = time.monotonic()
            hot = None
            if view.hot is not None:
                reply = conn.request(b"stats hotkeys 3")
                if not reply.error:
                    from ..hotkeys import parse_stats
                    from .render import parse_stat_lines
                    hot = parse_stats(parse_stat_lines(reply))
            view.update(stats, at, hot)
        except Exception as exc:    # a node that fails is shown as down, not fatal
            view.failed(str(exc) or type(exc).__name__)

    def poll(self) -> None:
        addresses = list(self.target.addresses)
        for a in addresses:
            if a not in self.views:
                self.views[a] = NodeView(a)
        for gone in set(self.views) - set(addresses):
            del self.views[gone]
        list(self._pool.map(self._poll_one, [self.views[a] for a in addresses]))
        self.polls += 1

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _short_bytes(n: float) -> str:
    return fmt_bytes(n).replace(" KiB", "K").replace(" MiB", "M").replace(" GiB", "G").replace(" B", "B")


def _node_lines(v: NodeView, width: int) -> tuple[Text, Text, Text]:
    name = v.address[:21].ljust(21)
    if not v.up:
        row = Text(name, style="bold")
        row.append(f" down: {v.error}"[:width - 21], style="bold red")
        return row, Text(), Text()
    s = v.stats
    ratio = v.hit_ratio()
    used, limit = number(s.get("bytes")) or 0, number(s.get("limit_maxbytes")) or 0
    mem = f"{_short_bytes(used)}/{_short_bytes(limit)}" if limit else _short_bytes(used)
    row = Text(name, style="bold")
    row.append(f"{fmt_count(v.rates['cmd_get']) if v.rates else '-':>7}")
    row.append(f"{fmt_count(v.rates['cmd_set']) if v.rates else '-':>7}")
    style = None if ratio is None or ratio >= 0.8 else "yellow" if ratio >= 0.5 else "red"
    row.append(f"{'-' if ratio is None else f'{100 * ratio:.1f}%':>7}", style=style)
    row.append(f"{fmt_count(number(s.get('curr_items')) or 0):>7}")
    row.append(f"{mem:>18}", style="red" if limit and used > 0.9 * limit else None)
    ev = v.rates.get("evictions")
    row.append(f"{'-' if ev is None else fmt_count(ev):>7}", style="yellow" if ev else None)
    row.append(f"{s.get('curr_connections', '-'):>6}")
    spark = Text("  ops ", style="dim")
    spark.append(sparkline(v.ops_history, min(HISTORY, width - 16)), style="cyan")
    if v.ops_history:
        spark.append(f" {fmt_count(max(v.ops_history))}", style="dim")
    hot = Text("  hot ", style="dim")
    if v.hot is None:
        hot.append("(not reported by this node)", style="dim")
    elif not v.hot:
        hot.append("-", style="dim")
    for i, (key, count) in enumerate(v.hot or []):
        hot.append(("  " if i else "") + key.decode(errors="backslashreplace"), style="magenta")
        hot.append(f" {fmt_count(count)}", style="dim")
    hot.truncate(width)
    return row, spark, hot


def render_screen(model: TopModel, sort: str = "ops", width: int = 80, height: int = 24,
                  color: bool = True) -> str:
    """One frame (ANSI text unless ``color`` is off), at most ``height`` lines of
    ``width`` columns."""
    views = sorted(model.views.values(), key=lambda v: v.sort_key(sort))
    up = [v for v in views if v.up]
    lines: list[Text] = []
    title = Text(f"memd top  {len(views)} node{'s' if len(views) != 1 else ''}  "
                 f"{time.strftime('%H:%M:%S')}  sort: {sort}", style="bold")
    lines.append(title)
    lines.append(Text("keys: o ops  h hit  i items  m memory  e evictions  c conns  n name  "
                      "q quit", style="dim"))
    total_get = sum(v.rates.get("cmd_get", 0.0) for v in up)
    total_set = sum(v.rates.get("cmd_set", 0.0) for v in up)
    hits = sum(v.rates.get("get_hits", 0.0) for v in up)
    misses = sum(v.rates.get("get_misses", 0.0) for v in up)
    used = sum(number(v.stats.get("bytes")) or 0 for v in up)
    limit = sum(number(v.stats.get("limit_maxbytes")) or 0 for v in up)
    summary = (f"total  {fmt_count(total_get)} get/s  {fmt_count(total_set)} set/s  "
               f"hit {100 * hits / (hits + misses):.1f}%  " if hits + misses else
               f"total  {fmt_count(total_get)} get/s  {fmt_count(total_set)} set/s  hit -  ")
    summary += f"mem {fmt_bytes(used)}/{fmt_bytes(limit)}  {len(up)}/{len(views)} up"
    lines.append(Text(summary))
    header = Text(f"{'NODE':<21}{'GET/s':>7}{'SET/s':>7}{'HIT':>7}{'ITEMS':>7}"
                  f"{'MEMORY':>18}{'EVIC/s':>7}{'CONN':>6}", style="reverse")
    lines.append(header)
    per_node = [_node_lines(v, width) for v in views]
    detail = 3 if len(lines) + 3 * len(per_node) <= height else \
        2 if len(lines) + 2 * len(per_node) <= height else 1
    for node_lines in per_node:
        for line in node_lines[:detail]:
            if line.plain:
                lines.append(line)
    lines = lines[:height]
    console = Console(file=StringIO(), width=width, force_terminal=color,
                      color_system="standard" if color else None, legacy_windows=False)
    for line in lines:
        line.truncate(width)
        line.no_wrap = True
        console.print(line, soft_wrap=False, crop=True)
    return console.file.getvalue()


def run_top(target, interval: float = 1.0, sort: str = "ops") -> int:
    """Full-screen until q or Ctrl-C; prompt_toolkit restores the terminal."""
    import asyncio

    from prompt_toolkit.application import Application
    from prompt_toolkit.formatted_text import ANSI
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.layout import Layout, Window
    from prompt_toolkit.layout.controls import FormattedTextControl

    if sort not in SORTS.values():
        sort = "ops"
    state = {"sort": sort, "frame": ""}
    model = TopModel(target)
    bindings = KeyBindings()

    @bindings.add("q")
    @bindings.add("c-c")
    @bindings.add("escape", eager=True)
    def _quit(event):
        event.app.exit(result=0)

    for letter, name in SORTS.items():
        def _sort(event, name=name):
            state["sort"] = name
            redraw(event.app)
        bindings.add(letter)(_sort)

    def redraw(app) -> None:
        size = app.output.get_size()
        state["frame"] = render_screen(model, state["sort"], size.columns, size.rows)
        app.invalidate()

    control = FormattedTextControl(lambda: ANSI(state["frame"]))
    app = Application(layout=Layout(Window(control, wrap_lines=False)), key_bindings=bindings,
                      full_screen=True)

    async def refresh() -> None:
        loop = asyncio.get_running_loop()
        while True:
            await loop.run_in_executor(None, model.poll)
            redraw(app)
            await asyncio.sleep(interval)

    try:
        return app.run(pre_run=lambda: app.create_background_task(refresh())) or 0
    finally:
        model.close()


def print_once(target, interval: float = 1.0, sort: str = "ops") -> int:
    """One frame on standard output (for scripts and pipes): rates need two polls."""
    model = TopModel(target)
    try:
        model.poll()
        time.sleep(interval)
        model.poll()
        print(render_screen(model, sort if sort in SORTS.values() else "ops",
                            color=sys.stdout.isatty()), end="")
    finally:
        model.close()
        target.close()
    return 0 if all(v.up for v in model.views.values()) else 2
