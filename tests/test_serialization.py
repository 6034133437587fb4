"""JSON with a few tagged types; pickle only where a task opted in."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest

from orchestrator.data.serialization import dumps, loads
from orchestrator.errors import SerializationError


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, 2.5, None, True, "x"]},
        (1, "two"),
        {1, 2},
        dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        dt.date(2026, 1, 2),
        uuid.UUID(int=7),
        Decimal("1.10"),
        b"\x00bytes",
        {"nested": [dt.date(2026, 1, 1), (Decimal("2"),)]},
    ],
)
def test_round_trip_keeps_types(value: object) -> None:
    assert loads(dumps(value, "json", "t"), allow_pickle=False, where="t") == value


def test_unsupported_value_names_where_type_and_fix() -> None:
    class Custom:
        pass

    with pytest.raises(SerializationError) as caught:
        dumps({"k": Custom()}, "json", "task 'etl.extract'")
    message = str(caught.value)
    assert "task 'etl.extract'" in message
    assert "Custom" in message
    assert 'result_serializer="pickle"' in message


def test_non_string_keys_are_refused() -> None:
    with pytest.raises(SerializationError, match="dict key 1"):
        dumps({1: "a"}, "json", "t")


def test_pickle_payload_is_refused_unless_opted_in() -> None:
    text = dumps(complex(1, 2), "pickle", "t")
    with pytest.raises(SerializationError, match="refused a pickle payload"):
        loads(text, allow_pickle=False, where="t")
    assert loads(text, allow_pickle=True, where="t") == complex(1, 2)
    nested = "[" + text + "]"
    with pytest.raises(SerializationError):
        loads(nested, allow_pickle=False, where="t")
