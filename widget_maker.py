"""The widget maker's command line: serve the app of widgets.maker with waitress."""

from __future__ import annotations

import logging

import click
from click.core import ParameterSource

from widgets.cli import CONTEXT_SETTINGS, Command
from widgets.errors import SetupError
from widgets.logs import FORMATS, LEVELS, configure_logging
from widgets.maker import create_app, make_server
from widgets.maker.store import POSTGRES_SCHEMES, StoreUnavailable, masked_url

log = logging.getLogger("widget_maker")


@click.command(cls=Command, context_settings=CONTEXT_SETTINGS)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=5000, show_default=True, help="Port to listen on."
)
@click.option(
    "--db",
    envvar="WIDGET_MAKER_DB",
    default="widgets.db",
    show_default=True,
    help="Where the widgets are stored: an SQLite file, or postgresql://USER@HOST:PORT/DBNAME "
    "for PostgreSQL (shared by many makers).",
)
@click.option(
    "--threads", type=click.IntRange(1, 256), default=16, show_default=True, help="Requests served at once."
)
@click.option(
    "--log-level", type=click.Choice(LEVELS, case_sensitive=False), default="INFO", show_default=True
)
@click.option("--log-format", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option(
    "--fail-widget-id",
    multiple=True,
    metavar="ID",
    help="For demos and tests: answer 500 to every request for this widget id (repeatable).",
)
def main(
    host: str,
    port: int,
    db: str,
    threads: int,
    log_level: str,
    log_format: str,
    fail_widget_id: tuple[str, ...],
) -> None:
    """Serve the widget maker: POST /add creates a widget, GET /widget/ID shows one.

    GET /metrics answers its Prometheus metrics, GET /healthz whether it is up.

    Set WIDGET_MAKER_TOKEN to require "Authorization: Bearer <token>" on POST /add, and
    WEBHOOK_SECRET (whsec_..., several space-separated during a rotation) to require calls
    signed as Standard Webhooks says (401 otherwise; 5 minutes' tolerance on the timestamp).

    On PostgreSQL, give the password in PGPASSWORD or ~/.pgpass, or the whole URL in
    WIDGET_MAKER_DB: never in --db, where ps shows it to every user. Logs mask it.

    \b
    Examples:
        venv/bin/python widget_maker.py --port 5000 --db widgets.db
        PGPASSWORD=... venv/bin/python widget_maker.py --db postgresql://widgets@db.example:5432/widgets
    """
    configure_logging(log_level, log_format)
    # The store logs an outage once; the pool would add a line for every failed connection attempt.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    if db.startswith(POSTGRES_SCHEMES) and masked_url(db) != db:
        source = click.get_current_context().get_parameter_source("db")
        if source is ParameterSource.COMMANDLINE:
            log.warning(
                "the password in --db shows in ps; give it in PGPASSWORD, ~/.pgpass or WIDGET_MAKER_DB"
            )
    config = {"DATABASE": db, "DATABASE_CONNECTIONS": threads, "FAIL_WIDGET_IDS": frozenset(fail_widget_id)}
    try:
        app = create_app(config)
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--db") from None
    widget_store = app.extensions["widget_store"]
    try:
        server = make_server(app, host, port, threads)
    except SetupError:
        widget_store.close()
        raise
    log.info(
        "listening on http://%s:%s (db %s, token %s)",
        host,
        server.effective_port,
        widget_store.location,
        "required" if app.config["TOKEN"] else "not required",
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        widget_store.close()
    log.info("stopped")


if __name__ == "__main__":
    main()
