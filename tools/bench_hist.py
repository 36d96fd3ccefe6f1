"""Latency histogram for memd-bench: log-linear buckets, mergeable across processes.

Buckets are HdrHistogram-shaped: exact below 256 ns, then 128 sub-buckets per
power of two, so any value is stored within <1% of itself in a fixed 8192-slot
list.  A fixed shape is what lets worker processes ship sparse counts to the
parent and have them added slot by slot.
"""

from __future__ import annotations

SUB_BITS = 7
SUB_COUNT = 1 << SUB_BITS
LINEAR_LIMIT = SUB_COUNT << 1          # values below this get their own bucket
NBUCKETS = 64 << SUB_BITS              # enough for any 64-bit nanosecond value


def bucket_index(ns: int) -> int:
    """Bucket of a latency in nanoseconds (the worker inlines this formula)."""
    if ns < LINEAR_LIMIT:
        return ns if ns > 0 else 0
    shift = ns.bit_length() - 1 - SUB_BITS
    return ((shift + 1) << SUB_BITS) + ((ns >> shift) & (SUB_COUNT - 1))


def bucket_value(index: int) -> float:
    """Midpoint of a bucket in nanoseconds: the value reported for it."""
    if index < LINEAR_LIMIT:
        return float(index)
    shift = (index >> SUB_BITS) - 1
    low = index & (SUB_COUNT - 1)
    return float((SUB_COUNT + low) << shift) + (1 << shift) / 2


class LatencyHistogram:
    """Counts of latencies per bucket; percentiles in microseconds."""

    __slots__ = ("counts",)

    def __init__(self, counts: list[int] | None = None):
        self.counts = counts if counts is not None else [0] * NBUCKETS

    def record(self, ns: int, n: int = 1) -> None:
        self.counts[bucket_index(ns)] += n

    def merge(self, other: "LatencyHistogram") -> None:
        mine = self.counts
        for i, c in enumerate(other.counts):
            if c:
                mine[i] += c

    def to_sparse(self) -> dict[int, int]:
        """Only the non-empty buckets: what crosses the process boundary."""
        return {i: c for i, c in enumerate(self.counts) if c}

    @classmethod
    def from_sparse(cls, sparse: dict[int, int]) -> "LatencyHistogram":
        h = cls()
        for i, c in sparse.items():
            h.counts[int(i)] += c
        return h

    def total(self) -> int:
        return sum(self.counts)

    def percentile_us(self, pct: float) -> float:
        """Value below which `pct` percent of the samples fall (0 when empty)."""
        total = self.total()
        if not total:
            return 0.0
        # Same rule as mcload: first bucket whose running count exceeds the rank.
        target = int(total * pct / 100.0)
        running = 0
        for i, c in enumerate(self.counts):
            running += c
            if running > target:
                return bucket_value(i) / 1e3
        return self.max_us()

    def mean_us(self) -> float:
        total = self.total()
        if not total:
            return 0.0
        return sum(bucket_value(i) * c for i, c in enumerate(self.counts) if c) / total / 1e3

    def max_us(self) -> float:
        for i in range(NBUCKETS - 1, -1, -1):
            if self.counts[i]:
                return bucket_value(i) / 1e3
        return 0.0
