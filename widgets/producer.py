"""Sending widget requests, and waiting for their outcomes (widget_producer.py's logic)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from widgets.errors import UsageError
from widgets.messages import parse_response, request_body
from widgets.sqs import (
    MAX_BATCH,
    SQSClient,
    batches,
    check_fifo_id,
    deduplication_id,
    delete_batch,
    describe_error,
    fifo_fields,
    is_fifo,
    release,
)

# Batches in flight at once for a large --count; more buys little against one SQS endpoint.
SEND_THREADS = 8
# Retries for the entries of a batch that SQS refused one by one (throttling, internal errors).
ENTRY_RETRIES = 3
# Seconds --wait pauses when a FIFO response queue brought only others' responses, which it must
# hand back at once (see wait_for_responses), so as not to receive them again in a tight loop.
FIFO_RECEIVE_PAUSE = 0.5


@dataclass
class SendResult:
    """What a send run achieved: the requests SQS accepted and what went wrong with the rest."""

    sent: list[tuple[str, str]] = field(default_factory=list)  # (message id, widget id)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (widget id, reason)
    error: Exception | None = None  # the SQS call that failed outright, if one did


def send_batch(
    sqs: SQSClient, url: str, widget_ids: list[str], group_id: str | None = None, dedup_id: str | None = None
) -> SendResult:
    """Send up to ten requests in one call, retrying the entries SQS refused one by one.

    To a FIFO queue each carries group_id and dedup_id, or by default the widget's own
    deduplication id, so a retried entry or a widget sent again within five minutes is one message.
    """
    result = SendResult()
    pending = {str(index): widget_id for index, widget_id in enumerate(widget_ids)}
    for attempt in range(ENTRY_RETRIES + 1):
        try:
            answer = sqs.send_message_batch(
                QueueUrl=url,
                Entries=[
                    {
                        "Id": key,
                        "MessageBody": request_body(wid),
                        **fifo_fields(url, group_id, dedup_id or deduplication_id(wid)),
                    }
                    for key, wid in pending.items()
                ],
            )
        except (BotoCoreError, ClientError) as exc:
            # What an earlier attempt sent stays reported as sent. A call that died mid-way may
            # have been taken; we report it as not sent, which is all we can vouch for.
            result.error = exc
            result.failed.extend((wid, describe_error(exc, sqs)) for wid in pending.values())
            return result
        for sent in answer.get("Successful", []):
            result.sent.append((sent["MessageId"], pending.pop(sent["Id"])))
        failures = answer.get("Failed", [])
        retryable = [entry for entry in failures if not entry.get("SenderFault")]
        for entry in failures:
            if entry.get("SenderFault") or attempt == ENTRY_RETRIES:
                reason = f"{entry.get('Code')}: {entry.get('Message', '')}"
                result.failed.append((pending.pop(entry["Id"]), reason))
        if not retryable or not pending:
            break
        time.sleep(0.1 * 2**attempt)
    return result


def send_requests(
    sqs: SQSClient,
    url: str,
    widget_ids: list[str],
    threads: int = SEND_THREADS,
    on_batch: Callable[[SendResult], None] | None = None,
    group_id: str | None = None,
    dedup_id: str | None = None,
) -> SendResult:
    """Send requests in batches of ten, several batches at once; stop at the first call that fails.

    To a FIFO queue the batches go one after another: a FIFO queue keeps a group in the order
    SQS took its messages, so batches racing each other would mix up the order of the run.
    """
    total = SendResult()
    chunks = list(batches(widget_ids, MAX_BATCH))
    if is_fifo(url):
        threads = 1
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(chunks)))) as pool:
        futures = [pool.submit(send_batch, sqs, url, chunk, group_id, dedup_id) for chunk in chunks]
        for chunk, future in zip(chunks, futures, strict=True):
            try:
                result = future.result()
            except CancelledError:
                result = SendResult(failed=[(wid, "not sent after an earlier error") for wid in chunk])
            total.sent.extend(result.sent)
            total.failed.extend(result.failed)
            if on_batch is not None:
                on_batch(result)
            if result.error is not None and total.error is None:
                total.error = result.error
                for pending in futures:
                    pending.cancel()
    return total


def wait_for_responses(
    sqs: SQSClient,
    url: str,
    message_ids: Iterable[str],
    timeout: float,
    by_widget: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Collect the responses to message_ids from the response queue, deleting only those.

    Responses to other requests stay hidden until the wait ends, then are handed back: handing
    them back at once would have SQS return the same ones again, ahead of ours. On a FIFO
    response queue they are handed back at once all the same, since while they are hidden SQS
    holds back every later response of their group, ours included.

    by_widget maps widget ids to message ids waited for: a response naming such a widget counts
    as that message's. For a FIFO request queue, where a widget sent again within five minutes is
    one request: the second send's message id may not be the one the response names.
    """
    fifo = is_fifo(url)
    waiting = set(message_ids)
    found: dict[str, dict[str, Any]] = {}
    others: dict[str, str] = {}  # message id -> receipt handle of responses that are not ours
    deadline = time.monotonic() + timeout
    try:
        while waiting and time.monotonic() < deadline:
            wait = int(min(5, max(0, deadline - time.monotonic())))
            messages = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=MAX_BATCH,
                WaitTimeSeconds=wait,
                VisibilityTimeout=int(timeout) + 30,
            ).get("Messages", [])
            mine = []
            for message in messages:
                response = parse_response(message["Body"])
                request_id = response.get("MessageId")
                widget_id = response.get("WidgetId")
                if by_widget and request_id not in waiting and isinstance(widget_id, str):
                    request_id = by_widget.get(widget_id, request_id)
                if request_id in waiting or request_id in found:  # found: a duplicate response
                    found.setdefault(request_id, response)
                    waiting.discard(request_id)
                    mine.append(message)
                else:
                    others[message["MessageId"]] = message["ReceiptHandle"]
            if mine:
                delete_batch(sqs, url, [m["ReceiptHandle"] for m in mine])
            if fifo and others:
                release(sqs, url, others.values())
                others.clear()
                if not mine:
                    time.sleep(min(FIFO_RECEIVE_PAUSE, max(0, deadline - time.monotonic())))
    finally:
        release(sqs, url, others.values())
    return found


def check_fifo_options(queue: str, group_id: str | None, dedup_id: str | None, count: int) -> None:
    """Refuse, in one line, group and deduplication ids that SQS would refuse or that make no sense."""
    if dedup_id is not None and count != 1:
        raise UsageError(
            "--dedup-id names one request; it cannot go with --count (each request's is its widget id)"
        )
    if is_fifo(queue) and group_id is None:
        raise UsageError(
            f"{queue} is a FIFO queue: give --group-id, the group whose requests are made in order "
            "(e.g. a customer id)"
        )
    if not is_fifo(queue) and dedup_id is not None:
        raise UsageError(f"--dedup-id is for FIFO queues (names ending in .fifo), not {queue}")
    try:
        for value, option in ((group_id, "--group-id"), (dedup_id, "--dedup-id")):
            if value is not None:
                check_fifo_id(value, option)
    except ValueError as error:
        raise UsageError(str(error)) from None
