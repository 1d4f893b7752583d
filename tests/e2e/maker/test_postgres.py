"""End to end on PostgreSQL: makers as real processes on one database, killed with SIGKILL, and the
database itself stopped mid-run; each widget is made once, and nothing is lost or FAILED."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import requests

from devtools.postgres import PostgresServer
from devtools.stack import PYTHON, Process, free_port, start_consumer, start_maker, start_sqs, wait_http
from tests.helpers import wait_until
from widgets.maker.postgres import PostgresStore
from widgets.messages import new_widget_id
from widgets.producer import send_requests
from widgets.sqs import DEAD_LETTER_QUEUE, REQUEST_QUEUE, RESPONSE_QUEUE, ensure_queues, make_client

pytestmark = pytest.mark.e2e

# Short timings, and --max-rate so that the run lasts long enough for a crash and an outage in the
# middle of it. Two receives a request, a second apart: a 503 counted against a request would end
# it FAILED within two seconds.
FAST = [
    *("--wait-time", "1", "--visibility-timeout", "3", "--http-timeout", "2"),
    *("--retry-delay", "1", "--max-receives", "2", "--max-rate", "10"),
]
COUNT = 100
# Two and a half times the retry window of --max-receives 2 x --retry-delay 1 (as the small chaos
# run's 6 s outage is two of its 3 s windows): before the breaker, an outage that long made FAILED.
OUTAGE_SECONDS = 5.0


def rows(url: str) -> int:
    """Return how many widgets the database holds (-1 while it does not answer)."""
    try:
        with psycopg.connect(url, connect_timeout=2) as connection:
            row = connection.execute("SELECT count(*) FROM widgets").fetchone()
    except psycopg.OperationalError:
        return -1
    return int(row[0]) if row is not None else 0


def post_until_answered(base: str, widget_id: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """POST a widget by hand, again while the maker is away or answers 503; return the 2xx answer."""

    def answered() -> tuple[int, dict[str, Any]] | None:
        try:
            answer = requests.post(f"{base}/add", json={"widget_id": widget_id}, timeout=5)
        except requests.ConnectionError:
            return None  # the maker is being restarted
        if answer.status_code in (200, 201):
            return answer.status_code, answer.json()
        assert answer.status_code == 503, answer.text  # never 500
        return None

    made: tuple[int, dict[str, Any]] = wait_until(answered, timeout, f"{widget_id} not made by {base}", 0.2)
    return made


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """The processes a test starts, stopped at its end in reverse order."""
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop(timeout=5)


def test_a_maker_killed_mid_request_leaves_nothing_half_made(pg_url: str, processes: list[Process]) -> None:
    maker, base = start_maker(pg_url)
    processes.append(maker)
    widget_ids = [new_widget_id() for _ in range(300)]
    answered: dict[str, tuple[int, dict[str, Any]]] = {}

    def post_all(share: list[str]) -> None:
        session = requests.Session()
        for widget_id in share:
            try:
                answer = session.post(f"{base}/add", json={"widget_id": widget_id}, timeout=5)
            except requests.ConnectionError:
                return  # the maker died under this request
            answered[widget_id] = (answer.status_code, answer.json())

    callers = [threading.Thread(target=post_all, args=(widget_ids[i::8],)) for i in range(8)]
    for caller in callers:
        caller.start()
    wait_until(lambda: len(answered) >= 60, 30, "60 answers")
    maker.kill()
    for caller in callers:
        caller.join()
    assert 60 <= len(answered) < 300
    assert {status for status, _ in answered.values()} == {201}
    # PostgreSQL ends the dead maker's sessions: none is left in a transaction, holding a lock.
    with psycopg.connect(pg_url, autocommit=True) as connection:
        sessions = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'widget_maker'"
        wait_until(lambda: connection.execute(sessions).fetchone() == (0,), 30, "the sessions to end")
    store = PostgresStore(pg_url)
    try:
        for widget_id, (_, widget) in answered.items():
            assert store.get(widget_id) == widget
        # Made or not made, never half: each answer sent again is the one stored, made once.
        maker, base = start_maker(pg_url)
        processes.append(maker)
        with ThreadPoolExecutor(8) as pool:
            again = dict(
                zip(widget_ids, pool.map(lambda w: post_until_answered(base, w), widget_ids), strict=True)
            )
        for widget_id, (status, widget) in again.items():
            if widget_id in answered:
                assert (status, widget) == (200, answered[widget_id][1])
            assert store.get(widget_id) == widget
        assert store.count() == 300
    finally:
        store.close()


def drain_responses(client: Any, url: str) -> list[dict[str, Any]]:
    """Receive and delete every response there is now."""
    found = []
    while messages := client.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        found.extend(json.loads(message["Body"]) for message in messages)
        client.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
    return found


def depth(client: Any, url: str) -> tuple[int, int]:
    """Return (visible, in flight) of a queue."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return int(attributes[names[0]]), int(attributes[names[1]])


@pytest.mark.timeout(150)
def test_two_makers_on_one_postgres_make_each_widget_once_through_a_crash_and_an_outage(
    sqs_kind: str, own_postgres: PostgresServer, processes: list[Process]
) -> None:
    url = own_postgres.url()
    sqs, endpoint = start_sqs(kind=sqs_kind)
    processes.append(sqs)
    makers = [start_maker(url) for _ in range(2)]
    processes.extend(maker for maker, _ in makers)
    bases = [base for _, base in makers]
    client = make_client(None, endpoint)
    urls = ensure_queues(client, REQUEST_QUEUE, RESPONSE_QUEUE, DEAD_LETTER_QUEUE, max_receives=2)
    consumers = [
        start_consumer(endpoint, f"{base}/add", FAST, name=f"consumer-{i}") for i, base in enumerate(bases)
    ]
    processes.extend(consumers)
    widget_ids = [new_widget_id() for _ in range(COUNT)]
    sent = send_requests(client, urls.request, widget_ids)
    assert not sent.failed

    # By hand, meanwhile: each widget POSTed to both makers at once, through the crash and the outage.
    by_hand: dict[str, list[tuple[int, dict[str, Any]]]] = {}

    def post_by_hand() -> None:
        with ThreadPoolExecutor(2) as pool:
            for widget_id in widget_ids:
                posts = [pool.submit(post_until_answered, base, widget_id) for base in bases]
                by_hand[widget_id] = [post.result() for post in posts]
                time.sleep(0.05)

    hand = threading.Thread(target=post_by_hand)
    hand.start()
    try:
        wait_until(lambda: rows(url) >= 20, 30, "20 widgets")
        killed, _ = makers[0]
        killed.kill()  # mid-run: requests of its consumer and by hand in flight
        port = int(bases[0].rsplit(":", 1)[1])
        processes.append(start_maker(url, port=port)[0])
        wait_until(lambda: rows(url) >= 50, 30, "50 widgets")
        own_postgres.stop()
        time.sleep(OUTAGE_SECONDS)  # the outage itself: its length is the scenario, nothing to wait for
        own_postgres.start()
        responses: dict[str, dict[str, Any]] = {}

        def all_answered() -> bool:
            responses.update((r["MessageId"], r) for r in drain_responses(client, urls.response))
            return len(responses) >= COUNT

        wait_until(all_answered, 60, f"{COUNT} responses")
    finally:
        hand.join()
    assert set(responses) == {message_id for message_id, _ in sent.sent}
    assert {r["Status"] for r in responses.values()} == {"OK"}
    assert {r["WidgetId"] for r in responses.values()} == set(widget_ids)
    for consumer in consumers:
        assert " FAILED " not in consumer.output()
        assert "breaker_open" in consumer.output()  # the crash or the outage reached it mid-run
    assert depth(client, urls.request) == (0, 0)
    assert depth(client, urls.dead_letter) == (0, 0)
    # One row each, and every answer, whoever got it from whichever maker, is that row.
    store = PostgresStore(url)
    try:
        assert store.count() == COUNT
        for response in responses.values():
            assert response["Widget"] == store.get(response["WidgetId"])
        for widget_id, answers in by_hand.items():
            assert [widget for _, widget in answers] == [store.get(widget_id)] * 2
            assert [status for status, _ in answers].count(201) <= 1
    finally:
        store.close()


@pytest.mark.e2e
def test_the_password_is_never_logged_nor_on_the_command_line(postgres: PostgresServer) -> None:
    # Trust authentication: the server asks for no password, so any will do to connect.
    with_password = postgres.url().replace("widgets@", "widgets:s3cret@")
    maker, _ = start_maker(with_password)
    try:
        with open(f"/proc/{maker.popen.pid}/cmdline", "rb") as cmdline:
            assert b"s3cret" not in cmdline.read()
        maker.wait_for(r"listening on .*\(db postgresql://widgets:\*\*\*@127\.0\.0\.1:")
    finally:
        maker.stop()
    assert "s3cret" not in maker.output()
    assert "shows in ps" not in maker.output()
    # Given on the command line anyway, the maker says where it belongs instead.
    port = free_port()
    argv = [PYTHON, "widget_maker.py", "--port", str(port), "--db", with_password]
    told = Process("maker", argv)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", process=told)
    finally:
        told.stop()
    assert (
        "the password in --db shows in ps; give it in PGPASSWORD, ~/.pgpass or WIDGET_MAKER_DB"
        in told.output()
    )
    assert told.output().count("s3cret") == 0
