"""The widget maker: a small Flask app that validates widget requests and creates (stores) widgets.

create_app() builds it (defaults, then the environment, then a test's mapping); make_server()
serves it with waitress. widget_maker.py is its command line.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
import warnings
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, render_template_string, request
from flask.typing import ResponseReturnValue
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from werkzeug.exceptions import HTTPException

from widgets.errors import SetupError
from widgets.maker.metrics import MakerMetrics
from widgets.maker.store import Store, StoreUnavailable, open_store
from widgets.messages import is_valid_widget_id

log = logging.getLogger("widget_maker")

# A widget request is about 50 bytes; anything far larger is not one.
MAX_BODY_BYTES = 16 * 1024
# waitress sends what a request thread writes at once when this many bytes wait (its default,
# 1, sends the head and the body of every answer separately, from the request thread). While
# that thread sends, its connection is writable but locked, and waitress's main loop turns on
# select() until the lock is free, taking the GIL from the very thread it waits for: with 10
# connections busy, 35 turns per request (0.5 to 2 ms of CPU, by load) instead of 1.4. With
# 18000 (the default until waitress deprecated the setting in 2019), the main loop sends an
# answer smaller than that (a widget's is about 300 bytes) in one send() once its request is
# done and the lock is free.
SEND_BYTES = 18000
# Seconds a client should wait before trying again while the database does not answer (503): the
# consumer's breaker then probes /healthz after that long, and the pool has connected again by the
# first probe after the database is back.
RETRY_AFTER_SECONDS = 1

INDEX_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Widgets</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: 0.25rem 1rem 0.25rem 0; border-bottom: 1px solid #ddd; }
td { font-family: ui-monospace, monospace; }
</style>
</head>
<body>
<h1>Widgets</h1>
<p>{{ total }} widget{{ "" if total == 1 else "s" }} in all
{%- if widgets %}; the {{ widgets|length }} most recent:{% endif %}</p>
{% if widgets %}
<table>
<thead><tr><th>Widget id</th><th>Created</th><th>Idempotency key</th></tr></thead>
<tbody>
{% for widget in widgets %}
<tr>
<td><a href="/widget/{{ widget.widget_id }}">{{ widget.widget_id }}</a></td>
<td>{{ widget.date_created }}</td>
<td>{{ widget.idempotency_key or "" }}</td>
</tr>
{% endfor %}
</tbody>
</table>
{% endif %}
</body>
</html>
"""


def store() -> Store:
    """Return the app's widget store."""
    widget_store: Store = current_app.extensions["widget_store"]
    return widget_store


def metrics() -> MakerMetrics:
    """Return the app's metrics."""
    app_metrics: MakerMetrics = current_app.extensions["widget_metrics"]
    return app_metrics


def error(status: int, message: str) -> ResponseReturnValue:
    """Return a JSON error response."""
    return jsonify(error=message, status=status), status


def authorized() -> bool:
    """Tell whether the request carries the configured bearer token (always, when none is set)."""
    token: str | None = current_app.config["TOKEN"]
    if not token:
        return True
    sent = request.headers.get("Authorization", "")
    # compare_digest: the time taken must not tell how much of a guess was right.
    return hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())


def signed() -> bool:
    """Tell whether the request carries a valid Standard Webhooks signature (always, without secrets).

    Verified by the specification's reference library, with each configured secret in turn (two
    during a rotation), and a 5-minute tolerance on webhook-timestamp.
    """
    secrets: tuple[str, ...] = current_app.config["WEBHOOK_SECRETS"]
    if not secrets:
        return True
    body = request.get_data(cache=True).decode("utf-8", "replace")
    headers = dict(request.headers.items())
    for secret in secrets:
        try:
            Webhook(secret).verify(body, headers, json_parse=False)
        except (WebhookVerificationError, ValueError, TypeError):  # bad headers raise the latter two
            continue
        return True
    return False


def add_widget() -> ResponseReturnValue:
    """Create the widget named in a JSON {"widget_id": ...} request, once."""
    if not authorized():
        return error(401, "missing or wrong bearer token")
    if not signed():
        return error(401, "missing or bad webhook signature")
    if not request.is_json:
        return error(415, "send the request as Content-Type: application/json")
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # json raises this, not ValueError, for deep nesting
        data = None
    if data is None:
        return error(400, "the body is not valid JSON")
    widget_id = data.get("widget_id") if isinstance(data, dict) else None
    if not isinstance(widget_id, str) or not is_valid_widget_id(widget_id):
        return error(422, "widget_id must be a canonical version-1 UUID string")
    if widget_id in current_app.config["FAIL_WIDGET_IDS"]:
        return error(500, "told to fail this widget id (--fail-widget-id)")
    key = request.headers.get("Idempotency-Key")
    widget, created = store().create(widget_id, key[:200] if key else None)
    if not created:
        metrics().idempotent_repeats.inc()
        log.info("widget_exists widget_id=%s", widget_id, extra={"widget_id": widget_id})
        return jsonify(widget), 200
    metrics().widgets_created.inc()
    # DEBUG: a line per widget made cost about 0.2 ms of the maker's CPU per request, under
    # load; the consumer logs each outcome, and widget_maker_widgets_created_total counts them.
    log.debug("widget_created widget_id=%s", widget_id, extra={"widget_id": widget_id})
    return jsonify(widget), 201, {"Location": f"/widget/{widget_id}"}


def get_widget(widget_id: str) -> ResponseReturnValue:
    """Return a stored widget, or 404."""
    # Only valid ids were ever stored; anything else (a NUL byte, say, which PostgreSQL's text
    # refuses) is not looked up.
    widget = store().get(widget_id) if is_valid_widget_id(widget_id) else None
    if widget is None:
        return error(404, "no such widget")
    return jsonify(widget)


def healthz() -> ResponseReturnValue:
    """Answer that the maker is up and its database answers (503, from store_unavailable, if not)."""
    store().ping()
    return jsonify(status="ok")


def metrics_page() -> ResponseReturnValue:
    """Answer the app's metrics in the Prometheus text format (or OpenMetrics, if asked for)."""
    body, content_type = metrics().render(request.headers.get("Accept"))
    return Response(body, content_type=content_type)


def start_timer() -> None:
    """Note when the request started, for its latency."""
    g.request_started = time.perf_counter()


def count_request(response: Response) -> Response:
    """Count the answered request by its URL rule (never the raw path: labels stay bounded)."""
    started = g.pop("request_started", None)
    seconds = time.perf_counter() - started if started is not None else None
    rule = request.url_rule.rule if request.url_rule is not None else None
    metrics().observe_request(rule, request.method, response.status_code, seconds)
    return response


def index() -> ResponseReturnValue:
    """Show the most recent widgets as a plain HTML page."""
    return render_template_string(INDEX_TEMPLATE, widgets=store().recent(50), total=store().count())


def http_error(exception: HTTPException) -> ResponseReturnValue:
    """Answer every HTTP error (404, 405, 413, ...) with a JSON body instead of HTML."""
    return error(exception.code or 500, exception.description or exception.name)


def store_unavailable(exception: StoreUnavailable) -> ResponseReturnValue:
    """Answer 503 with Retry-After while the database does not answer (the store logs the outage once)."""
    body = jsonify(error="the database does not answer; try again later", status=503)
    return body, 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the widget maker app: defaults, then the environment, then test_config."""
    app = Flask(__name__)
    app.config.from_mapping(
        DATABASE=os.environ.get("WIDGET_MAKER_DB", "widgets.db"),
        # Connections a PostgreSQL store may hold at once: one per request served at once.
        DATABASE_CONNECTIONS=16,
        TOKEN=os.environ.get("WIDGET_MAKER_TOKEN") or None,
        # Standard Webhooks secrets (whsec_...), whitespace-separated: calls must be signed with one.
        WEBHOOK_SECRETS=tuple(os.environ.get("WEBHOOK_SECRET", "").split()),
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        FAIL_WIDGET_IDS=frozenset(),
    )
    if test_config is not None:
        app.config.update(test_config)
    app.extensions["widget_store"] = open_store(app.config["DATABASE"], app.config["DATABASE_CONNECTIONS"])
    app.extensions["widget_metrics"] = MakerMetrics()
    app.before_request(start_timer)
    app.after_request(count_request)
    app.add_url_rule("/add", view_func=add_widget, methods=["POST"])
    app.add_url_rule("/widget/<widget_id>", view_func=get_widget)
    app.add_url_rule("/healthz", view_func=healthz)
    app.add_url_rule("/metrics", view_func=metrics_page)
    app.add_url_rule("/", view_func=index)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(StoreUnavailable, store_unavailable)
    return app


def make_server(app: Flask, host: str, port: int, threads: int) -> Any:
    """Return a waitress server of app listening on host:port (SetupError if it cannot listen)."""
    import waitress

    try:
        with warnings.catch_warnings():
            # Deprecated, still honoured by the pinned waitress (a release without it would
            # refuse to start: "Unknown adjustment"); the warning would only repeat that.
            warnings.filterwarnings("ignore", "send_bytes", DeprecationWarning)
            return waitress.create_server(app, host=host, port=port, threads=threads, send_bytes=SEND_BYTES)
    except OSError as exc:
        raise SetupError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
