"""The events of the run-state stream, typed, with the one encoder and the one decoder.

Every state change and log line reaches the API's recorder as one entry of the Redis
event stream (``orc:events``). Workers, the log shipper, clients, the crash detector
and the Lua scripts of :mod:`orchestrator.runstate` all produce them (the scripts get
text made here), and the recorder reads them back with :func:`decode`, so a field
renamed on one side is renamed on the other, and a typo is a type error, not a run
that silently never reaches the database.

The wire format is JSON with a ``kind``: ``flow_run``, ``task_run``,
``flow_run_rename`` or ``log``. Events stored before these types existed have the same
shape, so a stream written by an older worker is still read.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal


class EventFormatError(ValueError):
    """A stream entry that is not one of the events below (not JSON, or an unknown kind)."""


@dataclass(frozen=True)
class StateChange:
    """A flow run or a task run entered ``state``.

    ``record`` carries the run's descriptive fields (flow, name, parent, worker, ...), so
    the recorder can create a run it has never seen (one sent with ``.delay()``);
    ``reopen`` marks an explicit retry of a final run, the only way out of a final state.
    """

    kind: Literal["flow_run", "task_run"]
    id: str
    state: str
    ts: float = field(default_factory=time.time)
    message: str = ""
    record: dict[str, Any] = field(default_factory=dict)
    reopen: bool = False
    cause: str = ""


@dataclass(frozen=True)
class Renamed:
    """A flow run got a new name (``rename_flow_run`` in its body)."""

    id: str
    name: str
    cause: str = ""
    ts: float = field(default_factory=time.time)
    kind: Literal["flow_run_rename"] = "flow_run_rename"


@dataclass(frozen=True)
class LogLine:
    """One line a run logged: ``get_run_logger()``, a captured print, the task module's own logger, an
    extra logger (``ORCHESTRATOR_EXTRA_LOGGERS``), a warning, or a failed attempt's traceback.

    ``logger`` names the logger that wrote it (empty in lines of workers older than the field).
    """

    flow_run_id: str
    task_run_id: str | None
    level: str
    message: str
    ts: float = field(default_factory=time.time)
    logger: str = ""
    kind: Literal["log"] = "log"

    @property
    def id(self) -> str:
        """The run the line belongs to: its task run, else its flow run."""
        return self.task_run_id or self.flow_run_id


StreamEvent = StateChange | Renamed | LogLine


def flow_run_event(run_id: str, state: str, **fields: Any) -> StateChange:
    """A flow run state change (see :class:`StateChange` for the fields)."""
    return StateChange("flow_run", run_id, state, **fields)


def task_run_event(task_run_id: str, state: str, **fields: Any) -> StateChange:
    """A task run state change (see :class:`StateChange` for the fields)."""
    return StateChange("task_run", task_run_id, state, **fields)


def to_wire(event: StreamEvent) -> dict[str, Any]:
    """The JSON object of an event (``message``, ``record``, ``reopen``, ``cause`` and a log line's
    ``logger`` left out when empty: :func:`from_wire` reads a missing one as empty, and every event
    waits in Redis until it is recorded, however long no API runs)."""
    if isinstance(event, StateChange):
        out: dict[str, Any] = {"kind": event.kind, "id": event.id, "state": event.state, "ts": event.ts}
        if event.message:
            out["message"] = event.message
        if event.record:
            out["record"] = event.record
        if event.reopen:
            out["reopen"] = True
        if event.cause:
            out["cause"] = event.cause
        return out
    if isinstance(event, Renamed):
        return {
            "kind": event.kind,
            "id": event.id,
            "state": "",
            "ts": event.ts,
            "name": event.name,
            "cause": event.cause,
        }
    line: dict[str, Any] = {
        "kind": event.kind,
        "id": event.id,
        "flow_run_id": event.flow_run_id,
        "task_run_id": event.task_run_id,
        "level": event.level,
        "message": event.message,
        "ts": event.ts,
    }
    if event.logger:
        line["logger"] = event.logger
    return line


# ``json.dumps`` with options builds a new encoder per call; this one is built once (same text)
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))


def encode(event: StreamEvent) -> str:
    """An event as the text of a stream entry (``default=str`` keeps odd record values readable;
    no spaces after separators: the text waits in Redis until it is recorded)."""
    return _ENCODER.encode(to_wire(event))


def _ts(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return time.time()


def from_wire(data: Any) -> StreamEvent:
    """The event a decoded JSON object describes; :class:`EventFormatError` if it is none."""
    if not isinstance(data, dict):
        raise EventFormatError(f"an event is a JSON object, not {type(data).__name__}")
    kind = data.get("kind")
    if kind in ("flow_run", "task_run"):
        record = data.get("record")
        return StateChange(
            kind,
            str(data.get("id", "")),
            str(data.get("state", "")),
            ts=_ts(data.get("ts")),
            message=str(data.get("message") or ""),
            record=record if isinstance(record, dict) else {},
            reopen=bool(data.get("reopen")),
            cause=str(data.get("cause") or ""),
        )
    if kind == "flow_run_rename":
        return Renamed(
            str(data.get("id", "")), str(data.get("name") or ""), str(data.get("cause") or ""), _ts(data.get("ts"))
        )
    if kind == "log":
        task_run_id = data.get("task_run_id")
        return LogLine(
            str(data.get("flow_run_id") or data.get("id") or ""),
            str(task_run_id) if task_run_id else None,
            str(data.get("level") or "INFO"),
            str(data.get("message") or ""),
            _ts(data.get("ts")),
            str(data.get("logger") or ""),
        )
    raise EventFormatError(f"unknown event kind {kind!r}")


def decode(text: str) -> StreamEvent:
    """The event of a stream entry's text; :class:`EventFormatError` if it is not one."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise EventFormatError(f"an event is JSON text ({exc})") from exc
    return from_wire(data)
