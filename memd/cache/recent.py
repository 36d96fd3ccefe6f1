"""Replies of keys read lately: the text get path's shortcut past the index.

A get hit through the hash index costs a hash, a chain walk, a key compare
in the page and half a dozen typed-array reads; on a machine like ours each
of those is a cache miss, and a multi-get of 100 keys spends most of its
time there.  A key that was read recently is answered from here instead:
one dict lookup that returns the finished ``VALUE`` block, how long it may
be used without looking at the item again, and the item's class (for the
per-class hit counter).

Correctness rests on the store forgetting a key whenever what a text get
would answer for it changes: its chunk is rewritten or released, or its
expiry time changes (``ItemStore.invalidate``).  An entry also lapses by
time, at the earlier of the item's expiry and its next LRU bump, so a hit
from here never skips an expiry or a bump that the full path would do.
``flush_all`` empties it.

Memory is bounded twice: by bytes (the copies of the replies plus a fixed
per-entry estimate) and by entries, because emptying a dict of n entries
takes about 0.12 µs each here and that is a pause every client sees.
"""

from __future__ import annotations

# what an entry costs beside its reply: dict slot, key object, tuple, int
ENTRY_OVERHEAD = 200
MAX_ENTRIES = 1 << 16      # emptying this many takes ~8 ms on this machine
MAX_REPLY = 16 << 10       # past this the copy, not the lookup, is the cost
SAMPLE = 16                # while thrashing, admit one miss in this many
REST = 1 << 20             # lookups a load that thrashes even sampled goes without
VERDICT = 1 << 12          # admissions after which a sampled round is judged


class RecentReplies:
    """The dict, its budget, and whether it is earning its keep.

    When it fills up it is emptied and started over.  If the entries of the
    round just ended served fewer hits than there were admissions, the reads
    are spread over more keys than it can hold (a uniform load over a large
    store): the next round admits only one miss in SAMPLE, so such a load
    pays a sixteenth of the admission cost, while a key that is really hot
    still gets in after a few reads.  If a sampled round does no better, the
    load has no hot set worth a shortcut, and the store stops asking for
    REST lookups (``active`` is False): over a million keys the dict lookup
    that misses was a cache miss of its own, 5-10% of a multi-get.

    A sampled round is judged after VERDICT admissions rather than once the
    dict is full: filling it a sixteenth at a time took about a million
    lookups (14 s of 50 clients' gets over a million keys), so a uniform
    load paid for the dict half of the time, rest and probe alternating.
    VERDICT admissions (65k lookups) are plenty to see whether there is a hot
    set: its keys, once in, are read again within the round.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.replies: dict[bytes, tuple[bytes, int, int, int]] = {}
        self.used = 0
        self.hits = 0          # this round's, added up by the store
        self.admitted = 0      # this round's
        self.sampling = False
        self.skipped = 0       # misses passed over since the last sampled one
        self.rest(0)

    def rest(self, lookups: int) -> None:
        """Go without being asked for ``lookups`` lookups (0: be asked again).

        ``resting`` counts them down (the store subtracts the lookups it made
        without asking, and calls this with 0 once the count is out);
        ``active``, whether the store should ask here and offer replies, is a
        plain attribute set only here: a property read was 4% of a lone get's
        instructions in fetch_text."""
        self.resting = lookups
        self.active = self.budget > 0 and not lookups

    def admit(self, key: bytes, reply, until: int, cls_id: int) -> None:
        """Remember (a copy of) ``reply`` for ``key`` until the clock reaches
        ``until`` — or, while sampling, only every SAMPLE-th time.

        The store's multi-get loop does this sampling itself (a method call
        per key cost it 14% of its instructions) and calls ``add``."""
        if self.sampling:
            self.skipped += 1
            if self.skipped < SAMPLE:
                return
            self.skipped = 0
        self.add(key, reply, until, cls_id)

    def add(self, key: bytes, reply, until: int, cls_id: int) -> None:
        """Remember (a copy of) ``reply``, sampling aside."""
        size = len(reply) + ENTRY_OVERHEAD
        if len(reply) > MAX_REPLY or size > self.budget:
            return
        replies = self.replies
        old = replies.pop(key, None)
        if old is not None:
            self.used -= len(old[0]) + ENTRY_OVERHEAD
        if (self.used + size > self.budget or len(replies) >= MAX_ENTRIES
                or (self.sampling and self.admitted >= VERDICT and self.hits < self.admitted)):
            self._start_over()
            if not self.active:
                return          # resting from now on: keep nothing more
        # the length rides along so that the get path can count the bytes it
        # answers (its output bound) without a len() call per key
        replies[key] = (bytes(reply), until, cls_id, len(reply))
        self.used += size
        self.admitted += 1

    def _start_over(self) -> None:
        if self.sampling and self.hits < self.admitted:
            self.rest(REST)
        self.sampling = self.hits < self.admitted
        self.hits = self.admitted = 0
        self.clear()

    def forget(self, key: bytes) -> None:
        old = self.replies.pop(key, None)
        if old is not None:
            self.used -= len(old[0]) + ENTRY_OVERHEAD

    def clear(self) -> None:
        self.replies.clear()
        self.used = 0
