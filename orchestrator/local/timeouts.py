"""``timeout_seconds`` in an in-process run: the caller stops waiting at the deadline.

A thread running Python code cannot be killed. An attempt with a timeout therefore runs in
a daemon thread of its own, and the engine waits for it until the deadline: past it, the
attempt ends TimedOut (as on a worker) and the thread is abandoned. It goes on until its
function returns (its result is then dropped) and does not keep the process from exiting,
as in Prefect. A worker, by contrast, interrupts the task (Celery's soft time limit) and
kills it five seconds later (the hard one).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

from orchestrator.errors import OrchestratorError


class LocalTimeout(OrchestratorError, TimeoutError):
    """An in-process attempt ran past its timeout; its thread was abandoned."""


def call_with_timeout(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """``fn()`` in a daemon thread (this context copied); raise :class:`LocalTimeout` past ``timeout`` seconds."""
    context = contextvars.copy_context()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = context.run(fn)
        except BaseException as exc:  # handed back to the waiting caller
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"timeout-{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise LocalTimeout(f"{what} still running after {timeout:g}s; its thread was abandoned")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
