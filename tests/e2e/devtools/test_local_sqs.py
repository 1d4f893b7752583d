"""What the pipeline relies on from SQS, checked on each local SQS server (fauxqs, moto's), and
fauxqs's known differences from Amazon SQS, as strict expected failures (they pass on moto)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from devtools.stack import start_sqs
from tests.helpers import local_sqs_kinds_to_test
from widgets.sqs import SQSClient, make_client

pytestmark = pytest.mark.e2e


class Server:
    """A local SQS server and a client of it."""

    def __init__(self, kind: str, endpoint: str) -> None:
        """Keep the server's kind and build a client."""
        self.kind = kind
        self.client: SQSClient = make_client(None, endpoint)

    def queue(self, fifo: bool = False, **attributes: str) -> str:
        """Create a queue with a new name; return its URL."""
        name = f"t{uuid.uuid4().hex[:12]}" + (".fifo" if fifo else "")
        if fifo:
            attributes["FifoQueue"] = "true"
        return self.client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]

    def counts(self, url: str) -> tuple[int, int, int]:
        """Return (visible, in flight, delayed) of a queue."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        names.append("ApproximateNumberOfMessagesDelayed")
        attributes = self.client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        visible, in_flight, delayed = (int(attributes[name]) for name in names)
        return visible, in_flight, delayed

    def receive(self, url: str, visibility: int = 30, count: int = 10, wait: int = 0) -> list[Any]:
        """Receive up to count messages with every attribute."""
        return self.client.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=count,
            VisibilityTimeout=visibility,
            WaitTimeSeconds=wait,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])


@pytest.fixture(scope="module", params=local_sqs_kinds_to_test())
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """Each local SQS server in turn, shared by this module's tests (each makes its own queues)."""
    process, endpoint = start_sqs(kind=request.param)
    try:
        yield Server(request.param, endpoint)
    finally:
        process.stop()


def quirk(request: pytest.FixtureRequest, server: Server, kind: str, reason: str) -> None:
    """Expect this test to fail on a server of that kind (strictly: a fixed quirk shows as XPASS)."""
    if server.kind == kind:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{kind} quirk: {reason}"))


def test_redrive_policy_moves_a_message_after_max_receive_count(server: Server) -> None:
    dead_letter = server.queue()
    arn = server.client.get_queue_attributes(QueueUrl=dead_letter, AttributeNames=["QueueArn"])
    redrive = {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": "2"}
    url = server.queue(RedrivePolicy=json.dumps(redrive))
    server.client.send_message(QueueUrl=url, MessageBody="poison")
    counts = [[m["Attributes"]["ApproximateReceiveCount"] for m in server.receive(url, 0)] for _ in range(3)]
    assert counts == [["1"], ["2"], []]
    assert [m["Body"] for m in server.receive(dead_letter)] == ["poison"]


def test_message_attributes_come_back_as_sent(server: Server) -> None:
    url = server.queue()
    sent = {
        "FailureReason": {"DataType": "String", "StringValue": "maker answered 500"},
        "ReceiveCount": {"DataType": "Number", "StringValue": "3"},
    }
    server.client.send_message(QueueUrl=url, MessageBody="x", MessageAttributes=sent)
    [message] = server.receive(url)
    assert message["MessageAttributes"] == sent


def test_change_visibility_to_zero_makes_a_message_visible_again(server: Server) -> None:
    url = server.queue()
    server.client.send_message_batch(
        QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": str(i)} for i in range(3)]
    )
    first, second, third = server.receive(url)
    assert server.counts(url) == (0, 3, 0)
    server.client.change_message_visibility(
        QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=0
    )
    answer = server.client.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "0", "ReceiptHandle": second["ReceiptHandle"], "VisibilityTimeout": 0},
            {"Id": "1", "ReceiptHandle": third["ReceiptHandle"], "VisibilityTimeout": 60},
        ],
    )
    assert {e["Id"] for e in answer["Successful"]} == {"0", "1"}
    assert server.counts(url) == (2, 1, 0)
    again = server.receive(url)
    assert sorted(m["Body"] for m in again) == sorted([first["Body"], second["Body"]])
    assert {m["Attributes"]["ApproximateReceiveCount"] for m in again} == {"2"}


def test_counts_include_delayed_messages(server: Server) -> None:
    url = server.queue()
    server.client.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=60)
    server.client.send_message(QueueUrl=url, MessageBody="now")
    assert server.counts(url) == (1, 0, 1)


def test_a_long_poll_returns_a_message_sent_while_it_waits(server: Server) -> None:
    url = server.queue()
    received: list[Any] = []
    poll = threading.Thread(target=lambda: received.extend(server.receive(url, wait=5)))
    poll.start()
    # So the receive is already waiting when the message comes (nothing shows it is; were it not
    # yet, the test would pass without testing the long poll, never fail).
    time.sleep(0.5)
    server.client.send_message(QueueUrl=url, MessageBody="arrived")
    poll.join(10)
    assert [m["Body"] for m in received] == ["arrived"]


def test_a_stale_handle_does_not_fail_the_rest_of_a_delete_batch(server: Server) -> None:
    # Amazon SQS documents that a delete with an older receipt handle "succeeds, but the message
    # might not be deleted": moto deletes it, fauxqs does not. Only the rest of the batch counts.
    url = server.queue()
    server.client.send_message(QueueUrl=url, MessageBody="redelivered")
    [stale] = server.receive(url, visibility=0)
    [again] = server.receive(url)
    server.client.send_message(QueueUrl=url, MessageBody="done")
    [done] = server.receive(url)
    answer = server.client.delete_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "stale", "ReceiptHandle": stale["ReceiptHandle"]},
            {"Id": "done", "ReceiptHandle": done["ReceiptHandle"]},
        ],
    )
    assert "done" in {e["Id"] for e in answer["Successful"]}
    assert {e["Id"] for e in answer.get("Failed", [])} <= {"stale"}
    server.client.delete_message(QueueUrl=url, ReceiptHandle=again["ReceiptHandle"])
    assert server.counts(url) == (0, 0, 0)


def test_a_malformed_receipt_handle_fails_its_delete_batch_entry(
    server: Server, request: pytest.FixtureRequest
) -> None:
    quirk(request, server, "fauxqs", "any receipt handle deletes successfully")
    url = server.queue()
    server.client.send_message(QueueUrl=url, MessageBody="x")
    [message] = server.receive(url)
    answer = server.client.delete_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "bad", "ReceiptHandle": "not-a-receipt-handle"},
            {"Id": "good", "ReceiptHandle": message["ReceiptHandle"]},
        ],
    )
    assert [e["Id"] for e in answer["Successful"]] == ["good"]
    assert [(e["Id"], e["Code"]) for e in answer["Failed"]] == [("bad", "ReceiptHandleIsInvalid")]


def test_delay_seconds_over_900_is_refused(server: Server, request: pytest.FixtureRequest) -> None:
    quirk(request, server, "fauxqs", "DelaySeconds over 900 is accepted")
    url = server.queue()
    with pytest.raises(ClientError) as refused:
        server.client.send_message(QueueUrl=url, MessageBody="x", DelaySeconds=901)
    assert refused.value.response["Error"]["Code"].endswith("InvalidParameterValue")


def test_fifo_queue_deduplicates_and_keeps_groups_in_order(server: Server) -> None:
    url = server.queue(fifo=True)
    attributes = server.client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["FifoQueue"] == "true"
    for group in ("a", "b"):
        entries = [
            {
                "Id": str(i),
                "MessageBody": f"{group}{i}",
                "MessageGroupId": group,
                "MessageDeduplicationId": f"{group}{i}",
            }
            for i in range(3)
        ]
        server.client.send_message_batch(QueueUrl=url, Entries=entries)
    server.client.send_message(
        QueueUrl=url, MessageBody="a0", MessageGroupId="a", MessageDeduplicationId="a0"
    )
    assert server.counts(url) == (6, 0, 0)
    first = server.receive(url)
    assert first[0]["Attributes"]["MessageGroupId"] in ("a", "b")
    assert server.receive(url) == []  # both groups are held until their messages are settled
    for message in first:
        server.client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    rest = [m["Body"] for m in server.receive(url)]
    for group in ("a", "b"):
        bodies = [m["Body"] for m in first if m["Body"][0] == group] + [b for b in rest if b[0] == group]
        assert bodies == [f"{group}{i}" for i in range(len(bodies))]


def test_a_fifo_receive_returns_several_messages_of_a_group(
    server: Server, request: pytest.FixtureRequest
) -> None:
    quirk(request, server, "fauxqs", "a FIFO receive returns at most one message per group")
    url = server.queue(fifo=True)
    entries = [
        {"Id": str(i), "MessageBody": str(i), "MessageGroupId": "g", "MessageDeduplicationId": str(i)}
        for i in range(3)
    ]
    server.client.send_message_batch(QueueUrl=url, Entries=entries)
    assert [m["Body"] for m in server.receive(url)] == ["0", "1", "2"]
