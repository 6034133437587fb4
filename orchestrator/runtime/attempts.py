"""What happens after a task attempt raised: retry, fail or skip.

One decision function serves the local engine and the fleet executor, so a flow
behaves the same in a unit test and on the workers.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from types import TracebackType

from orchestrator.authoring.tasks import Task
from orchestrator.errors import describe
from orchestrator.runtime.signals import FAIL, RETRY, SKIP
from orchestrator.states import StateType


@dataclass(frozen=True)
class Outcome:
    """The decision after an attempt raised."""

    state: StateType  # AWAITING_RETRY, FAILED or SKIPPED
    message: str
    delay: float = 0.0
    uses_retry: bool = False  # False for a RETRY signal (a sensor poke)


def decide(task: Task, exc: BaseException, retries_used: int, poking_for: float = 0.0) -> Outcome:
    """Decide the next state of a task run whose attempt raised ``exc``.

    ``poking_for`` is how long a sensor has been poking (since its first RETRY).
    """
    if isinstance(exc, SKIP):
        return Outcome(StateType.SKIPPED, exc.message or "skipped by SKIP")
    if isinstance(exc, FAIL):
        return Outcome(StateType.FAILED, exc.message or "failed by FAIL")
    if isinstance(exc, RETRY):
        limit = task.poke_timeout_seconds
        delay = exc.seconds_to_wait()
        if limit is not None and poking_for + delay > limit:
            return Outcome(
                StateType.FAILED,
                f"sensor gave up: still not ready after {poking_for:.0f}s of pokes "
                f"(poke_timeout_seconds={limit:g}); last poke said: {exc.message or 'RETRY'}",
            )
        return Outcome(StateType.AWAITING_RETRY, exc.message or "RETRY requested", delay=delay)
    if retries_used < task.retries and task.should_retry(exc):
        delay = task.retry_delay(retries_used + 1)
        return Outcome(
            StateType.AWAITING_RETRY,
            f"attempt failed ({describe(exc)}); retry {retries_used + 1} of {task.retries} in {delay:g}s",
            delay=delay,
            uses_retry=True,
        )
    return Outcome(StateType.FAILED, describe(exc))


def timed_out_message(task: Task, exc: BaseException) -> str:
    """Why an attempt ended TimedOut: the same words on a worker and in-process."""
    limit = f"{task.timeout_seconds:g}" if task.timeout_seconds else str(task.timeout_seconds)
    return f"ran past timeout_seconds={limit} ({describe(exc)})"


_OWN_MODULES = ("orchestrator.", "workers.")  # the executor's frames above the user's function


def format_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` as text, for the run record: from the first frame of the user's code.

    The frames of the executor that called the task (``workers``, ``orchestrator``) are the same for
    every task and push the user's own lines down; they are left out in front of the first frame
    that is not ours. An error raised in our code alone (nothing of the user's ran) keeps them all.
    """
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    first = next((i for i, f in enumerate(frames) if not _is_ours(f)), 0)
    return "".join(traceback.format_exception(type(exc), exc, frames[first] if frames else None))


def _is_ours(tb: TracebackType) -> bool:
    return str(tb.tb_frame.f_globals.get("__name__", "")).startswith(_OWN_MODULES)
