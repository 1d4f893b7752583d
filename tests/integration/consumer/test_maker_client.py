"""The maker client: answers classified, Retry-After read, against stand-in makers over HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate

import pytest

from devtools.stack import free_port
from tests.helpers import ScriptedMaker, wait_until
from widgets.consumer.maker_client import FAILING, OVERLOADED, UNREACHABLE, MakerClient, parse_retry_after
from widgets.consumer.observer import Observer
from widgets.consumer.widget_adapter import widget_call
from widgets.messages import OK, REJECTED, RETRY

VALID_ID = "31f37378-54f4-11e5-ad75-3c970e65f731"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("2", 2.0), ("0", 0.0), (None, None), ("soon", None), ("99999999", 43200.0), (" 5 ", 5.0)],
)
def test_retry_after_in_seconds(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_as_an_http_date() -> None:
    assert parse_retry_after(formatdate(1000.0 + 30, usegmt=True), now=lambda: 1000.0) == 30.0
    assert parse_retry_after(formatdate(1000.0 - 30, usegmt=True), now=lambda: 1000.0) == 0.0


@pytest.mark.parametrize(
    ("code", "status", "failure"),
    [
        (201, OK, None),
        (200, OK, None),
        (422, REJECTED, None),
        (500, RETRY, FAILING),
        (502, RETRY, FAILING),
        (401, RETRY, FAILING),
        (429, RETRY, OVERLOADED),
        (503, RETRY, OVERLOADED),
    ],
)
def test_answers_are_classified(
    scripted_maker: tuple[ScriptedMaker, str], code: int, status: str, failure: str | None
) -> None:
    script, url = scripted_maker
    script.status = code
    answer = MakerClient(url=url, timeout=2).send(widget_call(VALID_ID, "message-1"))
    assert (answer.status, answer.failure, answer.code) == (status, failure, code)


def test_retry_after_header_is_read(scripted_maker: tuple[ScriptedMaker, str]) -> None:
    script, url = scripted_maker
    script.status = 429
    script.headers = {"Retry-After": "2"}
    answer = MakerClient(url=url, timeout=2).send(widget_call(VALID_ID, "message-1"))
    assert answer.retry_after == 2.0


def test_no_connection_is_unreachable() -> None:
    client = MakerClient(url=f"http://127.0.0.1:{free_port()}/add", timeout=2)
    assert client.send(widget_call(VALID_ID, "message-1")).failure == UNREACHABLE
    assert client.healthy() is False


def test_a_slow_maker_is_a_failing_call(scripted_maker: tuple[ScriptedMaker, str]) -> None:
    script, url = scripted_maker
    script.delay = 0.5
    answer = MakerClient(url=url, timeout=0.1).send(widget_call(VALID_ID, "message-1"))
    assert (answer.status, answer.failure) == (RETRY, FAILING)


class Calls(Observer):
    """An observer keeping the maker calls it hears of."""

    def __init__(self) -> None:
        """Start with none."""
        self.calls: list[tuple[int | None, str | None, float]] = []

    def maker_call(self, code: int | None, no_answer: str | None, seconds: float) -> None:
        """Keep the call."""
        self.calls.append((code, no_answer, seconds))


def test_each_call_is_reported_with_its_answer_and_time(scripted_maker: tuple[ScriptedMaker, str]) -> None:
    script, url = scripted_maker
    observer = Calls()
    client = MakerClient(url=url, timeout=0.5, observer=observer)
    client.send(widget_call(VALID_ID, "message-1"))
    script.status = 500
    client.send(widget_call(VALID_ID, "message-2"))
    script.delay = 1.0
    client.send(widget_call(VALID_ID, "message-3"))
    MakerClient(url=f"http://127.0.0.1:{free_port()}/add", timeout=2, observer=observer).send(
        widget_call(VALID_ID, "message-4")
    )
    assert [(code, no_answer) for code, no_answer, _ in observer.calls] == [
        (201, None),
        (500, None),
        (None, "timeout"),
        (None, "unreachable"),
    ]
    assert 0.5 <= observer.calls[2][2] < 1.0
    assert client.in_flight == 0


def test_calls_under_way_are_counted(scripted_maker: tuple[ScriptedMaker, str]) -> None:
    script, url = scripted_maker
    script.delay = 0.5
    client = MakerClient(url=url, timeout=2)
    seen: list[int] = []
    with ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(client.send, widget_call(VALID_ID, f"message-{n}")) for n in range(3)]
        wait_until(lambda: len(script.requests) == 3)
        seen.append(client.in_flight)
        assert [call.result().status for call in calls] == [OK] * 3
    assert seen == [3]
    assert client.in_flight == 0


def test_each_thread_keeps_one_connection_alive(scripted_maker: tuple[ScriptedMaker, str]) -> None:
    script, url = scripted_maker
    script.keep_alive = True
    client = MakerClient(url=url, timeout=2)
    for n in range(3):
        assert client.send(widget_call(VALID_ID, f"message-{n}")).status == OK
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(client.send, widget_call(VALID_ID, "message-3")).result().status == OK
    clients = [request["client"] for request in script.requests]
    assert clients[0] == clients[1] == clients[2] != clients[3]


def test_a_connection_the_maker_closed_is_replaced(scripted_maker: tuple[ScriptedMaker, str]) -> None:
    script, url = scripted_maker
    script.keep_alive = True
    script.drop_after_answer = True  # the client still thinks the connection is open
    client = MakerClient(url=url, timeout=2)
    answers = [client.send(widget_call(VALID_ID, f"message-{n}")) for n in range(3)]
    assert [answer.status for answer in answers] == [OK] * 3
    assert [r["headers"]["Idempotency-Key"] for r in script.requests] == [f"message-{n}" for n in range(3)]
    assert len({r["client"] for r in script.requests}) == 3


def test_the_maker_is_called_through_the_environments_proxy(
    scripted_maker: tuple[ScriptedMaker, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    script, proxy_url = scripted_maker  # the stand-in plays the proxy: it sees the request line
    proxy = proxy_url.removesuffix("/add").replace("http://", "http://user:s%40cret@")
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "")
    answer = MakerClient(url="http://maker.example:8080/add", timeout=2).send(
        widget_call(VALID_ID, "message-1")
    )
    assert answer.status == OK
    [request] = script.requests
    assert request["path"] == "http://maker.example:8080/add"
    assert request["headers"]["Proxy-Authorization"] == "Basic dXNlcjpzQGNyZXQ="  # user:s@cret


def test_no_proxy_is_honoured(
    scripted_maker: tuple[ScriptedMaker, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    script, url = scripted_maker
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert MakerClient(url=url, timeout=2).send(widget_call(VALID_ID, "message-1")).status == OK
    assert script.requests[0]["path"] == "/add"
