"""The future of a task run executing in a thread of this process: an in-process flow's task
runs (``local/runner.py``) and the task runs a task starts inside itself (``local/nested.py``)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import time
import uuid
from collections.abc import Generator
from typing import Any

from orchestrator.runtime.futures import Future
from orchestrator.states import StateType, can_transition


class ThreadFuture(Future[Any]):
    """A task run in a thread: a ``concurrent.futures`` future plus its state history."""

    def __init__(self, engine: Any, label: str) -> None:
        self.engine = engine
        self.task_run_id = str(uuid.uuid4())
        self.label = label
        self.cf: cf.Future[Any] = cf.Future()
        self._state = StateType.PENDING
        self.history: list[tuple[StateType, float, str]] = [(StateType.PENDING, time.time(), "")]

    def set_state(self, state: StateType, message: str = "") -> None:
        """Move to ``state`` if the shared state machine allows it (the recorder uses the same rule)."""
        if not can_transition(self._state, state):
            return
        self._state = state
        self.history.append((state, time.time(), message))

    @property
    def state_type(self) -> StateType:
        return self._state

    def state_message(self) -> str:
        return self.history[-1][2]

    def wait(self, timeout: float | None = None) -> StateType:
        cf.wait([self.cf], timeout=timeout)
        return self._state

    def __await__(self) -> Generator[Any, None, Any]:
        """``await future``: the loop is woken when the task's thread sets the result."""
        return asyncio.wrap_future(self.cf).__await__()

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        try:
            return self.cf.result(timeout=timeout)
        except Exception as exc:
            if not self.cf.done():  # the wait ran out (cf.TimeoutError): the run goes on
                raise
            # the task's own exception (a task's TimeoutError too: cf.TimeoutError is TimeoutError)
            self.failure_seen = True  # the body saw it fail (see Future.failure_seen)
            if raise_on_failure:
                raise
            return exc
