"""What more than one test module uses: one way to wait, a fake clock, stand-in makers, queue reading.

Test modules import from here (and fixtures come from conftest.py); no test module imports another.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from prometheus_client.parser import text_string_to_metric_families

from devtools.stack import (
    LOCAL_SQS_ENV,
    Process,
    local_sqs_kind,
    local_sqs_kinds,
    run_script,
    start_consumer,
    start_maker,
    start_sqs,
)
from widgets.messages import Received, new_widget_id, request_body
from widgets.producer import send_requests
from widgets.sqs import (
    DEAD_LETTER_QUEUE,
    REQUEST_QUEUE,
    RESPONSE_QUEUE,
    QueueUrls,
    SQSClient,
    ensure_queues,
)

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import MessageTypeDef


# Waiting and time


class WaitTimeout(AssertionError):
    """What wait_until raises when its condition did not come true in time: the test fails."""


def wait_until(
    condition: Callable[[], Any],
    timeout: float = 10,
    message: str | Callable[[], object] = "",
    pause: float = 0.02,
) -> Any:
    """Wait until condition() is true; return its value, or fail the test after timeout seconds.

    The one way the tests wait for something to happen, instead of sleeping a fixed time and
    hoping: it returns as soon as the condition holds, so a generous timeout costs nothing on a
    quick machine and saves the test on a busy one. message (or a function returning it, called
    on failure) says what was awaited and what was seen.
    """
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() >= deadline:
            said = message() if callable(message) else message
            raise WaitTimeout(f"not true within {timeout:g}s" + (f": {said}" if said else ""))
        time.sleep(pause)
    return value


def always(
    condition: Callable[[], Any],
    seconds: float,
    message: str | Callable[[], object] = "",
    pause: float = 0.05,
) -> None:
    """Check that condition() holds throughout the next seconds, failing the test the first time it does not.

    For the few tests whose point is that something does NOT happen for a while (a message stays
    invisible, receiving stays paused): nothing can be awaited there, so the wait is short, bounded,
    and named by this function at the call site.
    """
    deadline = time.monotonic() + seconds
    while True:
        if not condition():
            said = message() if callable(message) else message
            raise AssertionError("stopped holding" + (f": {said}" if said else ""))
        if time.monotonic() >= deadline:
            return
        time.sleep(pause)


class CheckedCalls:
    """Calls of an action (a receive) with when their thread last made a check (asked the breaker).

    Counting the calls that began after a known point races the calls under way at that point:
    one that passed its check just before may begin just after. A call is the code's fault only
    if it began after the point on a check made after it (or on none at all since its last call).
    """

    def __init__(self) -> None:
        """Record nothing yet."""
        self._local = threading.local()
        self.calls: list[tuple[float, float | None]] = []  # (began, checked at)

    def check(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap the check: note when this thread made it."""

        def checked(*args: Any, **kwargs: Any) -> Any:
            self._local.at = time.monotonic()
            return function(*args, **kwargs)

        return checked

    def action(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap the action: note when it began and the check it followed (used up by it)."""

        def act(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((time.monotonic(), self._local.__dict__.pop("at", None)))
            return function(*args, **kwargs)

        return act

    def after(self, point: float) -> int:
        """Count the calls that began after point on no check made before it."""
        return sum(1 for began, at in self.calls if began > point and (at is None or at > point))


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        """Start at zero."""
        self.now = 0.0

    def __call__(self) -> float:
        """Return the current fake time."""
        return self.now


# Stand-in makers over HTTP


def serve_in_thread(server: Any) -> Callable[[], None]:
    """Serve a server in a daemon thread; return the function that stops it."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


class ScriptedMaker:
    """A stand-in maker answering with a set status (and delay), for answers the real one never gives."""

    def __init__(self) -> None:
        """Answer 201 until told otherwise."""
        self.status = 201
        # Or a status chosen for each request from its body (None: the status above).
        self.status_for: Callable[[bytes], int | None] = lambda body: None
        self.delay = 0.0
        self.headers: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []
        # HTTP/1.1 keeps connections open, as the real maker (waitress) does; HTTP/1.0 closes each.
        self.keep_alive = False
        # Close the connection after each answer without saying so, as a server's idle timeout does.
        self.drop_after_answer = False
        # Set when the test ends: a delayed answer is then dropped, not written minutes later into
        # another test's captured stderr (as a BrokenPipe traceback from the server thread).
        self.stopped = threading.Event()


# Reading and filling queues


def receive_one(sqs: Any, url: str, wait: int = 0) -> Received:
    """Receive exactly one message from url, as the consumer does."""
    messages = sqs.receive_message(
        QueueUrl=url, WaitTimeSeconds=wait, VisibilityTimeout=30,
        MessageSystemAttributeNames=["ApproximateReceiveCount"], MessageAttributeNames=["All"],
    ).get("Messages", [])  # fmt: skip
    assert len(messages) == 1
    return Received.from_sqs(messages[0])


def received(sqs: Any, url: str, count: int) -> list[Received]:
    """Send count requests and receive them all (ten per receive at most)."""
    send_requests(sqs, url, [str(uuid.uuid4()) for _ in range(count)])
    messages: list[Received] = []
    while len(messages) < count:
        answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30)
        messages += map(Received.from_sqs, answer.get("Messages", []))
    return messages


def all_bodies(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Drain a queue; return its bodies, parsed, with message attributes under '_attributes'."""
    bodies = []
    while True:
        messages = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        ).get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            body = json.loads(message["Body"])
            body["_attributes"] = {
                k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()
            }
            bodies.append(body)
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def depth(sqs: Any, url: str) -> tuple[int, int]:
    """Return (visible, in flight) of a queue."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


FIFO_NAMES = (REQUEST_QUEUE + ".fifo", RESPONSE_QUEUE + ".fifo", DEAD_LETTER_QUEUE + ".fifo")


def attributes(sqs: Any, url: str) -> dict[str, str]:
    """Return every attribute of a queue."""
    found: dict[str, str] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return found


def take_all(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Receive and delete every message of a queue, in the order SQS hands them out, with their attributes.

    Deleting is what lets a FIFO queue hand out the rest of a group.
    """
    taken: list[dict[str, Any]] = []
    while messages := sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        VisibilityTimeout=30,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    ).get("Messages"):
        taken.extend(messages)
        for message in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return taken


def dead_letter_attributes(index: int) -> dict[str, Any]:
    """Return message attributes like the consumer's dead-letter copies carry, plus a binary one."""
    return {
        "FailureReason": {"DataType": "String", "StringValue": f"maker answered 503 ({index})"},
        "ReceiveCount": {"DataType": "Number", "StringValue": "3"},
        "OriginalMessageId": {"DataType": "String", "StringValue": f"original-{index}"},
        "Trace": {"DataType": "Binary", "BinaryValue": bytes([index, 0, 255])},
    }


def fill_dead_letter_queue(sqs: SQSClient, url: str, count: int) -> dict[str, dict[str, Any]]:
    """Put count requests with attributes on the dead-letter queue; return their attributes by body."""
    sent = {request_body(new_widget_id()): dead_letter_attributes(index) for index in range(count)}
    for body, attributes in sent.items():
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=attributes)
    return sent


def drain(sqs: SQSClient, url: str) -> list[MessageTypeDef]:
    """Receive every visible message of a queue once, with attributes, leaving them in flight."""
    messages: list[MessageTypeDef] = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=60,
            MessageAttributeNames=["All"],
            AttributeNames=["ApproximateReceiveCount"],
        ).get("Messages", [])
        if not batch:
            return messages
        messages.extend(batch)


# Prometheus text

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(text: str) -> Samples:
    """Parse Prometheus text into {sample name: {sorted labels: value}}."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """Return a metric's values keyed by one label's value."""
    return {dict(labels)[label]: value for labels, value in samples.get(name, {}).items()}


RequestKey = tuple[str, str, str]  # (route, method, status)


def request_counts(text: str) -> dict[RequestKey, float]:
    """Return widget_maker_requests_total by (route, method, status)."""
    return {
        (labels["route"], labels["method"], labels["status"]): value
        for key, value in scrape(text).get("widget_maker_requests_total", {}).items()
        for labels in [dict(key)]
    }


def value(text: str, name: str) -> float:
    """Return the value of a metric without labels."""
    return scrape(text)[name][()]


# Processes: the local SQS servers and a running stack


def local_sqs_kinds_to_test() -> list[str]:
    """The local SQS servers the end-to-end tests use: the one WIDGETS_LOCAL_SQS names, else all here."""
    return [local_sqs_kind()] if os.environ.get(LOCAL_SQS_ENV, "").strip() else local_sqs_kinds()


# One- and two-second timings keep every retry short.
FAST = ["--wait-time", "1", "--visibility-timeout", "3", "--http-timeout", "1", "--retry-delay", "1"]


class Stack:
    """A local SQS and a maker, with the consumers a test starts; everything stopped at the end."""

    def __init__(self, tmp_path: Path, sqs_kind: str) -> None:
        """Start the local SQS (of that kind) and the maker."""
        self.processes: list[Process] = []
        self.sqs_kind = sqs_kind
        self.sqs_process, self.endpoint = start_sqs(kind=sqs_kind)
        self.processes.append(self.sqs_process)
        self.db = tmp_path / "widgets.db"
        self.maker, self.maker_base = start_maker(self.db)
        self.processes.append(self.maker)
        self.client = boto3.client(
            "sqs", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="local", aws_secret_access_key="local",
        )  # fmt: skip
        self.urls = self.queues()

    def queues(self, max_receives: int = 3) -> QueueUrls:
        """Create the queues as the consumer would (again after a restart of the local SQS)."""
        return ensure_queues(self.client, REQUEST_QUEUE, RESPONSE_QUEUE, DEAD_LETTER_QUEUE, max_receives)

    def consumer(
        self, *args: str, maker_url: str | None = None, name: str = "consumer", endpoint: str | None = None
    ) -> Process:
        """Start a consumer with the fast timings plus args (on endpoint, else the local SQS's)."""
        process = start_consumer(
            endpoint or self.endpoint, maker_url or f"{self.maker_base}/add", [*FAST, *args], name=name
        )
        self.processes.append(process)
        return process

    def produce(self, *args: str) -> Any:
        """Run the producer to completion."""
        return run_script("widget_producer.py", ["--endpoint-url", self.endpoint, *args])

    def restart_maker(self, *args: str) -> None:
        """Start the maker again on its old port and database (stopping it first if it runs)."""
        self.maker.stop()
        self.maker, _ = start_maker(self.db, port=int(self.maker_base.rsplit(":", 1)[1]), args=args)
        self.processes.append(self.maker)

    def depth(self, url: str) -> tuple[int, int]:
        """Return (visible, in flight) of a queue."""
        attributes = self.client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]), int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    def responses(self, expected: int = 0, timeout: float = 10) -> list[dict[str, Any]]:
        """Drain the response queue, waiting up to timeout for expected requests answered; return them all."""
        found: list[dict[str, Any]] = []

        def enough() -> bool:
            found.extend(self._drain_responses())
            # Requests answered, each once however many times (at least once delivery).
            return len({r["MessageId"] for r in found}) >= expected

        wait_until(enough, timeout, lambda: f"{len(found)} responses, {expected} requests to answer")
        return found + self._drain_responses()

    def _drain_responses(self) -> list[dict[str, Any]]:
        """Receive and delete every response there is now."""
        found = []
        while messages := self.client.receive_message(
            QueueUrl=self.urls.response, MaxNumberOfMessages=10
        ).get("Messages"):
            for message in messages:
                found.append(json.loads(message["Body"]))
                self.client.delete_message(
                    QueueUrl=self.urls.response, ReceiptHandle=message["ReceiptHandle"]
                )
        return found

    def stop(self) -> None:
        """Stop every process this stack started."""
        for process in reversed(self.processes):
            process.stop(timeout=5)


# Two Standard Webhooks secrets (whsec_ and base64 of 32 bytes): the relay signs with both during
# a rotation; receivers in the tests know one or both.
WEBHOOK_SECRETS = (
    "whsec_" + base64.b64encode(b"the first secret, 32 bytes long!").decode(),
    "whsec_" + base64.b64encode(b"the next secret, after rotation").decode(),
)
