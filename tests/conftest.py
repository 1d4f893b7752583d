"""Fixtures: moto's in-process SQS with the three queues, the maker app, stand-in HTTP servers,
which local SQS servers the end-to-end tests run on, and a throwaway PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from flask import Flask
from flask.testing import FlaskClient
from moto import mock_aws
from werkzeug.serving import make_server

from devtools.postgres import FAST_SETTINGS, PostgresServer, server_version, unavailable_reason
from devtools.stack import FAUXQS_HINT, local_sqs_kinds, local_sqs_version
from tests.helpers import ScriptedMaker, local_sqs_kinds_to_test, serve_in_thread
from widgets.maker import create_app
from widgets.sqs import DEAD_LETTER_QUEUE, REQUEST_QUEUE, RESPONSE_QUEUE, QueueUrls, ensure_queues

REGION = "us-east-1"


def pytest_report_header() -> list[str]:
    """Say at the top of the run which local SQS servers the end-to-end tests use, and which PostgreSQL."""
    kinds = ", ".join(f"{kind} {local_sqs_version(kind)}" for kind in local_sqs_kinds_to_test())
    missing = "" if "fauxqs" in local_sqs_kinds() else f" (fauxqs is not installed: {FAUXQS_HINT})"
    reason = unavailable_reason()
    postgres = f"PostgreSQL {server_version()}" if reason is None else f"none, those tests skip: {reason}"
    return [f"local SQS for the end-to-end tests: {kinds}{missing}", f"PostgreSQL store tests: {postgres}"]


E2E = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e/ as e2e (real processes), so -m "not e2e" runs the rest."""
    for item in items:
        if item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(params=local_sqs_kinds_to_test())
def sqs_kind(request: pytest.FixtureRequest) -> str:
    """Each local SQS server implementation, in turn, so no test depends on one emulator's quirks."""
    return str(request.param)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and a region, and nothing of the developer's own AWS setup."""
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SQS",
        "AWS_PROFILE",
        "WIDGET_MAKER_TOKEN",
        "WEBHOOK_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def sqs(aws_env: None) -> Iterator[Any]:
    """An SQS client on moto's in-process mock."""
    with mock_aws():
        yield boto3.client("sqs", region_name=REGION)


@pytest.fixture
def queues(sqs: Any) -> QueueUrls:
    """The three queues, created as the consumer creates them (max receives 3)."""
    return ensure_queues(sqs, REQUEST_QUEUE, RESPONSE_QUEUE, DEAD_LETTER_QUEUE, max_receives=3)


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    """The maker app on a fresh database."""
    return create_app({"TESTING": True, "DATABASE": str(tmp_path / "widgets.db"), "TOKEN": None})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the maker app."""
    return app.test_client()


@pytest.fixture
def maker_url(app: Flask) -> Iterator[str]:
    """The real maker app served over HTTP on a free port; yields its /add URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    stop = serve_in_thread(server)
    yield f"http://127.0.0.1:{server.port}/add"
    stop()


@pytest.fixture
def scripted_maker() -> Iterator[tuple[ScriptedMaker, str]]:
    """A stand-in maker over HTTP; yields it and its /add URL."""
    script = ScriptedMaker()

    class Handler(BaseHTTPRequestHandler):
        def setup(self) -> None:
            super().setup()
            self.protocol_version = "HTTP/1.1" if script.keep_alive else "HTTP/1.0"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            received = self.rfile.read(length)
            script.requests.append(
                {
                    "body": received,
                    "headers": dict(self.headers),
                    "at": time.monotonic(),
                    "path": self.path,
                    "client": self.client_address,
                }
            )
            if script.stopped.wait(script.delay):
                return
            body = json.dumps({"error": "scripted"}).encode()
            try:
                self.send_response(script.status_for(received) or script.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in script.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = self.close_connection or script.drop_after_answer
            except (BrokenPipeError, ConnectionResetError):
                pass  # the consumer stopped waiting (its HTTP timeout), as some tests make it

        def do_GET(self) -> None:
            # /healthz: up, whatever the scripted answer to POSTs (the breaker's probe).
            self.send_response(200 if self.path == "/healthz" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stop = serve_in_thread(server)
    yield script, f"http://127.0.0.1:{server.server_address[1]}/add"
    script.stopped.set()
    stop()


def new_postgres() -> PostgresServer:
    """Start a throwaway PostgreSQL, or skip the test (in one line saying how to install it)."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer(settings=FAST_SETTINGS)
    try:
        server.start()
    except BaseException:
        server.remove()
        raise
    return server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server shared by this test process's tests (one per xdist worker), removed at the end."""
    server = new_postgres()
    yield server
    server.remove()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for one test alone, which it may stop and start; removed at the end."""
    server = new_postgres()
    yield server
    server.remove()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """The URL of a new, empty database on the shared PostgreSQL server."""
    return postgres.create_database(f"test_{uuid.uuid4().hex[:16]}")
