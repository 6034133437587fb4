"""Messages name types as a user writes them in an annotation (``int``, ``list[int]``), never
``<class 'int'>``: the rule of :mod:`orchestrator.authoring.type_names`, and the message of a JSON
parameter (from the API, read on the worker) that does not fit its hint."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Literal, Optional

import pytest

from orchestrator import flow
from orchestrator.authoring.params import coerce_parameters
from orchestrator.authoring.type_names import type_name
from orchestrator.errors import ParameterError


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    ("hint", "name"),
    [
        (int, "int"),
        (datetime.date, "date"),
        (list[int], "list[int]"),
        (dict[str, list[float]], "dict[str, list[float]]"),
        (Optional[int], "int | None"),  # noqa: UP045 - the typing spelling is what is being named
        (int | None, "int | None"),
        (Literal["a", "b"], "Literal['a', 'b']"),
        (Point, "Point"),
        (list[Point], "list[Point]"),
        (type(None), "None"),
        (Any, "Any"),
    ],
)
def test_a_type_is_named_as_its_annotation_reads(hint: Any, name: str) -> None:
    assert type_name(hint) == name


@flow(name="type-names-probe")
def probe(n: int, days: list[datetime.date]) -> None:
    """Never run: its hints are read."""


def test_a_json_parameter_that_does_not_fit_names_its_type_without_class_brackets() -> None:
    with pytest.raises(ParameterError) as bad_int:
        coerce_parameters(probe, {"n": "five"})
    assert "parameter 'n'='five' is not a valid int:" in str(bad_int.value)
    with pytest.raises(ParameterError) as bad_list:
        coerce_parameters(probe, {"days": ["not-a-date"]})
    assert "is not a valid list[date]:" in str(bad_list.value)
    assert "<class" not in str(bad_int.value) + str(bad_list.value)
