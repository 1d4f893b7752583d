"""devtools/webhook_receiver.py: real HTTP calls, signed with Standard Webhooks' reference library
(Webhook.sign), verified by the receiver with the same library; secrets in rotation; the reject field."""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from devtools.stack import PYTHON, Process
from devtools.webhook_receiver import SECRET_ENV, WebhookReceiver, secrets_from_env

OLD = "whsec_" + base64.b64encode(b"the secret the relay signed with yesterday").decode()
NEW = "whsec_" + base64.b64encode(b"the secret it signs with from today on!").decode()
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def signed_headers(
    body: str, secrets: Sequence[str], msg_id: str = "msg-1", at: datetime | None = None
) -> dict[str, str]:
    """Return the Standard Webhooks headers for body, one v1 signature per secret, made by Webhook.sign."""
    at = at or datetime.now(tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(Webhook(secret).sign(msg_id, at, body) for secret in secrets),
    }


def post(receiver: WebhookReceiver, body: str, headers: dict[str, str]) -> requests.Response:
    """POST body (UTF-8) to the receiver's /hook with the headers."""
    return requests.post(f"{receiver.url}/hook", data=body.encode("utf-8"), headers=headers, timeout=5)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A receiver checking signatures with NEW, rejecting JSON objects whose "reject" is true."""
    with WebhookReceiver(secrets=[NEW], reject_field="reject") as started:
        yield started


def test_a_call_signed_by_the_reference_library_is_verified(receiver: WebhookReceiver) -> None:
    body = json.dumps({"order": 17, "note": "Grüße aus Köln, 東京"}, ensure_ascii=False)
    headers = {"Content-Type": "application/json", "traceparent": TRACEPARENT, **signed_headers(body, [NEW])}

    answer = post(receiver, body, headers)

    assert (answer.status_code, answer.json()) == (200, {"received": "msg-1"})
    [call] = receiver.calls
    assert (call.method, call.path, call.verified) == ("POST", "/hook", True)
    assert call.body == body.encode("utf-8")
    assert call.headers["traceparent"] == TRACEPARENT
    assert call.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda body: signed_headers(body, [OLD]), id="another-secret"),
        pytest.param(lambda body: signed_headers(body + " ", [NEW]), id="body-changed"),
        pytest.param(lambda body: {**signed_headers(body, [NEW]), "webhook-id": "msg-2"}, id="id-changed"),
        pytest.param(
            lambda body: {**signed_headers(body, [NEW]), "webhook-signature": "v1,bm9wZQ=="}, id="bad"
        ),
        pytest.param(
            lambda body: {**signed_headers(body, [NEW]), "webhook-signature": "nonsense"}, id="garbled"
        ),
        pytest.param(lambda body: {"webhook-id": "msg-1"}, id="unsigned"),
        pytest.param(
            lambda body: signed_headers(body, [NEW], at=datetime.now(tz=UTC) - timedelta(minutes=6)),
            id="six-minutes-old",
        ),
    ],
)
def test_a_call_whose_signature_fails_gets_401(
    receiver: WebhookReceiver, headers: Callable[[str], dict[str, str]]
) -> None:
    body = '{"order": 18}'

    answer = post(receiver, body, headers(body))

    assert answer.status_code == 401
    assert [call.verified for call in receiver.calls] == [False]


def test_during_a_rotation_either_secret_verifies() -> None:
    body = '{"order": 19}'
    with WebhookReceiver(secrets=[OLD, NEW]) as both, WebhookReceiver(secrets=[NEW]) as new_only:
        # the receiver knows both secrets while the relay moves from one to the other
        assert post(both, body, signed_headers(body, [OLD])).status_code == 200
        assert post(both, body, signed_headers(body, [NEW])).status_code == 200
        # the relay signs with both: a receiver that knows only one of them still verifies the call
        assert post(new_only, body, signed_headers(body, [OLD, NEW])).status_code == 200
        assert post(new_only, body, signed_headers(body, [OLD])).status_code == 401
    assert [call.verified for call in both.calls + new_only.calls] == [True, True, True, False]


def test_a_json_object_whose_reject_field_is_true_gets_422(receiver: WebhookReceiver) -> None:
    bodies = {
        '{"order": 20, "reject": true}': 422,
        '{"order": 21, "reject": false}': 200,
        '[{"reject": true}]': 200,
        "reject: true (plain text)": 200,
    }
    for body, status in bodies.items():
        assert post(receiver, body, signed_headers(body, [NEW])).status_code == status, body
    assert all(call.verified for call in receiver.calls)


def test_the_secrets_come_from_the_environment_whitespace_separated() -> None:
    assert secrets_from_env({SECRET_ENV: f"  {OLD}\n {NEW} "}) == [OLD, NEW]
    assert secrets_from_env({}) == []


def test_the_command_line_says_where_it_listens_and_stops_on_sigterm() -> None:
    argv = [PYTHON, "-m", "devtools.webhook_receiver", "--port", "0", "--reject-field", "reject"]
    process = Process("receiver", argv, env={SECRET_ENV: f"{OLD} {NEW}"})
    try:
        url = process.wait_for(r"listening on (http://127\.0\.0\.1:\d+) \(signatures checked with 2").group(1)
        body = '{"order": 22, "reject": true}'
        answer = requests.post(f"{url}/orders", data=body, headers=signed_headers(body, [OLD]), timeout=5)
        assert answer.status_code == 422
        process.wait_for(r"-> 422")
        assert "POST /orders  signature verified" in process.output()
        process.signal(signal.SIGTERM)
        assert process.popen.wait(timeout=10) == 0
    finally:
        process.stop()
