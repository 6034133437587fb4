"""A task whose worker is killed while it runs, with an on_crashed hook (tests/test_crash_hooks.py)."""

from __future__ import annotations

import time
from typing import Any

from orchestrator import flow, task
from orchestrator.runstate.store import get_store

QUEUE = "crash-hooks"


def running_key(marker: str) -> str:
    """Set by the task once it runs (the test kills its worker then)."""
    return f"test:crash-hooks:running:{marker}"


def hooks_key(marker: str) -> str:
    """A list the hook appends to, once per call."""
    return f"test:crash-hooks:called:{marker}"


def remember_crash(task_: Any, task_run: Any, state: Any) -> None:
    """The on_crashed hook: says which state, run and label it was called for."""
    marker = task_run.name.rsplit("-", 1)[0].removeprefix("doomed_")
    get_store().redis.rpush(hooks_key(marker), f"{state.name}:{task_run.id}:{'heartbeat' in (state.message or '')}")


@task(on_crashed=remember_crash, task_run_name="doomed_{marker}-0")
def doomed(marker: str) -> str:
    get_store().redis.set(running_key(marker), "1")
    time.sleep(60)  # killed long before this ends
    return marker


@flow(queue=QUEUE)
def killed_mid_task(marker: str) -> str:
    return doomed.submit(marker)  # type: ignore[no-any-return]
