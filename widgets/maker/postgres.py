"""The widget store on PostgreSQL: one table that any number of makers share, through psycopg 3 and a
connection pool (psycopg_pool).

Made once: a single INSERT ... ON CONFLICT DO NOTHING RETURNING decides, inside the database, whether
this call made the widget (a row comes back: 201) or it was there already (nothing comes back: 200),
so two makers given the same request at the same instant make it once; the loser's insert waits for
the winner's to commit, then does nothing. The order of making is the identity column seq, which the
database hands out, the same sequence for every maker; date_created is the database's clock.

While the database does not answer, every call raises StoreUnavailable (the maker answers 503);
the outage is logged once, and the pool connects again by itself when it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from widgets.maker.store import StoreUnavailable, masked_url, widget

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS widgets (
    widget_id text PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    date_created timestamptz NOT NULL DEFAULT clock_timestamp(),
    idempotency_key text
)
"""
# Makers starting at once would race in CREATE TABLE IF NOT EXISTS (the loser fails on a duplicate
# catalog row); each takes this transaction lock first. Any number will do that nothing else uses.
SCHEMA_LOCK = 0x77696467  # "widg"
COLUMNS = "widget_id, date_created, idempotency_key"
INSERT = (
    "INSERT INTO widgets (widget_id, idempotency_key) VALUES (%s, %s)"
    " ON CONFLICT (widget_id) DO NOTHING RETURNING date_created"
)
# Connection settings the URL may leave out: how long a connection attempt may take (libpq's default
# is forever), and the name pg_stat_activity shows for the maker's sessions.
CONNECTION_DEFAULTS = {"connect_timeout": "5", "application_name": "widget_maker"}
# How long a call waits for a pooled connection: in normal running one is free at once, or made in
# milliseconds; the wait is longer only when the database is going away, and a client then gets its
# 503 well inside a consumer's HTTP timeout (10 s by default). Once the outage is known, a call
# waits only for a connection the pool has just made again, so that requests and health probes are
# answered 503 at once.
CONNECTION_WAIT = 1.0
OUTAGE_WAIT = 0.2
# Connections kept open while idle (more are opened under load, up to one per maker thread).
IDLE_CONNECTIONS = 4
# psycopg_pool retries a lost connection after 1, 2, 4, 8 ... s, with no cap, for reconnect_timeout
# (5 minutes by default): after a 10 s outage its next try may come 5 s late, after a minute, a
# minute late. Giving up after 2 s leaves the retries to the calls (the consumer's health probes
# while its breaker is open): a call that finds the pool empty starts a new attempt at once.
RECONNECT_GIVE_UP = 2.0


def one_line(error: BaseException) -> str:
    """Return an error's message on one line (libpq's span several)."""
    return " ".join(str(error).split())


class PostgresStore:
    """Widgets in a PostgreSQL table shared by every maker; each call takes a connection from a pool."""

    def __init__(self, url: str, connections: int = 16) -> None:
        """Connect to the database at url, create the table if missing; hold up to connections at once."""
        self.location = masked_url(url)
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as error:
            raise ValueError(f"not a PostgreSQL URL ({self.location}): {one_line(error)}") from None
        self._conninfo = make_conninfo("", **{**CONNECTION_DEFAULTS, **params})
        self._size = connections
        self._lock = threading.Lock()
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._down_since: float | None = None
        self._create_schema()

    def _create_schema(self) -> None:
        """Create the table if it is missing, on a connection of its own (its error says why it failed)."""
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as connection, connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                connection.execute(SCHEMA)
        except psycopg.OperationalError as error:
            raise StoreUnavailable(
                f"cannot reach the database at {self.location}: {one_line(error)}"
            ) from None

    def _open_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        """Return the pool, opening it on first use (and again after close)."""
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self._conninfo,
                    # autocommit: each statement is its own transaction, one round trip, no BEGIN.
                    kwargs={"autocommit": True},
                    min_size=min(IDLE_CONNECTIONS, self._size),
                    max_size=self._size,
                    timeout=CONNECTION_WAIT,
                    reconnect_timeout=RECONNECT_GIVE_UP,
                    name="widget-store",
                    open=True,
                )
            return self._pool

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """Lend a pooled connection; turn the database not answering into StoreUnavailable."""
        wait = OUTAGE_WAIT if self._down_since is not None else CONNECTION_WAIT
        try:
            with self._open_pool().connection(timeout=wait) as connection:
                yield connection
        except psycopg.OperationalError as error:  # also the pool's PoolTimeout and TooManyRequests
            self._note_down(error)
            raise StoreUnavailable(f"the database at {self.location} does not answer") from error
        if self._down_since is not None:
            self._note_back()

    def _note_down(self, error: psycopg.OperationalError) -> None:
        """Log the outage once, and drop the pooled connections: made before it, they are all dead."""
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            pool = self._pool
        log.warning(
            "database_unreachable at %s: %s; answering 503 until it is back", self.location, one_line(error)
        )
        if pool is not None:
            pool.drain()

    def _note_back(self) -> None:
        """Log, once, that the database answers again."""
        with self._lock:
            if self._down_since is None:
                return
            seconds = time.monotonic() - self._down_since
            self._down_since = None
        log.info("database_back at %s after an outage of %.1fs", self.location, seconds)

    def create(self, widget_id: str, idempotency_key: str | None = None) -> tuple[dict[str, Any], bool]:
        """Store a widget unless it exists; return the stored widget and whether it was new."""
        with self._connection() as connection:
            made = connection.execute(INSERT, (widget_id, idempotency_key)).fetchone()
            if made is not None:
                return widget(widget_id, made[0], idempotency_key), True
            # A separate statement: the insert found the row committed, so this one sees it.
            row = connection.execute(f"SELECT {COLUMNS} FROM widgets WHERE widget_id = %s", (widget_id,))
            stored = row.fetchone()
        assert stored is not None, "a widget found in the store must be there"
        return widget(*stored), False

    def get(self, widget_id: str) -> dict[str, Any] | None:
        """Return the stored widget, or None."""
        with self._connection() as connection:
            row = connection.execute(f"SELECT {COLUMNS} FROM widgets WHERE widget_id = %s", (widget_id,))
            stored = row.fetchone()
        return widget(*stored) if stored is not None else None

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """Return the most recently made widgets (by seq, the order across makers), newest first."""
        with self._connection() as connection:
            rows = connection.execute(f"SELECT {COLUMNS} FROM widgets ORDER BY seq DESC LIMIT %s", (limit,))
            return [widget(*row) for row in rows]

    def count(self) -> int:
        """Return how many widgets exist."""
        with self._connection() as connection:
            row = connection.execute("SELECT count(*) FROM widgets").fetchone()
        assert row is not None
        return int(row[0])

    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers a query."""
        with self._connection() as connection:
            connection.execute("SELECT 1")

    def close(self) -> None:
        """Close the pool and its connections (a new pool opens when the store is next used)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
