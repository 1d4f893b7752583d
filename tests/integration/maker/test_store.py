"""The widget store: date_created precise and in the order widgets were made, old stores still readable.

The tests taking store_db run on both stores, SQLite and PostgreSQL; the others are about what only
SQLite has: a clock of the maker's own (PostgreSQL's date_created is the database's clock) and
files written by earlier versions."""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from widgets.maker import create_app
from widgets.maker.store import SCHEMA, WidgetStore, open_store
from widgets.messages import new_widget_id

# ISO 8601, UTC, to the microsecond: 2026-11-30T04:42:40.123456+00:00
ISO_MICROSECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")
NOON = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a fresh store is: an SQLite file, then a new PostgreSQL database (skipped where none runs)."""
    if request.param == "sqlite":
        return str(tmp_path / "w.db")
    return str(request.getfixturevalue("pg_url"))


def clock_of(times: list[datetime]) -> Callable[[], datetime]:
    """Return a clock that tells the given times, one per call."""
    told: Iterator[datetime] = iter(times)
    return lambda: next(told)


def test_date_created_is_iso_utc_to_the_microsecond(tmp_path: Path) -> None:
    store = WidgetStore(str(tmp_path / "w.db"), clock=clock_of([NOON + timedelta(microseconds=7)]))
    widget, created = store.create(new_widget_id())
    assert created
    assert widget["date_created"] == "2026-11-30T12:00:00.000007+00:00"


def test_date_created_follows_the_order_made_even_when_the_clock_does_not(tmp_path: Path) -> None:
    # Two widgets in one microsecond, then a clock stepped back by a second, then forward again.
    times = [NOON, NOON, NOON - timedelta(seconds=1), NOON + timedelta(seconds=5)]
    store = WidgetStore(str(tmp_path / "w.db"), clock=clock_of(times))
    made = [new_widget_id() for _ in times]
    stamps = [store.create(widget_id)[0]["date_created"] for widget_id in made]
    assert stamps == [
        "2026-11-30T12:00:00.000000+00:00",
        "2026-11-30T12:00:00.000001+00:00",
        "2026-11-30T12:00:00.000002+00:00",
        "2026-11-30T12:00:05.000000+00:00",
    ]
    assert [w["widget_id"] for w in store.recent()] == made[::-1]


def test_a_widget_made_again_keeps_its_date(store_db: str) -> None:
    store = open_store(store_db)
    widget_id = new_widget_id()
    first, _ = store.create(widget_id, "key-1")
    again, created = store.create(widget_id, "key-2")
    assert not created
    assert again == first
    assert store.get(widget_id) == first and first["idempotency_key"] == "key-1"
    assert store.count() == 1
    store.close()


def test_widgets_made_at_once_by_many_threads_are_strictly_ordered(tmp_path: Path) -> None:
    store = WidgetStore(str(tmp_path / "w.db"))

    def make(count: int) -> None:
        for _ in range(count):
            store.create(new_widget_id())

    threads = [threading.Thread(target=make, args=(25,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stamps = [w["date_created"] for w in store.recent(1000)]
    assert len(stamps) == 100
    assert all(ISO_MICROSECONDS.fullmatch(stamp) for stamp in stamps)
    assert stamps == sorted(set(stamps), reverse=True)


def test_widgets_made_at_once_by_many_threads_keep_each_threads_order(store_db: str) -> None:
    # Across threads (or makers) on PostgreSQL, two widgets may share a microsecond of the
    # database's clock; the order of making is recent()'s, and it keeps every thread's own order.
    store = open_store(store_db)
    made: list[list[str]] = [[new_widget_id() for _ in range(25)] for _ in range(4)]

    def make(widget_ids: list[str]) -> None:
        for widget_id in widget_ids:
            store.create(widget_id)

    threads = [threading.Thread(target=make, args=(widget_ids,)) for widget_ids in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    widgets = list(reversed(store.recent(1000)))
    store.close()
    assert sorted(w["widget_id"] for w in widgets) == sorted(w for widget_ids in made for w in widget_ids)
    assert all(ISO_MICROSECONDS.fullmatch(w["date_created"]) for w in widgets)
    for widget_ids in made:
        mine = [w for w in widgets if w["widget_id"] in widget_ids]
        assert [w["widget_id"] for w in mine] == widget_ids
        stamps = [w["date_created"] for w in mine]
        assert stamps == sorted(set(stamps))


def test_a_store_made_before_the_index_still_works(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute(SCHEMA)  # the table as earlier stores made it, without the index
        # A row as an earlier store wrote it; one without fractional seconds or zone reads as UTC.
        old.execute("INSERT INTO widgets VALUES ('old-1', '2026-11-30T12:00:00.500000+00:00', NULL)")
        old.execute("INSERT INTO widgets VALUES ('old-2', '2026-11-30T12:00:01', 'key')")
    old.close()
    store = WidgetStore(str(path), clock=clock_of([NOON]))
    assert store.get("old-2") == {
        "widget_id": "old-2",
        "date_created": "2026-11-30T12:00:01",
        "idempotency_key": "key",
    }
    widget, created = store.create(new_widget_id())
    assert created
    # The clock says noon, but old-2 was made later: the new widget comes after it.
    assert widget["date_created"] == "2026-11-30T12:00:01.000001+00:00"
    assert store.count() == 3


def test_the_maker_answers_widgets_in_the_order_made(store_db: str) -> None:
    client: FlaskClient = create_app({"TESTING": True, "DATABASE": store_db, "TOKEN": None}).test_client()
    made = [new_widget_id() for _ in range(5)]
    answers = [client.post("/add", json={"widget_id": widget_id}) for widget_id in made]
    assert [answer.status_code for answer in answers] == [201] * 5
    widgets = [answer.get_json() for answer in answers]
    assert all(set(widget) == {"widget_id", "date_created", "idempotency_key"} for widget in widgets)
    stamps = [widget["date_created"] for widget in widgets]
    assert all(ISO_MICROSECONDS.fullmatch(stamp) for stamp in stamps)
    assert stamps == sorted(set(stamps))
    assert sorted(made, key=lambda w: client.get(f"/widget/{w}").get_json()["date_created"]) == made
    client.application.extensions["widget_store"].close()


def test_a_closed_store_opens_again_when_used(store_db: str) -> None:
    store = open_store(store_db)
    first, _ = store.create(new_widget_id())
    store.close()
    second, created = store.create(new_widget_id())
    assert created
    assert second["date_created"] > first["date_created"]
    store.close()
    assert store.get(first["widget_id"]) == first
    assert store.count() == 2
    store.close()
