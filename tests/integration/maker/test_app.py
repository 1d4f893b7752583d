"""The widget maker through Flask's test client: creation, idempotency, bad input, the token, the page."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from widgets.maker import create_app
from widgets.maker.app import MAX_BODY_BYTES

SEED_ID = "31f37378-54f4-11e5-ad75-3c970e65f731"


def test_factory_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WIDGET_MAKER_TOKEN", raising=False)
    app = create_app()
    assert app.config["DATABASE"] == "widgets.db"
    assert app.config["TOKEN"] is None
    assert not app.debug
    assert (tmp_path / "widgets.db").exists()


def test_factory_reads_token_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WIDGET_MAKER_TOKEN", "s3cret")
    app = create_app({"DATABASE": str(tmp_path / "w.db")})
    assert app.config["TOKEN"] == "s3cret"


def test_create_widget(client: FlaskClient) -> None:
    answer = client.post("/add", json={"widget_id": SEED_ID}, headers={"Idempotency-Key": "m-1"})
    assert answer.status_code == 201
    assert answer.headers["Location"] == f"/widget/{SEED_ID}"
    widget = answer.get_json()
    assert widget["widget_id"] == SEED_ID
    assert widget["idempotency_key"] == "m-1"
    assert widget["date_created"]
    assert client.get(f"/widget/{SEED_ID}").get_json() == widget


def test_repeated_request_answers_the_stored_widget(client: FlaskClient, app: Flask) -> None:
    first = client.post("/add", json={"widget_id": SEED_ID}, headers={"Idempotency-Key": "m-1"})
    again = client.post("/add", json={"widget_id": SEED_ID}, headers={"Idempotency-Key": "m-2"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json() == first.get_json()
    with sqlite3.connect(app.config["DATABASE"]) as db:
        assert db.execute("SELECT count(*) FROM widgets").fetchone()[0] == 1


def test_widgets_survive_a_new_app(tmp_path: Path) -> None:
    config = {"DATABASE": str(tmp_path / "w.db"), "TOKEN": None}
    create_app(config).test_client().post("/add", json={"widget_id": SEED_ID})
    assert create_app(config).test_client().get(f"/widget/{SEED_ID}").status_code == 200


@pytest.mark.parametrize(
    "payload",
    [
        {"widget_id": "this_is_not_a_valid_widget_id"},
        {"widget_id": SEED_ID.upper()},
        {"widget_id": str(uuid.uuid4())},
        {"widget_id": 12},
        {"widget_id": None},
        {"WidgetId": SEED_ID},
        [SEED_ID],
        "text",
    ],
)
def test_invalid_request_is_422(client: FlaskClient, payload: object) -> None:
    answer = client.post("/add", json=payload)
    assert answer.status_code == 422
    assert "widget_id" in answer.get_json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("post", "/add", {"data": "{not json", "content_type": "application/json"}, 400),
        ("post", "/add", {"data": "null", "content_type": "application/json"}, 400),
        ("post", "/add", {"data": "[" * 5000 + "]" * 5000, "content_type": "application/json"}, 400),
        ("post", "/add", {"data": f'{{"widget_id": "{SEED_ID}"}}', "content_type": "text/plain"}, 415),
        ("post", "/add", {"data": "x" * (MAX_BODY_BYTES + 1), "content_type": "application/json"}, 413),
        ("get", "/add", {}, 405),
        ("get", "/nowhere", {}, 404),
        ("get", f"/widget/{SEED_ID}", {}, 404),
    ],
)
def test_bad_requests_get_json_errors(
    client: FlaskClient, method: str, path: str, kwargs: dict[str, str], status: int
) -> None:
    answer = getattr(client, method)(path, **kwargs)
    assert answer.status_code == status
    assert answer.is_json
    assert answer.get_json()["status"] == status


def test_healthz(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}


@pytest.fixture
def locked_client(tmp_path: Path) -> FlaskClient:
    """A client of a maker that requires a token."""
    return create_app({"DATABASE": str(tmp_path / "w.db"), "TOKEN": "s3cret"}).test_client()


@pytest.mark.parametrize("header", [None, "Bearer wrong", "s3cret", "Bearer s3cret ", "bearer s3cret"])
def test_token_required(locked_client: FlaskClient, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    answer = locked_client.post("/add", json={"widget_id": SEED_ID}, headers=headers)
    assert answer.status_code == 401
    assert locked_client.get(f"/widget/{SEED_ID}").status_code == 404


def test_token_accepted_and_never_logged(
    locked_client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = locked_client.post(
        "/add", json={"widget_id": SEED_ID}, headers={"Authorization": "Bearer s3cret"}
    )
    assert answer.status_code == 201
    assert "widget_created" in caplog.text
    assert "s3cret" not in caplog.text


def test_index_lists_recent_widgets(client: FlaskClient) -> None:
    ids = [str(uuid.uuid1()) for _ in range(3)]
    for widget_id in ids:
        client.post(
            "/add", json={"widget_id": widget_id}, headers={"Idempotency-Key": f"key-{widget_id[:4]}"}
        )
    page = client.get("/")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    assert "3 widgets in all" in text
    for widget_id in ids:
        assert f'<a href="/widget/{widget_id}">{widget_id}</a>' in text
        assert f"key-{widget_id[:4]}" in text


def test_index_escapes_what_clients_sent(client: FlaskClient) -> None:
    client.post("/add", json={"widget_id": SEED_ID}, headers={"Idempotency-Key": "<script>alert(1)</script>"})
    text = client.get("/").get_data(as_text=True)
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_index_empty(client: FlaskClient) -> None:
    assert "0 widgets in all" in client.get("/").get_data(as_text=True)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=2000), content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_no_body_makes_the_maker_fail(client: FlaskClient, body: bytes, content_type: str) -> None:
    answer = client.post("/add", data=body, content_type=content_type)
    assert answer.status_code in (201, 200, 400, 415, 422)
    assert answer.is_json


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=10,
    )
)
def test_no_json_makes_the_maker_fail(client: FlaskClient, payload: object) -> None:
    for body in (payload, {"widget_id": payload}):
        answer = client.post("/add", json=body)
        assert answer.status_code in (400, 415, 422)
        assert answer.is_json


def test_a_widget_id_told_to_fail_gets_500(tmp_path: Path) -> None:
    doomed = "31f37378-54f4-11e5-ad75-3c970e65f731"
    app = create_app({"DATABASE": str(tmp_path / "w.db"), "TOKEN": None, "FAIL_WIDGET_IDS": {doomed}})
    client = app.test_client()
    answer = client.post("/add", json={"widget_id": doomed})
    assert answer.status_code == 500
    assert "--fail-widget-id" in answer.get_json()["error"]
    assert client.post("/add", json={"widget_id": str(uuid.uuid1())}).status_code == 201
    assert app.extensions["widget_store"].count() == 1
