"""The widget store: SQLite, one row per widget id, safe for many threads and processes."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

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
                date_created = created.isoformat(timespec="microseconds")
                cursor = connection.execute(
                    "INSERT INTO widgets (widget_id, date_created, idempotency_key) VALUES (?, ?, ?)"
                    " ON CONFLICT (widget_id) DO NOTHING",
                    (widget_id, date_created, idempotency_key),
                )
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        if cursor.rowcount == 1:
            # Just inserted: the row is what was written, no need to read it back.
            return {
                "widget_id": widget_id,
                "date_created": date_created,
                "idempotency_key": idempotency_key,
            }, True
        widget = self.get(widget_id)
        assert widget is not None, "a widget found in the store must be there"
        return widget, False

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
