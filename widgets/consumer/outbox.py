"""The outbox: every write the consumer makes to SQS, batched, each call on its own.

A request is settled by a chain of writes, each made only once SQS confirmed the one before:
its response, its dead-letter copy (FAILED only), its delete; or a fresh copy, then the delete;
or a visibility change (a retry delay, a hand-back, a heartbeat's extension). A request is
deleted only after its response was sent, so a crash in between repeats the request (which the
maker absorbs) instead of losing its response. Whoever queued a chain hears when it ended
(done(called_at)), so the consumer holds a request, and keeps it invisible, until SQS has
confirmed it is settled.

Writes of one kind to one queue share a lane and go out in batches of up to ten. No call waits
on another: each lane has calls in flight of its own (a heartbeat's extensions never queue
behind stalled responses), a call that fails or times out puts back only its own writes, each
with a back-off of its own, and nothing waits for a round of calls to end. Two writes with the
same key are never in concurrent calls and keep their order: a FIFO group's sends (so a group's
responses arrive in the order its requests were answered) and one message's visibility changes
(a newer one waiting replaces an older one, so SQS never applies them in the wrong order).

pending() and oldest() measure how far settling lags behind; behind() tells the receiver to stop
receiving until it catches up (see MAX_UNSETTLED and MAX_UNSETTLED_AGE).
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ReadTimeoutError

from widgets.messages import Received
from widgets.sqs import MAX_BATCH, SQS_ERRORS, OutageLog, QueueUrls, SQSClient, fifo_fields, is_fifo

log = logging.getLogger(__name__)

SEND, DELETE, VISIBILITY = "send", "delete", "visibility"
# Batch calls in flight at once, in each lane. A request's response and its delete are two calls
# one after the other, a network round trip each on Amazon SQS: with 20 ms per call, 4 in flight
# let a backlog of about 340 writes build up at 650 a second (make bench); 10 keep it near 40.
CALLS_IN_FLIGHT = 10
# Lanes a consumer uses at most: responses, deletes, visibility changes, dead-letter copies and
# fresh copies; the call threads are shared, each lane's calls bounded by CALLS_IN_FLIGHT.
LANES = 5
# A write that failed is tried again after a back-off with full jitter, doubling from RETRY_BASE
# (most failures are one call's: a reset connection, a throttle, tried again within 0.1 s) up to
# RETRY_CAP: a write still failing after an outage goes out within RETRY_CAP of SQS's return, and
# thousands of writes failing together do not come back together.
RETRY_BASE = 0.1
RETRY_CAP = 2.0
# Backpressure: past either bound, the receiver stops receiving until settling catches up.
# In normal work settling holds a few dozen requests (about 40 with 20 ms per SQS call at 1,200
# a second); 500 is over ten times that, and bounds the memory held by requests in settlement
# (bodies, responses). A settlement unconfirmed for 10 s, and for at least AGE_TIMEOUTS write
# timeouts, has failed several times in a row (a settlement is two or three writes; one that
# hangs costs a write timeout and is tried again at once, one that fails is tried again within
# RETRY_CAP): SQS is failing the consumer's writes, and receiving more would only add requests
# for the heartbeat to keep invisible on the same failing SQS.
MAX_UNSETTLED = 500
MAX_UNSETTLED_AGE = 10.0
AGE_TIMEOUTS = 4

# Told when a chain ends: the start of the call SQS confirmed, or None if SQS refused it for good.
Done = Callable[[float | None], None]


@dataclass(eq=False)
class Write:
    """One write to SQS: an entry of a batch call, the write that waits for it, and whom to tell."""

    message: Received
    kind: str
    queue: str
    entry: dict[str, Any]  # the batch entry, without its Id
    key: str | None = None  # writes with the same key go one at a time, in order
    then: Write | None = None
    done: list[Done] = field(default_factory=list)
    chain: int = 0  # which settlement this write is part of
    failures: int = 0
    timed_out: bool = False  # a call of it had no answer in time: its next ones wait longer
    due: float = 0.0  # when it must go, even in a part-filled batch
    not_before: float = 0.0  # its back-off after a failure


class Lane:
    """The writes of one kind to one queue waiting to go, and its calls in flight."""

    def __init__(self, kind: str, queue: str) -> None:
        """Start an empty lane for writes of kind to queue."""
        self.kind = kind
        self.queue = queue
        self.waiting: deque[Write] = deque()
        self.calls = 0
        self.busy: set[str] = set()  # keys with a write in a call
        self.by_key: dict[str, Write] = {}  # visibility lane: the change waiting for each receipt handle

    def pick(
        self, now: float, force: bool, closing: bool, skip: frozenset[int] = frozenset()
    ) -> tuple[list[Write], float | None]:
        """Take the next batch if one should go now; else return when one will be due (None: never).

        force takes every write free to go, back-off or not, but those in skip (a flush by hand);
        closing sends part-filled batches at once, still after each write's back-off.
        """
        chosen: list[Write] = []
        seen: set[str] = set()
        due = force or closing
        wake: float | None = None
        for write in self.waiting:
            if write.key is not None:
                if write.key in self.busy or write.key in seen:
                    seen.add(write.key)
                    continue
                seen.add(write.key)
            if skip and id(write) in skip:
                continue
            if write.not_before > now and not force:
                wake = write.not_before if wake is None else min(wake, write.not_before)
                continue
            chosen.append(write)
            due = due or write.due <= now
            if len(chosen) == MAX_BATCH:
                break
        if chosen and (due or len(chosen) == MAX_BATCH):
            if all(w is c for w, c in zip(self.waiting, chosen, strict=False)):
                for _ in chosen:  # the usual case: the batch is the front of the lane
                    self.waiting.popleft()
            else:
                taken = set(map(id, chosen))
                self.waiting = deque(w for w in self.waiting if id(w) not in taken)
            for write in chosen:
                if write.key is not None:
                    self.busy.add(write.key)
                    if self.by_key.get(write.key) is write:
                        del self.by_key[write.key]
            return chosen, None
        if chosen:
            first_due = min(w.due for w in chosen)
            wake = first_due if wake is None else min(wake, first_due)
        return [], wake


class Outbox:
    """Makes the consumer's writes to SQS in the background (see the module's docstring)."""

    def __init__(
        self,
        sqs: SQSClient,
        urls: QueueUrls,
        flush_interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
        write_timeout: float = 1.0,
        patient: SQSClient | None = None,
    ) -> None:
        """Prepare an empty outbox writing through sqs; start() runs it. Writes wait up to flush_interval
        to fill a batch; a call of sqs gives up after write_timeout. A write whose call timed out is
        made again through patient (a client with a longer read timeout; default: sqs): its call may
        have been slow rather than lost, and a slow SQS answered with repeats at once (a repeated
        send is a duplicate) only slows down further."""
        self.sqs = sqs
        self.patient = patient or sqs
        self.urls = urls
        self.flush_interval = flush_interval
        self.clock = clock
        self.max_age = max(MAX_UNSETTLED_AGE, AGE_TIMEOUTS * write_timeout)
        self.fifo_responses = urls.response is not None and is_fifo(urls.response)
        self._random = random.Random(seed)
        self._changed = threading.Condition()
        self._lanes: dict[tuple[str, str], Lane] = {}
        self._open: OrderedDict[int, float] = OrderedDict()  # chain -> when it was queued, oldest first
        self._chains = itertools.count(1)
        self._closing = False
        self._stopped = False
        self._behind = False
        self._failing_since: float | None = None  # first failed call since the last that worked
        self._outage = OutageLog(sqs, "writing responses, deletes and visibility changes")
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._calls = ThreadPoolExecutor(CALLS_IN_FLIGHT * LANES, thread_name_prefix="outbox-call")

    def start(self) -> None:
        """Start writing in the background."""
        self._thread.start()

    # What the consumer queues.

    def respond_and_delete(
        self,
        message: Received,
        body: str | None,
        *,
        dead_letter: dict[str, Any] | None = None,
        done: Done | None = None,
    ) -> None:
        """Queue a request's response (body; None without a response queue), then its dead-letter copy
        (attributes) if given, then its delete.

        The response goes first: a group's responses must be queued in the order its requests were
        answered, and a chain's later writes are queued only as the ones before them are confirmed.
        """
        group = message.group_id or message.request_id
        then = Write(message, DELETE, self.urls.request, {"ReceiptHandle": message.receipt_handle})
        if dead_letter is not None:
            # On a FIFO queue a repeat of this send (after a crash) is dropped as a duplicate.
            fields = fifo_fields(self.urls.dead_letter, group, f"dead-letter-{message.message_id}")
            then = Write(
                message,
                SEND,
                self.urls.dead_letter,
                {"MessageBody": message.body, "MessageAttributes": dead_letter, **fields},
                key=group if is_fifo(self.urls.dead_letter) else None,
                then=then,
            )
        if body is None or self.urls.response is None:
            self._queue(then, done)
            return
        respond = Write(
            message,
            SEND,
            self.urls.response,
            {"MessageBody": body, **self.response_fields(message)},
            key=group if self.fifo_responses else None,
            then=then,
        )
        self._queue(respond, done)

    def send_afresh(
        self, message: Received, attributes: dict[str, Any], delay: int, *, done: Done | None = None
    ) -> None:
        """Queue a fresh copy of a request (a standard queue's), then the delete of this one."""
        delete = Write(message, DELETE, self.urls.request, {"ReceiptHandle": message.receipt_handle})
        copy = {"MessageBody": message.body, "MessageAttributes": attributes, "DelaySeconds": delay}
        self._queue(Write(message, SEND, self.urls.request, copy, then=delete), done)

    def change_visibility(self, message: Received, seconds: int, done: Done | None = None) -> None:
        """Queue a visibility change: a retry delay, an extension, or 0 to hand a message back at once.

        One waiting for the same message is replaced (its done is kept): the later one wins.
        """
        now = self.clock()
        with self._changed:
            lane = self._lane(VISIBILITY, self.urls.request)
            waiting = lane.by_key.get(message.receipt_handle)
            if waiting is not None:
                waiting.entry["VisibilityTimeout"] = seconds
                if done is not None:
                    waiting.done.append(done)
                return
            write = Write(
                message,
                VISIBILITY,
                self.urls.request,
                {"ReceiptHandle": message.receipt_handle, "VisibilityTimeout": seconds},
                key=message.receipt_handle,
            )
            lane.by_key[message.receipt_handle] = write
            self._open_chain(write, done, now)

    def response_fields(self, message: Received) -> dict[str, Any]:
        """Return the group and deduplication ids of a request's response, when the response queue is FIFO.

        The request's group keeps a group's responses in order (a request from a standard queue
        is a group of its own, so no response waits behind another). The id of the delivered
        message, not the request id, deduplicates: a repeat after a crash is dropped, while a
        redriven request (a new message, the same request id) gets its new outcome through.
        """
        if not self.fifo_responses or self.urls.response is None:
            return {}
        group = message.group_id or message.request_id
        return dict(fifo_fields(self.urls.response, group, f"response-{message.message_id}"))

    def _queue(self, first: Write, done: Done | None) -> None:
        """Open a chain of writes, starting with first."""
        now = self.clock()
        with self._changed:
            self._open_chain(first, done, now)

    def _open_chain(self, first: Write, done: Done | None, now: float) -> None:
        """Record a new chain and put its first write on its lane (the lock is held)."""
        chain = next(self._chains)
        self._open[chain] = now
        write: Write | None = first
        while write is not None:
            write.chain = chain
            last = write
            write = write.then
        if done is not None:
            last.done.append(done)
        self._enqueue(first, now)

    def _lane(self, kind: str, queue: str) -> Lane:
        lane = self._lanes.get((kind, queue))
        if lane is None:
            lane = self._lanes[(kind, queue)] = Lane(kind, queue)
        return lane

    def _enqueue(self, write: Write, now: float, wait: bool = True) -> None:
        """Put a write on its lane, due after the flush interval unless not wait (the lock is held).

        The flusher is woken for a full batch or a first write, not for every write: a thread woken
        per message costs the consumer more CPU than the write.
        """
        lane = self._lane(write.kind, write.queue)
        write.due = now + self.flush_interval if wait else now
        lane.waiting.append(write)
        if len(lane.waiting) == 1 or len(lane.waiting) % MAX_BATCH == 0:
            self._changed.notify()

    # How far settling lags behind.

    def pending(self) -> int:
        """Return how many chains of writes (settlements, visibility changes) SQS has not yet confirmed."""
        return len(self._open)

    def oldest(self) -> float:
        """Return how long the oldest unconfirmed chain has waited, in seconds (0: none)."""
        with self._changed:
            first = next(iter(self._open.values()), None)
        return 0.0 if first is None else max(self.clock() - first, 0.0)

    def behind(self) -> bool:
        """Tell whether settling lags too far behind to receive more (see MAX_UNSETTLED*).

        Once behind, it stays so until it caught up to half of both bounds, so that receiving
        does not stop and start again with every write confirmed near a bound.
        """
        share = 0.5 if self._behind else 1.0
        self._behind = self.pending() > MAX_UNSETTLED * share or self.oldest() > self.max_age * share
        return self._behind

    def failing_for(self) -> float:
        """Return how long the writes have failed without one call working (0: the last call worked)."""
        since = self._failing_since
        return 0.0 if since is None else self.clock() - since

    def failing(self) -> str | None:
        """Return what the last failed write call means, while writes fail; None once one works."""
        return self._outage.error

    # Making the calls.

    def _run(self) -> None:
        """Send batches as they fill or fall due, each call in a thread of its own, until closed and done."""
        while True:
            with self._changed:
                while True:
                    if self._closing and not self._open:
                        return
                    now = self.clock()
                    batches, wake = self._take(now, force=False)
                    if batches:
                        break
                    self._changed.wait(None if wake is None else max(wake - now, 0.001))
                if self._stopped:  # close() gave up waiting: what is left stays unsettled
                    return
                for lane, writes in batches:
                    self._calls.submit(self._call, lane, writes)

    def _take(
        self, now: float, force: bool, skip: frozenset[int] = frozenset()
    ) -> tuple[list[tuple[Lane, list[Write]]], float | None]:
        """Take every batch that should go now from lanes with calls to spare (the lock is held)."""
        batches: list[tuple[Lane, list[Write]]] = []
        wake: float | None = None
        for lane in self._lanes.values():
            while lane.waiting and lane.calls < CALLS_IN_FLIGHT:
                writes, lane_wake = lane.pick(now, force, self._closing, skip)
                if not writes:
                    if lane_wake is not None:
                        wake = lane_wake if wake is None else min(wake, lane_wake)
                    break
                lane.calls += 1
                batches.append((lane, writes))
        return batches, wake

    def flush(self) -> int:
        """Make every queued write now, chains to their end, in this thread; return the chains left.

        Writes that fail are kept for the next flush (their back-off ignored). For tests, and
        for a consumer that was never started.
        """
        failed: frozenset[int] = frozenset()
        while True:
            with self._changed:
                batches, _ = self._take(self.clock(), force=True, skip=failed)
            if not batches:
                return self.pending()
            for lane, writes in batches:
                failed |= {id(write) for write in self._call(lane, writes)}

    def _call(self, lane: Lane, writes: list[Write]) -> list[Write]:
        """Make one batch call; move each write on, or put it back to try again; return those put back."""
        called_at = self.clock()
        try:
            failures = self._batch_call(lane, writes)
        except SQS_ERRORS as error:
            failures = {i: None for i in range(len(writes))}
            self._outage.failed(error)
            worked = False
            if isinstance(error, ReadTimeoutError):
                for write in writes:
                    write.timed_out = True
        except Exception:
            # A bug of ours: keep the writes, so no request is lost, and say so.
            log.exception("outbox_error kind=%s; retrying", lane.kind)
            failures = {i: None for i in range(len(writes))}
            worked = False
        else:
            self._outage.recovered()
            worked = True
        finished, retry = self._settle(lane, writes, failures, called_at, worked)
        for done, confirmed in finished:
            try:
                done(confirmed)
            except Exception:
                log.exception("outbox_callback_error")
        return retry

    def _batch_call(self, lane: Lane, writes: list[Write]) -> dict[int, dict[str, Any] | None]:
        """Make the batch call of a lane; return its refused entries by index (the Failed entry)."""
        entries: Any = [{"Id": str(i), **write.entry} for i, write in enumerate(writes)]
        sqs = self.patient if any(write.timed_out for write in writes) else self.sqs
        if lane.kind == SEND:
            answer: Any = sqs.send_message_batch(QueueUrl=lane.queue, Entries=entries)
        elif lane.kind == DELETE:
            answer = sqs.delete_message_batch(QueueUrl=lane.queue, Entries=entries)
        else:
            answer = sqs.change_message_visibility_batch(QueueUrl=lane.queue, Entries=entries)
        return {int(failure["Id"]): failure for failure in answer.get("Failed", [])}

    def _settle(
        self,
        lane: Lane,
        writes: list[Write],
        failures: dict[int, dict[str, Any] | None],
        called_at: float,
        worked: bool,
    ) -> tuple[list[tuple[Done, float | None]], list[Write]]:
        """Move confirmed writes on, put failed ones back in order; return ended chains' callbacks, failed."""
        now = self.clock()
        finished: list[tuple[Done, float | None]] = []
        retry: list[Write] = []
        with self._changed:
            lane.calls -= 1
            if worked:
                self._failing_since = None
            elif self._failing_since is None:
                self._failing_since = called_at
            for i, write in enumerate(writes):
                if write.key is not None:
                    lane.busy.discard(write.key)
                if i not in failures:
                    self._advance(write, called_at, now, finished)
                    continue
                failure = failures[i]
                if failure is not None and failure.get("SenderFault"):
                    self._refused(write, failure, now, finished)
                    continue
                if failure is not None:
                    log.warning(
                        "write_refused kind=%s message_id=%s: %s; retrying",
                        write.kind,
                        write.message.message_id,
                        failure.get("Code"),
                    )
                newer = lane.by_key.get(write.key) if lane.kind == VISIBILITY and write.key else None
                if newer is not None:
                    # A later change of this message waits: it replaces this one.
                    newer.done.extend(write.done)
                    self._open.pop(write.chain, None)
                    continue
                write.failures += 1
                write.not_before = now + self._backoff(write.failures)
                write.due = write.not_before
                retry.append(write)
            # In front of the lane, in their order: ahead of later writes with the same key.
            lane.waiting.extendleft(reversed(retry))
            for write in retry:
                if lane.kind == VISIBILITY and write.key is not None:
                    lane.by_key.setdefault(write.key, write)
            self._changed.notify()
        return finished, retry

    def _advance(
        self, write: Write, called_at: float, now: float, finished: list[tuple[Done, float | None]]
    ) -> None:
        """A write SQS confirmed: queue the next of its chain, or end the chain (the lock is held)."""
        if write.then is not None:
            # At once: the writes a batch call unlocks come together, a batch of their own.
            self._enqueue(write.then, now, wait=False)
            return
        self._open.pop(write.chain, None)
        finished.extend((done, called_at) for done in write.done)

    def _refused(
        self, write: Write, failure: dict[str, Any], now: float, finished: list[tuple[Done, float | None]]
    ) -> None:
        """A write SQS refused for good (a sender fault): end its chain there (the lock is held)."""
        code = failure.get("Code")
        if write.kind == SEND:
            # Our own message, refused: nothing after it is made, so the request is not deleted
            # and comes back; if it is refused every time, SQS's redrive keeps it.
            log.error(
                "send_refused message_id=%s: %s %s", write.message.message_id, code, failure.get("Message")
            )
        elif write.kind == DELETE:
            # The receipt handle expired: the message is someone else's now, and they will answer
            # it again; the duplicate response carries the same message id.
            log.warning("delete_refused message_id=%s: %s", write.message.message_id, code)
        # A visibility change refused: the handle expired, the message is visible again anyway.
        self._open.pop(write.chain, None)
        last: Write | None = write
        while last is not None and last.then is not None:
            last = last.then
        if last is not None:
            finished.extend((done, None) for done in last.done)

    def _backoff(self, failures: int) -> float:
        """Return the pause before a write's next try: full jitter, from RETRY_BASE doubling to RETRY_CAP."""
        return self._random.uniform(0, min(RETRY_CAP, RETRY_BASE * 2 ** (failures - 1)))

    def close(self, timeout: float) -> int:
        """Make what is left, waiting at most timeout seconds; return how many chains were not settled."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
            with self._changed:
                self._stopped = True
        else:
            deadline = time.monotonic() + timeout
            while self.pending() and time.monotonic() < deadline:
                self.flush()
        self._calls.shutdown(wait=False)
        return self.pending()
