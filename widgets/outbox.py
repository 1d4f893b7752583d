"""The outbox: the consumer's writes to SQS, batched: responses, then deletes, and visibility changes.

A request is deleted only after its response was sent, so a crash in between repeats the
request (which the maker absorbs) instead of losing its response. Writes that fail are kept
and retried; an SQS outage is logged once, when it starts and when it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from widgets.messages import Received
from widgets.sqs import (
    MAX_BATCH,
    SQS_ERRORS,
    FifoFields,
    OutageLog,
    QueueUrls,
    SQSClient,
    batches,
    delete_batch,
    fifo_fields,
    is_fifo,
)

log = logging.getLogger(__name__)

# Pause before retrying writes that SQS refused one by one.
PARTIAL_FAILURE_PAUSE = 0.5
# Batch calls in flight at once. A write takes two calls one after the other (its response,
# then its delete), a network round trip each on Amazon SQS: with 20 ms per call, 4 in flight
# let a backlog of about 340 writes build up at 650 a second (make bench); 10 keep it near 40.
CALLS_IN_FLIGHT = 10


class Outbox:
    """Batches the consumer's writes to SQS in a thread of its own (see the module's docstring)."""

    def __init__(self, sqs: SQSClient, urls: QueueUrls, flush_interval: float) -> None:
        """Prepare an empty outbox; start() runs its flusher thread."""
        self.sqs = sqs
        self.urls = urls
        self.flush_interval = flush_interval
        self.fifo_responses = is_fifo(urls.response)
        self._changed = threading.Condition()
        self._responses: list[tuple[Received, str]] = []
        self._deletes: list[Received] = []
        # Keyed by receipt handle: a later change (a retry delay after a heartbeat's extension,
        # say) replaces one not yet made, so SQS never applies them in the wrong order.
        self._visibility: dict[str, tuple[Received, int]] = {}
        self._closing = False
        self._refused = False
        self._outage = OutageLog(sqs, "writing responses, deletes and visibility changes")
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._calls = ThreadPoolExecutor(CALLS_IN_FLIGHT, thread_name_prefix="outbox-call")
        self._callers: dict[str, Callable[[list[Any]], None]] = {
            "_responses": self._send_responses,
            "_deletes": self._delete,
            "_visibility": self._change_visibility,
        }

    def start(self) -> None:
        """Start flushing in the background."""
        self._thread.start()

    def respond_and_delete(self, message: Received, body: str) -> None:
        """Queue a response to send, and the request's delete once it is sent."""
        with self._changed:
            self._responses.append((message, body))
            self._wake(len(self._responses))

    def change_visibility(self, message: Received, seconds: int) -> None:
        """Queue a visibility change: a retry delay, an extension, or 0 to hand a message back at once."""
        with self._changed:
            self._visibility[message.receipt_handle] = (message, seconds)
            self._wake(len(self._visibility))

    def delete(self, message: Received) -> None:
        """Queue the delete of a request that needs no response (a fresh copy of it was sent)."""
        with self._changed:
            self._visibility.pop(message.receipt_handle, None)
            self._deletes.append(message)
            self._wake(len(self._deletes))

    def _wake(self, backlog: int) -> None:
        """Wake the flusher when it has a reason: its first write to wait for, or a full batch.

        Not on every write: a thread woken per message costs the consumer more CPU than the write.
        """
        if backlog >= MAX_BATCH or self.pending() == 1:
            self._changed.notify()

    def pending(self) -> int:
        """Return how many writes wait to be flushed."""
        return len(self._responses) + len(self._deletes) + len(self._visibility)

    def _full(self) -> bool:
        return max(len(self._responses), len(self._deletes), len(self._visibility)) >= MAX_BATCH

    def _run(self) -> None:
        """Flush whenever a batch is full or the oldest write has waited the flush interval."""
        deadline: float | None = None  # when the oldest write waiting must go
        while True:
            with self._changed:
                while not self.pending() and not self._closing:
                    self._changed.wait()
                if not self.pending():
                    return
                if deadline is None:
                    deadline = time.monotonic() + self.flush_interval
                while not self._full() and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
                # Woken early by a full batch: whole batches only, the rest keeps its deadline
                # (else each full batch was followed at once by a call for the one or two behind it).
                whole_batches = not self._closing and time.monotonic() < deadline
            try:
                backoff = self.flush(whole_batches)
            except Exception:
                log.exception("outbox_error; retrying")
                backoff = 1.0
            if not whole_batches:
                deadline = None
            if backoff:
                with self._changed:
                    # close() cuts the back-off short, to flush what it can before exit.
                    self._changed.wait(backoff)

    def flush(self, whole_batches: bool = False) -> float:
        """Make every queued write once, keeping what failed; return how long to back off (0: all went).

        whole_batches leaves a last part-filled batch of each kind for a later flush. The batch
        calls go out together (each costs a network round trip on Amazon SQS), and each kind is
        tried even when another failed, so an outage of one call does not hold up the others
        (hand-backs especially); a request's delete still waits for its response: the deletes
        that the responses just sent unlock go in a second round.
        """
        self._refused = False
        errors = self._round(("_responses", "_deletes", "_visibility"), whole_batches)
        # The deletes of the requests whose responses just went.
        errors += self._round(("_deletes",), whole_batches)
        error = next((e for e in errors if e is not None), None)
        if error is not None:
            return self._outage.failed(error)
        self._outage.recovered()
        # Entries refused one by one (throttling, internal errors) are retried after a pause.
        return PARTIAL_FAILURE_PAUSE if self._refused else 0.0

    def _round(self, backlogs: tuple[str, ...], whole_batches: bool) -> list[Exception | None]:
        """Make the batch calls for the given backlogs (whole batches only, if asked); return the errors."""
        calls: list[tuple[str, Callable[[list[Any]], None], list[Any]]] = []
        for backlog in backlogs:
            with self._changed:
                kept = getattr(self, backlog)
                items = list(kept.values()) if isinstance(kept, dict) else kept
                taken = len(items) - len(items) % MAX_BATCH if whole_batches else len(items)
                items, rest = items[:taken], items[taken:]
                if isinstance(kept, dict):
                    setattr(self, backlog, {entry[0].receipt_handle: entry for entry in rest})
                else:
                    setattr(self, backlog, rest)
            calls.extend((backlog, self._callers[backlog], chunk) for chunk in batches(items))
        if len(calls) <= 1:
            return [self._make(*task) for task in calls]
        return list(self._calls.map(lambda task: self._make(*task), calls))

    def _make(self, backlog: str, call: Callable[[list[Any]], None], chunk: list[Any]) -> Exception | None:
        """Make one batch call; on an SQS error keep its writes for the next flush and return the error."""
        try:
            call(chunk)
        except SQS_ERRORS as exc:
            self._keep(backlog, chunk)
            return exc
        return None

    def _keep(self, backlog: str, entries: list[Any]) -> None:
        """Put writes that were not made back on their backlog (behind any newer visibility change)."""
        with self._changed:
            kept = getattr(self, backlog)
            if isinstance(kept, dict):
                for message, seconds in entries:
                    kept.setdefault(message.receipt_handle, (message, seconds))
            else:
                kept.extend(entries)

    def response_fields(self, message: Received) -> FifoFields:
        """Return the group and deduplication ids of a request's response, when the response queue is FIFO.

        The request's group keeps a group's responses in order (a request from a standard queue
        is a group of its own, so no response waits behind another). The id of the delivered
        message, not the request id, deduplicates: a repeat after a crash is dropped, while a
        redriven request (a new message, the same request id) gets its new outcome through.
        """
        if not self.fifo_responses:
            return {}
        group = message.group_id or message.request_id
        return fifo_fields(self.urls.response, group, f"response-{message.message_id}")

    def _send_responses(self, chunk: list[tuple[Received, str]]) -> None:
        """Send up to ten responses; queue the deletes of their requests, keep the unsent ones."""
        answer = self.sqs.send_message_batch(
            QueueUrl=self.urls.response,
            Entries=[
                {"Id": str(i), "MessageBody": body, **self.response_fields(message)}
                for i, (message, body) in enumerate(chunk)
            ],
        )
        sent = {int(entry["Id"]) for entry in answer.get("Successful", [])}
        self._refused = self._refused or len(sent) < len(chunk)
        with self._changed:
            self._deletes.extend(message for i, (message, _) in enumerate(chunk) if i in sent)
            self._responses.extend(entry for i, entry in enumerate(chunk) if i not in sent)
        for failure in answer.get("Failed", []):
            message = chunk[int(failure["Id"])][0]
            log.warning("response_not_sent message_id=%s: %s", message.message_id, failure.get("Code"))

    def _delete(self, chunk: list[Received]) -> None:
        """Delete up to ten answered requests; keep those SQS could not delete just now."""
        answer = delete_batch(self.sqs, self.urls.request, [m.receipt_handle for m in chunk])
        for failure in answer.get("Failed", []):
            message = chunk[int(failure["Id"])]
            if failure.get("SenderFault"):
                # The receipt handle expired: the message is someone else's now, and they
                # will answer it again; the duplicate response carries the same message id.
                log.warning("delete_refused message_id=%s: %s", message.message_id, failure.get("Code"))
            else:
                self._refused = True
                self._keep("_deletes", [message])

    def _change_visibility(self, chunk: list[tuple[Received, int]]) -> None:
        """Change the visibility of up to ten messages; keep those SQS could not change just now."""
        answer = self.sqs.change_message_visibility_batch(
            QueueUrl=self.urls.request,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": seconds}
                for i, (m, seconds) in enumerate(chunk)
            ],
        )
        for failure in answer.get("Failed", []):
            # A sender fault means the handle expired: the message is visible again anyway.
            if not failure.get("SenderFault"):
                self._refused = True
                self._keep("_visibility", [chunk[int(failure["Id"])]])

    def close(self, timeout: float) -> int:
        """Flush what is left, waiting at most timeout seconds; return how many writes were not made."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        else:
            deadline = time.monotonic() + timeout
            while self.pending() and time.monotonic() < deadline:
                time.sleep(self.flush())
        self._calls.shutdown(wait=False)
        return self.pending()
