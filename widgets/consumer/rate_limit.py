"""The rate limit toward the maker: at most N calls per second across all workers (--max-rate)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Hands out one call slot every 1/rate seconds, in turn, to whichever worker asks next.

    A token bucket holding a single token: calls are spaced evenly, so no window of one second
    sees more than rate calls (and one at its very edge). rate None means no limit.
    """

    def __init__(self, *, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        """Limit to rate calls per second (None: unlimited)."""
        self.interval = 1.0 / rate if rate else 0.0
        self.clock = clock
        self.waits = 0
        self.waited = 0.0
        self._next_slot = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take the next free slot; return the seconds until it comes (0: call now)."""
        if not self.interval:
            return 0.0
        with self._lock:
            now = self.clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self.interval
            delay = slot - now
            if delay > 0:
                self.waits += 1
                self.waited += delay
            return delay

    def wait(self, stopping: threading.Event) -> bool:
        """Wait for this caller's slot; return False if stopping was set meanwhile."""
        delay = self.reserve()
        if delay > 0:
            return not stopping.wait(delay)
        return not stopping.is_set()
