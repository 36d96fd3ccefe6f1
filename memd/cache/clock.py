"""Time sources for the cache.

The store never calls ``time.time()`` itself: it asks a clock, so tests can
drive expiry and LRU ages with a fake clock instead of sleeping.
"""

import time


def system_clock() -> int:
    """Wall-clock seconds, as memcached uses for expiry times.

    A plain function, not a callable object: the store asks for the time on
    every command, and calling an instance's ``__call__`` costs twice as much.
    """
    return int(time.time())


class FakeClock:
    """A clock that only moves when told to (for tests)."""

    __slots__ = ("now",)

    def __init__(self, start: int = 1_700_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += seconds
