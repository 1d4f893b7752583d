"""The widget face of the relay: what makes the consumer the widget consumer (widget_consumer.py).

A request is {"WidgetId": "<uuid>"}; its call is a POST of {"widget_id": ...} to the maker's
/add, with the maker's token if one is set; the breaker probes the maker's /healthz; an outcome
report names the widget id and, for OK, carries the widget the maker answered.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from widgets.consumer.handling import Outcome
from widgets.consumer.maker_client import Call
from widgets.messages import Received, parse_request, response_body


def widget_call(widget_id: str, request_id: str, token: str | None = None) -> Call:
    """Return the maker call that makes widget_id for the request request_id."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return Call(request_id, json.dumps({"widget_id": widget_id}).encode(), headers, widget_id)


def maker_health_url(maker_url: str) -> str:
    """Return the maker's health URL: /healthz on the host of its add URL."""
    parsed = urlsplit(maker_url)
    return f"{parsed.scheme}://{parsed.netloc}/healthz"


class WidgetAdapter:
    """Widget requests to the maker, widget outcomes to the response queue."""

    subject_field: str | None = "widget_id"

    def __init__(self, token: str | None = None) -> None:
        """Call the maker with token, if one is set (WIDGET_MAKER_TOKEN)."""
        self.token = token

    def request(self, message: Received) -> Call:
        """Return the maker call of a widget request; InvalidRequest if it is not one."""
        return widget_call(parse_request(message.body), message.request_id, self.token)

    def report(self, message: Received, outcome: Outcome) -> str:
        """Return the response reporting a request's outcome, with the widget for OK."""
        return response_body(
            message.request_id,
            outcome.widget_id,
            outcome.status,
            message.receive_count,
            outcome.reason,
            outcome.widget,
        )
