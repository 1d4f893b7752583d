"""The maker's GET /metrics: its counts match the requests made, through the test client and over HTTP."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import RequestKey, request_counts, scrape, value
from widgets.maker import create_app


def get_metrics(client: FlaskClient) -> str:
    """Scrape the app's metrics through the test client."""
    answer = client.get("/metrics")
    assert answer.status_code == 200
    return answer.get_data(as_text=True)


def test_counts_match_the_requests_made(client: FlaskClient) -> None:
    first, second = str(uuid.uuid1()), str(uuid.uuid1())
    made: Counter[RequestKey] = Counter()
    for widget_id, status in [(first, "201"), (second, "201"), (first, "200"), (first, "200")]:
        assert client.post("/add", json={"widget_id": widget_id}).status_code == int(status)
        made["/add", "POST", status] += 1
    for bad in ["not-a-uuid", str(uuid.uuid4()), first.upper()]:
        assert client.post("/add", json={"widget_id": bad}).status_code == 422
        made["/add", "POST", "422"] += 1
    assert client.post("/add", data="{", content_type="application/json").status_code == 400
    made["/add", "POST", "400"] += 1
    assert client.get(f"/widget/{first}").status_code == 200
    assert client.get(f"/widget/{uuid.uuid1()}").status_code == 404
    made["/widget/<widget_id>", "GET", "200"] += 1
    made["/widget/<widget_id>", "GET", "404"] += 1
    for path in ("/nowhere", "/widget/a/b"):
        assert client.get(path).status_code == 404
        made["unmatched", "GET", "404"] += 1
    assert client.get("/add").status_code == 405
    made["unmatched", "GET", "405"] += 1
    assert client.get("/healthz").status_code == 200
    made["/healthz", "GET", "200"] += 1

    text = get_metrics(client)
    assert request_counts(text) == made
    assert value(text, "widget_maker_widgets_created_total") == 2
    assert value(text, "widget_maker_idempotent_repeats_total") == 2
    # Routes are URL rules: no widget id or raw path becomes a label value.
    assert first not in text
    assert "/nowhere" not in text
    durations = scrape(text)["widget_maker_request_duration_seconds_count"]
    by_route: Counter[tuple[str, str]] = Counter()
    for (route, method, _), count in made.items():
        by_route[route, method] += count
    assert {(dict(k)["route"], dict(k)["method"]): v for k, v in durations.items()} == by_route
    assert all(v > 0 for v in scrape(text)["widget_maker_request_duration_seconds_sum"].values())


def test_a_scrape_counts_the_scrapes_before_it(client: FlaskClient) -> None:
    assert ("/metrics", "GET", "200") not in request_counts(get_metrics(client))
    get_metrics(client)
    assert request_counts(get_metrics(client))["/metrics", "GET", "200"] == 2


def test_a_made_up_method_is_counted_as_other(client: FlaskClient) -> None:
    for method in ("BREW", "WHEN", "DELETE"):
        assert client.open("/add", method=method).status_code == 405
    counts = request_counts(get_metrics(client))
    assert counts == {("unmatched", "other", "405"): 2, ("unmatched", "DELETE", "405"): 1}


def test_requests_refused_for_the_token_are_counted_and_metrics_need_none(tmp_path: Path) -> None:
    client = create_app({"DATABASE": str(tmp_path / "w.db"), "TOKEN": "s3cret"}).test_client()
    assert client.post("/add", json={"widget_id": str(uuid.uuid1())}).status_code == 401
    text = get_metrics(client)
    assert request_counts(text) == {("/add", "POST", "401"): 1}
    assert value(text, "widget_maker_widgets_created_total") == 0
    assert "s3cret" not in text


def test_each_app_counts_on_its_own(app: Flask, tmp_path: Path) -> None:
    other = create_app({"DATABASE": str(tmp_path / "other.db"), "TOKEN": None})
    app.test_client().post("/add", json={"widget_id": str(uuid.uuid1())})
    assert value(get_metrics(app.test_client()), "widget_maker_widgets_created_total") == 1
    assert value(get_metrics(other.test_client()), "widget_maker_widgets_created_total") == 0


def test_metrics_speak_openmetrics_when_asked(client: FlaskClient) -> None:
    plain = client.get("/metrics")
    assert plain.content_type == "text/plain; version=0.0.4; charset=utf-8"
    asked = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert asked.content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert asked.get_data(as_text=True).endswith("# EOF\n")
