"""The node's hottest keys: a sampled space-saving top-K with decay.

Why this shape:

- Space-saving (Metwally, Agrawal, El Abbadi 2005) keeps ``capacity``
  counters and never more: a key not tracked takes over the counter with the
  smallest count and inherits that count as its possible over-estimate
  (``error``).  Any key requested more than N/capacity times in the window
  is guaranteed to be tracked.  Counters are grouped by count ("stream
  summary"): keys of equal count share a set, so counting a request and
  evicting the smallest counter are O(1) — no heap, no scan.
- Requests are sampled: the read path pays one method call and a
  subtraction per request (``count``) or per multi-get (``count_many``);
  only about one request in ``sample`` reaches the sketch.  Gaps between
  samples are random so that a periodic load (the same 100-key multi-get
  in a loop) cannot hide a key between two samples.
- Counts decay: every ``window`` seconds all counts are halved, so
  the list follows what is hot now rather than since the node started, and
  a key that cooled off drops out within a few windows.  Reported counts
  are scaled back by the sampling rate: an estimate of the decayed number of
  requests, i.e. roughly requests in the last ``window`` seconds plus half
  of the window before, a quarter of the one before that...

The sketch is fed by the store's lookups (``ItemStore.fetch_text`` and
``find_for_get``) and read by ``stats hotkeys``, the Prometheus metrics and
``ClusterClient.hot_keys()``.  No I/O, no locks: the event loop is its only
writer; a metrics scrape copies the counts (``top``) in one go.
"""

from __future__ import annotations

import base64
import random
import time

DEFAULT_CAPACITY = 128      # counters kept; the top reported comes from these
DEFAULT_SAMPLE = 32         # about one request in 32 is counted
DEFAULT_WINDOW = 60         # seconds between halvings of every count
GAP_TABLE = 4096
DEFAULT_REPORT = 20         # keys `stats hotkeys` lists without an argument


class HotKeys:
    """A bounded top-K of requested keys.  ``count``/``count_many`` are the hooks."""

    __slots__ = ("capacity", "sample", "window", "clock", "enabled", "sampled", "counts",
                 "errors", "by_count", "min_count", "window_start", "skip", "_gaps", "_gap_at")

    def __init__(self, capacity: int = DEFAULT_CAPACITY, sample: int = DEFAULT_SAMPLE,
                 window: float = DEFAULT_WINDOW, clock=time.monotonic, seed=None) -> None:
        if capacity < 1 or sample < 1 or window <= 0:
            raise ValueError("capacity and sample must be >= 1, window > 0")
        self.capacity = capacity
        self.sample = sample
        self.window = window
        self.clock = clock
        # Random gaps, drawn once (a draw per sample would cost more than the
        # sample itself): 1 + a number below 2 * sample - 1, so their mean is
        # `sample`; the table is long enough that no load keeps in step with it.
        rng = random.Random(seed)
        self._gaps = [1 + rng.randrange(2 * sample - 1) for _ in range(GAP_TABLE)]
        self._gap_at = 0
        self.enabled = True
        self.sampled = 0                       # requests that reached the sketch
        self.counts: dict[bytes, int] = {}     # key -> count (sampled requests)
        self.errors: dict[bytes, int] = {}     # key -> how much of its count may be borrowed
        # count -> the keys with that count, as a dict used as an ordered set:
        # a dict of bytes -> None is never tracked by the cyclic GC, a set always
        # is, and sets made and dropped per sample made the collector run more
        self.by_count: dict[int, dict] = {}
        self.min_count = 0
        self.window_start = clock()
        self.skip = self._gap()                # requests left until the next sample

    # -- the hooks: everything else stays off the read path -----------------------

    def count(self, key: bytes) -> None:
        """One key requested."""
        self.skip -= 1
        if self.skip <= 0:
            self._sample((key,), 0)

    def count_many(self, keys) -> None:
        """A multi-get's keys (a list) requested."""
        skip = self.skip - len(keys)
        if skip > 0:
            self.skip = skip
        else:
            self._sample(keys, self.skip - 1)

    # -- sampling and space-saving ----------------------------------------------------

    def _gap(self) -> int:
        if not self.enabled:
            return 1 << 62
        self._gap_at = i = (self._gap_at + 1) & (GAP_TABLE - 1)
        return self._gaps[i]

    def _sample(self, keys, pos: int) -> None:
        """Count ``keys[pos]`` and every key a gap further, then set the next gap.

        One loop with everything in locals: a sample costs what its few dict
        and set operations cost, which is what sets the sampling rate."""
        if self.clock() - self.window_start >= self.window:
            self._decay_due()
        counts, errors, by_count = self.counts, self.errors, self.by_count
        gaps, at, capacity = self._gaps, self._gap_at, self.capacity
        min_count = self.min_count
        n = len(keys)
        sampled = 0
        while pos < n:
            key = keys[pos]
            if key.__class__ is not bytes:
                # a key may be a view or slice of a receive buffer (bytearray,
                # memoryview): unhashable, and it would change under us
                key = bytes(key)
            sampled += 1
            c = counts.get(key)
            if c is not None:
                bucket = by_count[c]
                if len(bucket) == 1:
                    del by_count[c]
                    if c == min_count:
                        min_count = c + 1
                else:
                    del bucket[key]
            elif len(counts) < capacity:
                c = 0
                min_count = 1
            else:
                # take over the smallest counter: its count is this key's upper bound
                c = min_count
                bucket = by_count[c]
                victim = bucket.popitem()[0]
                del counts[victim]
                errors.pop(victim, None)
                if not bucket:
                    del by_count[c]
                    min_count = c + 1
                errors[key] = c
            c += 1
            counts[key] = c
            bucket = by_count.get(c)
            if bucket is None:
                by_count[c] = {key: None}
            else:
                bucket[key] = None
            at = (at + 1) & (GAP_TABLE - 1)
            pos += gaps[at]
        self._gap_at = at
        self.min_count = min_count
        self.sampled += sampled
        self.skip = pos - n + 1

    def _decay_due(self) -> None:
        now = self.clock()
        halvings = int((now - self.window_start) // self.window)
        self.window_start += halvings * self.window
        self.decay(halvings)

    def decay(self, halvings: int = 1) -> None:
        """Halve every count ``halvings`` times; counters that reach 0 are freed."""
        counts, errors = {}, {}
        by_count: dict[int, dict] = {}
        for key, c in self.counts.items():
            c >>= halvings
            if c:
                counts[key] = c
                if self.errors.get(key):
                    errors[key] = self.errors[key] >> halvings
                by_count.setdefault(c, {})[key] = None
        self.counts, self.errors, self.by_count = counts, errors, by_count
        self.min_count = min(by_count) if by_count else 0

    # -- reading -------------------------------------------------------------------

    def set_enabled(self, on: bool) -> None:
        """Turn counting on or off (off keeps the hooks at one subtraction, counting
        nothing); turning it on starts from an empty list."""
        self.enabled = on
        self.clear()

    def clear(self) -> None:
        self.counts, self.errors, self.by_count = {}, {}, {}
        self.min_count = 0
        self.sampled = 0
        self.window_start = self.clock()
        self.skip = self._gap()

    def top(self, n: int = DEFAULT_REPORT) -> list[tuple[bytes, int, int]]:
        """The ``n`` hottest keys as (key, estimated requests, possible over-estimate),
        hottest first; estimates are scaled back by the sampling rate."""
        counts = dict(self.counts)         # one copy: a scrape thread reads it safely
        errors = dict(self.errors)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max(n, 0)]
        s = self.sample
        return [(k, c * s, errors.get(k, 0) * s) for k, c in ranked]

    def window_age(self) -> float:
        return self.clock() - self.window_start


# -- `stats hotkeys` -------------------------------------------------------------------

def key_label(key: bytes) -> str:
    """A key as one token of a STAT line: printable ASCII as it is, anything
    else (spaces, control bytes, UTF-8 from the binary protocol) as
    ``b64:<base64>``, like the meta protocol's base64 keys."""
    if key and all(0x21 <= b <= 0x7e for b in key) and not key.startswith(b"b64:"):
        return key.decode("ascii")
    return "b64:" + base64.b64encode(key).decode("ascii")


def label_key(label: str) -> bytes:
    """The inverse of ``key_label``."""
    if label.startswith("b64:"):
        return base64.b64decode(label[4:])
    return label.encode("ascii")


def stats(hot: HotKeys, n: int = DEFAULT_REPORT) -> list[tuple[str, object]]:
    """``stats hotkeys [N]``: the settings, then one ``hotkey:<key> <count>`` per key,
    hottest first.  See README ("Hot keys") for the format."""
    pairs: list[tuple[str, object]] = [
        ("hotkeys_enabled", int(hot.enabled)),
        ("hotkeys_capacity", hot.capacity),
        ("hotkeys_sample", hot.sample),
        ("hotkeys_window", f"{hot.window:g}"),
        ("hotkeys_window_age", int(hot.window_age())),
        ("hotkeys_sampled", hot.sampled),
    ]
    for key, count, error in hot.top(n):
        pairs.append((f"hotkey:{key_label(key)}", count))
    return pairs


def parse_stats(stats: dict) -> list[tuple[bytes, int]]:
    """The (key, count) list out of a parsed ``stats hotkeys`` reply (a dict of
    name -> value, as pymemcache's ``stats`` returns it), hottest first."""
    out = []
    for name, value in stats.items():
        name = name.decode() if isinstance(name, bytes) else str(name)
        if name.startswith("hotkey:"):
            out.append((label_key(name[7:]), int(value)))
    out.sort(key=lambda kv: (-kv[1], kv[0]))
    return out


def merge(lists, n: int) -> list[tuple[bytes, int]]:
    """Several nodes' (key, count) lists as one: a key's counts summed over the
    nodes that serve it (replicas, or a key that moved), hottest first."""
    merged: dict[bytes, int] = {}
    for pairs in lists:
        for key, count in pairs:
            merged[key] = merged.get(key, 0) + count
    return sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def reply(hot: HotKeys, args) -> bytes:
    """The reply to ``stats hotkeys [N|on|off]`` (``args`` are the tokens after it)."""
    from .stats import render        # memd.stats imports the store, which imports us
    if not args:
        return render(stats(hot))
    if len(args) == 1 and args[0] in (b"on", b"off"):
        hot.set_enabled(args[0] == b"on")
        return b"OK\r\n"
    if len(args) == 1 and args[0].isdigit() and len(args[0]) < 10:
        return render(stats(hot, min(int(args[0]), hot.capacity)))
    return b"CLIENT_ERROR usage: stats hotkeys [N|on|off]\r\n"
