"""The PostgreSQL store on a real PostgreSQL: made once across makers, one order for all, the schema,
the database going away and coming back, and URLs in logs without their password."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from devtools.postgres import PostgresServer
from devtools.stack import free_port
from tests.helpers import wait_until
from widgets.maker.postgres import PostgresStore
from widgets.maker.store import StoreUnavailable, masked_url
from widgets.messages import new_widget_id


@pytest.fixture
def makers(pg_url: str) -> Iterator[Callable[[], PostgresStore]]:
    """Open stores on one new database as makers would, each with its own pool; closed at the end."""
    opened: list[PostgresStore] = []

    def open_one() -> PostgresStore:
        store = PostgresStore(pg_url)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


def answers(store: PostgresStore) -> bool:
    """Tell whether the store's database answers now."""
    try:
        store.ping()
    except StoreUnavailable:
        return False
    return True


def test_the_same_widgets_asked_of_two_makers_at_once_are_made_once(
    makers: Callable[[], PostgresStore],
) -> None:
    first, second = makers(), makers()
    widget_ids = [new_widget_id() for _ in range(40)]
    start = threading.Barrier(8)

    def make_all(caller: int) -> list[tuple[dict[str, object], bool]]:
        store = (first, second)[caller % 2]
        start.wait()
        return [store.create(widget_id, f"caller-{caller}") for widget_id in widget_ids]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(make_all, range(8)))
    for index, widget_id in enumerate(widget_ids):
        told = [result[index] for result in results]
        assert sum(created for _, created in told) == 1, widget_id
        assert len({str(widget) for widget, _ in told}) == 1  # every caller got the same row
    assert first.count() == second.count() == 40


def test_the_order_of_making_reads_the_same_from_every_maker(makers: Callable[[], PostgresStore]) -> None:
    first, second = makers(), makers()
    made = [new_widget_id() for _ in range(10)]
    for index, widget_id in enumerate(made):
        (first, second)[index % 2].create(widget_id)
    for store in (first, second):
        assert [w["widget_id"] for w in reversed(store.recent())] == made


def test_makers_starting_at_once_on_an_empty_database_all_start(makers: Callable[[], PostgresStore]) -> None:
    # Each would race the others' CREATE TABLE IF NOT EXISTS without the schema lock.
    with ThreadPoolExecutor(6) as pool:
        stores = list(pool.map(lambda _: makers(), range(6)))
    stores[0].create(new_widget_id())
    assert [store.count() for store in stores] == [1] * 6


def test_an_existing_table_and_its_widgets_are_kept(pg_url: str) -> None:
    first = PostgresStore(pg_url)
    widget, _ = first.create(new_widget_id(), "key")
    first.close()
    again = PostgresStore(pg_url)
    assert again.get(widget["widget_id"]) == widget
    assert again.count() == 1
    again.close()


def test_the_table(pg_url: str) -> None:
    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url) as connection:
        columns = connection.execute(
            "SELECT column_name, data_type, is_identity FROM information_schema.columns"
            " WHERE table_name = 'widgets' ORDER BY ordinal_position"
        ).fetchall()
    assert columns == [
        ("widget_id", "text", "NO"),
        ("seq", "bigint", "YES"),
        ("date_created", "timestamp with time zone", "NO"),
        ("idempotency_key", "text", "NO"),
    ]


def test_an_unreachable_database_at_start_says_where_without_the_password() -> None:
    port = free_port()  # held, never listening: connections are refused
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        PostgresStore(f"postgresql://widgets:s3cret@127.0.0.1:{port}/widgets")
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert message.startswith(
        f"cannot reach the database at postgresql://widgets:***@127.0.0.1:{port}/widgets: "
    )
    assert "refused" in message and "\n" not in message
    assert "s3cret" not in message


def test_a_malformed_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        PostgresStore("postgresql://[::1")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://widgets@db:5432/widgets", "postgresql://widgets@db:5432/widgets"),
        ("postgresql://widgets:s3cret@db:5432/widgets", "postgresql://widgets:***@db:5432/widgets"),
        ("postgres://w:p%40ss@db/widgets?sslmode=require", "postgres://w:***@db/widgets?sslmode=require"),
        ("postgresql://db/widgets?password=s3cret&user=w", "postgresql://db/widgets?password=***&user=w"),
        ("postgresql:///widgets", "postgresql:///widgets"),
        ("widgets.db", "widgets.db"),
    ],
)
def test_urls_in_logs_hide_the_password(url: str, masked: str) -> None:
    assert masked_url(url) == masked


def test_the_database_going_away_is_unavailable_logged_once_and_the_pool_reconnects(
    own_postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="widgets.maker.postgres")
    store = PostgresStore(own_postgres.url())
    store.create(new_widget_id())
    own_postgres.stop()
    for _ in range(5):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.create(new_widget_id())
        # At once, well inside a consumer's HTTP timeout: no waiting for a connection.
        assert time.monotonic() - started < 1
    with pytest.raises(StoreUnavailable):
        store.ping()
    own_postgres.start()
    wait_until(lambda: answers(store), timeout=10)  # the pool reconnected by itself
    assert store.create(new_widget_id())[1]
    assert store.count() == 2
    store.close()
    assert caplog.text.count("database_unreachable at postgresql://widgets@127.0.0.1:") == 1
    assert caplog.text.count("database_back") == 1
