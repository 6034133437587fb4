"""``-p name=value``: the one rule every command reads a parameter given as text by, driven by its type.

The rule (``plan``, ``deploy``, ``run``, ``dev --run``): the text is read as JSON when it is
JSON *and* the parameter's type takes that JSON value; otherwise the value is the text
itself. So, for ``label: str``, ``-p label=5`` is the text ``"5"`` in every command (it used
to be the number 5 for ``run``, refused with a 422, and the text for ``plan``); ``n: int``
takes ``-p n=5`` as 5; ``day: date`` takes ``-p day=2026-01-02`` as the text a date is read
from, and ``-p day=not-a-date`` is refused as not a date; ``ids: list[int]`` takes
``-p ids=[1,2]``; a parameter without a type takes JSON when the text is JSON, else the text.
Over HTTP nothing is re-read: a JSON body carries its own types (``{"label": 5}`` is refused
for a str).

The type is judged by the flow's parameter schema (the JSON Schema the API publishes and
checks runs against), so the CLI reads alike whether the flow's code is at hand (``plan``,
``deploy``: the schema made from it) or only what a worker announced (``run``, ``dev --run``).
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.authoring.formats import validator_for
from orchestrator.errors import ParameterError
from orchestrator.guards.limits import MAX_NESTING, depth_problem


def read_pairs(pairs: list[str], schema: dict[str, Any] | None) -> dict[str, Any]:
    """``name=value`` texts read by :func:`read_value` with each parameter's schema (from the flow's ``schema``)."""
    properties: dict[str, Any] = (schema or {}).get("properties", {})
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ParameterError(f"-p {pair!r} must look like name=value, e.g. -p day=2026-01-02.")
        values[name] = read_value(name, text, properties.get(name))
    return values


def read_value(name: str, text: str, schema: dict[str, Any] | None) -> Any:
    """``text`` as JSON when it is JSON and ``schema`` (the parameter's, None if unknown) takes it, else the text.

    The JSON is measured for depth before anything recursive meets it.
    """
    try:
        value = json.loads(text)
    except ValueError:
        return text
    except RecursionError:  # nested too deep for the JSON parser itself
        raise ParameterError(
            f"parameter {name!r} is nested too deeply to read; at most {MAX_NESTING} levels of lists and "
            "objects are accepted."
        ) from None
    problem = depth_problem(name, value)
    if problem:
        raise ParameterError(f"{problem}.")
    if schema is None or validator_for(schema).is_valid(value):
        return value
    return text
