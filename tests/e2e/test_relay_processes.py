"""sqs_relay.py as a process on each local SQS server, to a receiver that checks signatures with the
specification's reference library: bodies byte for byte, headers, a target outage, FIFO order."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from devtools.stack import PYTHON, Process, start_sqs
from devtools.webhook_receiver import WebhookReceiver
from tests.helpers import wait_until
from widgets.messages import FAILED, OK, REJECTED

pytestmark = pytest.mark.e2e

SECRETS = [
    "whsec_" + base64.b64encode(b"relay secret one, 32 bytes long.").decode(),
    "whsec_" + base64.b64encode(b"relay secret two, after rotation").decode(),
]
TIMINGS = ["--wait-time", "1", "--visibility-timeout", "5", "--retry-delay", "1", "--max-receives", "2",
           "--http-timeout", "2"]  # fmt: skip
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass
class Relay:
    """A local SQS, a receiver (both secrets), and a client of the SQS; the relay started by start()."""

    kind: str
    endpoint: str
    sqs: Any
    receiver: WebhookReceiver
    processes: list[Process]

    def start(self, queue: str, *args: str, secrets: list[str] = SECRETS) -> Process:
        """Start sqs_relay.py toward the receiver, signing with secrets; return it once it consumes."""
        argv = [PYTHON, "sqs_relay.py", "--endpoint-url", self.endpoint, "--queue", queue,
                "--target-url", f"{self.receiver.url}/hook", *TIMINGS, *args]  # fmt: skip
        process = Process("relay", argv, env={"WEBHOOK_SECRET": " ".join(secrets)})
        self.processes.append(process)
        process.wait_for("consuming ")
        return process

    def url(self, name: str) -> str:
        """Return the URL of a queue the relay created."""
        return str(self.sqs.get_queue_url(QueueName=name)["QueueUrl"])

    def drain(self, name: str) -> list[dict[str, Any]]:
        """Receive and delete every message of a queue; return the parsed bodies."""
        url, found = self.url(name), []
        while messages := self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
            for message in messages:
                found.append(json.loads(message["Body"]))
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return found


@pytest.fixture
def relay(sqs_kind: str) -> Iterator[Relay]:
    """A local SQS of each kind and a signature-checking receiver; everything stopped at the end."""
    sqs_process, endpoint = start_sqs(kind=sqs_kind)
    sqs = boto3.client(
        "sqs", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="local", aws_secret_access_key="local",
    )  # fmt: skip
    receiver = WebhookReceiver(secrets=SECRETS[1:], reject_field="reject").start()
    running = Relay(sqs_kind, endpoint, sqs, receiver, [sqs_process])
    yield running
    receiver.stop()
    for process in reversed(running.processes):
        process.stop(timeout=5)


def send(relay: Relay, queue: str, body: str, **extra: Any) -> str:
    """Send one message; return its id."""
    return str(relay.sqs.send_message(QueueUrl=relay.url(queue), MessageBody=body, **extra)["MessageId"])


def test_bodies_headers_and_outcomes_through_a_target_outage(relay: Relay) -> None:
    process = relay.start("Orders", "--response-queue", "OrderOutcomes")
    text = "grüße, 東京, ½" + (
        ", 🚀" if relay.kind != "fauxqs" else ""
    )  # fauxqs refuses emoji (docs/testing.md)
    documents = {
        send(relay, "Orders", json.dumps({"n": n, "text": text}, ensure_ascii=False)): n for n in range(100)
    }
    wait_until(lambda: len(relay.receiver.calls) >= 60, 30, "the first calls")
    # The target goes away for ten seconds (five retry windows of 1 s x 2 receives) while messages
    # keep coming: the breaker holds them back; none may end FAILED.
    outage = time.monotonic()
    before = relay.receiver
    port = before.port
    before.stop()
    documents.update(
        {
            send(relay, "Orders", json.dumps({"n": n, "text": text}, ensure_ascii=False)): n
            for n in range(100, 200)
        }
    )
    plain = {
        send(
            relay, "Orders", f"plain text {n}: ünïcödé",
            MessageAttributes={
                "ContentType": {"DataType": "String", "StringValue": "text/plain; charset=utf-8"},
                "traceparent": {"DataType": "String", "StringValue": TRACEPARENT},
                "Customer": {"DataType": "String", "StringValue": f"customer-{n}"},
            },
        ): n
        for n in range(5)
    }  # fmt: skip
    rejected = send(relay, "Orders", json.dumps({"reject": True}))
    time.sleep(max(outage + 10 - time.monotonic(), 0))  # the outage itself: its length is the scenario
    relay.receiver = WebhookReceiver(port, secrets=SECRETS[1:], reject_field="reject").start()
    reports: dict[str, dict[str, Any]] = {}

    def all_reported() -> bool:
        reports.update({r["MessageId"]: r for r in relay.drain("OrderOutcomes")})
        return len(reports) >= 206

    wait_until(all_reported, 60, "every outcome report")
    assert {r["Status"] for i, r in reports.items() if i != rejected} == {OK}
    assert (reports[rejected]["Status"], reports[rejected]["StatusCode"]) == (REJECTED, 422)
    assert "breaker_open" in process.output()
    received = before.calls + relay.receiver.calls
    calls = {call.headers["webhook-id"]: call for call in received}
    for message_id, n in documents.items():
        call = calls[message_id]
        assert call.body == json.dumps({"n": n, "text": text}, ensure_ascii=False).encode()
        assert call.headers["Content-Type"] == "application/json"
    for message_id, n in plain.items():
        call = calls[message_id]
        assert call.body == f"plain text {n}: ünïcödé".encode()
        assert call.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert call.headers["traceparent"] == TRACEPARENT
        assert call.headers["X-SQS-Attribute-Customer"] == f"customer-{n}"
        assert call.headers["X-SQS-Message-Id"] == message_id
    # Signed with both secrets; the receiver knows only the second (a rotation) and checks each
    # call with the specification's reference library.
    assert all(call.verified for call in received)
    assert all(len(call.headers["webhook-signature"].split()) == 2 for call in received)
    assert relay.drain("Orders-DLQ") == []


def test_a_failing_message_ends_failed_in_the_dead_letter_queue(relay: Relay) -> None:
    relay.start(
        "Orders", "--response-queue", "OrderOutcomes", secrets=SECRETS[:1]
    )  # a secret it does not know
    message_id = send(relay, "Orders", '{"order": 1}')
    reports: list[dict[str, Any]] = []
    wait_until(lambda: bool(reports.extend(relay.drain("OrderOutcomes")) or reports), 30, "the report")
    [report] = reports
    # 401 is retried (the relay's secret is wrong, not the message), up to --max-receives: FAILED.
    assert (report["MessageId"], report["Status"], report["StatusCode"]) == (message_id, FAILED, 401)
    assert relay.drain("Orders-DLQ") == [{"order": 1}]


def test_fifo_groups_arrive_in_order(relay: Relay) -> None:
    if relay.kind == "moto":
        pytest.skip(
            "moto's server (5.2.5) breaks FIFO order itself (see tests of the consumer on FIFO queues)"
        )
    relay.start("Orders.fifo", "--workers", "4")
    url = relay.url("Orders.fifo")
    for n in range(30):
        for group in ("a", "b", "c"):
            relay.sqs.send_message(
                QueueUrl=url, MessageBody=json.dumps({"group": group, "n": n}),
                MessageGroupId=group, MessageDeduplicationId=f"{group}-{n}",
            )  # fmt: skip
    wait_until(lambda: len({c.body for c in relay.receiver.calls}) >= 90, 60, "every message")
    for group in ("a", "b", "c"):
        order = [
            json.loads(c.body)["n"] for c in relay.receiver.calls if c.headers["X-SQS-Group-Id"] == group
        ]
        assert sorted(set(order)) == list(range(30))
        assert order == sorted(order), group
