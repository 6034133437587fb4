"""What the fleet announces about itself: live workers, their queues, the flows they run.

Workers write these records when they start and refresh a short-lived "alive" key
while they run (``workers.announce``); the API reads them here to list flows, show
workers and explain why a run waits. No flow code is needed to read them.
"""

from __future__ import annotations

import inspect
import json
import typing
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from orchestrator.data.serialization import to_jsonable
from orchestrator.runstate import keys
from orchestrator.runstate.store import RunStore

if TYPE_CHECKING:
    from orchestrator.authoring.flows import Flow

ALIVE_SECONDS = 15  # a worker not heard from for this long is not live


def parameters_schema(flow: Flow) -> dict[str, Any]:
    """The flow's parameters as a JSON Schema object (types from hints, defaults as data).

    A callable default is not evaluated here (it is evaluated per run); it is named
    under ``x-default-factory`` instead.
    """
    try:
        hints = typing.get_type_hints(flow.fn)
    except Exception:  # unresolvable annotations: fall back to untyped
        hints = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, param in flow.signature.parameters.items():
        try:
            schema = TypeAdapter(hints.get(name, Any)).json_schema()
        except Exception:  # a type pydantic cannot describe
            schema = {}
        if param.default is inspect.Parameter.empty:
            required.append(name)
        elif callable(param.default) and not isinstance(param.default, type):
            schema["x-default-factory"] = getattr(param.default, "__qualname__", repr(param.default))
        else:
            try:
                schema["default"] = to_jsonable(param.default, f"flow {flow.name!r} default {name!r}")
            except Exception:
                schema["x-default-repr"] = repr(param.default)
        properties[name] = schema
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


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


def live_workers(store: RunStore) -> list[dict[str, Any]]:
    """Workers whose alive key exists, with their queues and flows."""
    records = store.redis.hgetall(keys.WORKERS)
    names = sorted(records)
    if not names:
        return []
    alive = store.redis.mget([keys.worker_alive(n) for n in names])
    return [json.loads(records[n]) for n, ok in zip(names, alive, strict=True) if ok]


def registered_flows(store: RunStore) -> list[dict[str, Any]]:
    """Every flow some worker has announced (the newest announcement wins)."""
    return [json.loads(v) for _, v in sorted(store.redis.hgetall(keys.FLOWS).items())]
