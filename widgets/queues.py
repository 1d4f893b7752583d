"""Day-to-day care of the widget queues (widget_queues.py's logic): status, redrive, responses.

Neither redrive nor responses loses a message when interrupted: a message is deleted only after
its copy was sent (redrive) or it was printed (responses --delete), and what a run read but did
not deal with becomes visible again after HOLD_SECONDS.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from widgets.errors import SetupError
from widgets.messages import parse_response
from widgets.sqs import (
    MAX_BATCH,
    MISSING_QUEUE_CODES,
    SQSClient,
    delete_batch,
    fifo_fields,
    release,
    user_errors,
)

if TYPE_CHECKING:
    from mypy_boto3_sqs.literals import QueueAttributeNameType
    from mypy_boto3_sqs.type_defs import (
        BatchResultErrorEntryTypeDef,
        MessageAttributeValueTypeDef,
        MessageTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

# Seconds a message read by redrive or responses stays hidden from others while this run deals with it.
HOLD_SECONDS = 30
COUNT_ATTRIBUTES: list[QueueAttributeNameType] = [
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
]


# Seconds between refreshes of status --watch: its default and the range it accepts.
WATCH_SECONDS = 2.0
WATCH_RANGE = (0.5, 3600.0)
# The counts a watch follows, as QueueStatus fields.
WATCHED_COUNTS = ("visible", "in_flight", "delayed")
Rates = tuple[float | None, ...]  # per second, one for each of WATCHED_COUNTS; None when unknown


@dataclass(frozen=True)
class QueueStatus:
    """How many messages a queue holds in each state; no url and no counts when it does not exist."""

    queue: str
    url: str | None
    visible: int | None = None
    in_flight: int | None = None
    delayed: int | None = None
    # The SQS API does not report it (only CloudWatch's ApproximateAgeOfOldestMessage does)
    # and peeking would raise receive counts; the field is there so scripts can rely on it.
    oldest_age_seconds: int | None = None


@dataclass
class RedriveResult:
    """What a redrive achieved: how many messages it moved, and which it could not move and why."""

    received: int = 0
    moved: int = 0
    not_sent: list[tuple[MessageTypeDef, str]] = field(default_factory=list)  # (message, reason)
    not_deleted: list[tuple[str, str]] = field(default_factory=list)  # (message id, reason)

    def add(self, other: RedriveResult) -> None:
        """Add another result's counts and failures to this one."""
        self.received += other.received
        self.moved += other.moved
        self.not_sent.extend(other.not_sent)
        self.not_deleted.extend(other.not_deleted)


@dataclass
class ReadResult:
    """What a read of the response queue achieved: how many responses it passed on, which it kept."""

    read: int = 0
    not_deleted: list[tuple[str, str]] = field(default_factory=list)  # (message id, reason)


def failure_reason(entry: BatchResultErrorEntryTypeDef) -> str:
    """Return one line saying why a batch entry failed."""
    return f"{entry.get('Code')}: {entry.get('Message', '')}"


def queue_status(sqs: SQSClient, name: str) -> QueueStatus:
    """Return a queue's message counts by state, or a status without counts if the queue is missing."""
    with user_errors(sqs, name):
        try:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=COUNT_ATTRIBUTES)["Attributes"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in MISSING_QUEUE_CODES:
                return QueueStatus(name, None)
            raise
    visible, in_flight, delayed = (int(counts.get(attribute, "0")) for attribute in COUNT_ATTRIBUTES)
    return QueueStatus(name, url, visible, in_flight, delayed)


def status_table(statuses: dict[str, QueueStatus]) -> list[str]:
    """Return the lines of a table for people: one row per queue, "missing" for a queue not there."""
    rows: list[tuple[str, ...]] = [("role", "queue", "visible", "in flight", "delayed", "oldest")]
    for role, queue in statuses.items():
        if queue.url is None:
            rows.append((role.replace("_", " "), queue.queue, "missing", "", "", ""))
        else:
            counts = (queue.visible, queue.in_flight, queue.delayed)
            oldest = "n/a" if queue.oldest_age_seconds is None else f"{queue.oldest_age_seconds}s"
            rows.append((role.replace("_", " "), queue.queue, *(str(c) for c in counts), oldest))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(width) if 2 <= column <= 4 else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


@dataclass(frozen=True)
class Refresh:
    """One look at the queues during a watch: counts and how fast they change, or why there are none."""

    statuses: dict[str, QueueStatus]
    rates: dict[str, Rates]  # by role, per second since the previous refresh
    error: str | None = None


def change_rates(before: QueueStatus | None, after: QueueStatus, seconds: float) -> Rates:
    """Return how fast each watched count changed per second from before to after (None where unknown)."""
    rates: list[float | None] = []
    for name in WATCHED_COUNTS:
        old = getattr(before, name) if before is not None else None
        new = getattr(after, name)
        rates.append((new - old) / seconds if old is not None and new is not None and seconds > 0 else None)
    return tuple(rates)


def format_rate(rate: float | None) -> str:
    """Return a rate per second for people: signed, two decimals below one, blank when unknown."""
    if rate is None:
        return ""
    if rate == 0:
        return "0"
    return f"{rate:+.2f}" if round(abs(rate), 2) < 1 else f"{rate:+.1f}"


def watch_table(refresh: Refresh) -> list[str]:
    """Return the lines of the live table: each watched count followed by its rate per second."""
    if refresh.error is not None:
        return [f"error: {refresh.error}"]
    rows: list[tuple[str, ...]] = [("role", "queue", "visible", "/s", "in flight", "/s", "delayed", "/s")]
    for role, queue in refresh.statuses.items():
        cells: list[str] = [role.replace("_", " "), queue.queue]
        if queue.url is None:
            cells += ["missing", "", "", "", "", ""]
        else:
            for name, rate in zip(WATCHED_COUNTS, refresh.rates[role], strict=True):
                cells += [str(getattr(queue, name)), format_rate(rate)]
        rows.append(tuple(cells))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(width) if column >= 2 else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def watch_line(refresh: Refresh, clock_time: str) -> str:
    """Return one refresh as one line (for logs and pipes): the time, then each queue's counts and rates."""
    if refresh.error is not None:
        return f"{clock_time} error: {refresh.error}"
    parts = []
    for role, queue in refresh.statuses.items():
        if queue.url is None:
            parts.append(f"{role} missing")
            continue
        counts = []
        for name, rate in zip(WATCHED_COUNTS, refresh.rates[role], strict=True):
            shown = format_rate(rate)
            counts.append(f"{name}={getattr(queue, name)}" + (f" ({shown}/s)" if shown else ""))
        parts.append(f"{role} {' '.join(counts)}")
    return f"{clock_time} {'; '.join(parts)}"


def watch(
    fetch: Callable[[], dict[str, QueueStatus]],
    show: Callable[[Refresh], None],
    interval: float,
    count: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Fetch the statuses every interval seconds and show each refresh with its rates, count times or forever.

    An error on the first fetch ends the watch (the queues or credentials are wrong); a later
    one is shown and the watch goes on, so that it outlasts a restart of the SQS it watches.
    """
    previous: tuple[float, dict[str, QueueStatus]] | None = None
    done = 0
    due = clock()
    while True:
        fetched_at = clock()
        try:
            statuses = fetch()
        except SetupError as error:
            if done == 0:
                raise
            show(Refresh({}, {}, str(error)))
            previous = None
        else:
            seconds = fetched_at - previous[0] if previous is not None else 0.0
            before = previous[1] if previous is not None else {}
            rates = {role: change_rates(before.get(role), queue, seconds) for role, queue in statuses.items()}
            show(Refresh(statuses, rates))
            previous = (fetched_at, statuses)
        done += 1
        if count is not None and done >= count:
            return
        # Steady refreshes; when a fetch took longer than the interval, the next one starts at once.
        now = clock()
        due = max(due + interval, now)
        sleep(due - now)


def redraw(lines: list[str], drawn: int) -> str:
    """Return what redraws lines in place of the drawn lines above the cursor on a terminal."""
    width = shutil.get_terminal_size().columns
    # Lines cut to the width, so none wraps and the next redraw moves up exactly as many lines.
    body = "".join(line[:width] + "\n" for line in lines)
    up = f"\x1b[{drawn}A" if drawn else ""
    return f"{up}\r\x1b[J{body}"


def sendable_attributes(message: MessageTypeDef) -> dict[str, MessageAttributeValueTypeDef]:
    """Return a received message's attributes in the form SendMessage takes them."""
    attributes: dict[str, MessageAttributeValueTypeDef] = {}
    for name, received in message.get("MessageAttributes", {}).items():
        attribute: MessageAttributeValueTypeDef = {"DataType": received["DataType"]}
        if "StringValue" in received:
            attribute["StringValue"] = received["StringValue"]
        if "BinaryValue" in received:
            attribute["BinaryValue"] = received["BinaryValue"]
        attributes[name] = attribute
    return attributes


def redrive_deduplication_id(message: MessageTypeDef) -> str:
    """Return the deduplication id of a redriven copy: new for each message the dead-letter queue got.

    Not the original request's, which SQS would take for a duplicate within five minutes of
    it; the same for each redrive of one dead-letter message, so that a redrive interrupted
    after sending and run again within five minutes sends the message only once.
    """
    return f"redrive-{message['MessageId']}"


def move_batch(
    sqs: SQSClient, source_url: str, target_url: str, messages: list[MessageTypeDef]
) -> RedriveResult:
    """Send copies of up to ten messages to the target, then delete from the source those that were sent.

    A copy keeps its message group; to a FIFO queue it goes with a fresh deduplication id.
    """
    result = RedriveResult(received=len(messages))
    entries: list[SendMessageBatchRequestEntryTypeDef] = []
    for index, message in enumerate(messages):
        entry: SendMessageBatchRequestEntryTypeDef = {"Id": str(index), "MessageBody": message["Body"]}
        attributes = sendable_attributes(message)
        if attributes:
            entry["MessageAttributes"] = attributes
        group_id = message.get("Attributes", {}).get("MessageGroupId")
        try:
            entry.update(fifo_fields(target_url, group_id, redrive_deduplication_id(message)))
        except ValueError as error:
            result.not_sent.append((message, str(error)))
            continue
        entries.append(entry)
    if not entries:
        return result
    answer = sqs.send_message_batch(QueueUrl=target_url, Entries=entries)
    for failure in answer.get("Failed", []):
        result.not_sent.append((messages[int(failure["Id"])], failure_reason(failure)))
    sent = [messages[int(entry["Id"])] for entry in answer.get("Successful", [])]
    if not sent:
        return result
    deleted = delete_batch(sqs, source_url, [m["ReceiptHandle"] for m in sent])
    for failure in deleted.get("Failed", []):
        result.not_deleted.append((sent[int(failure["Id"])]["MessageId"], failure_reason(failure)))
    result.moved = len(sent)
    return result


def move_messages(
    sqs: SQSClient,
    source_url: str,
    target_url: str,
    limit: int | None = None,
    wait_time: int = 1,
    on_batch: Callable[[RedriveResult], None] | None = None,
) -> RedriveResult:
    """Move messages, bodies and attributes unchanged, until the source has none visible or limit were tried.

    Messages that could not be sent stay hidden while the run lasts, so that it ends, and are
    then made visible again in the source for the next run.
    """
    total = RedriveResult()
    while limit is None or total.received < limit:
        wanted = MAX_BATCH if limit is None else min(MAX_BATCH, limit - total.received)
        messages = sqs.receive_message(
            QueueUrl=source_url,
            MaxNumberOfMessages=wanted,
            WaitTimeSeconds=wait_time,
            VisibilityTimeout=HOLD_SECONDS,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["MessageGroupId"],
        ).get("Messages", [])
        if not messages:
            break
        batch = move_batch(sqs, source_url, target_url, messages)
        total.add(batch)
        if on_batch is not None:
            on_batch(batch)
    release(sqs, source_url, [message["ReceiptHandle"] for message, _ in total.not_sent])
    return total


def read_responses(
    sqs: SQSClient,
    url: str,
    on_response: Callable[[dict[str, Any]], None],
    delete: bool = False,
    limit: int | None = None,
    wait_time: int = 1,
) -> ReadResult:
    """Pass each response waiting on the queue to on_response once, then delete it or make it visible again.

    What was read stays hidden until the run ends, so each receive brings new responses; the
    run ends at the first receive that brings none, or at limit.
    """
    result = ReadResult()
    seen: set[str] = set()
    held: dict[str, str] = {}  # message id -> latest receipt handle, of the responses read and kept
    try:
        while limit is None or result.read < limit:
            wanted = MAX_BATCH if limit is None else min(MAX_BATCH, limit - result.read)
            messages = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=wanted,
                WaitTimeSeconds=wait_time,
                VisibilityTimeout=HOLD_SECONDS,
            ).get("Messages", [])
            new = 0
            for message in messages:
                if message["MessageId"] not in seen:  # SQS may deliver a message more than once
                    seen.add(message["MessageId"])
                    on_response(parse_response(message["Body"]))
                    new += 1
            result.read += new
            if delete and messages:
                # Seen ones too: a second delivery of a response printed is what was printed.
                answer = delete_batch(sqs, url, [m["ReceiptHandle"] for m in messages])
                for failure in answer.get("Failed", []):
                    message_id = messages[int(failure["Id"])]["MessageId"]
                    result.not_deleted.append((message_id, failure_reason(failure)))
            elif not delete:
                held.update((message["MessageId"], message["ReceiptHandle"]) for message in messages)
            if not new:
                break
    finally:
        release(sqs, url, held.values())
    return result
