"""The endpoint (widgets/consumer/endpoint.py) serving the metrics and the health verdict over HTTP."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import requests

from widgets.consumer.endpoint import Endpoint
from widgets.consumer.health import Health


@pytest.fixture
def endpoint() -> Any:
    """An endpoint on a free port of 127.0.0.1, serving fixed metrics and an unhealthy verdict."""
    served = Endpoint(host="127.0.0.1", port=0)
    asked: list[str | None] = []

    def metrics(accept: str | None) -> tuple[bytes, str]:
        asked.append(accept)
        return b"widget_consumer_outbox_backlog 3.0\n", "text/plain; version=0.0.4; charset=utf-8"

    served.start(metrics=metrics, health=lambda: Health(503, {"status": "unhealthy", "reason": "test"}))
    yield served, asked
    served.stop()


def test_endpoint_serves_metrics_and_health(endpoint: Any) -> None:
    served, asked = endpoint
    assert served.url == f"http://127.0.0.1:{served.port}"
    answer = requests.get(f"{served.url}/metrics", headers={"Accept": "text/plain"}, timeout=5)
    assert (answer.status_code, answer.text) == (200, "widget_consumer_outbox_backlog 3.0\n")
    assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert asked == ["text/plain"]
    health = requests.get(f"{served.url}/healthz?verbose=1", timeout=5)
    assert (health.status_code, health.json()) == (503, {"status": "unhealthy", "reason": "test"})
    assert health.headers["Content-Type"] == "application/json"
    assert requests.get(f"{served.url}/", timeout=5).status_code == 404


def test_endpoint_refuses_a_port_in_use_and_frees_its_own() -> None:
    first = Endpoint(host="127.0.0.1", port=0)
    with pytest.raises(OSError):
        Endpoint(host="127.0.0.1", port=first.port)
    first.start(metrics=lambda accept: (b"", "text/plain"), health=lambda: Health(200, {}))
    first.stop()
    with socket.socket() as again:
        again.bind(("127.0.0.1", first.port))
