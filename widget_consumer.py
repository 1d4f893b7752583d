"""The widget consumer: long-polls the request queue and POSTs each request to the widget maker.

Each message ends one of three ways, reported on the response queue: OK (the maker made the
widget), REJECTED (the request can never succeed) or FAILED (the maker kept failing; a copy is
kept in the dead-letter queue). While the maker is down or failing, the message is retried by
setting its visibility timeout to the retry delay, so SQS itself delivers it again later, with
a higher ApproximateReceiveCount.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any
from urllib.parse import urlparse

import click
import requests
from botocore.exceptions import BotoCoreError, ClientError
from requests.adapters import HTTPAdapter

from widgets.cli import CONTEXT_SETTINGS, sqs_options
from widgets.logs import FORMATS, LEVELS, configure_logging, printable
from widgets.messages import (
    FAILED,
    MAX_REASON_CHARS,
    OK,
    REJECTED,
    RETRY,
    InvalidRequest,
    parse_request,
    response_body,
)
from widgets.sqs import (
    DEAD_LETTER_QUEUE,
    MAX_BATCH,
    QueueUrls,
    SQSClient,
    batches,
    delete_batch,
    describe_error,
    ensure_queues,
    find_queues,
    make_client,
)

log = logging.getLogger("widget_consumer")

# SQS's upper bound on a visibility timeout: 12 hours.
MAX_VISIBILITY = 43200
# The maker's answers that say "not now" rather than "never": the request is retried.
# 401 and 403 are here too: a wrong token is the consumer's fault, not the request's, and
# rejecting every request until someone fixes it would discard them all.
RETRY_STATUS_CODES = {401, 403, 408, 429}
# SQS allows at most ten message attributes; the dead-letter copy adds three of its own
# (replacing those of an earlier failure, for a request that was redriven and failed again).
DEAD_LETTER_ATTRIBUTES = ("FailureReason", "ReceiveCount", "OriginalMessageId")
MAX_COPIED_ATTRIBUTES = 10 - len(DEAD_LETTER_ATTRIBUTES)
# Seconds kept in hand, beyond the HTTP timeout, to respond and delete before visibility runs out.
VISIBILITY_MARGIN = 0.5
# Pause before retrying writes that SQS refused one by one.
PARTIAL_FAILURE_PAUSE = 0.5
# Pause after an empty short poll (--wait-time 0), so an idle consumer does not spin.
IDLE_PAUSE = 0.2
# How often the consumer logs a summary while it is busy.
SUMMARY_INTERVAL = 30.0


@dataclass(frozen=True)
class Settings:
    """How the consumer behaves; the command-line options map one to one onto these."""

    maker_url: str = "http://127.0.0.1:5000/add"
    max_receives: int = 3
    retry_delay: int = 30
    backoff: str = "fixed"
    visibility_timeout: int = 60
    wait_time: int = 20
    batch_size: int = 10
    http_timeout: float = 10.0
    workers: int = 10
    token: str | None = field(default=None, repr=False)
    flush_interval: float = 0.05


@dataclass(frozen=True)
class Received:
    """A message as received from the request queue."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    attributes: dict[str, Any]
    received_at: float  # time.monotonic() when it arrived: its visibility timeout runs from then

    @classmethod
    def from_sqs(cls, message: Mapping[str, Any]) -> Received:
        """Build a Received from one entry of a ReceiveMessage answer."""
        return cls(
            message_id=message["MessageId"],
            receipt_handle=message["ReceiptHandle"],
            body=message.get("Body", ""),
            receive_count=int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
            attributes=message.get("MessageAttributes", {}),
            received_at=time.monotonic(),
        )


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery of a request: a status, why, and the widget for OK."""

    status: str
    widget_id: str | None = None
    reason: str | None = None
    widget: dict[str, Any] | None = None


def validate(settings: Settings) -> None:
    """Refuse settings that cannot work, saying which and why, before anything starts."""
    url = urlparse(settings.maker_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise click.BadParameter(f"{settings.maker_url!r} is not an http(s) URL", param_hint="'--maker-url'")
    # A received message may wait for a worker (at most one maker call) before its own call.
    if settings.visibility_timeout <= 2 * settings.http_timeout:
        raise click.BadParameter(
            f"must be above twice the HTTP timeout ({2 * settings.http_timeout:g}s): a message "
            "may wait for one maker call before its own, and must not become visible to another "
            "consumer meanwhile",
            param_hint="'--visibility-timeout'",
        )


def retry_delay(settings: Settings, receive_count: int) -> int:
    """Return the seconds to wait before the next delivery after the given failed delivery."""
    delay = settings.retry_delay
    if settings.backoff == "exponential":
        delay = settings.retry_delay * 2 ** min(max(receive_count - 1, 0), 20)
    return min(delay, MAX_VISIBILITY)


def make_http_session(workers: int, maker_url: str = Settings.maker_url) -> requests.Session:
    """Return an HTTP session keeping up to one connection per worker alive to the maker."""
    session = requests.Session()
    # Read the proxy and CA settings from the environment once, not on every POST: requests
    # otherwise walks os.environ per call, about a fifth of the consumer's CPU per message.
    session.proxies.update(requests.utils.get_environ_proxies(maker_url))
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    session.trust_env = False
    # max_retries=0: retrying is the queue's job, with its visibility timeout.
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=workers, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def maker_error(answer: requests.Response) -> str:
    """Return the reason a maker answer gives, from its JSON error body when there is one."""
    try:
        detail = answer.json().get("error")
    except (ValueError, AttributeError):
        detail = None
    return f"maker answered {answer.status_code}" + (f": {detail}" if detail else "")


def call_maker(http: requests.Session, settings: Settings, widget_id: str, message_id: str) -> Outcome:
    """POST one request to the maker and classify its answer as OK, REJECTED or RETRY."""
    headers = {"Idempotency-Key": message_id}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    try:
        answer = http.post(
            settings.maker_url,
            json={"widget_id": widget_id},
            headers=headers,
            timeout=settings.http_timeout,
        )
    except requests.Timeout:
        return Outcome(RETRY, widget_id, f"maker did not answer within {settings.http_timeout:g}s")
    except requests.ConnectionError:
        return Outcome(RETRY, widget_id, "maker unreachable")
    except requests.RequestException as exc:
        return Outcome(RETRY, widget_id, f"maker call failed: {type(exc).__name__}")
    if 200 <= answer.status_code < 300:
        try:
            widget = answer.json()
        except ValueError:
            widget = None
        return Outcome(OK, widget_id, widget=widget if isinstance(widget, dict) else None)
    if answer.status_code >= 500 or answer.status_code in RETRY_STATUS_CODES:
        return Outcome(RETRY, widget_id, maker_error(answer))
    return Outcome(REJECTED, widget_id, maker_error(answer))


def decide(message: Received, http: requests.Session, settings: Settings) -> Outcome:
    """Decide a message's fate: parse it, ask the maker, and give up after max receives."""
    try:
        widget_id = parse_request(message.body)
    except InvalidRequest as exc:
        return Outcome(REJECTED, None, str(exc))
    outcome = call_maker(http, settings, widget_id, message.message_id)
    if outcome.status == RETRY and message.receive_count >= settings.max_receives:
        reason = f"{outcome.reason}; gave up after {message.receive_count} receives"
        return Outcome(FAILED, widget_id, reason)
    return outcome


def dead_letter_attributes(message: Received, reason: str) -> dict[str, Any]:
    """Return the message attributes of a request's dead-letter copy: its own plus why it failed."""
    own = {k: v for k, v in message.attributes.items() if k not in DEAD_LETTER_ATTRIBUTES}
    attributes = dict(list(own.items())[:MAX_COPIED_ATTRIBUTES])
    attributes["FailureReason"] = {"DataType": "String", "StringValue": reason[:MAX_REASON_CHARS]}
    attributes["ReceiveCount"] = {"DataType": "Number", "StringValue": str(message.receive_count)}
    attributes["OriginalMessageId"] = {"DataType": "String", "StringValue": message.message_id}
    return attributes


class OutageLog:
    """Logs an SQS outage once when it starts and once when it ends, not once per failed call."""

    def __init__(self, sqs: SQSClient, what: str) -> None:
        """Track outages of the calls described by what."""
        self.sqs = sqs
        self.what = what
        self.failures = 0
        self._lock = threading.Lock()

    def failed(self, error: Exception) -> float:
        """Record a failed call; return how long to back off before the next one."""
        with self._lock:
            self.failures += 1
            if self.failures == 1:
                log.warning("sqs_outage %s: %s; retrying", self.what, describe_error(error, self.sqs))
            return float(min(0.5 * 2 ** (self.failures - 1), 10.0))

    def recovered(self) -> None:
        """Record a call that worked, ending any outage."""
        with self._lock:
            if self.failures:
                log.info("sqs_recovered %s after %d failed calls", self.what, self.failures)
            self.failures = 0


class Outbox:
    """Batches the consumer's writes to SQS: responses, then deletes, and visibility changes.

    A request is deleted only after its response was sent, so a crash in between repeats
    the request (which the maker absorbs) instead of losing its response.
    """

    def __init__(self, sqs: SQSClient, urls: QueueUrls, flush_interval: float) -> None:
        """Prepare an empty outbox; start() runs its flusher thread."""
        self.sqs = sqs
        self.urls = urls
        self.flush_interval = flush_interval
        self._changed = threading.Condition()
        self._responses: list[tuple[Received, str]] = []
        self._deletes: list[Received] = []
        self._visibility: list[tuple[Received, int]] = []
        self._closing = False
        self._refused = False
        self._outage = OutageLog(sqs, "writing responses, deletes and visibility changes")
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)

    def start(self) -> None:
        """Start flushing in the background."""
        self._thread.start()

    def respond_and_delete(self, message: Received, body: str) -> None:
        """Queue a response to send, and the request's delete once it is sent."""
        with self._changed:
            self._responses.append((message, body))
            self._changed.notify()

    def change_visibility(self, message: Received, seconds: int) -> None:
        """Queue a visibility change: a retry delay, or 0 to hand a message back at once."""
        with self._changed:
            self._visibility.append((message, seconds))
            self._changed.notify()

    def pending(self) -> int:
        """Return how many writes wait to be flushed."""
        return len(self._responses) + len(self._deletes) + len(self._visibility)

    def _full(self) -> bool:
        return max(len(self._responses), len(self._deletes), len(self._visibility)) >= MAX_BATCH

    def _run(self) -> None:
        """Flush whenever a batch is full or the oldest write has waited the flush interval."""
        while True:
            with self._changed:
                while not self.pending() and not self._closing:
                    self._changed.wait()
                if not self.pending():
                    return
                deadline = time.monotonic() + self.flush_interval
                while not self._full() and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
            try:
                backoff = self.flush()
            except Exception:
                log.exception("outbox_error; retrying")
                backoff = 1.0
            if backoff:
                with self._changed:
                    # close() cuts the back-off short, to flush what it can before exit.
                    self._changed.wait(backoff)

    def flush(self) -> float:
        """Make every queued write once, keeping what failed; return how long to back off (0: all went).

        Each kind is tried even when another failed, so an outage of one call does not hold up
        the others (hand-backs especially); a request's delete still waits for its response.
        """
        self._refused = False
        error: Exception | None = None
        for backlog, call in (
            ("_responses", self._send_responses),
            ("_deletes", self._delete),
            ("_visibility", self._change_visibility),
        ):
            with self._changed:
                items = getattr(self, backlog)
                setattr(self, backlog, [])
            try:
                self._each_batch(items, call, backlog)
            except (BotoCoreError, ClientError) as exc:
                error = error or exc
        if error is not None:
            return self._outage.failed(error)
        self._outage.recovered()
        # Entries refused one by one (throttling, internal errors) are retried after a pause.
        return PARTIAL_FAILURE_PAUSE if self._refused else 0.0

    def _each_batch(self, items: list[Any], call: Any, backlog: str) -> None:
        """Call call on items ten at a time; on an SQS error, put the rest back on backlog and raise."""
        chunks = list(batches(items))
        for index, chunk in enumerate(chunks):
            try:
                call(chunk)
            except (BotoCoreError, ClientError):
                with self._changed:
                    getattr(self, backlog).extend(e for rest in chunks[index:] for e in rest)
                raise

    def _send_responses(self, chunk: list[tuple[Received, str]]) -> None:
        """Send up to ten responses; queue the deletes of their requests, keep the unsent ones."""
        answer = self.sqs.send_message_batch(
            QueueUrl=self.urls.response,
            Entries=[{"Id": str(i), "MessageBody": body} for i, (_, body) in enumerate(chunk)],
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
                with self._changed:
                    self._deletes.append(message)

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
                with self._changed:
                    self._visibility.append(chunk[int(failure["Id"])])

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
        return self.pending()


class Consumer:
    """Receives requests in batches and hands them to worker threads, holding only what they can take.

    At most one batch waits beyond the busy workers, so no message sits in a local buffer
    while its visibility timeout runs out; the next batch is received while this one is handled.
    """

    def __init__(
        self, sqs: SQSClient, urls: QueueUrls, settings: Settings, http: requests.Session | None = None
    ) -> None:
        """Prepare a consumer; start() runs it in background threads, stop() ends it."""
        self.sqs = sqs
        self.urls = urls
        self.settings = settings
        self.http = http or make_http_session(settings.workers, settings.maker_url)
        self.outbox = Outbox(sqs, urls, settings.flush_interval)
        self.counts: Counter[str] = Counter()
        self.stopping = threading.Event()
        self._lookahead = min(settings.batch_size, settings.workers)
        self._capacity = settings.workers + self._lookahead
        self._held = 0
        self._room = threading.Condition()
        self._work: queue.Queue[Received | None] = queue.Queue()
        self._outage = OutageLog(sqs, "receiving requests")
        self._poller = threading.Thread(target=self._poll, name="poller", daemon=True)
        self._workers = [
            threading.Thread(target=self._work_loop, name=f"worker-{n}", daemon=True)
            for n in range(settings.workers)
        ]

    def start(self) -> None:
        """Start the outbox, the workers and the poller."""
        self.outbox.start()
        for worker in self._workers:
            worker.start()
        self._poller.start()

    def _wait_for_room(self) -> int:
        """Block until a batch fits beside the held messages; return how many to ask for (0: stopping)."""
        with self._room:
            while self._capacity - self._held < self._lookahead and not self.stopping.is_set():
                self._room.wait(0.5)
            if self.stopping.is_set():
                return 0
            wanted = min(self.settings.batch_size, self._capacity - self._held)
            self._held += wanted
            return wanted

    def _let_go(self, count: int) -> None:
        """Record that count held messages are done with, making room for more."""
        with self._room:
            self._held -= count
            self._room.notify()

    def receive(self, wanted: int) -> list[Received]:
        """Receive up to wanted requests, long-polling while the queue is empty."""
        answer = self.sqs.receive_message(
            QueueUrl=self.urls.request,
            MaxNumberOfMessages=wanted,
            WaitTimeSeconds=self.settings.wait_time,
            VisibilityTimeout=self.settings.visibility_timeout,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
            MessageAttributeNames=["All"],
        )
        return [Received.from_sqs(message) for message in answer.get("Messages", [])]

    def _poll(self) -> None:
        """Receive batches until stopped, backing off while SQS is unreachable."""
        while True:
            wanted = self._wait_for_room()
            if not wanted:
                return
            try:
                messages = self.receive(wanted)
            except (BotoCoreError, ClientError) as error:
                self._let_go(wanted)
                self.stopping.wait(self._outage.failed(error))
                continue
            except Exception:
                log.exception("receive_error; retrying")
                self._let_go(wanted)
                self.stopping.wait(1.0)
                continue
            self._outage.recovered()
            self._let_go(wanted - len(messages))
            if not messages and not self.settings.wait_time:
                # Short polling on an empty queue: pause rather than spin on paid calls.
                self.stopping.wait(IDLE_PAUSE)
            for message in messages:
                if self.stopping.is_set():
                    self.release(message)
                else:
                    self._work.put(message)

    def _work_loop(self) -> None:
        """Handle messages until a None arrives; once stopping, hand back what is not started."""
        while True:
            message = self._work.get()
            if message is None:
                return
            if self.stopping.is_set():
                self.release(message)
                continue
            if self._too_late(message):
                # Another consumer may get it any moment: better to hand it back than race.
                log.warning(
                    "handing_back message_id=%s: its visibility timeout is nearly over", message.message_id
                )
                self.release(message)
                continue
            try:
                self.handle(message)
            except (BotoCoreError, ClientError) as error:
                log.warning(
                    "not_settled message_id=%s: %s; SQS will deliver it again",
                    message.message_id,
                    describe_error(error, self.sqs),
                )
            except Exception as error:
                # A bug of ours: the worker lives on, and the message comes back after its
                # visibility timeout, until its last delivery, where it is given up as FAILED.
                log.exception("handler_error message_id=%s", message.message_id)
                if message.receive_count >= self.settings.max_receives:
                    self._give_up(message, error)
            finally:
                self._let_go(1)

    def _give_up(self, message: Received, error: Exception) -> None:
        """Settle a message the consumer itself keeps failing on as FAILED, so it is not dropped silently."""
        reason = f"consumer error: {type(error).__name__}; gave up after {message.receive_count} receives"
        try:
            self.settle(message, Outcome(FAILED, None, reason), time.monotonic())
        except (BotoCoreError, ClientError) as sqs_error:
            log.warning(
                "not_settled message_id=%s: %s", message.message_id, describe_error(sqs_error, self.sqs)
            )

    def _too_late(self, message: Received) -> bool:
        """Tell whether a message's visibility timeout could run out before a maker call ends."""
        age = time.monotonic() - message.received_at
        return age + self.settings.http_timeout + VISIBILITY_MARGIN > self.settings.visibility_timeout

    def release(self, message: Received) -> None:
        """Make a message this consumer will not handle visible again at once."""
        self.outbox.change_visibility(message, 0)
        self._let_go(1)

    def handle(self, message: Received) -> Outcome:
        """Decide one message's fate and act on it: respond and delete, retry later, or dead-letter."""
        started = time.monotonic()
        return self.settle(message, decide(message, self.http, self.settings), started)

    def settle(self, message: Received, outcome: Outcome, started: float) -> Outcome:
        """Act on an outcome: queue the retry, or the response and delete (after a dead-letter copy)."""
        if outcome.status == RETRY:
            delay = retry_delay(self.settings, message.receive_count)
            self.outbox.change_visibility(message, delay)
            detail = f" retry_in={delay}s reason={outcome.reason!r}"
        else:
            if outcome.status == FAILED:
                # Kept before the request is deleted; if this fails, SQS delivers it again.
                self.sqs.send_message(
                    QueueUrl=self.urls.dead_letter,
                    MessageBody=message.body,
                    MessageAttributes=dead_letter_attributes(message, outcome.reason or ""),
                )
            body = response_body(
                message.message_id,
                outcome.widget_id,
                outcome.status,
                message.receive_count,
                outcome.reason,
                outcome.widget,
            )
            self.outbox.respond_and_delete(message, body)
            detail = f" reason={outcome.reason!r}" if outcome.reason else ""
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        with self._room:
            self.counts[outcome.status] += 1
        log.info(
            "%s message_id=%s widget_id=%s receive_count=%d duration_ms=%s%s",
            outcome.status,
            message.message_id,
            printable(outcome.widget_id),
            message.receive_count,
            duration_ms,
            detail,
            extra={
                "message_id": message.message_id,
                "widget_id": outcome.widget_id,
                "receive_count": message.receive_count,
                "status": outcome.status,
                "duration_ms": duration_ms,
                "reason": outcome.reason,
            },
        )
        return outcome

    def stop(self) -> None:
        """Ask the consumer to stop: no more receives; held messages are finished or handed back."""
        self.stopping.set()
        with self._room:
            self._room.notify_all()

    def join(self, grace: float = 2.0) -> int:
        """Wait for a stop to complete; return how many SQS writes could not be made (normally 0)."""
        # A long poll in progress cannot be cut short; what it brings back is handed back
        # by the poller if it returns within the grace, else SQS redelivers it after the
        # visibility timeout. Nothing is lost either way.
        self._poller.join(grace)
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
                break
            if leftover is not None:
                self.release(leftover)
        return self.outbox.close(timeout=grace + 3)

    def counted(self) -> Counter[str]:
        """Return a copy of the outcome counts so far."""
        with self._room:
            return Counter(self.counts)

    def summary(self, elapsed: float) -> str:
        """Return a one-line summary of the outcomes so far."""
        counted = self.counted()
        done = sum(counted[s] for s in (OK, REJECTED, FAILED))
        counts = " ".join(f"{status}={counted[status]}" for status in (OK, REJECTED, FAILED, RETRY))
        rate = done / elapsed if elapsed > 0 else 0.0
        return f"summary {counts} rate={rate:.1f}/s over {elapsed:.0f}s"


def warn_if_maker_is_down(http: requests.Session, maker_url: str) -> None:
    """Say at start when the maker does not answer, rather than leave it to a stream of retries."""
    url = urlparse(maker_url)
    try:
        http.get(f"{url.scheme}://{url.netloc}/healthz", timeout=2)
    except requests.RequestException:
        log.warning("maker_unreachable at %s: requests will be retried until it answers", maker_url)


def install_signal_handlers() -> list[int]:
    """Note the first SIGINT or SIGTERM in the list returned; exit at once on the second.

    The handler takes no lock and logs nothing: it runs between any two bytecodes of the main
    thread, which may hold the very lock it would wait for.
    """
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if received:
            os.write(2, b"second signal: exiting now\n")
            os._exit(128 + signum)
        received.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return received


@click.command(context_settings=CONTEXT_SETTINGS)
@sqs_options
@click.option(
    "--maker-url",
    envvar="WIDGET_MAKER_URL",
    default=Settings.maker_url,
    show_default=True,
    help="Where to POST widget requests [env WIDGET_MAKER_URL].",
)
@click.option(
    "--dead-letter-queue",
    default=DEAD_LETTER_QUEUE,
    show_default=True,
    help="Queue that keeps requests which failed too often.",
)
@click.option(
    "--max-receives",
    type=click.IntRange(1, 1000),
    default=Settings.max_receives,
    show_default=True,
    help="Deliveries before a failing request is given up as FAILED.",
)
@click.option(
    "--retry-delay",
    type=click.IntRange(0, MAX_VISIBILITY),
    default=Settings.retry_delay,
    show_default=True,
    help="Seconds before a failed delivery is retried.",
)
@click.option(
    "--backoff",
    type=click.Choice(["fixed", "exponential"]),
    default=Settings.backoff,
    show_default=True,
    help="Keep the retry delay fixed, or double it with each delivery.",
)
@click.option(
    "--visibility-timeout",
    type=click.IntRange(1, MAX_VISIBILITY),
    default=Settings.visibility_timeout,
    show_default=True,
    help="Seconds a received request stays hidden from other consumers.",
)
@click.option(
    "--wait-time",
    type=click.IntRange(0, 20),
    default=Settings.wait_time,
    show_default=True,
    help="Long-poll seconds per receive.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10),
    default=Settings.batch_size,
    show_default=True,
    help="Messages per receive.",
)
@click.option(
    "--http-timeout",
    type=click.FloatRange(0.1, 3600),
    default=Settings.http_timeout,
    show_default=True,
    help="Seconds to wait for the maker's answer.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=Settings.workers,
    show_default=True,
    help="Requests handled at once.",
)
@click.option(
    "--create-queues/--no-create-queues",
    default=True,
    show_default=True,
    help="Create the three queues if they are missing.",
)
@click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Least important log level shown.",
)
@click.option(
    "--log-format", type=click.Choice(FORMATS), default="text", show_default=True, help="Log line format."
)
def main(
    region: str | None,
    endpoint_url: str | None,
    sqs_request_queue: str,
    sqs_response_queue: str,
    maker_url: str,
    dead_letter_queue: str,
    max_receives: int,
    retry_delay: int,
    backoff: str,
    visibility_timeout: int,
    wait_time: int,
    batch_size: int,
    http_timeout: float,
    workers: int,
    create_queues: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Take widget requests off the request queue and have the widget maker make them.

    Every request ends OK, REJECTED or FAILED, reported on the response queue; FAILED
    ones are also kept in the dead-letter queue. Ctrl-C or SIGTERM stops it cleanly.
    Set WIDGET_MAKER_TOKEN if the maker requires a token.

    \b
    Examples:
        venv/bin/python widget_consumer.py
        venv/bin/python widget_consumer.py --region=ap-southeast-2
        venv/bin/python widget_consumer.py --retry-delay 5 --backoff exponential --max-receives 5
    """
    settings = Settings(
        maker_url=maker_url,
        max_receives=max_receives,
        retry_delay=retry_delay,
        backoff=backoff,
        visibility_timeout=visibility_timeout,
        wait_time=wait_time,
        batch_size=batch_size,
        http_timeout=http_timeout,
        workers=workers,
        token=os.environ.get("WIDGET_MAKER_TOKEN") or None,
    )
    validate(settings)
    configure_logging(log_level, log_format)
    sqs = make_client(region, endpoint_url, max_connections=workers + 4, read_timeout=wait_time + 20)
    names = (sqs_request_queue, sqs_response_queue, dead_letter_queue)
    if create_queues:
        urls = ensure_queues(sqs, *names, max_receives=max_receives)
    else:
        urls = find_queues(sqs, *names)
    consumer = Consumer(sqs, urls, settings)
    warn_if_maker_is_down(consumer.http, maker_url)
    signals = install_signal_handlers()
    log.info(
        "consuming %s at %s -> %s (workers=%d max_receives=%d retry_delay=%ds backoff=%s)",
        sqs_request_queue,
        sqs.meta.endpoint_url,
        maker_url,
        workers,
        max_receives,
        retry_delay,
        backoff,
    )
    started = last_summary = time.monotonic()
    last_counts = consumer.counted()
    consumer.start()
    while not signals:
        time.sleep(0.1)
        now = time.monotonic()
        if now - last_summary >= SUMMARY_INTERVAL and consumer.counted() != last_counts:
            log.info(consumer.summary(now - started))
            last_summary, last_counts = now, consumer.counted()
    log.info("stopping (signal %d): finishing held messages; signal again to exit now", signals[0])
    consumer.stop()
    unsent = consumer.join(grace=min(wait_time, 2) + 0.5)
    log.info(consumer.summary(time.monotonic() - started))
    if unsent:
        log.warning("stopped with %d SQS writes not made; SQS will redeliver those requests", unsent)
    log.info("stopped")


if __name__ == "__main__":
    main()
