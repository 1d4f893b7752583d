"""The dispatcher: runs each received request on one of a fixed set of worker threads.

It holds at most one batch beyond the busy workers (Shoryuken's rule: fetch only what idle
workers can take), so no request waits long in a local buffer; the receiver asks it for room
before every receive.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable

from widgets.messages import Received

log = logging.getLogger(__name__)


class Dispatcher:
    """A pool of workers calling handle(message); release(message) hands back what they will not start."""

    def __init__(
        self,
        *,
        workers: int,
        lookahead: int,
        handle: Callable[[Received], object],
        release: Callable[[Received], object],
        stopping: threading.Event,
    ) -> None:
        """Prepare workers threads; hold at most workers + lookahead messages at once."""
        self.handle = handle
        self.release = release
        self.stopping = stopping
        self.capacity = workers + lookahead
        self.lookahead = lookahead
        self._held = 0
        self._room = threading.Condition()
        self._work: queue.Queue[Received | None] = queue.Queue()
        self._workers = [
            threading.Thread(target=self._work_loop, name=f"worker-{n}", daemon=True) for n in range(workers)
        ]

    def start(self) -> None:
        """Start the workers."""
        for worker in self._workers:
            worker.start()

    def wait_for_room(self, batch: int) -> int:
        """Block until a batch fits beside the held messages; reserve and return its size (0: stopping)."""
        with self._room:
            while self.capacity - self._held < min(batch, self.lookahead) and not self.stopping.is_set():
                self._room.wait(0.5)
            if self.stopping.is_set():
                return 0
            wanted = min(batch, self.capacity - self._held)
            self._held += wanted
            return wanted

    def let_go(self, count: int) -> None:
        """Record that count reserved or held messages are done with, making room for more."""
        with self._room:
            self._held -= count
            # Only when a batch fits: waking the receiver for each message costs CPU for nothing.
            if self.capacity - self._held >= self.lookahead:
                self._room.notify()

    def held(self) -> int:
        """Return how many messages are reserved or held."""
        return self._held

    def dispatch(self, messages: Iterable[Received]) -> None:
        """Queue received messages for the workers (each was reserved by wait_for_room)."""
        for message in messages:
            self._work.put(message)

    def _work_loop(self) -> None:
        """Handle messages until a None arrives; once stopping, hand back what is not started."""
        while True:
            message = self._work.get()
            if message is None:
                return
            try:
                if self.stopping.is_set():
                    self.release(message)
                else:
                    self.handle(message)
            except Exception:
                # handle() settles its own errors; this is the last guard, so the worker lives on.
                log.exception("worker_error message_id=%s", message.message_id)
            finally:
                self.let_go(1)

    def wake(self) -> None:
        """Wake a receiver waiting for room, after stopping was set."""
        with self._room:
            self._room.notify_all()

    def join(self) -> None:
        """Let the workers finish what they started, then hand back every message left queued."""
        for _ in self._workers:
            self._work.put(None)
        for worker in self._workers:
            # Short timed joins, so a second signal's handler gets to run meanwhile.
            while worker.is_alive():
                worker.join(0.1)
        while True:
            try:
                leftover = self._work.get_nowait()
            except queue.Empty:
                return
            if leftover is not None:
                self.release(leftover)
                self.let_go(1)
