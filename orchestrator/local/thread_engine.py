"""What the two engines whose task runs are threads of this process share.

An in-process flow run's task runs (``local/runner.py``) and the task runs a task starts inside
itself (``local/nested.py``) are both :class:`ThreadFuture` s run in a thread pool, and both
engines wrote the same code for them twice: waiting on their futures, starting a task run from
the done-callback of its last upstream, and the bookkeeping of its attempts (which attempt this
is, the timeout, what a failed attempt leads to). They differ in what they record and raise,
which stays in each engine.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from orchestrator.local.thread_future import ThreadFuture
from orchestrator.local.timeouts import LocalTimeout, call_with_timeout
from orchestrator.runtime.attempts import Outcome, decide, timed_out_message
from orchestrator.runtime.engine import Engine
from orchestrator.runtime.futures import DoneAndNotDone, Future
from orchestrator.runtime.signals import RETRY
from orchestrator.states import StateType

if TYPE_CHECKING:
    from orchestrator.authoring.tasks import Task


class ThreadEngine(Engine):
    """An engine whose task runs are futures of ``future_type`` run in threads of this process."""

    future_type: ClassVar[type[ThreadFuture]]  # its own futures: others passed to wait() are left out

    def wait(self, futures: list[Future[Any]], timeout: float | None) -> DoneAndNotDone:
        by_cf = {f.cf: f for f in futures if isinstance(f, self.future_type)}
        done, not_done = cf.wait(list(by_cf), timeout=timeout)
        return DoneAndNotDone({by_cf[d] for d in done}, {by_cf[n] for n in not_done})

    def as_completed(self, futures: list[Future[Any]], timeout: float | None) -> Iterator[Future[Any]]:
        by_cf = {f.cf: f for f in futures if isinstance(f, self.future_type)}
        for done in cf.as_completed(list(by_cf), timeout=timeout):
            yield by_cf[done]


def start_when_done(upstream: list[tuple[Future[Any], bool]], start: Callable[[], object]) -> None:
    """Call ``start`` once every upstream future is done: now when there is none, else from the
    done-callback of the last one to finish (so no thread ever blocks waiting for another)."""
    remaining = [len(upstream)]
    lock = threading.Lock()

    def upstream_done(_: object) -> None:
        with lock:
            remaining[0] -= 1
            ready = remaining[0] == 0
        if ready:
            start()

    if not upstream:
        start()
    for up, _ in upstream:
        up.cf.add_done_callback(upstream_done)  # type: ignore[attr-defined]


class Attempts:
    """A task run's attempts in a thread: which one this is, and what a failed one leads to.

    The rules are the fleet's (:func:`~orchestrator.runtime.attempts.decide`), but for a
    timeout: a thread cannot be killed, so the attempt is abandoned at the deadline and ends
    TimedOut, not retried (as on a worker).
    """

    def __init__(self, task: Task) -> None:
        self.task = task
        self.number = 1
        self.retries_used = 0
        self.first_poke: float | None = None  # when a sensor first raised RETRY: its poke_timeout counts from it

    def call(self, fn: Callable[[], Any], label: str) -> Any:
        """One attempt: ``fn()``, abandoned at the task's ``timeout_seconds`` (raising LocalTimeout)."""
        if self.task.timeout_seconds:
            return call_with_timeout(fn, self.task.timeout_seconds, f"task {label}")
        return fn()

    def outcome(self, exc: Exception) -> Outcome:
        """What the attempt that raised ``exc`` leads to."""
        if isinstance(exc, RETRY) and self.first_poke is None:
            self.first_poke = time.time()
        if isinstance(exc, LocalTimeout):
            return Outcome(StateType.TIMED_OUT, timed_out_message(self.task, exc))
        poking_for = time.time() - self.first_poke if self.first_poke else 0.0
        return decide(self.task, exc, self.retries_used, poking_for)

    def retry(self, outcome: Outcome) -> None:
        """After an AwaitingRetry ``outcome``: count it and wait its delay; the next attempt follows."""
        self.retries_used += outcome.uses_retry
        self.number += 1
        time.sleep(outcome.delay)
