"""The maker client: answers classified, Retry-After read, against stand-in makers over HTTP."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from devtools.stack import free_port
from tests.conftest import ScriptedMaker
from widgets.maker_client import FAILING, OVERLOADED, UNREACHABLE, MakerClient, parse_retry_after
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
    answer = MakerClient(url=url, timeout=2, workers=1).create(VALID_ID, "message-1")
    assert (answer.status, answer.failure, answer.code) == (status, failure, code)


def test_retry_after_header_is_read(scripted_maker: tuple[ScriptedMaker, str]) -> None:
    script, url = scripted_maker
    script.status = 429
    script.headers = {"Retry-After": "2"}
    answer = MakerClient(url=url, timeout=2, workers=1).create(VALID_ID, "message-1")
    assert answer.retry_after == 2.0


def test_no_connection_is_unreachable() -> None:
    client = MakerClient(url=f"http://127.0.0.1:{free_port()}/add", timeout=2, workers=1)
    assert client.create(VALID_ID, "message-1").failure == UNREACHABLE
    assert client.healthy() is False


def test_a_slow_maker_is_a_failing_call(scripted_maker: tuple[ScriptedMaker, str]) -> None:
    script, url = scripted_maker
    script.delay = 0.5
    answer = MakerClient(url=url, timeout=0.1, workers=1).create(VALID_ID, "message-1")
    assert (answer.status, answer.failure) == (RETRY, FAILING)
