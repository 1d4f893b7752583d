"""The heartbeat: keeps every held request invisible to other consumers until it is settled.

Requests are received with a short visibility timeout, so a consumer that dies loses them for
only that long. While this consumer holds one (waiting for a worker or a rate-limit slot, or in
a maker call of any length), the heartbeat extends its visibility, for all held requests in
batched ChangeMessageVisibilityBatch calls (through the outbox), whenever less than EXTEND_WHEN_LEFT
of it is left. A request stays covered until SQS confirmed it is settled (its delete, say), and
its "visible until" moves when SQS confirms an extension, not when the extension is queued.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

# Check this often, as a fraction of the visibility timeout; extend when under 0.6 of it is left.
# An extension is then queued with 0.5 to 0.6 of the timeout left, room for two write timeouts
# (a fifth of it each, see widget_consumer.write_timeout) before the request would reappear.
CHECK_FRACTION = 0.1
EXTEND_WHEN_LEFT = 0.6
# A request whose visibility is this close to running out is handed back rather than started:
# the extension might not reach SQS in time, and another consumer would get it meanwhile.
SAFETY_MARGIN = 0.2


class Heartbeat:
    """Tracks when each held request becomes visible again, and extends it before it does."""

    def __init__(
        self,
        *,
        extend: Callable[[Any, int, Callable[[float | None], None]], None],
        visibility_timeout: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Extend through extend(message, seconds, done): done(called_at) once SQS confirmed it (None:
        refused); messages are received with visibility_timeout."""
        self.extend = extend
        self.visibility_timeout = visibility_timeout
        self.clock = clock
        self.extensions = 0
        self._visible_at: dict[str, tuple[Any, float]] = {}  # receipt handle -> (message, when visible again)
        self._extending: set[str] = set()  # receipt handles with an extension not yet confirmed
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def track(self, messages: Iterable[Any]) -> None:
        """Start covering messages just received (each has receipt_handle and received_at)."""
        with self._lock:
            for message in messages:
                self._visible_at[message.receipt_handle] = (
                    message,
                    message.received_at + self.visibility_timeout,
                )

    def forget(self, message: Any) -> None:
        """Stop covering a message: it is settled or handed back."""
        with self._lock:
            self._visible_at.pop(message.receipt_handle, None)
            self._extending.discard(message.receipt_handle)

    def running_out(self, message: Any) -> bool:
        """Tell whether a message's visibility has (nearly) run out, so another consumer may have it."""
        with self._lock:
            entry = self._visible_at.get(message.receipt_handle)
        visible_at = entry[1] if entry else message.received_at + self.visibility_timeout
        return visible_at - self.clock() < SAFETY_MARGIN

    def beat(self) -> int:
        """Queue an extension for every held message running short and not being extended; return how many."""
        now = self.clock()
        due = 0
        # Queued under the lock, so a message forgotten (and settled) meanwhile is not extended after.
        with self._lock:
            for handle, (message, visible_at) in self._visible_at.items():
                if handle in self._extending:
                    continue
                if visible_at - now < self.visibility_timeout * EXTEND_WHEN_LEFT:
                    self._extending.add(handle)
                    self.extend(message, self.visibility_timeout, partial(self._extended, handle))
                    due += 1
        return due

    def _extended(self, handle: str, called_at: float | None) -> None:
        """Note an extension SQS confirmed: the message is hidden for a full timeout from its call."""
        with self._lock:
            self._extending.discard(handle)
            entry = self._visible_at.get(handle)
            if entry is None or called_at is None:
                return
            self._visible_at[handle] = (entry[0], called_at + self.visibility_timeout)
            self.extensions += 1

    def held(self) -> int:
        """Return how many messages are covered."""
        return len(self._visible_at)

    def start(self) -> None:
        """Beat in the background until stop()."""
        self._thread.start()

    def _run(self) -> None:
        interval = max(self.visibility_timeout * CHECK_FRACTION, 0.05)
        while not self._stopping.wait(interval):
            self.beat()

    def stop(self) -> None:
        """Stop beating; messages still held will become visible after their timeout."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(2)
