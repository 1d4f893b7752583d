"""widget_queues.py: status, redrive and responses on moto's in-process SQS, and as real processes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner, Result
from moto import mock_aws

import widget_queues
import widgets.queues
from devtools.stack import free_port
from tests.helpers import drain, fill_dead_letter_queue
from widgets.errors import SetupError
from widgets.messages import FAILED, OK, REJECTED, new_widget_id, request_body, response_body
from widgets.sqs import (
    DEAD_LETTER_QUEUE,
    REQUEST_QUEUE,
    RESPONSE_QUEUE,
    QueueUrls,
    SQSClient,
    ensure_queues,
    make_client,
)

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

REGION = "us-east-1"
AMAZON = f"https://sqs.{REGION}.amazonaws.com"


def counts(sqs: SQSClient, url: str) -> tuple[int, int, int]:
    """Return a queue's visible, in-flight and delayed message counts."""
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        int(attributes["ApproximateNumberOfMessagesDelayed"]),
    )


def refuse_every_entry(code: str) -> Callable[..., dict[str, Any]]:
    """Return a stand-in for an SQS batch call that reports every entry as failed with code."""

    def call(QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        """Fail every entry, as SQS does one entry at a time."""
        return {
            "Successful": [],
            "Failed": [{"Id": e["Id"], "SenderFault": False, "Code": code} for e in Entries],
        }

    return call


def invoke(command: str, *args: str) -> Result:
    """Run a widget_queues command on Amazon SQS in us-east-1, which mock_aws stands in for."""
    return CliRunner().invoke(widget_queues.main, [command, "--region", REGION, *args])


@pytest.fixture
def bare_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep this machine's AWS settings and credentials out of the test."""
    for name in (
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SQS",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def fake_credentials(bare_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set fake AWS credentials, as moto's documentation advises."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def sqs(fake_credentials: None) -> Iterator[SQSClient]:
    """Return an SQS client for us-east-1, served by moto in this process."""
    with mock_aws():
        yield make_client(REGION, None)


@pytest.fixture
def urls(sqs: SQSClient) -> QueueUrls:
    """Create the three queues, as the consumer does."""
    return ensure_queues(sqs, REQUEST_QUEUE, RESPONSE_QUEUE, DEAD_LETTER_QUEUE, max_receives=3)


@pytest.fixture
def busy(sqs: SQSClient, urls: QueueUrls) -> QueueUrls:
    """Leave requests visible (3), in flight (1) and delayed (2), one response and an empty DLQ."""
    for _ in range(4):
        sqs.send_message(QueueUrl=urls.request, MessageBody=request_body(new_widget_id()))
    assert len(sqs.receive_message(QueueUrl=urls.request, VisibilityTimeout=60)["Messages"]) == 1
    for _ in range(2):
        sqs.send_message(QueueUrl=urls.request, MessageBody=request_body(new_widget_id()), DelaySeconds=60)
    sqs.send_message(QueueUrl=urls.response, MessageBody=response_body("m-1", new_widget_id(), OK, 1))
    return urls


@pytest.fixture
def waiting(sqs: SQSClient, urls: QueueUrls) -> list[dict[str, Any]]:
    """Put three responses on the response queue, one of each status; return them."""
    bodies = [
        response_body("m-1", new_widget_id(), OK, 1, widget={"id": 1}),
        response_body("m-2", "garbage", REJECTED, 1, reason="not a version-1 UUID"),
        response_body("m-3", new_widget_id(), FAILED, 3, reason="maker answered 503"),
    ]
    for body in bodies:
        sqs.send_message(QueueUrl=urls.response, MessageBody=body)
    return [json.loads(body) for body in bodies]


def test_status_table_shows_each_state(sqs: SQSClient, busy: QueueUrls) -> None:
    result = invoke("status")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"queues at {AMAZON}",
        "role         queue                visible  in flight  delayed  oldest",
        "request      WidgetRequestQueue         3          1        2  n/a",
        "response     WidgetResponseQueue        1          0        0  n/a",
        "dead letter  WidgetRequestDLQ           0          0        0  n/a",
    ]


def test_status_json(sqs: SQSClient, busy: QueueUrls) -> None:
    result = invoke("status", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "request": {
            "queue": REQUEST_QUEUE,
            "url": busy.request,
            "visible": 3,
            "in_flight": 1,
            "delayed": 2,
            "oldest_age_seconds": None,
        },
        "response": {
            "queue": RESPONSE_QUEUE,
            "url": busy.response,
            "visible": 1,
            "in_flight": 0,
            "delayed": 0,
            "oldest_age_seconds": None,
        },
        "dead_letter": {
            "queue": DEAD_LETTER_QUEUE,
            "url": busy.dead_letter,
            "visible": 0,
            "in_flight": 0,
            "delayed": 0,
            "oldest_age_seconds": None,
        },
    }


def test_status_shows_a_missing_queue_in_its_row(sqs: SQSClient, busy: QueueUrls) -> None:
    result = invoke("status", "--dead-letter-queue", "NoSuchDLQ")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[2].split() == ["request", REQUEST_QUEUE, "3", "1", "2", "n/a"]
    assert lines[4] == "dead letter  NoSuchDLQ            missing"

    result = invoke("status", "--dead-letter-queue", "NoSuchDLQ", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dead_letter"] == {
        "queue": "NoSuchDLQ",
        "url": None,
        "visible": None,
        "in_flight": None,
        "delayed": None,
        "oldest_age_seconds": None,
    }


def test_redrive_moves_every_message_with_its_attributes(sqs: SQSClient, urls: QueueUrls) -> None:
    sent = fill_dead_letter_queue(sqs, urls.dead_letter, 13)
    result = invoke("redrive", "--wait-time", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"moved 13 messages from {DEAD_LETTER_QUEUE} to {REQUEST_QUEUE}\n"
    assert result.stderr.splitlines() == ["moved 10 of 10 (10 so far)", "moved 3 of 3 (13 so far)"]
    assert counts(sqs, urls.dead_letter) == (0, 0, 0)
    moved = drain(sqs, urls.request)
    assert sorted(m["Body"] for m in moved) == sorted(sent)
    for message in moved:
        assert message["MessageAttributes"] == sent[message["Body"]]
        assert message["Attributes"]["ApproximateReceiveCount"] == "1"


def test_redrive_of_an_empty_queue_moves_nothing(sqs: SQSClient, urls: QueueUrls) -> None:
    result = invoke("redrive", "--wait-time", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"moved 0 messages from {DEAD_LETTER_QUEUE} to {REQUEST_QUEUE}\n"


def test_redrive_says_when_messages_are_held_elsewhere(sqs: SQSClient, urls: QueueUrls) -> None:
    fill_dead_letter_queue(sqs, urls.dead_letter, 3)
    assert len(drain(sqs, urls.dead_letter)) == 3  # as an interrupted redrive leaves them
    result = invoke("redrive", "--wait-time", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("moved 0 messages ")
    assert result.stderr.startswith(f"3 messages of {DEAD_LETTER_QUEUE} are in flight ")


def test_redrive_max_moves_only_that_many(sqs: SQSClient, urls: QueueUrls) -> None:
    fill_dead_letter_queue(sqs, urls.dead_letter, 13)
    result = invoke("redrive", "--wait-time", "0", "--max", "4")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("moved 4 messages ")
    assert counts(sqs, urls.request) == (4, 0, 0)
    assert counts(sqs, urls.dead_letter) == (9, 0, 0)


def test_redrive_leaves_what_could_not_be_sent(
    sqs: SQSClient, urls: QueueUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = fill_dead_letter_queue(sqs, urls.dead_letter, 13)
    failing = set(list(sent)[::4])  # 4 of the 13, spread over both batches
    real_send = sqs.send_message_batch

    def flaky_send(QueueUrl: str, Entries: list[SendMessageBatchRequestEntryTypeDef]) -> dict[str, Any]:
        """Send the entries not in failing; report those as failed, as SQS does entry by entry."""
        kept = [entry for entry in Entries if entry["MessageBody"] not in failing]
        answer: dict[str, Any] = dict(real_send(QueueUrl=QueueUrl, Entries=kept)) if kept else {}
        answer["Failed"] = answer.get("Failed", []) + [
            {"Id": entry["Id"], "SenderFault": False, "Code": "InternalError", "Message": "try again"}
            for entry in Entries
            if entry["MessageBody"] in failing
        ]
        return answer

    monkeypatch.setattr(sqs, "send_message_batch", flaky_send)
    monkeypatch.setattr(widget_queues, "make_client", lambda *args, **kwargs: sqs)
    result = invoke("redrive", "--wait-time", "0")
    assert result.exit_code == 1
    assert result.stdout == f"moved 9 messages from {DEAD_LETTER_QUEUE} to {REQUEST_QUEUE}\n"
    assert result.stderr.splitlines()[-1].startswith(
        f"Error: 4 messages could not be sent and stay in {DEAD_LETTER_QUEUE} (first: "
    )
    assert "InternalError: try again); run redrive again" in result.stderr
    assert sorted(m["Body"] for m in drain(sqs, urls.request)) == sorted(set(sent) - failing)
    left = drain(sqs, urls.dead_letter)  # visible again at once, for the next run
    assert sorted(m["Body"] for m in left) == sorted(failing)
    assert all(m["MessageAttributes"] == sent[m["Body"]] for m in left)


def test_redrive_run_again_moves_what_failed_before(
    sqs: SQSClient, urls: QueueUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = fill_dead_letter_queue(sqs, urls.dead_letter, 3)
    with monkeypatch.context() as patch:
        patch.setattr(sqs, "send_message_batch", refuse_every_entry("ServiceUnavailable"))
        patch.setattr(widget_queues, "make_client", lambda *args, **kwargs: sqs)
        assert invoke("redrive", "--wait-time", "0").exit_code == 1
    assert counts(sqs, urls.dead_letter) == (3, 0, 0)
    result = invoke("redrive", "--wait-time", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("moved 3 messages ")
    assert sorted(m["Body"] for m in drain(sqs, urls.request)) == sorted(sent)


def test_redrive_reports_copies_it_could_not_delete(
    sqs: SQSClient, urls: QueueUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_dead_letter_queue(sqs, urls.dead_letter, 2)
    monkeypatch.setattr(sqs, "delete_message_batch", refuse_every_entry("InternalError"))
    monkeypatch.setattr(widget_queues, "make_client", lambda *args, **kwargs: sqs)
    result = invoke("redrive", "--wait-time", "0")
    assert result.exit_code == 1
    assert f"Error: 2 messages were copied but not deleted from {DEAD_LETTER_QUEUE}" in result.stderr
    assert counts(sqs, urls.request) == (2, 0, 0)
    assert counts(sqs, urls.dead_letter) == (0, 2, 0)  # still there, held for HOLD_SECONDS


def test_redrive_refuses_one_queue_as_both_ends(sqs: SQSClient, urls: QueueUrls) -> None:
    result = invoke("redrive", "--dead-letter-queue", REQUEST_QUEUE)
    assert result.exit_code == 2
    assert "--dead-letter-queue and --sqs-request-queue must be different queues" in result.stderr


@pytest.mark.parametrize("command", ["redrive", "responses"])
def test_a_missing_queue_is_one_clear_line(sqs: SQSClient, command: str) -> None:
    result = invoke(
        command,
        "--wait-time",
        "0",
        "--dead-letter-queue" if command == "redrive" else "--sqs-response-queue",
        "Nope",
    )
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: queue Nope does not exist at {AMAZON} (")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("command", ["status", "redrive", "responses"])
def test_an_unreachable_endpoint_is_one_clear_line(fake_credentials: None, command: str) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = invoke(command, "--endpoint-url", endpoint)
    assert result.exit_code == 1
    assert result.stderr == f"Error: cannot reach SQS at {endpoint} (is the local SQS running? make sqs)\n"


def test_missing_credentials_are_one_clear_line(bare_aws: None) -> None:
    result = invoke("status")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no AWS credentials found: ")
    assert len(result.stderr.splitlines()) == 1


def test_responses_prints_them_and_leaves_them(
    sqs: SQSClient, urls: QueueUrls, waiting: list[dict[str, Any]]
) -> None:
    expected = [
        f"OK {waiting[0]['WidgetId']} receive_count=1",
        "REJECTED garbage receive_count=1 reason='not a version-1 UUID'",
        f"FAILED {waiting[2]['WidgetId']} receive_count=3 reason='maker answered 503'",
    ]
    for _ in range(2):  # visible again at once: a second run prints the same
        result = invoke("responses", "--wait-time", "0")
        assert result.exit_code == 0, result.output
        assert sorted(result.stdout.splitlines()) == sorted(expected)
        assert result.stderr == f"read 3 responses; left them on {RESPONSE_QUEUE}\n"
        assert counts(sqs, urls.response) == (3, 0, 0)


def test_responses_json_lines(sqs: SQSClient, urls: QueueUrls, waiting: list[dict[str, Any]]) -> None:
    result = invoke("responses", "--wait-time", "0", "--json")
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(printed, key=lambda r: r["MessageId"]) == waiting


def test_responses_delete_removes_only_what_it_printed(
    sqs: SQSClient, urls: QueueUrls, waiting: list[dict[str, Any]]
) -> None:
    result = invoke("responses", "--wait-time", "0", "--delete", "--json", "--max", "2")
    assert result.exit_code == 0, result.output
    printed = {json.loads(line)["MessageId"] for line in result.stdout.splitlines()}
    assert len(printed) == 2
    assert result.stderr == "read 2 responses; deleted them\n"
    assert counts(sqs, urls.response) == (1, 0, 0)
    left = [json.loads(m["Body"])["MessageId"] for m in drain(sqs, urls.response)]
    assert len(left) == 1
    assert left[0] not in printed
    assert printed | set(left) == {"m-1", "m-2", "m-3"}


def test_responses_delete_empties_the_queue(
    sqs: SQSClient, urls: QueueUrls, waiting: list[dict[str, Any]]
) -> None:
    result = invoke("responses", "--wait-time", "0", "--delete")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3
    assert counts(sqs, urls.response) == (0, 0, 0)
    result = invoke("responses", "--wait-time", "0")
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == f"no responses waiting on {RESPONSE_QUEUE}\n"


def test_responses_reads_many_once_each(sqs: SQSClient, urls: QueueUrls) -> None:
    ids = [f"m-{n}" for n in range(25)]
    for message_id in ids:
        sqs.send_message(QueueUrl=urls.response, MessageBody=response_body(message_id, None, REJECTED, 1))
    result = invoke("responses", "--wait-time", "0", "--json")
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(line)["MessageId"] for line in result.stdout.splitlines()) == sorted(ids)
    assert counts(sqs, urls.response) == (25, 0, 0)
    result = invoke("responses", "--wait-time", "0", "--max", "12")
    assert len(result.stdout.splitlines()) == 12


def test_responses_shows_a_body_that_is_no_response(sqs: SQSClient, urls: QueueUrls) -> None:
    sqs.send_message(QueueUrl=urls.response, MessageBody="not json")
    result = invoke("responses", "--wait-time", "0")
    assert result.stdout == "None None receive_count=None body='not json'\n"
    result = invoke("responses", "--wait-time", "0", "--json")
    assert json.loads(result.stdout) == {"Body": "not json"}


def test_read_responses_stops_when_only_seen_ones_come_back(
    sqs: SQSClient, urls: QueueUrls, waiting: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # With no hold, every receive brings the same responses again, as after a long run.
    monkeypatch.setattr(widgets.queues, "HOLD_SECONDS", 0)
    printed: list[dict[str, Any]] = []
    result = widgets.queues.read_responses(sqs, urls.response, printed.append, wait_time=0)
    assert result.read == 3
    assert sorted(printed, key=lambda r: r["MessageId"]) == waiting


# status --watch


def watched(sqs: SQSClient) -> Callable[[], dict[str, widgets.queues.QueueStatus]]:
    """Return what status --watch fetches: the three queues' statuses by role."""
    names = {"request": REQUEST_QUEUE, "response": RESPONSE_QUEUE, "dead_letter": DEAD_LETTER_QUEUE}
    return lambda: {role: widgets.queues.queue_status(sqs, name) for role, name in names.items()}


class FakeTime:
    """A clock that moves only when slept on (or told to), and that notes each sleep."""

    def __init__(self, on_sleep: Callable[[], None] = lambda: None) -> None:
        """Start at 100 s; call on_sleep at each sleep, as if the world moved meanwhile."""
        self.now = 100.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def clock(self) -> float:
        """Return the fake time."""
        return self.now

    def sleep(self, seconds: float) -> None:
        """Note the sleep, let the world move, and advance the clock."""
        self.sleeps.append(seconds)
        self.on_sleep()
        self.now += seconds


def test_watch_shows_how_fast_each_count_changes(sqs: SQSClient, busy: QueueUrls) -> None:
    def traffic() -> None:
        """Between refreshes: four requests arrive and two are received."""
        for _ in range(4):
            sqs.send_message(QueueUrl=busy.request, MessageBody=request_body(new_widget_id()))
        sqs.receive_message(QueueUrl=busy.request, MaxNumberOfMessages=2, VisibilityTimeout=60)

    fake = FakeTime(traffic)
    refreshes: list[widgets.queues.Refresh] = []
    widgets.queues.watch(watched(sqs), refreshes.append, 2.0, count=3, clock=fake.clock, sleep=fake.sleep)
    assert fake.sleeps == [2.0, 2.0]
    assert [r.statuses["request"].visible for r in refreshes] == [3, 5, 7]
    assert refreshes[0].rates["request"] == (None, None, None)
    assert refreshes[1].rates == {"request": (1.0, 1.0, 0.0), "response": (0, 0, 0), "dead_letter": (0, 0, 0)}
    assert widgets.queues.watch_table(refreshes[1]) == [
        "role         queue                visible    /s  in flight    /s  delayed  /s",
        "request      WidgetRequestQueue         5  +1.0          3  +1.0        2   0",
        "response     WidgetResponseQueue        1     0          0     0        0   0",
        "dead letter  WidgetRequestDLQ           0     0          0     0        0   0",
    ]
    assert widgets.queues.watch_line(refreshes[0], "12:00:00") == (
        "12:00:00 request visible=3 in_flight=1 delayed=2; response visible=1 in_flight=0 delayed=0; "
        "dead_letter visible=0 in_flight=0 delayed=0"
    )
    assert widgets.queues.watch_line(refreshes[2], "12:00:04").startswith(
        "12:00:04 request visible=7 (+1.0/s) in_flight=5 (+1.0/s) delayed=2 (0/s); response visible=1 (0/s)"
    )


@pytest.mark.parametrize(
    ("rate", "shown"),
    [(None, ""), (0.0, "0"), (0.25, "+0.25"), (-1 / 60, "-0.02"), (-0.999, "-1.0"), (12.345, "+12.3")],
)
def test_rates_for_people(rate: float | None, shown: str) -> None:
    assert widgets.queues.format_rate(rate) == shown


def test_watch_outlasts_an_error_after_the_first_refresh(sqs: SQSClient, busy: QueueUrls) -> None:
    fetch = watched(sqs)
    calls = 0

    def flaky_fetch() -> dict[str, widgets.queues.QueueStatus]:
        """Fetch for real, except on the second refresh, when SQS is away."""
        nonlocal calls
        calls += 1
        if calls == 2:
            raise SetupError("cannot reach SQS at http://127.0.0.1:9")
        return fetch()

    fake = FakeTime()
    refreshes: list[widgets.queues.Refresh] = []
    widgets.queues.watch(flaky_fetch, refreshes.append, 1.0, count=4, clock=fake.clock, sleep=fake.sleep)
    assert [r.error for r in refreshes] == [None, "cannot reach SQS at http://127.0.0.1:9", None, None]
    assert widgets.queues.watch_line(refreshes[1], "12:00:01") == (
        "12:00:01 error: cannot reach SQS at http://127.0.0.1:9"
    )
    # Rates start again after the gap: the counts before it are too old to compare with.
    assert refreshes[2].rates["request"] == (None, None, None)
    assert refreshes[3].rates["request"] == (0, 0, 0)


def test_watch_ends_at_an_error_on_the_first_refresh() -> None:
    def failing_fetch() -> dict[str, widgets.queues.QueueStatus]:
        """Fail as a watch of a missing endpoint does."""
        raise SetupError("cannot reach SQS")

    fake = FakeTime()
    with pytest.raises(SetupError):
        widgets.queues.watch(failing_fetch, lambda refresh: None, 1.0, clock=fake.clock, sleep=fake.sleep)
    assert fake.sleeps == []


def test_watch_waits_no_more_after_a_slow_refresh(sqs: SQSClient, busy: QueueUrls) -> None:
    fake = FakeTime()
    fetch = watched(sqs)

    def slow_fetch() -> dict[str, widgets.queues.QueueStatus]:
        """Take 3 s of fake time on the first refresh, 0.5 s after."""
        fake.now += 3.0 if not fake.sleeps else 0.5
        return fetch()

    widgets.queues.watch(slow_fetch, lambda refresh: None, 2.0, count=3, clock=fake.clock, sleep=fake.sleep)
    assert fake.sleeps == [0.0, 1.5]


def test_watch_never_sleeps_a_negative_time_on_a_clock_that_moves(sqs: SQSClient, busy: QueueUrls) -> None:
    fake = FakeTime()

    def ticking_clock() -> float:
        """Move on a little at every reading, as a real clock does while the watch works."""
        fake.now += 0.3
        return fake.now

    widgets.queues.watch(
        watched(sqs), lambda refresh: None, 0.5, count=4, clock=ticking_clock, sleep=fake.sleep
    )
    assert len(fake.sleeps) == 3
    assert all(seconds >= 0 for seconds in fake.sleeps)


def test_redraw_moves_up_over_what_it_drew_and_fits_the_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "8")
    assert widgets.queues.redraw(["one", "a long line"], 0) == "\r\x1b[Jone\na long l\n"
    assert widgets.queues.redraw(["two"], 2) == "\x1b[2A\r\x1b[Jtwo\n"


def test_status_watch_prints_a_line_per_refresh(sqs: SQSClient, busy: QueueUrls) -> None:
    result = invoke("status", "--watch", "0.5", "--count", "2")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"queues at {AMAZON}, every 0.5s (Ctrl-C stops)\n"
    first, second = result.stdout.splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d request visible=3 in_flight=1 delayed=2; response .*", first)
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d request visible=3 \(0/s\) in_flight=1 \(0/s\) delayed=2 \(0/s\); response .*", second
    )


def test_status_watch_json_is_a_status_per_line(sqs: SQSClient, busy: QueueUrls) -> None:
    once = json.loads(invoke("status", "--json").stdout)
    result = invoke("status", "--json", "--watch", "0.5", "--count", "2")
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == [once, once]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--watch", "0.1"],
            "Invalid value for '--watch': give the seconds between refreshes, from 0.5 to 3600",
        ),
        (
            ["--watch", "nan"],
            "Invalid value for '--watch': give the seconds between refreshes, from 0.5 to 3600",
        ),
        (
            ["--watch", "inf"],
            "Invalid value for '--watch': give the seconds between refreshes, from 0.5 to 3600",
        ),
        (["--watch", "soon"], "Invalid value for '--watch': 'soon' is not a valid float."),
        (["--count", "3"], "--count needs --watch"),
        (["--watch", "--count", "0"], "Invalid value for '--count': 0 is not in the range x>=1."),
    ],
)
def test_status_watch_options_are_checked(sqs: SQSClient, args: list[str], message: str) -> None:
    result = invoke("status", *args)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1].startswith(f"Error: {message}")


def test_status_watch_of_an_unreachable_endpoint_is_one_clear_line(fake_credentials: None) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = invoke("status", "--watch", "--endpoint-url", endpoint)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        f"Error: cannot reach SQS at {endpoint} (is the local SQS running? make sqs)"
    )
