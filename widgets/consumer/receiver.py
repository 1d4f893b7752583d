"""The receiver: long-polls the request queue while there is room for more and the maker is up.

While the breaker is open it receives nothing: it probes the maker instead, so an outage of any
length costs no receives (and no receive counts) beyond those of the requests held when it began.
Nor while settling lags behind (the outbox's writes unconfirmed, too many or for too long):
receiving more would only add requests the consumer cannot settle yet.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import HTTPClientError

from widgets.consumer.breaker import OPEN, Breaker
from widgets.consumer.dispatcher import Dispatcher
from widgets.consumer.heartbeat import Heartbeat
from widgets.consumer.observer import Observer
from widgets.messages import Received
from widgets.sqs import SQS_ERRORS, OutageLog, SQSClient, is_fifo

if TYPE_CHECKING:
    from mypy_boto3_sqs.literals import MessageSystemAttributeNameType

log = logging.getLogger(__name__)

# Pause after an empty short poll (--wait-time 0), so an idle consumer does not spin.
IDLE_PAUSE = 0.2
# Pause while half-open and every trial request is still out.
TRIALS_OUT_PAUSE = 0.05
# Longest single sleep while waiting for a probe, so stop() is noticed quickly.
LONGEST_NAP = 1.0
# How long receives must fail, one after the other, before the health check says so: a second
# failure in a row can be two throttles a few milliseconds apart, an outage lasts.
FAILING_FOR = 0.5
# How long a lost receive's attempt id is used again (SQS keeps it 5 minutes; a margin for clocks).
ATTEMPT_ID_LIFETIME = 240.0
# How often a receiver held back by settling looks again.
SETTLING_PAUSE = 0.05


@dataclass(frozen=True)
class Attempt:
    """A FIFO receive's ReceiveRequestAttemptId, the count it asked for, and when."""

    id: str
    wanted: int
    at: float


class Receiver:
    """Threads receiving batches of requests and handing them to the dispatcher.

    Several receives in flight at once, as many as the dispatcher has room for batches: on
    Amazon SQS each receive costs a network round trip, and one at a time would cap the rate.
    """

    def __init__(
        self,
        *,
        sqs: SQSClient,
        url: str,
        dispatcher: Dispatcher,
        breaker: Breaker,
        probe: Callable[[], bool],
        heartbeat: Heartbeat,
        batch_size: int,
        wait_time: int,
        visibility_timeout: int,
        stopping: threading.Event,
        threads: int = 1,
        observer: Observer | None = None,
        behind: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Prepare the receiver; start() runs it until stopping is set."""
        self.sqs = sqs
        self.url = url
        self.dispatcher = dispatcher
        self.breaker = breaker
        self.probe = probe
        self.heartbeat = heartbeat
        self.batch_size = batch_size
        self.wait_time = wait_time
        self.visibility_timeout = visibility_timeout
        self.stopping = stopping
        self.observer = observer or Observer()
        self.behind = behind
        self.clock = clock
        self._held_back_since: float | None = None  # when settling began to hold receives back
        self._held_back_lock = threading.Lock()
        # A FIFO queue's messages carry their group, which the dispatcher keeps in order. Asked
        # for only there: on a standard (fair) queue a group orders nothing.
        self.system_attributes: list[MessageSystemAttributeNameType] = [
            "ApproximateReceiveCount",
            "SentTimestamp",
        ]
        if is_fifo(url):
            self.system_attributes.append("MessageGroupId")
        self.receives = 0  # receives that worked, counted under a lock: three threads add to it
        self._receives_lock = threading.Lock()
        self.last_receive = self.last_attempt = time.monotonic()
        self._outage = OutageLog(sqs, "receiving requests")
        self._probing = threading.Lock()
        self.fifo = is_fifo(url)
        self._attempt = threading.local()  # .value: the Attempt of this thread's last receive, if lost
        self._threads = [
            threading.Thread(target=self._run, name=f"receiver-{n}", daemon=True) for n in range(threads)
        ]

    def start(self) -> None:
        """Start receiving in the background."""
        for thread in self._threads:
            thread.start()

    def alive(self) -> bool:
        """Tell whether every receiving thread runs."""
        return all(thread.is_alive() for thread in self._threads)

    def failing(self) -> str | None:
        """Return why receives fail, once they have failed for FAILING_FOR; else None."""
        error = self._outage.error
        return error if error is not None and self._outage.lasted() >= FAILING_FOR else None

    def held_back(self) -> bool:
        """Tell whether settling holds receiving back (no receive is made to tell how SQS is)."""
        return self._held_back_since is not None

    def join(self, timeout: float) -> None:
        """Wait up to timeout for the receives in progress to end."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))

    def receive(self, wanted: int) -> list[Received]:
        """Receive up to wanted requests, long-polling while the queue is empty."""
        # SQS starts the visibility clock before its answer reaches us: count from the call.
        called_at = self.last_attempt = time.monotonic()
        extra: dict[str, Any] = {}
        if self.fifo:
            extra["ReceiveRequestAttemptId"] = self._attempt_id(wanted, called_at)
        try:
            answer = self.sqs.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=wanted,
                WaitTimeSeconds=self.wait_time,
                VisibilityTimeout=self.visibility_timeout,
                MessageSystemAttributeNames=self.system_attributes,
                MessageAttributeNames=["All"],
                **extra,
            )
        except HTTPClientError:
            raise  # the answer may be lost on the way: the next receive asks for it again
        except BaseException:
            self._attempt.value = None
            raise
        self._attempt.value = None
        with self._receives_lock:
            self.receives += 1
        self.last_receive = time.monotonic()
        self.observer.received(len(answer.get("Messages", ())))
        return [Received.from_sqs(message, called_at) for message in answer.get("Messages", [])]

    def _attempt_id(self, wanted: int, now: float) -> str:
        """Return this thread's ReceiveRequestAttemptId: its last one if that receive's answer was lost.

        FIFO queues only. A receive whose answer never came (a reset connection, a read timeout)
        may have taken messages, which would stay in flight, their whole groups waiting behind
        them, for a visibility timeout; made again with the same attempt id, Amazon SQS answers
        with those same messages instead (for 5 minutes, while none of them changed). A receive
        refused outright (a throttle, say) takes a new id, as SQS requires.
        """
        attempt: Attempt | None = getattr(self._attempt, "value", None)
        if attempt is None or attempt.wanted != wanted or now - attempt.at > ATTEMPT_ID_LIFETIME:
            attempt = self._attempt.value = Attempt(uuid.uuid4().hex, wanted, now)
        return attempt.id

    def _run(self) -> None:
        """Receive until stopped: wait for room, ask the breaker, receive, dispatch."""
        while not self.stopping.is_set():
            if self.breaker.state == OPEN:
                self._wait_out_outage()
                continue
            if self._held_back():
                self.stopping.wait(SETTLING_PAUSE)
                continue
            wanted = self.dispatcher.wait_for_room(self.batch_size)
            if not wanted:
                return
            if self._held_back():  # settling fell behind while this thread waited for room
                self.dispatcher.let_go(wanted)
                continue
            allowed = self.breaker.allowance(wanted)
            if allowed < wanted:
                self.dispatcher.let_go(wanted - allowed)
            if not allowed:
                self.stopping.wait(TRIALS_OUT_PAUSE)
                continue
            try:
                messages = self.receive(allowed)
            except SQS_ERRORS as error:
                self.dispatcher.let_go(allowed)
                self.breaker.unused(allowed)
                self.stopping.wait(self._outage.failed(error))
                continue
            self._outage.recovered()
            self.dispatcher.let_go(allowed - len(messages))
            self.breaker.unused(allowed - len(messages))
            self.heartbeat.track(messages)
            self.dispatcher.dispatch(messages)
            if not messages and not self.wait_time:
                # Short polling on an empty queue: pause rather than spin on paid calls.
                self.stopping.wait(IDLE_PAUSE)

    def _held_back(self) -> bool:
        """Tell whether settling lags too far behind to receive; log when that starts and ends."""
        behind = self.behind()
        if behind == (self._held_back_since is not None):
            return behind
        with self._held_back_lock:
            if behind and self._held_back_since is None:
                self._held_back_since = self.clock()
                log.warning("settling_behind: SQS has not confirmed the consumer's writes; receiving paused")
            elif not behind and self._held_back_since is not None:
                log.info(
                    "settling_caught_up after %.1fs; receiving again", self.clock() - self._held_back_since
                )
                self._held_back_since = None
        return behind

    def _wait_out_outage(self) -> None:
        """While the breaker is open: sleep until the next probe is due, then probe the maker (one thread)."""
        delay = self.breaker.until_probe()
        if delay > 0 or not self._probing.acquire(blocking=False):
            self.stopping.wait(min(delay, LONGEST_NAP) or TRIALS_OUT_PAUSE)
            return
        try:
            self.breaker.probed(self.probe())
        finally:
            self._probing.release()
