"""The message formats: request parsing, widget id validation, response bodies."""

from __future__ import annotations

import contextlib
import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from widgets.messages import (
    InvalidRequest,
    is_valid_widget_id,
    new_widget_id,
    parse_request,
    request_body,
    response_body,
)

SEED_ID = "31f37378-54f4-11e5-ad75-3c970e65f731"


def test_new_widget_ids_are_valid_and_distinct() -> None:
    ids = {new_widget_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(is_valid_widget_id(i) for i in ids)


@pytest.mark.parametrize(
    "widget_id",
    [
        "this_is_not_a_valid_widget_id",
        SEED_ID.upper(),
        SEED_ID.replace("-", ""),
        "{" + SEED_ID + "}",
        # A fresh one each run; the id stays fixed, so that every pytest-xdist worker collects the same tests.
        pytest.param(str(uuid.uuid4()), id="uuid4"),
        "",
        SEED_ID + " ",
        None,
        42,
    ],
)
def test_invalid_widget_ids(widget_id: object) -> None:
    assert not is_valid_widget_id(widget_id)


def test_seed_id_is_valid() -> None:
    assert is_valid_widget_id(SEED_ID)


def test_request_round_trip() -> None:
    assert parse_request(request_body(SEED_ID)) == SEED_ID


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON list, not an object"),
        ('"text"', "JSON str, not an object"),
        ("{}", "no WidgetId"),
        ('{"widget_id": "x"}', "no WidgetId"),
        ('{"WidgetId": 7}', "JSON int, not a string"),
        ('{"WidgetId": null}', "JSON NoneType, not a string"),
        ('{"WidgetId": "' + "a" * 300 + '"}', "over 256"),
        ('{"WidgetId": "' + "a" * 5000 + '"}', "over 4096"),
        ("[" * 1500 + "]" * 1500, "nested too deeply"),
    ],
)
def test_parse_request_rejects(body: str, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        parse_request(body)


def test_parse_request_keeps_an_invalid_id_for_the_maker_to_judge() -> None:
    # The consumer only checks the shape; the maker decides what a valid id is.
    assert parse_request('{"WidgetId": "this_is_not_a_valid_widget_id"}') == "this_is_not_a_valid_widget_id"


@given(st.text(max_size=5000))
def test_parse_request_never_fails_otherwise(body: str) -> None:
    try:
        widget_id = parse_request(body)
    except InvalidRequest:
        return
    assert isinstance(widget_id, str)
    assert json.loads(body)["WidgetId"] == widget_id


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_parse_request_on_any_json(value: object) -> None:
    body = json.dumps({"WidgetId": value}) if isinstance(value, str) else json.dumps(value)
    with contextlib.suppress(InvalidRequest):
        assert parse_request(body) == value


def test_response_body_fields() -> None:
    body = json.loads(response_body("m-1", SEED_ID, "OK", 2, widget={"widget_id": SEED_ID}))
    assert body == {
        "MessageId": "m-1",
        "WidgetId": SEED_ID,
        "Status": "OK",
        "ReceiveCount": 2,
        "Widget": {"widget_id": SEED_ID},
    }
    rejected = json.loads(response_body("m-2", None, "REJECTED", 1, reason="body is not JSON"))
    assert rejected["Reason"] == "body is not JSON"
    assert "Widget" not in rejected


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("31f37378-54f4-11e5-ad75-3c970e65f731", "31f37378-54f4-11e5-ad75-3c970e65f731"),
        ("a\nINFO OK forged", "'a\\nINFO OK forged'"),
    ],
)
def test_log_values_cannot_forge_lines(value: str, shown: str) -> None:
    from widgets.logs import printable

    assert printable(value) == shown
    assert "\n" not in printable(value)
