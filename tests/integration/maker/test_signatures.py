"""The maker checks Standard Webhooks signatures when it has secrets: the reference library signs here."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from tests.helpers import WEBHOOK_SECRETS as SECRETS
from widgets.maker import create_app

WIDGET_ID = "31f37378-54f4-11e5-ad75-3c970e65f731"


def signed(secret: str, body: str, age: timedelta = timedelta(0)) -> dict[str, str]:
    """Return the headers of a call signed by the reference library with secret, made age ago."""
    at = datetime.now(tz=UTC) - age
    signature = Webhook(secret).sign("msg_1", at, body)
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ("first", 201),
        ("second", 201),  # during a rotation either secret is accepted
        ("none", 401),
        ("other", 401),
        ("six minutes old", 401),
    ],
)
def test_post_add_needs_a_valid_signature(tmp_path: Path, headers: str, status: int) -> None:
    app = create_app({"DATABASE": str(tmp_path / "w.db"), "TOKEN": None, "WEBHOOK_SECRETS": SECRETS})
    body = json.dumps({"widget_id": WIDGET_ID})
    other = "whsec_" + "b3RoZXIgc2VjcmV0IG9mIHNvbWVib2R5IGVsc2U="
    chosen = {
        "first": signed(SECRETS[0], body),
        "second": signed(SECRETS[1], body),
        "none": {},
        "other": signed(other, body),
        "six minutes old": signed(SECRETS[0], body, timedelta(minutes=6)),
    }[headers]
    answer = app.test_client().post("/add", data=body, content_type="application/json", headers=chosen)
    assert answer.status_code == status
    if status == 401:
        assert answer.get_json()["error"] == "missing or bad webhook signature"


def test_without_secrets_nothing_is_checked(tmp_path: Path) -> None:
    app = create_app({"DATABASE": str(tmp_path / "w.db"), "TOKEN": None, "WEBHOOK_SECRETS": ()})
    answer = app.test_client().post("/add", json={"widget_id": WIDGET_ID})
    assert answer.status_code == 201
