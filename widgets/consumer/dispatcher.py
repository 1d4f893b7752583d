"""The dispatcher: runs each received request on one of a fixed set of worker threads.

It holds at most one batch beyond the busy workers (Shoryuken's rule: fetch only what idle
workers can take), so no request waits long in a local buffer; the receiver asks it for room
before every receive.

On a FIFO queue each message group is a lane: its messages run one at a time, in the order they
were received, each only after the one before it was settled; different groups run side by side.
When a message of a group goes back to the queue unsettled (retried later, or handed back), the
later messages of its group held here go back too, untouched, so SQS delivers the group again in
order. A message without a group (a standard queue's) is its own lane: straight to the workers.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable

from widgets.messages import Received

log = logging.getLogger(__name__)

# How often a receiver waiting for room looks again without being woken (stopping, say).
ROOM_POLL = 0.5
# Why a message is handed back without being started.
STOPPING = "the consumer is stopping"
BEHIND = "an earlier request of its group goes back to the queue"


class Dispatcher:
    """A pool of workers calling handle(message) (True: settled); release(message, why) hands back."""

    def __init__(
        self,
        *,
        workers: int,
        lookahead: int,
        handle: Callable[[Received], bool],
        release: Callable[[Received, str], object],
        stopping: threading.Event,
    ) -> None:
        """Prepare workers threads; hold at most workers + lookahead messages at once."""
        self.handle = handle
        self.release = release
        self.stopping = stopping
        self.capacity = workers + lookahead
        self.lookahead = lookahead
        self._batch = lookahead  # the room a waiting receiver needs (set by wait_for_room)
        self._held = 0
        self._room = threading.Condition()
        self._work: queue.Queue[Received | None] = queue.Queue()
        # Group id -> the messages of that group waiting behind the one queued or being handled.
        self._lanes: dict[str, deque[Received]] = {}
        self._lanes_lock = threading.Lock()
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
            self._batch = min(batch, self.lookahead)
            while self.capacity - self._held < self._batch and not self.stopping.is_set():
                self._room.wait(ROOM_POLL)
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
            if self.capacity - self._held >= self._batch:
                self._room.notify()

    def held(self) -> int:
        """Return how many messages are reserved or held."""
        return self._held

    def dispatch(self, messages: Iterable[Received]) -> None:
        """Queue received messages (each reserved by wait_for_room) for the workers, a group's in its lane."""
        for message in messages:
            if message.group_id is not None:
                with self._lanes_lock:
                    lane = self._lanes.get(message.group_id)
                    if lane is not None:
                        lane.append(message)
                        continue
                    self._lanes[message.group_id] = deque()
            self._work.put(message)

    def lanes(self) -> dict[str, int]:
        """Return, for each group with a message here, how many of its messages wait behind that one."""
        with self._lanes_lock:
            return {group: len(lane) for group, lane in self._lanes.items()}

    def _work_loop(self) -> None:
        """Handle messages until a None arrives; once stopping, hand back what is not started."""
        while True:
            message = self._work.get()
            if message is None:
                return
            settled = False
            try:
                if self.stopping.is_set():
                    self.release(message, STOPPING)
                else:
                    settled = self.handle(message)
            except Exception:
                # handle() settles its own errors; this is the last guard, so the worker lives on.
                log.exception("worker_error message_id=%s", message.message_id)
            finally:
                self.let_go(1)
                if message.group_id is not None:
                    self._after(message.group_id, settled)

    def _after(self, group_id: str, settled: bool) -> None:
        """Start the next message of a group whose message was settled, else hand back the group's rest."""
        with self._lanes_lock:
            lane = self._lanes[group_id]
            if settled and lane and not self.stopping.is_set():
                self._work.put(lane.popleft())
                return
            del self._lanes[group_id]
        self._release_all(lane, STOPPING if self.stopping.is_set() else BEHIND)

    def _release_all(self, messages: Iterable[Received], why: str) -> None:
        """Hand back messages that will not be started, in order, making room for as many."""
        for message in messages:
            try:
                self.release(message, why)
            except Exception:
                log.exception("release_error message_id=%s", message.message_id)
            finally:
                self.let_go(1)

    def wake(self) -> None:
        """Wake a receiver waiting for room, after stopping was set."""
        with self._room:
            self._room.notify_all()

    def join(self) -> None:
        """Let the workers finish what they started, then hand back every message left queued or in a lane."""
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
            if leftover is None:
                continue
            self._release_all([leftover], STOPPING)
            if leftover.group_id is not None:
                with self._lanes_lock:
                    lane = self._lanes.pop(leftover.group_id, deque())
                self._release_all(lane, STOPPING)
