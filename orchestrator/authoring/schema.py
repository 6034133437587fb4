"""A flow's parameters as a JSON Schema, and the record a worker announces for a flow.

The API publishes this schema (``GET /api/flows/{name}``), checks runs sent over HTTP
against it, and shows it to people; it is made from the flow's signature and type
hints, so it needs the flow's code (a worker has it and announces it).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from orchestrator.authoring.definitions import parameter_hints
from orchestrator.data.classes import kind_of
from orchestrator.data.serialization import to_jsonable, to_plain

if TYPE_CHECKING:
    from orchestrator.authoring.flows import Flow


def parameters_schema(flow: Flow) -> dict[str, Any]:
    """The flow's parameters as a JSON Schema object (types from hints, defaults as data).

    A callable default is not evaluated here (it is evaluated per run); it is named
    under ``x-default-factory`` instead.
    """
    hints = parameter_hints(flow.fn)  # unresolvable annotations: untyped; *args an array, **kwargs an object
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, param in flow.signature.parameters.items():
        try:
            schema = TypeAdapter(hints.get(name, Any)).json_schema()
        except Exception:  # a type pydantic cannot describe
            schema = {}
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            pass  # may be left out: no extra positionals, no extra keywords
        elif param.default is inspect.Parameter.empty:
            required.append(name)
        elif callable(param.default) and not isinstance(param.default, type):
            schema["x-default-factory"] = getattr(param.default, "__qualname__", repr(param.default))
        else:
            try:
                schema["default"] = _default_data(param.default, f"flow {flow.name!r} default {name!r}")
            except Exception:
                schema["x-default-repr"] = repr(param.default)
        properties[name] = schema
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _default_data(default: Any, where: str) -> Any:
    """A default as the schema shows it: a dataclass or model as the plain object of its fields
    (what a client would send), not the tagged form that names its class; other values as encoded."""
    data = to_jsonable(default, where)
    return to_plain(data) if kind_of(default) is not None else data


def describe_flow(flow: Flow) -> dict[str, Any]:
    """The record a worker announces for one flow."""
    return {
        "name": flow.name,
        "queue": flow.queue,
        "description": flow.description,
        "name_template": flow.flow_run_name if isinstance(flow.flow_run_name, str) else None,
        "module": flow.fn.__module__,
        "parameters": parameters_schema(flow),
    }
