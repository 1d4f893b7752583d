"""FIFO queues: their creation, the producer's group and deduplication ids, and widget_queues on them."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

import widget_producer
from widgets.messages import new_widget_id
from widgets.sqs import (
    DEAD_LETTER_QUEUE,
    REQUEST_QUEUE,
    RESPONSE_QUEUE,
    QueueUrls,
    check_dead_letter_queue,
    check_fifo_id,
    dead_letter_queue_name,
    deduplication_id,
    ensure_queues,
    fifo_fields,
    is_fifo,
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


def produce(*args: str) -> Result:
    """Run the producer on the FIFO request queue with args."""
    return CliRunner().invoke(widget_producer.main, ["--sqs-request-queue", FIFO_NAMES[0], *args])


def sent_lines(result: Result) -> list[tuple[str, str]]:
    """Return the (message id, widget id) lines the producer printed."""
    lines = [line.split() for line in result.output.splitlines()]
    return [(words[0], words[1]) for words in lines if len(words) == 2]


@pytest.fixture
def fifo(sqs: Any) -> QueueUrls:
    """The three queues as FIFO queues, created as the consumer creates them (max receives 3)."""
    return ensure_queues(sqs, *FIFO_NAMES, max_receives=3)


# The shared helpers.


@pytest.mark.parametrize(
    ("queue", "expected"),
    [
        ("WidgetRequestQueue.fifo", True),
        ("https://sqs.us-east-1.amazonaws.com/123456789012/WidgetRequestQueue.fifo", True),
        ("http://127.0.0.1:9324/123456789012/Q.fifo/", True),
        ("WidgetRequestQueue", False),
        ("fifo", False),
        ("https://sqs.us-east-1.amazonaws.com/123456789012/Widgetfifo", False),
    ],
)
def test_is_fifo(queue: str, expected: bool) -> None:
    assert is_fifo(queue) is expected


def test_dead_letter_queue_follows_the_request_queue() -> None:
    assert dead_letter_queue_name("WidgetRequestQueue") == "WidgetRequestDLQ"
    assert dead_letter_queue_name("Orders.fifo") == "WidgetRequestDLQ.fifo"


@pytest.mark.parametrize(
    ("request_queue", "dead_letter", "kinds"),
    [("Q.fifo", "DLQ", "a standard queue but"), ("Q", "DLQ.fifo", "a FIFO queue but")],
)
def test_a_dead_letter_queue_of_the_other_kind_is_refused(
    request_queue: str, dead_letter: str, kinds: str
) -> None:
    with pytest.raises(ValueError, match=f"--dead-letter-queue {dead_letter} is {kinds}"):
        check_dead_letter_queue(request_queue, dead_letter)
    check_dead_letter_queue(request_queue, dead_letter_queue_name(request_queue))


@pytest.mark.parametrize("value", ["customer-42", "a" * 128, "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"])
def test_fifo_ids_sqs_takes(value: str) -> None:
    assert check_fifo_id(value, "--group-id") == value


@pytest.mark.parametrize("value", ["", "a" * 129, "two words", "tab\there", "caf\u00e9"])
def test_fifo_ids_sqs_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="--group-id must be 1 to 128 ASCII"):
        check_fifo_id(value, "--group-id")


def test_deduplication_id_is_the_widget_id_or_its_hash() -> None:
    widget_id = new_widget_id()
    assert deduplication_id(widget_id) == widget_id
    odd = "not a valid id " * 20
    assert deduplication_id(odd) == hashlib.sha256(odd.encode()).hexdigest()
    assert check_fifo_id(deduplication_id(odd), "--dedup-id")


def test_fifo_fields() -> None:
    assert fifo_fields("Q.fifo", "g", "d") == {"MessageGroupId": "g", "MessageDeduplicationId": "d"}
    # A standard queue takes no deduplication id; a group id makes it a fair queue.
    assert fifo_fields("Q", None, "d") == {}
    assert fifo_fields("Q", "g", "d") == {"MessageGroupId": "g"}
    with pytest.raises(ValueError, match="needs a group id"):
        fifo_fields("Q.fifo", None, "d")
    with pytest.raises(ValueError, match="needs a deduplication id"):
        fifo_fields("Q.fifo", "g", None)


# Creating the queues.


def test_fifo_names_make_fifo_queues(sqs: Any, fifo: QueueUrls) -> None:
    # moto creates a standard queue named *.fifo when FifoQueue is missing: check the attribute.
    for url in (fifo.request, fifo.response, fifo.dead_letter):
        found = attributes(sqs, url)
        assert found["FifoQueue"] == "true"
        assert found["ContentBasedDeduplication"] == "false"
    redrive = json.loads(attributes(sqs, fifo.request)["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == attributes(sqs, fifo.dead_letter)["QueueArn"]
    assert redrive["deadLetterTargetArn"].endswith(":WidgetRequestDLQ.fifo")
    assert int(redrive["maxReceiveCount"]) == 4


def test_creating_fifo_queues_again_changes_nothing(sqs: Any, fifo: QueueUrls) -> None:
    again = ensure_queues(sqs, *FIFO_NAMES, max_receives=3)
    assert again == fifo
    assert attributes(sqs, again.request)["FifoQueue"] == "true"


def test_standard_names_make_standard_queues(sqs: Any, queues: QueueUrls) -> None:
    for url in (queues.request, queues.response, queues.dead_letter):
        assert attributes(sqs, url).get("FifoQueue", "false") == "false"


def test_a_fifo_request_queue_may_answer_on_a_standard_response_queue(sqs: Any) -> None:
    urls = ensure_queues(sqs, FIFO_NAMES[0], RESPONSE_QUEUE, FIFO_NAMES[2], max_receives=3)
    assert attributes(sqs, urls.request)["FifoQueue"] == "true"
    assert attributes(sqs, urls.response).get("FifoQueue", "false") == "false"


@pytest.mark.parametrize(
    "names",
    [
        (FIFO_NAMES[0], RESPONSE_QUEUE, DEAD_LETTER_QUEUE),
        (REQUEST_QUEUE, RESPONSE_QUEUE, FIFO_NAMES[2]),
    ],
)
def test_a_dead_letter_queue_of_the_other_kind_is_not_created(sqs: Any, names: tuple[str, str, str]) -> None:
    with pytest.raises(click.UsageError, match=r"SQS requires a (FIFO|standard) queue's dead-letter queue"):
        ensure_queues(sqs, *names, max_receives=3)
    assert sqs.list_queues().get("QueueUrls", []) == []


def test_a_standard_queue_named_fifo_is_refused_clearly(sqs: Any) -> None:
    # Only a local SQS lets this happen: a queue named *.fifo created without FifoQueue=true.
    sqs.create_queue(QueueName=FIFO_NAMES[0])
    with pytest.raises(click.ClickException, match="named like a FIFO queue but is a standard one"):
        ensure_queues(sqs, *FIFO_NAMES, max_receives=3)
