"""The widget store: one row per widget id, made once. SQLite (a file path, the default) for one
maker on one host, safe for many threads and processes; PostgreSQL (a postgresql:// URL, see
widgets/maker/postgres.py) for many makers on many hosts. Both answer the same interface, Store."""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

# What a database URL starts with, as libpq accepts it; anything else is an SQLite file path.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# A password in a URL: scheme://user:PASSWORD@host... (an @ in it is written %40), or ?password=...
USER_PASSWORD = re.compile(r"^(\w+://[^:/?#@]*):[^/?#@]*@")
QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*")

SCHEMA = """
CREATE TABLE IF NOT EXISTS widgets (
    widget_id TEXT PRIMARY KEY,
    date_created TEXT NOT NULL,
    idempotency_key TEXT
)
"""
# Added to stores made before it, on open: the latest date_created is read on every create.
INDEX = "CREATE INDEX IF NOT EXISTS widgets_date_created ON widgets (date_created)"
# The smallest step date_created can tell apart.
TICK = timedelta(microseconds=1)


class StoreUnavailable(Exception):
    """The store's database does not answer now (down, restarting, unreachable): try again later."""


class Store(Protocol):
    """What the maker needs of a widget store, whichever database holds it."""

    location: str  # where the widgets are, for logs: a path, or a URL with its password masked

    def create(self, widget_id: str, idempotency_key: str | None = None) -> tuple[dict[str, Any], bool]:
        """Store a widget unless it exists; return the stored widget and whether it was new."""
        ...

    def get(self, widget_id: str) -> dict[str, Any] | None:
        """Return the stored widget, or None."""
        ...

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """Return the most recently made widgets, newest first."""
        ...

    def count(self) -> int:
        """Return how many widgets exist."""
        ...

    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""
        ...

    def close(self) -> None:
        """Let go of the store's connections (it opens them again when next used)."""
        ...


def open_store(db: str, connections: int = 16) -> Store:
    """Open the store db names: a postgresql:// URL (up to connections at once), else an SQLite path."""
    if db.startswith(POSTGRES_SCHEMES):
        # Imported here: psycopg and its pool load only in a maker that uses PostgreSQL.
        from widgets.maker.postgres import PostgresStore

        return PostgresStore(db, connections=connections)
    return WidgetStore(db)


def masked_url(url: str) -> str:
    """Return a database URL fit for logs: its password, in the address or the query, as ***."""
    # Text substitution rather than parsing and rebuilding: the rest of the URL stays as given,
    # even when malformed (its error message shows it).
    url = USER_PASSWORD.sub(r"\1:***@", url, count=1)
    return QUERY_PASSWORD.sub(r"\1***", url)


def widget(widget_id: str, date_created: datetime | str, idempotency_key: str | None) -> dict[str, Any]:
    """Return a widget as the maker answers it; a datetime date_created as ISO 8601 UTC to the microsecond."""
    if isinstance(date_created, datetime):
        date_created = date_created.astimezone(UTC).isoformat(timespec="microseconds")
    return {"widget_id": widget_id, "date_created": date_created, "idempotency_key": idempotency_key}


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


def parse_timestamp(text: str) -> datetime:
    """Return a stored date_created as an aware datetime (UTC when the text says no zone)."""
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class WidgetStore:
    """Widgets in an SQLite file; each thread reads on a connection of its own, writers share one.

    date_created is ISO 8601 UTC to the microsecond, and strictly increasing within a store
    even when the clock steps back or two widgets share a microsecond: sorting by it gives the
    order in which the widgets were made.
    """

    def __init__(self, path: str, clock: Callable[[], datetime] = utc_now) -> None:
        """Open (creating if needed) the store at path; clock gives the time widgets are made."""
        self.path = path
        self.location = path
        self.clock = clock
        self._local = threading.local()
        # This process's writers take turns here, so they wait on a cheap lock that wakes the next
        # at once, instead of in SQLite's busy handler, which retries after sleeps of up to 100 ms.
        # BEGIN IMMEDIATE still keeps the writers of other processes apart.
        self._write_lock = threading.Lock()
        # One connection for all writes, used only under the lock: its page cache stays valid from
        # one widget to the next, where each thread's own connection read again the pages the
        # others had changed since (7 reads from the file per widget under load, now 0.1).
        self._writer: sqlite3.Connection | None = None
        self._connection().execute(SCHEMA)
        self._connection().execute(INDEX)

    def _open(self, one_thread: bool = True) -> sqlite3.Connection:
        """Open a connection to the store, for one thread or (one_thread=False) for turns under a lock."""
        # autocommit (isolation_level=None): every statement is its own transaction.
        connection = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=one_thread
        )
        connection.row_factory = sqlite3.Row
        # WAL lets readers run while a writer commits; NORMAL sync is durable across
        # a process crash, which is the failure this store has to survive.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    def _connection(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it on first use."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._open()
        return connection

    def create(self, widget_id: str, idempotency_key: str | None = None) -> tuple[dict[str, Any], bool]:
        """Store a widget unless it exists; return the stored widget and whether it was new."""
        with self._write_lock:
            if self._writer is None:
                self._writer = self._open(one_thread=False)
            connection = self._writer
            # IMMEDIATE takes the write lock first, so no other writer comes between reading the
            # latest date_created and inserting after it.
            connection.execute("BEGIN IMMEDIATE")
            try:
                latest = connection.execute("SELECT max(date_created) FROM widgets").fetchone()[0]
                created = self.clock().astimezone(UTC)
                if latest is not None:
                    created = max(created, parse_timestamp(latest) + TICK)
                made = widget(widget_id, created, idempotency_key)
                cursor = connection.execute(
                    "INSERT INTO widgets (widget_id, date_created, idempotency_key) VALUES (?, ?, ?)"
                    " ON CONFLICT (widget_id) DO NOTHING",
                    (widget_id, made["date_created"], idempotency_key),
                )
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        if cursor.rowcount == 1:
            # Just inserted: the row is what was written, no need to read it back.
            return made, True
        stored = self.get(widget_id)
        assert stored is not None, "a widget found in the store must be there"
        return stored, False

    def get(self, widget_id: str) -> dict[str, Any] | None:
        """Return the stored widget, or None."""
        row = self._connection().execute("SELECT * FROM widgets WHERE widget_id = ?", (widget_id,)).fetchone()
        return dict(row) if row is not None else None

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """Return the most recently created widgets, newest first."""
        rows = self._connection().execute(
            "SELECT * FROM widgets ORDER BY date_created DESC LIMIT ?", (limit,)
        )
        return [dict(row) for row in rows]

    def count(self) -> int:
        """Return how many widgets exist."""
        return int(self._connection().execute("SELECT count(*) FROM widgets").fetchone()[0])

    def ping(self) -> None:
        """Return once the file answers a query (a local file always does, or raises sqlite3's error)."""
        self._connection().execute("SELECT 1")

    def close(self) -> None:
        """Close this thread's connection and the writers' one (each opens again when next needed)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
