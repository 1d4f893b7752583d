"""FIFO queues: their creation, the producer's group and deduplication ids, and widget_queues on them."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

import pytest
from click.testing import CliRunner, Result

import widget_producer
import widget_queues
import widgets.producer
import widgets.queues
from tests.helpers import FIFO_NAMES, attributes, take_all
from widgets.errors import SetupError
from widgets.messages import OK, new_widget_id, request_body, response_body
from widgets.sqs import (
    DEAD_LETTER_QUEUE,
    FIFO_REDRIVE_MARGIN,
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
    assert int(redrive["maxReceiveCount"]) == 3 + FIFO_REDRIVE_MARGIN


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
    with pytest.raises(ValueError, match=r"SQS requires a (FIFO|standard) queue's dead-letter queue"):
        ensure_queues(sqs, *names, max_receives=3)
    assert sqs.list_queues().get("QueueUrls", []) == []


def test_a_standard_queue_named_fifo_is_refused_clearly(sqs: Any) -> None:
    # Only a local SQS lets this happen: a queue named *.fifo created without FifoQueue=true.
    sqs.create_queue(QueueName=FIFO_NAMES[0])
    with pytest.raises(SetupError, match="named like a FIFO queue but is a standard one"):
        ensure_queues(sqs, *FIFO_NAMES, max_receives=3)


# The producer.


def test_produce_count_to_fifo_in_order_with_group_and_dedup_ids(sqs: Any, fifo: QueueUrls) -> None:
    result = produce("--group-id", "customer-42", "--count", "25")
    assert result.exit_code == 0, result.output
    sent = sent_lines(result)
    assert len(sent) == 25
    taken = take_all(sqs, fifo.request)
    # One group, so SQS hands the requests out in the order the producer printed them.
    assert [json.loads(m["Body"])["WidgetId"] for m in taken] == [w for _, w in sent]
    assert [m["MessageId"] for m in taken] == [m for m, _ in sent]
    assert {m["Attributes"]["MessageGroupId"] for m in taken} == {"customer-42"}
    assert [m["Attributes"]["MessageDeduplicationId"] for m in taken] == [w for _, w in sent]


def test_batches_to_a_fifo_queue_go_one_after_another(
    sqs: Any, fifo: QueueUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_flight: list[list[str]] = []
    overlapped = []
    lock = threading.Lock()

    def slow_batch(sqs: Any, url: str, widget_ids: list[str], *ids: Any) -> widgets.producer.SendResult:
        """Send nothing, slowly, noting whether another batch was in flight meanwhile."""
        with lock:
            overlapped.append(bool(in_flight))
            in_flight.append(widget_ids)
        time.sleep(0.02)
        with lock:
            in_flight.remove(widget_ids)
        return widgets.producer.SendResult(sent=[("m", w) for w in widget_ids])

    monkeypatch.setattr(widgets.producer, "send_batch", slow_batch)
    widget_ids = [new_widget_id() for _ in range(50)]
    result = widgets.producer.send_requests(sqs, fifo.request, widget_ids, group_id="g")
    assert [w for _, w in result.sent] == widget_ids
    assert overlapped == [False] * 5


def test_the_same_widget_sent_twice_is_one_message(sqs: Any, fifo: QueueUrls) -> None:
    widget_id = new_widget_id()
    for _ in range(2):
        result = produce("--group-id", "g", "--widget-id", widget_id)
        assert result.exit_code == 0, result.output
    taken = take_all(sqs, fifo.request)
    assert [json.loads(m["Body"])["WidgetId"] for m in taken] == [widget_id]


def test_dedup_id_overrides_the_widget_id(sqs: Any, fifo: QueueUrls) -> None:
    first, second = new_widget_id(), new_widget_id()
    for widget_id in (first, second):
        result = produce("--group-id", "g", "--widget-id", widget_id, "--dedup-id", "order-7")
        assert result.exit_code == 0, result.output
    taken = take_all(sqs, fifo.request)
    assert [json.loads(m["Body"])["WidgetId"] for m in taken] == [first]
    assert taken[0]["Attributes"]["MessageDeduplicationId"] == "order-7"


def test_groups_are_kept_apart(sqs: Any, fifo: QueueUrls) -> None:
    for group in ("a", "b"):
        assert produce("--group-id", group, "--count", "3").exit_code == 0
    taken = take_all(sqs, fifo.request)
    assert sorted(m["Attributes"]["MessageGroupId"] for m in taken) == ["a"] * 3 + ["b"] * 3


def test_produce_to_fifo_without_a_group_is_one_clear_line(sqs: Any, fifo: QueueUrls) -> None:
    result = produce("--count", "3")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: WidgetRequestQueue.fifo is a FIFO queue: give --group-id, the group whose requests "
        "are made in order (e.g. a customer id)"
    ]
    assert "Traceback" not in result.output
    assert take_all(sqs, fifo.request) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sqs-request-queue", FIFO_NAMES[0], "--group-id", "g", "--dedup-id", "d", "--count", "2"],
         "--dedup-id names one request; it cannot go with --count"),
        (["--dedup-id", "d"], "--dedup-id is for FIFO queues (names ending in .fifo)"),
        (["--sqs-request-queue", FIFO_NAMES[0], "--group-id", "two words"], "--group-id must be 1 to 128"),
        (["--sqs-request-queue", FIFO_NAMES[0], "--group-id", "g", "--dedup-id", "x" * 129],
         "--dedup-id must be 1 to 128"),
    ],
)  # fmt: skip
def test_producer_refuses_ids_sqs_would_refuse(
    sqs: Any, fifo: QueueUrls, queues: QueueUrls, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(widget_producer.main, args)
    assert result.exit_code == 2
    assert message in result.output
    assert take_all(sqs, fifo.request) == take_all(sqs, queues.request) == []


def test_a_group_id_on_a_standard_queue_is_sent_for_fair_queues(sqs: Any, queues: QueueUrls) -> None:
    result = CliRunner().invoke(widget_producer.main, ["--group-id", "tenant-1", "--count", "2"])
    assert result.exit_code == 0, result.output
    taken = take_all(sqs, queues.request)
    assert len(taken) == 2
    assert {m["Attributes"].get("MessageGroupId") for m in taken} == {"tenant-1"}


def respond(sqs: Any, url: str, message_id: str, widget_id: str, group: str) -> None:
    """Put a response on a FIFO response queue, as a consumer would, in the request's group."""
    sqs.send_message(
        QueueUrl=url,
        MessageBody=response_body(message_id, widget_id, OK, 1),
        MessageGroupId=group,
        MessageDeduplicationId=f"response-{message_id}",
    )


def test_wait_gets_past_others_responses_ahead_in_its_group(sqs: Any, fifo: QueueUrls) -> None:
    # Held until the end of the wait, as on a standard queue, someone else's response ahead of
    # ours would keep ours, coming later in the same group, back until the timeout.
    respond(sqs, fifo.response, "someone-else", new_widget_id(), "g")
    later = threading.Timer(0.5, respond, (sqs, fifo.response, "mine", new_widget_id(), "g"))
    later.start()
    try:
        found = widgets.producer.wait_for_responses(sqs, fifo.response, ["mine"], timeout=3)
    finally:
        later.join()
    assert found["mine"]["Status"] == OK
    assert [json.loads(m["Body"])["MessageId"] for m in take_all(sqs, fifo.response)] == ["someone-else"]


def test_wait_on_fifo_queues_end_to_end(sqs: Any, fifo: QueueUrls) -> None:
    widget_id = new_widget_id()
    sent = produce("--group-id", "g", "--widget-id", widget_id)
    message_id = sent_lines(sent)[0][0]
    respond(sqs, fifo.response, message_id, widget_id, "g")
    # The same widget again within five minutes: one request, whose response this run waits for.
    again = produce(
        "--sqs-response-queue", FIFO_NAMES[1], "--group-id", "g", "--widget-id", widget_id,
        "--wait", "--timeout", "3",
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    assert f"OK {widget_id} receive_count=1" in again.output
    assert take_all(sqs, fifo.response) == []


# widget_queues.py on FIFO queues.


def invoke_queues(command: str, *args: str) -> Result:
    """Run a widget_queues command on the FIFO request and response queues."""
    return CliRunner().invoke(
        widget_queues.main,
        [command, "--sqs-request-queue", FIFO_NAMES[0], "--sqs-response-queue", FIFO_NAMES[1], *args],
    )


def fill_fifo_dead_letter_queue(sqs: Any, url: str) -> list[tuple[str, str, str]]:
    """Put requests of two groups, interleaved, on a FIFO dead-letter queue; return (group, body, id) each."""
    sent = []
    for index in range(6):
        group, body = ("a", "b")[index % 2], request_body(new_widget_id())
        answer = sqs.send_message(
            QueueUrl=url,
            MessageBody=body,
            MessageGroupId=group,
            MessageDeduplicationId=f"dead-{index}",
            MessageAttributes={"FailureReason": {"DataType": "String", "StringValue": f"503 ({index})"}},
        )
        sent.append((group, body, answer["MessageId"]))
    return sent


def test_status_finds_the_fifo_dead_letter_queue_by_default(sqs: Any, fifo: QueueUrls) -> None:
    fill_fifo_dead_letter_queue(sqs, fifo.dead_letter)
    result = invoke_queues("status", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["dead_letter"]["queue"] == FIFO_NAMES[2]
    assert status["dead_letter"]["visible"] == 6
    assert status["request"]["queue"] == FIFO_NAMES[0]


def test_redrive_on_fifo_keeps_groups_order_and_attributes(sqs: Any, fifo: QueueUrls) -> None:
    sent = fill_fifo_dead_letter_queue(sqs, fifo.dead_letter)
    result = invoke_queues("redrive")
    assert result.exit_code == 0, result.output
    assert "moved 6 messages from WidgetRequestDLQ.fifo to WidgetRequestQueue.fifo" in result.output
    moved = take_all(sqs, fifo.request)
    for group in ("a", "b"):
        in_group = [m for m in moved if m["Attributes"]["MessageGroupId"] == group]
        assert [m["Body"] for m in in_group] == [body for g, body, _ in sent if g == group]
    assert {m["MessageAttributes"]["FailureReason"]["StringValue"] for m in moved} == {
        f"503 ({i})" for i in range(6)
    }
    # Fresh ids: neither the original requests' nor the same for two messages.
    assert {m["Attributes"]["MessageDeduplicationId"] for m in moved} == {f"redrive-{i}" for _, _, i in sent}
    assert take_all(sqs, fifo.dead_letter) == []


def test_redrive_run_again_after_failed_deletes_sends_once(
    sqs: Any, fifo: QueueUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_fifo_dead_letter_queue(sqs, fifo.dead_letter)
    messages = sqs.receive_message(
        QueueUrl=fifo.dead_letter, MaxNumberOfMessages=10, MessageSystemAttributeNames=["MessageGroupId"]
    )["Messages"]
    real_delete = sqs.delete_message_batch
    monkeypatch.setattr(
        sqs,
        "delete_message_batch",
        lambda QueueUrl, Entries: {"Failed": [{"Id": e["Id"], "Code": "InternalError"} for e in Entries]},
    )
    first = widgets.queues.move_batch(sqs, fifo.dead_letter, fifo.request, messages)
    assert len(first.not_deleted) == len(messages)
    monkeypatch.setattr(sqs, "delete_message_batch", real_delete)
    # The run is interrupted and run again on the same dead-letter messages.
    second = widgets.queues.move_batch(sqs, fifo.dead_letter, fifo.request, messages)
    assert second.not_deleted == []
    assert len(take_all(sqs, fifo.request)) == len(messages)


def test_redrive_refuses_a_standard_dead_letter_queue_for_a_fifo_request_queue(
    sqs: Any, fifo: QueueUrls
) -> None:
    result = invoke_queues("redrive", "--dead-letter-queue", DEAD_LETTER_QUEUE)
    assert result.exit_code == 2
    assert "--dead-letter-queue WidgetRequestDLQ is a standard queue but" in result.output
    assert "Traceback" not in result.output


def test_responses_on_fifo_without_delete_shows_the_head_of_each_group(sqs: Any, fifo: QueueUrls) -> None:
    for index in range(12):
        respond(sqs, fifo.response, f"m-{index}", new_widget_id(), "g")
    result = invoke_queues("responses", "--json")
    assert result.exit_code == 0, result.output
    shown = [json.loads(line)["MessageId"] for line in result.output.splitlines() if line.startswith("{")]
    assert shown == [f"m-{index}" for index in range(10)]
    assert "FIFO queue: only the first responses of each group" in result.output
    result = invoke_queues("responses", "--json", "--delete")
    shown = [json.loads(line)["MessageId"] for line in result.output.splitlines() if line.startswith("{")]
    assert shown == [f"m-{index}" for index in range(12)]
    assert take_all(sqs, fifo.response) == []
