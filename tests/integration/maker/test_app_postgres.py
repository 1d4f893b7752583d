"""The maker on PostgreSQL: 503 with Retry-After (never 500) while the database is away, /healthz
saying so, and the connection URL's password kept out of logs, errors and the command line."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from flask import Flask

import widget_maker
from devtools.postgres import PostgresServer
from devtools.stack import free_port
from tests.helpers import wait_until
from widgets.maker import create_app


@pytest.fixture
def pg_app(own_postgres: PostgresServer) -> Iterator[Flask]:
    """The maker app on a PostgreSQL of its own, which the test may stop and start."""
    app = create_app({"TESTING": True, "DATABASE": own_postgres.url(), "TOKEN": None})
    yield app
    app.extensions["widget_store"].close()


def test_the_database_away_is_503_with_retry_after_and_never_500(
    pg_app: Flask, own_postgres: PostgresServer
) -> None:
    client = pg_app.test_client()
    made = str(uuid.uuid1())
    assert client.post("/add", json={"widget_id": made}).status_code == 201
    assert client.get("/healthz").get_json() == {"status": "ok"}
    own_postgres.stop()
    for method, path, body in [
        ("post", "/add", {"widget_id": str(uuid.uuid1())}),
        ("post", "/add", {"widget_id": made}),
        ("get", f"/widget/{made}", None),
        ("get", "/", None),
        ("get", "/healthz", None),
    ]:
        answer = getattr(client, method)(path, json=body)
        assert answer.status_code == 503, path
        assert answer.headers["Retry-After"] == "1"
        assert answer.get_json() == {"error": "the database does not answer; try again later", "status": 503}
    assert client.post("/add", json={"widget_id": "not-an-id"}).status_code == 422  # no database needed
    own_postgres.start()
    wait_until(lambda: client.get("/healthz").status_code == 200, 20, "the maker did not reconnect")
    assert client.post("/add", json={"widget_id": made}).status_code == 200
    assert client.post("/add", json={"widget_id": str(uuid.uuid1())}).status_code == 201
    assert pg_app.extensions["widget_store"].count() == 2


def test_help_says_where_the_password_goes() -> None:
    result = CliRunner().invoke(widget_maker.main, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "postgresql://USER@HOST:PORT/DBNAME" in text
    assert "PGPASSWORD or ~/.pgpass, or the whole URL in WIDGET_MAKER_DB" in text


def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    url = f"postgresql://widgets:s3cret@127.0.0.1:{free_port()}/widgets"
    result = CliRunner().invoke(widget_maker.main, ["--port", "0"], env={"WIDGET_MAKER_DB": url})
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith("Error: cannot reach the database at postgresql://widgets:***@127.0.0.1:")
    assert "s3cret" not in result.output


def test_a_malformed_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(widget_maker.main, ["--db", "postgresql://[::1"])
    assert result.exit_code == 2
    assert "Invalid value for --db: not a PostgreSQL URL" in result.output
