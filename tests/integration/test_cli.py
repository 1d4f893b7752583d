"""The command lines: what they send, and one clear line for every user mistake."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from click.testing import CliRunner

import widget_consumer
import widget_maker
import widget_producer
import widgets.producer
from devtools.stack import free_port
from widgets.messages import is_valid_widget_id
from widgets.sqs import QueueUrls

SEED_ID = "31f37378-54f4-11e5-ad75-3c970e65f731"


def bodies(sqs: Any, url: str) -> list[str]:
    """Return the bodies of every message in a queue."""
    found = []
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30).get(
        "Messages"
    ):
        found.extend(m["Body"] for m in messages)
    return found


@pytest.mark.parametrize("command", [widget_producer.main, widget_consumer.main, widget_maker.main])
def test_help(command: Any) -> None:
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0
    assert "Example" in result.output


def test_produce_one_with_the_seed_id(sqs: Any, queues: QueueUrls) -> None:
    result = CliRunner().invoke(widget_producer.main, ["--region=us-east-1", f"--widget-id={SEED_ID}"])
    assert result.exit_code == 0, result.output
    _message_id, widget_id = result.output.split()
    assert widget_id == SEED_ID
    assert bodies(sqs, queues.request) == [json.dumps({"WidgetId": SEED_ID})]


def test_produce_a_new_id_by_default(sqs: Any, queues: QueueUrls) -> None:
    result = CliRunner().invoke(widget_producer.main, [])
    assert result.exit_code == 0, result.output
    widget_id = result.output.split()[1]
    assert is_valid_widget_id(widget_id)
    assert bodies(sqs, queues.request) == [json.dumps({"WidgetId": widget_id})]


def test_produce_count_sends_in_batches(sqs: Any, queues: QueueUrls) -> None:
    result = CliRunner().invoke(widget_producer.main, ["--count", "25"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if not line.startswith("sent ")]
    assert len(lines) == 25
    sent_ids = {line.split()[1] for line in lines}
    assert {json.loads(b)["WidgetId"] for b in bodies(sqs, queues.request)} == sent_ids
    assert "sent 25 requests" in result.output


def test_produce_wait_reports_outcomes(sqs: Any, queues: QueueUrls) -> None:
    # Answer the request as a consumer would, before the producer waits for it.
    sent = CliRunner().invoke(widget_producer.main, [f"--widget-id={SEED_ID}"])
    message_id = sent.output.split()[0]
    sqs.send_message(
        QueueUrl=queues.response,
        MessageBody=json.dumps(
            {"MessageId": "someone-else", "WidgetId": "x", "Status": "OK", "ReceiveCount": 1}
        ),
    )
    sqs.send_message(
        QueueUrl=queues.response,
        MessageBody=json.dumps(
            {"MessageId": message_id, "WidgetId": SEED_ID, "Status": "OK", "ReceiveCount": 1}
        ),
    )
    responses = widgets.producer.wait_for_responses(sqs, queues.response, [message_id], timeout=5)
    assert responses[message_id]["Status"] == "OK"
    # Someone else's response is left on the queue, visible.
    assert [json.loads(b)["MessageId"] for b in bodies(sqs, queues.response)] == ["someone-else"]


def test_produce_wait_fails_when_no_answer(sqs: Any, queues: QueueUrls) -> None:
    result = CliRunner().invoke(widget_producer.main, ["--wait", "--timeout", "1"])
    assert result.exit_code == 1
    assert "1 of 1 responses did not come within 1s" in result.output


def test_produce_reports_refused_entries(
    sqs: Any, queues: QueueUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse_second(**kwargs: Any) -> Any:
        entries = kwargs["Entries"]
        answer = real(QueueUrl=kwargs["QueueUrl"], Entries=[entries[0]])
        answer["Failed"] = [
            {"Id": e["Id"], "SenderFault": True, "Code": "InvalidParameterValue"} for e in entries[1:]
        ]
        return answer

    real = sqs.send_message_batch
    monkeypatch.setattr(widgets.producer, "ENTRY_RETRIES", 0)
    monkeypatch.setattr(sqs, "send_message_batch", refuse_second)
    result = widgets.producer.send_requests(sqs, queues.request, ["a", "b", "c"])
    assert [w for _, w in result.sent] == ["a"]
    assert sorted(w for w, _ in result.failed) == ["b", "c"]
    assert len(bodies(sqs, queues.request)) == 1


def test_produce_to_a_missing_queue(sqs: Any) -> None:
    result = CliRunner().invoke(widget_producer.main, [])
    assert result.exit_code == 1
    assert "queue WidgetRequestQueue does not exist" in result.output
    assert "Traceback" not in result.output


def test_widget_id_and_count_conflict(sqs: Any, queues: QueueUrls) -> None:
    result = CliRunner().invoke(widget_producer.main, ["--widget-id", SEED_ID, "--count", "2"])
    assert result.exit_code == 2
    assert "cannot go with --count" in result.output


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment with no AWS credentials, region or endpoint at all."""
    for name in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
        "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.parametrize("command", [widget_producer.main, widget_consumer.main])
def test_no_credentials_for_amazon(no_aws: None, command: Any) -> None:
    result = CliRunner().invoke(command, ["--region=ap-southeast-2"])
    assert result.exit_code == 1
    assert "no AWS credentials found" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [widget_producer.main, widget_consumer.main])
def test_endpoint_down(no_aws: None, command: Any) -> None:
    # No credentials are needed for a local endpoint; an unreachable one is named.
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(command, ["--endpoint-url", endpoint])
    assert result.exit_code == 1
    assert f"cannot reach SQS at {endpoint}" in result.output
    assert "Traceback" not in result.output


def test_endpoint_must_be_a_url(no_aws: None) -> None:
    result = CliRunner().invoke(widget_producer.main, ["--endpoint-url", "localhost:9324"])
    assert result.exit_code == 2
    assert "is not an http(s) URL" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "11"], "'--batch-size': 11 is not in the range 1<=x<=10"),
        (["--wait-time", "25"], "'--wait-time': 25 is not in the range 0<=x<=20"),
        (["--max-rate", "0"], "'--max-rate': 0.0 is not in the range"),
        (["--maker-url", "127.0.0.1:5000/add"], "is not an http(s) URL"),
        (["--backoff", "random"], "'random' is not one of 'fixed', 'exponential'"),
        (["--max-receives", "0"], "0 is not in the range"),
    ],
)
def test_consumer_rejects_bad_flags(args: list[str], message: str) -> None:
    result = CliRunner().invoke(widget_consumer.main, args)
    assert result.exit_code == 2
    assert message in result.output


def test_consumer_without_queues_and_no_create(sqs: Any) -> None:
    result = CliRunner().invoke(widget_consumer.main, ["--no-create-queues"])
    assert result.exit_code == 1
    assert "queue WidgetRequestQueue does not exist" in result.output


def test_consumer_creates_queues_idempotently_with_redrive(sqs: Any) -> None:
    from widgets.sqs import ensure_queues

    first = ensure_queues(sqs, "Req", "Resp", "Dlq", max_receives=3)
    second = ensure_queues(sqs, "Req", "Resp", "Dlq", max_receives=5)
    assert first == second
    policy = json.loads(
        sqs.get_queue_attributes(QueueUrl=first.request, AttributeNames=["RedrivePolicy"])["Attributes"][
            "RedrivePolicy"
        ]
    )
    # Two more than the consumer's limit, so the consumer itself settles the last delivery.
    assert int(policy["maxReceiveCount"]) == 7
    assert policy["deadLetterTargetArn"].endswith(":Dlq")


def test_maker_port_in_use(tmp_path: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(widget_maker.main, ["--port", str(port), "--db", str(tmp_path / "w.db")])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


def test_region_in_aws_config_alone_stays_local(
    no_aws: None, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from widgets.sqs import LOCAL_ENDPOINT, make_client

    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    assert make_client(None, None).meta.endpoint_url == LOCAL_ENDPOINT
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    assert make_client("eu-west-1", None).meta.endpoint_url == "https://sqs.eu-west-1.amazonaws.com"


def test_wait_is_not_starved_by_other_responses(sqs: Any, queues: QueueUrls) -> None:
    # moto returns the oldest messages first: others' responses handed straight back would
    # come back again and again, ahead of ours.
    for n in range(15):
        sqs.send_message(QueueUrl=queues.response, MessageBody=json.dumps({"MessageId": f"other-{n}"}))
    sqs.send_message(QueueUrl=queues.response, MessageBody=json.dumps({"MessageId": "mine", "Status": "OK"}))
    found = widgets.producer.wait_for_responses(sqs, queues.response, ["mine"], timeout=5)
    assert found["mine"]["Status"] == "OK"
    assert len(bodies(sqs, queues.response)) == 15


def test_producer_keeps_what_was_sent_before_a_call_failed(
    sqs: Any, queues: QueueUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import EndpointConnectionError

    real = sqs.send_message_batch
    calls = []

    def first_partly_then_down(**kwargs: Any) -> Any:
        calls.append(kwargs)
        if len(calls) > 1:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        entries = kwargs["Entries"]
        answer = real(QueueUrl=kwargs["QueueUrl"], Entries=entries[:9])
        answer["Failed"] = [{"Id": entries[9]["Id"], "SenderFault": False, "Code": "ThrottlingException"}]
        return answer

    monkeypatch.setattr(sqs, "send_message_batch", first_partly_then_down)
    result = widgets.producer.send_requests(sqs, queues.request, [f"w{n}" for n in range(10)])
    assert len(result.sent) == 9
    assert [w for w, _ in result.failed] == ["w9"]
    assert result.error is not None
    monkeypatch.setattr(sqs, "send_message_batch", real)
    assert len(bodies(sqs, queues.request)) == 9
