"""Flows and tasks for tests/test_doors.py; its worker imports this module with --flows tests.door_flows.

:class:`PickleBomb` is the hostile payload: unpickling it calls :func:`leave_marker`, which
writes a file. A test that finds no marker file knows the payload was never unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator import flow, task


def leave_marker(path: str) -> str:
    """What unpickling a :class:`PickleBomb` runs: it writes ``path`` (the evidence)."""
    Path(path).write_text("unpickled\n")
    return path


class PickleBomb:
    """An object whose pickle, once loaded, calls ``leave_marker(path)`` instead of rebuilding it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return leave_marker, (self.path,)


@task
def json_sink(value: Any) -> str:
    """A task that did not opt into pickle (JSON, the default)."""
    return repr(value)


@task(result_serializer="pickle")
def pickle_sink(value: Any) -> str:
    """A task that opted into pickle: it may receive pickled values."""
    return repr(value)


@task(result_serializer="pickle")
def make_bomb(path: str) -> PickleBomb:
    """A pickle task whose result is stored pickled (as a PickleBomb)."""
    return PickleBomb(path)


@flow(name="door-echo")
def door_echo(value: Any = None) -> str:
    """Echo one value through a JSON task (the API tests' target flow)."""
    return json_sink.submit(value)  # type: ignore[no-any-return]


@flow(name="door-config")
def door_config(config: dict[str, Any]) -> str:
    """A flow with a dict parameter: any JSON object passes the API's schema check."""
    return json_sink.submit(config)  # type: ignore[no-any-return]


@flow(name="door-sinks")
def door_sinks(path: str = "") -> None:
    """Pickle payloads meeting tasks: a pickled upstream result read by a JSON task, and two
    plain inputs (``0``) the pickle test replaces with a crafted pickle payload."""
    json_sink.submit(make_bomb.submit(path))  # json_sink-0: its input references a pickled result
    json_sink.submit(0)  # json_sink-1: input crafted by the test (inline pickle payload)
    pickle_sink.submit(0)  # pickle_sink-0: the same crafted payload, where pickle was opted into
