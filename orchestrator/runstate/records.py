"""The records of the run-state core: a flow run and a task run, each with one way to and from Redis.

A new flow run is a :class:`NewFlowRun` whichever door created it (``.delay()``, the API,
a deployment: :mod:`orchestrator.runs.create`); a new task run a :class:`NewTaskRun`;
what the store holds reads back as a :class:`FlowRunRecord` or a :class:`TaskRunRecord`.

A run's record is a Redis hash of text fields. Which fields hold JSON, which ones
ride along in events (the descriptive ones) and which stay internal (how the run
decides its end) is written down here once; the repositories of
:mod:`orchestrator.runstate` and the supervisors read and write records only
through these types.
"""

from __future__ import annotations

import base64
import json
import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from orchestrator.states import StateType

JSON_FIELDS = frozenset({"returns", "deciders", "parameters", "result_refs"})  # always stored as JSON text
INTERNAL_FIELDS = frozenset({"state", "message", "returns", "deciders", "body_error"})  # never sent in events


def describe_record(fields: dict[str, Any]) -> dict[str, Any]:
    """The descriptive part of a run record that rides along in its events (not its internals)."""
    return {k: v for k, v in fields.items() if k not in INTERNAL_FIELDS}


DECIDERS_ARE_REFS = '"result_refs"'  # the deciders field when they are the result_refs (lua/finish_task_run.lua)
PACKED = "z:"  # a long return template, zlib-compressed and base64-encoded after this prefix
PACK_OVER = 256  # characters of a return template's JSON above which it is kept packed


_SCALAR_TEXT: dict[Any, str] = {True: "true", False: "false", None: "null"}


def json_text(value: Any) -> str:
    """``json.dumps(value)``, without the encoder for the plain numbers and constants most record
    fields are (times, counts, flags): a record is written on the path of every ``.delay()``."""
    kind = type(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    if kind is int:
        return int.__repr__(value)
    if kind is bool or value is None:
        return _SCALAR_TEXT[value]
    return json.dumps(value)


RESTORED_FLOW_FIELDS = ("id", "root")  # not stored when they are the run's own id: its key names it


def flow_fields_to_redis(run_id: str, fields: dict[str, Any]) -> dict[str, str]:
    """Flow-run fields as hash values: JSON fields as JSON text, other strings as they are.

    Two stay shorter, for as long as the run's record: deciders that are the returned futures
    (the common case) are written as :data:`DECIDERS_ARE_REFS` instead of those ids a second
    time, and a long return template (a flow returning thousands of futures) is packed.
    Together they were about 100 of the 158 bytes per task run such a flow kept in its record.
    ``id``, and ``root`` of a root run, are left out: they are ``run_id``, which the key holds
    (192 of a five-task flow run's 728 bytes). Read a record back through :func:`full_flow_record`
    and :func:`deciders_of`.
    """
    out = {
        k: v if isinstance(v, str) and k not in JSON_FIELDS else json_text(v)
        for k, v in fields.items()
        if not (k in RESTORED_FLOW_FIELDS and v == run_id)
    }
    if out.get("deciders", "[]") != "[]" and out["deciders"] == out.get("result_refs"):
        out["deciders"] = DECIDERS_ARE_REFS
    if len(out.get("returns", "")) > PACK_OVER:
        out["returns"] = PACKED + base64.b64encode(zlib.compress(out["returns"].encode(), 6)).decode()
    return out


def full_flow_record(run_id: str, raw: dict[str, str]) -> dict[str, str]:
    """A flow run's hash as read (empty: no such run), with its ``id`` and ``root`` where
    :func:`flow_fields_to_redis` left them out and a packed return template as its JSON text again."""
    if not raw:
        return raw
    full = {"id": run_id, "root": run_id} | raw
    packed = full.get("returns", "")
    if not packed.startswith(PACKED):
        return full
    return full | {"returns": unpacked_returns(packed)}


def unpacked_returns(stored: str) -> str:
    """A record's ``returns`` as its JSON text (:func:`flow_fields_to_redis` packs a long one)."""
    if not stored.startswith(PACKED):
        return stored
    return zlib.decompress(base64.b64decode(stored[len(PACKED) :])).decode()


@dataclass(frozen=True)
class FlowOutcome:
    """What a flow run's waiter reads of its end (``lua/read_outcome.lua``): a few fields of its
    record, each None where the record has none (all of them: Redis has no such run), and, once the
    run is Completed, the texts of the results its return template refers to (None where gone), by
    task run id (empty before: no reader uses them for any other state).

    Not the whole record: a waiter needs only these, and each field more is parsed in Python."""

    state: str | None = None
    name: str | None = None
    message: str | None = None
    returns: str | None = None  # the return template's JSON text (unpacked)
    results: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def from_reply(cls, reply: list[Any]) -> FlowOutcome:
        """The outcome of the script's flat reply (its five fields, then the results in ``result_refs``' order)."""
        state, name, message, returns, refs = reply[:5]
        results = dict(zip(json.loads(refs), reply[5:], strict=False)) if refs else {}
        return cls(state or None, name, message, unpacked_returns(returns) if returns else returns, results)

    @property
    def state_type(self) -> StateType | None:
        """The state as a :class:`StateType` (None: no state; an unknown text raises ValueError)."""
        return StateType(self.state) if self.state else None


def deciders_of(raw: dict[str, str]) -> list[str]:
    """The task runs whose states decide a flow run's (a record's ``deciders``, read as written)."""
    text = raw.get("deciders") or "[]"
    return list(json.loads(raw.get("result_refs") or "[]" if text == DECIDERS_ARE_REFS else text))


def task_fields_to_redis(fields: dict[str, Any]) -> dict[str, str]:
    """Task-run fields as hash values (every value as text), without what a read restores (:func:`slim_task_fields`)."""
    return {k: str(v) for k, v in slim_task_fields(fields).items()}


def slim_task_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields a task run's hash keeps: not ``id`` (its key names it), and ``root`` only where it is
    not the task run's own flow run (a task of a subflow traced into its parent's tree).

    A task run's hash stays in Redis as long as its run; these two ids were about 85 of its 470
    bytes. :func:`full_task_record` gives them back on every read.
    """
    if "id" not in fields and ("root" not in fields or fields["root"] != fields.get("flow_run_id")):
        return fields
    return {k: v for k, v in fields.items() if k != "id" and (k != "root" or v != fields.get("flow_run_id"))}


def full_task_record(task_run_id: str, raw: dict[str, str]) -> dict[str, str]:
    """A task run's hash as read, with the fields :func:`slim_task_fields` left out (empty: no such task run)."""
    if not raw:
        return raw
    return {"id": task_run_id, "root": raw.get("flow_run_id", "")} | raw


def default_run_name(flow_name: str, run_id: str) -> str:
    """The name a run gets when nobody gave one: its flow's name and the start of its id."""
    return f"{flow_name}-{run_id[:8]}"


def body_task_run_id(run_id: str) -> str:
    """The pseudo task run standing for a dynamic flow's body in its tree's count of task runs not final."""
    return f"body:{run_id}"


def parse_float(value: Any) -> float | None:
    """A record's number field (text in Redis, a value in an event); None where empty or not a number."""
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def parse_json(value: Any, default: Any) -> Any:
    """A record's JSON field: text is parsed (``default`` if it is not JSON), a value is taken as it is."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return default
    return value if value is not None else default


TASK_RUN_TIMES = frozenset({"created", "started", "ended", "retry_at", "first_poke"})  # epoch seconds
TASK_RUN_COUNTS = frozenset({"attempts", "starts"})
TASK_RUN_FLAGS = frozenset({"cached"})  # "1" or "0" in the hash
STATES_BY_TEXT = {state.value: state for state in StateType}  # a stored state's text -> its StateType


def typed_task_run(raw: dict[str, str]) -> dict[str, Any]:
    """A task run's hash (as :func:`full_task_record` reads it) with each value as its type.

    Redis keeps text only; a caller of ``FlowRun.task_runs()`` should not have to know that
    ``attempts`` is ``"2"`` or ``cached`` is ``"1"``. Times become floats (epoch seconds, None
    where empty), counts ints, flags bools, ``state`` a :class:`StateType` (a str enum: it still
    equals ``"Completed"``) and JSON fields their values; other fields stay text.
    """
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in TASK_RUN_TIMES:
            out[key] = parse_float(value)
        elif key in TASK_RUN_COUNTS:
            number = parse_float(value)
            out[key] = int(number) if number is not None else 0
        elif key in TASK_RUN_FLAGS:
            out[key] = value in ("1", "True", "true")
        elif key == "state":
            out[key] = STATES_BY_TEXT.get(value, value)  # a text no state has (a newer worker's) stays text
        elif key in JSON_FIELDS:
            out[key] = parse_json(value, value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class FlowRunRecord:
    """A flow run as the run store holds it (read side; unknown fields stay in ``raw``)."""

    id: str
    flow: str
    name: str
    state: StateType | None
    root: str
    parent: str
    queue: str
    mode: str
    attempt: int
    message: str
    parameters: dict[str, Any]
    created: float | None
    raw: dict[str, str] = field(repr=False, default_factory=dict)

    @property
    def is_root(self) -> bool:
        """Whether this run is the root of its run tree (not a subflow traced into its parent's tree).

        A run a plan node started as a run of its own has a parent and is a root all the same.
        """
        return not self.parent or self.root == self.id

    @classmethod
    def from_redis(cls, run_id: str, raw: dict[str, str]) -> FlowRunRecord | None:
        """The record of a hash (None for an empty one: Redis has no such run)."""
        if not raw:
            return None
        state = raw.get("state")
        return cls(
            id=raw.get("id") or run_id,
            flow=raw.get("flow", ""),
            name=raw.get("name", ""),
            state=StateType(state) if state else None,
            root=raw.get("root") or run_id,
            parent=raw.get("parent", ""),
            queue=raw.get("queue", ""),
            mode=raw.get("mode", ""),
            attempt=int(float(raw.get("attempt") or 1)),
            message=raw.get("message", ""),
            parameters=parse_json(raw.get("parameters"), {}),
            created=parse_float(raw.get("created")),
            raw=raw,
        )


@dataclass(frozen=True)
class NewFlowRun:
    """A root flow run about to exist: what every door knows when it creates one."""

    id: str
    flow: str
    name: str
    name_given: bool  # else the worker that starts it names it from the flow's flow_run_name
    queue: str
    parameters: dict[str, Any]  # JSON data
    created: float
    scheduled_start: float | None = None
    options: dict[str, Any] = field(default_factory=dict)  # timeout and retries, where the flow's code is known
    parent: str = ""  # the flow run that started it as a run of its own (a plan node), if any
    parent_task_run: str = ""  # that node's task run

    def to_redis(self) -> dict[str, Any]:
        """The run store's fields of the record (its state is written with its first event)."""
        fields: dict[str, Any] = {
            "id": self.id,
            "flow": self.flow,
            "name": self.name,
            "name_given": "1" if self.name_given else "0",
            "root": self.id,
            "queue": self.queue,
            "parameters": self.parameters,
            **self.options,
            "created": self.created,
        }
        if self.scheduled_start is not None:
            fields["scheduled_start"] = self.scheduled_start
        if self.parent:
            fields |= {"parent": self.parent, "parent_task_run": self.parent_task_run}
        return fields


@dataclass(frozen=True)
class NewTaskRun:
    """A task run about to exist: the fields it starts with (state Pending)."""

    id: str
    label: str
    name: str
    flow_run_id: str
    root: str
    created: float = field(default_factory=time.time)

    def to_redis(self) -> dict[str, str]:
        """The hash a new task run is written as (its id and root as :func:`slim_task_fields` keeps them)."""
        return slim_task_fields(
            {
                "id": self.id,
                "label": self.label,
                "name": self.name,
                "flow_run_id": self.flow_run_id,
                "root": self.root,
                "state": StateType.PENDING.value,
                "created": str(self.created),
            }
        )


@dataclass(frozen=True)
class TaskRunRecord:
    """A task run as the run store holds it (read side; unknown fields stay in ``raw``)."""

    id: str
    label: str
    name: str
    flow_run_id: str
    root: str
    state: StateType | None
    worker: str
    attempts: int
    message: str
    raw: dict[str, str] = field(repr=False, default_factory=dict)

    @classmethod
    def from_redis(cls, task_run_id: str, raw: dict[str, str]) -> TaskRunRecord | None:
        """The record of a hash (None for an empty one: Redis has no such task run)."""
        if not raw:
            return None
        state = raw.get("state")
        return cls(
            id=raw.get("id") or task_run_id,
            label=raw.get("label") or task_run_id,
            name=raw.get("name", ""),
            flow_run_id=raw.get("flow_run_id", ""),
            root=raw.get("root") or raw.get("flow_run_id", ""),
            state=StateType(state) if state else None,
            worker=raw.get("worker", ""),
            attempts=int(float(raw.get("attempts") or 0)),
            message=raw.get("message", ""),
            raw=raw,
        )
