"""Run one task node: resolve inputs, call the function, store the result, emit states.

No Celery import here: the Celery task in :mod:`workers.celery_tasks` passes an
:class:`Attempt` that knows how to retry and send messages, so this module can be
read (and tested) as plain Python.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, NoReturn, Protocol

from orchestrator.authoring.hooks import call_hooks
from orchestrator.authoring.tasks import Task
from orchestrator.authoring.triggers import verdict
from orchestrator.config.settings import get_settings
from orchestrator.data.references import resolve
from orchestrator.data.results import persist
from orchestrator.data.serialization import dumps
from orchestrator.errors import SerializationError, TaskRunFailed, TaskTimedOut
from orchestrator.planning.plan import refs_in
from orchestrator.runs.lifecycle import (
    Report,
    after_final,
    end_task_run,
    finish_flow_run,
    no_report,
    propagate_failure,
)
from orchestrator.runstate import slots as concurrency
from orchestrator.runstate.store import RunStore, Started, get_store, now
from orchestrator.runtime import aio
from orchestrator.runtime.attempts import Outcome, decide, format_traceback, timed_out_message
from orchestrator.runtime.context import RunInfo, using
from orchestrator.runtime.engine import call_bound
from orchestrator.runtime.run_logger import prints_logged
from orchestrator.runtime.signals import RETRY
from orchestrator.runtime.task_errors import type_name
from orchestrator.states import StateType
from orchestrator.transport.messaging import TaskRunEnd

from .caching import open_cache
from .heartbeat import HEARTBEATS
from .logship import flush_run_logs
from .naming import named_run

log = logging.getLogger(__name__)


class Ending(Enum):
    """How an execution ended, for the Celery layer to report."""

    COMPLETED = "completed"
    STOPPED = "stopped"  # skipped: the canvas must not continue, but it is no error
    DUPLICATE = "duplicate"  # the task run was already final (redelivered message)


class Attempt(Protocol):
    """What the executor needs from the messaging layer for one attempt."""

    number: int  # 1 for the first attempt
    worker: str
    redelivered: bool  # the broker delivered this message before (to an execution that may still run)

    def retry(self, delay: float, retries_used: int, record: Callable[[Any], None] | None = None) -> NoReturn:
        """Schedule the next attempt in ``delay`` seconds (raises to end this one); ``record`` writes
        the attempt's state into the pipeline that keeps a delayed next attempt (None: written already,
        as it must be before a next attempt sent at once)."""

    def send(self, signatures: list[dict[str, Any]]) -> None:
        """Send signatures that became ready (Redis joins)."""

    def report(self, ends: Sequence[TaskRunEnd]) -> None:
        """Tell Flower how task runs ended that Celery saw no end of (downstream runs this attempt's
        failure or skip ended without running them)."""

    def is_timeout(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the attempt ran past its time limit."""

    def again(self, retries_used: int) -> dict[str, Any]:
        """The message that runs the next attempt (kept for the crash detector)."""

    def hooks_message(self, fields: dict[str, Any]) -> dict[str, Any]:
        """A message for a worker of this task's queue that runs its on_crashed hooks (kept for the
        crash detector, which has no task code: it sends it when it declares the crash)."""

    def wait(self, delay: float, why: str) -> NoReturn:
        """Send this same attempt again in ``delay`` seconds, from Redis (raises to end this execution)."""

    def hold_off_time_limit(self) -> None:
        """The task's function has ended: a time limit arriving now must not interrupt recording its end."""

    def restore_time_limit(self) -> None:
        """The attempt is over: time limits apply again (to the next task this process runs)."""

    def chained(self) -> list[tuple[str, str, Any]]:
        """The Redis commands that send what follows this task in its canvas (a chain's next task), to
        run with its end; [] when they cannot be had (Celery then sends it after the task returns).
        Built from the message alone (never the task's result, which an orchestrator task does not
        return to Celery), so it is asked for before the function runs. What it raises is handled by
        :func:`chained_ahead`, its one caller."""

    def chained_sent(self) -> None:
        """The commands of :meth:`chained` ran with the end: Celery must not send that task again."""


def full_run(run: dict[str, Any], message_id: str) -> dict[str, Any]:
    """Complete a message's compact run ids: the message id is the task run id."""
    return run | {"root": run.get("root") or run["flow_run_id"], "task_run_id": run.get("task_run_id") or message_id}


def start_record(run: dict[str, Any], name: str, attempt: Attempt) -> dict[str, Any]:
    """Fields written when an attempt starts."""
    return {
        "state": (StateType.RUNNING if attempt.number == 1 else StateType.RETRYING).value,
        "started": now(),
        "worker": attempt.worker,
        "attempts": attempt.number,
        "flow_run_id": run["flow_run_id"],
        "root": run["root"],
        "name": name,
        "label": run.get("label", ""),
    }


def end_failed(
    store: RunStore,
    run: dict[str, Any],
    worker: str,
    state: StateType,
    message: str,
    tb: str = "",
    hooks: Callable[[], None] | None = None,
    send: Callable[[list[dict[str, Any]]], None] = lambda _: None,
    error: BaseException | None = None,
    report: Report = no_report,
) -> None:
    """A task run of ``run`` ends in a failed or skipped state (see :func:`end_task_run`; ``report``
    tells Flower about the downstream runs that end with it).

    ``error``, the exception the task raised, is recorded by class and text so that a dynamic
    body reading this run's result raises the same type (``runtime/task_errors.py``).
    """
    trid = run["task_run_id"]
    fields = {"ended": now(), "message": message, "worker": worker, "traceback": tb}
    if error is not None:
        fields |= {"error_type": type_name(error), "error_text": str(error)}
    end_task_run(store, run["root"], trid, state, fields, run.get("label", trid), send, hooks, report)


def finish_what_a_crash_left(
    store: RunStore, run: dict[str, Any], send: Callable[[list[dict[str, Any]]], None], report: Report = no_report
) -> bool:
    """Redo the idempotent steps after a task run became final, for a redelivered message.

    A worker that died between recording a final state and stopping the downstream
    (or ending the flow run) left the run waiting; every step here is safe to repeat.
    Returns whether the task run had completed (else the canvas must stop here).
    """
    root, trid = run["root"], run["task_run_id"]
    state = store.task_runs.final_states(root, [trid])[trid]
    if state is not None and state is not StateType.COMPLETED:
        propagate_failure(store, root, trid, state, run.get("label", trid), send, report)
    flow_state = store.flow_runs.state(root)
    waiting = flow_state is not None and not flow_state.is_final and flow_state is not StateType.AWAITING_RETRY
    if waiting and store.flow_runs.remaining(root) == 0:
        finish_flow_run(store, root)
    return state is StateType.COMPLETED


def gate(
    store: RunStore,
    run: dict[str, Any],
    worker: str,
    send: Callable[[list[dict[str, Any]]], None],
    report: Report = no_report,
) -> frozenset[str] | None:
    """For a task with a trigger rule or tolerated upstreams: run it, or end it as its rule says.

    Its join sent it once every upstream was final; the upstreams' states decide.
    Returns None when the task must not run, else the upstreams that did not complete
    (their inputs arrive as None); an ordinary task gets an empty set at no cost.
    """
    if "trigger" not in run:
        return frozenset()
    ups: list[str] = run.get("ups", [])
    states = store.task_runs.final_states(run["root"], ups)
    labels = store.task_runs.labels(ups)
    upstream = {u: (labels[u], s or StateType.PENDING) for u, s in states.items()}
    decision = verdict(run["trigger"], upstream, set(run.get("allow", [])))
    if not decision.run:
        end_failed(store, run, worker, decision.state, decision.message, send=send, report=report)
        return None
    return frozenset(u for u, s in states.items() if s is not StateType.COMPLETED)


def end_completed(
    store: RunStore,
    run: dict[str, Any],
    attempt: Attempt,
    text: str,
    hooks: Callable[[], None] | None = None,
    fields: dict[str, str] | None = None,
    chained: Sequence[tuple[str, str, Any]] = (),
) -> Ending:
    """Make a task run Completed with its result (``fields`` added to its record); send joins that became ready.

    ``chained``: the commands that send the next task of the Celery chain this one is in
    (:meth:`Attempt.chained`, captured while the start was on its way): they run in the same round
    trip as the end, not in one of their own after the task returns, so a link of a chain waits for
    one round trip less. A user task's end only; the built-in tasks keep Celery's send.
    """
    root, trid = run["root"], run["task_run_id"]
    finished = store.task_runs.finished(
        root, trid, StateType.COMPLETED, {"ended": now(), "worker": attempt.worker} | (fields or {}), text, chained
    )
    if finished.sent:
        attempt.chained_sent()
    if finished.left is None:
        return Ending.DUPLICATE
    attempt.send(finished.ready)
    if hooks:
        hooks()
    after_final(store, root, finished)
    return Ending.COMPLETED


def run_task(
    task: Task, run: dict[str, Any], inputs: dict[str, Any] | None, attempt: Attempt, retries_used: int = 0
) -> Ending:
    """Execute one attempt of ``task`` for the task run described by ``run``.

    Raises the user's exception after recording Failed, so Celery (and Flower) see
    FAILURE; raises through ``attempt.retry`` for a retry.
    """
    store = get_store()
    allowed = gate(store, run, attempt.worker, attempt.send, attempt.report)
    if allowed is None:
        return Ending.STOPPED
    taken = take_slots(store, task, run, attempt)
    held = list(taken.tags)  # what the finally gives back; a start refused narrows it to taken.fresh
    try:
        return _run_holding_slots(store, task, run, inputs, attempt, retries_used, allowed, held, taken.fresh)
    finally:
        if task.timeout_seconds:
            attempt.restore_time_limit()
        concurrency.release(store, run["task_run_id"], held)


def take_slots(store: RunStore, task: Task, run: dict[str, Any], attempt: Attempt) -> concurrency.Taken:
    """Take a slot of each concurrency-limited tag of ``task``, or make the task run wait for one.

    Waiting records AwaitingConcurrencySlot once (with who holds the slots) and ends
    this execution: the same attempt is sent again after ``slot_poll_seconds``
    (with jitter, so waiters do not ask in step), holding no worker slot meanwhile.
    """
    if not task.tags:
        return concurrency.NOTHING
    trid = run["task_run_id"]
    got = concurrency.acquire(store, run["root"], trid, task.tags)
    if got is None:
        return concurrency.NOTHING  # already final: task_started sees it and handles the redelivery
    if isinstance(got, concurrency.LimitFull):
        message = got.message(store)
        if got.state != StateType.AWAITING_CONCURRENCY_SLOT.value:
            fields = {
                "state": StateType.AWAITING_CONCURRENCY_SLOT.value,
                "message": message,
                "slot_tag": got.tag,
                "flow_run_id": run["flow_run_id"],
                "root": run["root"],
                "name": task.name,
                "label": run.get("label", ""),
            }
            store.task_runs.progress(trid, fields)
        poll = get_settings().slot_poll_seconds
        attempt.wait(poll * (1 + random.random() / 2), message)
    return got


def _run_holding_slots(
    store: RunStore,
    task: Task,
    run: dict[str, Any],
    inputs: dict[str, Any] | None,
    attempt: Attempt,
    retries_used: int,
    allowed: frozenset[str],
    held: list[str],
    fresh: list[str],
) -> Ending:
    """Start the task run (one round trip) and run it, unless its start is refused.

    The start is sent first and its answer read only once what needs no answer is ready (the
    inputs a message carries whole): the round trip overlaps that work. Nothing of the task runs
    before the answer is read.

    A refused start (a stale message, or a redelivery while the task run heartbeats) gives back
    only the slots ``fresh``, those this message took: the others it found held by its task run id,
    i.e. by the execution that runs it (a newer attempt, or the one the broker delivered first),
    and giving them back would let one more task run in beyond the limit.
    """
    root, trid = run["root"], run["task_run_id"]
    record = crash_record(run, task, attempt, retries_used) | {"slots": held}
    prefetch = [] if inputs is None else [r for r in refs_in(inputs) if r not in allowed]
    pending = store.task_runs.start(
        root,
        trid,
        start_record(run, task.name, attempt),
        stored_inputs=inputs is None,
        prefetch=prefetch,
        crash_record=record,  # under the crash detector from this moment, in the same round trip
        alive_since=now() - get_settings().crash_window_seconds if attempt.redelivered else None,
    )
    try:
        ahead = resolved_ahead(store, task, run, inputs, allowed) if inputs is not None and not prefetch else None
        link = chained_ahead(attempt)
    finally:
        started = pending.result()  # read even if the lines above were interrupted: the connection must be left clean
    if started is None:  # already final: a redelivery, maybe after a crash mid-way
        completed = finish_what_a_crash_left(store, run, attempt.send, attempt.report)
        return Ending.DUPLICATE if completed else Ending.STOPPED  # a chain must not go on
    if started.stale or started.running_elsewhere:
        held[:] = fresh  # the slots found held are the running execution's (same task run id): keep them
    if started.stale:  # the crash detector sent a newer attempt; that one carries the run on
        log.warning("task run %s: attempt %s is stale (a newer one was sent); not run", trid, attempt.number)
        return Ending.STOPPED
    if started.running_elsewhere:  # the broker gave its message back while its task still runs
        log.warning(
            "task run %s: attempt %s was delivered again while its first execution still runs (it heartbeats); "
            "not run twice: that one carries the task run on, or the crash detector if it dies",
            trid,
            attempt.number,
        )
        return Ending.STOPPED
    HEARTBEATS.begin(trid, record | {"start": started.start}, announced=True)
    try:
        return _run_started(store, task, run, inputs, attempt, retries_used, allowed, started, held, ahead, link)
    finally:
        HEARTBEATS.end(trid)  # the next beat takes it off the detector's set


@dataclass(frozen=True, slots=True)
class Resolved:
    """Arguments decoded while the start was on its way, or the error decoding them raised (raised
    again by :meth:`value` where decoding used to happen, so the task run ends as it did)."""

    kwargs: Any = None
    error: Exception | None = None

    def value(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.kwargs


def resolved_ahead(
    store: RunStore, task: Task, run: dict[str, Any], inputs: dict[str, Any], allowed: frozenset[str]
) -> Resolved:
    """Decode the arguments a message carries whole (no result to read, so no call to Redis): done
    while the start's round trip is under way. Decoding runs no task code."""
    try:
        return Resolved(kwargs=_resolve(store, task, inputs, allowed, {}, where=_where(task, run), from_store=False))
    except Exception as exc:  # raised again where the start allows the task to run (Resolved.value)
        return Resolved(error=exc)


@dataclass(frozen=True, slots=True)
class Link:
    """The next link of the task's chain, as the commands that send it, captured while the start was on
    its way (:func:`chained_ahead`); or the time limit that cut the capture short, raised again where
    the function would run (so the run ends TimedOut, as if the limit had come a moment later)."""

    writes: Sequence[tuple[str, str, Any]] = ()
    interrupted: Exception | None = None


NO_LINK = Link()


def chained_ahead(attempt: Attempt) -> Link:
    """The next link of the task's chain, captured while the start is on its way (:meth:`Attempt.chained`).

    Its message is built from the request alone (parent, root, priority, the rest of the chain),
    which the run does not change, and an orchestrator task returns None to Celery: captured now or
    after the function, it is the same message, and the child does this work in the time it would
    wait for the start's answer. It is sent only with a Completed end (:func:`end_completed`); every
    other ending drops it, unsent, and Celery sends nothing or the link as before. A capture that
    raises is no reason to stop the task: Celery then sends the link after it returns, as before.
    """
    try:
        return Link(attempt.chained())
    except Exception as exc:
        if attempt.is_timeout(exc):  # the task's soft time limit, come before its function: not swallowed
            return Link(interrupted=exc)
        log.debug("could not capture the next link of a chain ahead of its task", exc_info=True)
        return NO_LINK


def _resolve(
    store: RunStore,
    task: Task,
    inputs: dict[str, Any],
    allowed: frozenset[str],
    prefetched: dict[str, str | None],
    *,
    where: str,
    from_store: bool,
) -> Any:
    """The task's arguments: ``inputs`` with every reference replaced by its result (read from
    ``store`` where ``prefetched`` lacks it)."""
    return resolve(
        inputs,
        store,
        allow_pickle=task.result_serializer == "pickle",
        inline_pickle=from_store,  # pickle payloads are loaded only from the run store
        where=where,
        failed_as_none=allowed,
        prefetched=prefetched,
    )


def _where(task: Task, run: dict[str, Any]) -> str:
    """How errors name the task run."""
    return f"task {run.get('label', task.name)} ({task.name}) of flow run {run['flow_run_id']}"


def _run_started(
    store: RunStore,
    task: Task,
    run: dict[str, Any],
    inputs: dict[str, Any] | None,
    attempt: Attempt,
    retries_used: int,
    allowed: frozenset[str],
    started: Started,
    held: list[str],
    ahead: Resolved | None = None,
    link: Link = NO_LINK,
) -> Ending:
    """Run a started task run and record how it ended. ``held``: the concurrency slots it holds, given
    back before a retry is sent (and emptied, so :func:`run_task` gives back nothing more);
    ``ahead``: its arguments, when they were decoded while the start was on its way; ``link``: its
    chain's next task, captured then too, sent only with a Completed end."""
    trid = run["task_run_id"]
    from_store = inputs is None  # pickle payloads are loaded only from the run store
    if inputs is None:
        inputs = started.stored_inputs or {}
    where = _where(task, run)
    info = RunInfo(
        run["flow_run_id"],
        run.get("flow_name", ""),
        trid,
        task.name,
        attempt.number,
        run_name=run.get("label") or None,
        tags=list(task.tags),
    )
    try:
        if link.interrupted is not None:
            raise link.interrupted
        if ahead is not None:
            kwargs = ahead.value()
        else:
            kwargs = _resolve(store, task, inputs, allowed, started.results, where=where, from_store=from_store)
        if task.task_run_name is not None:  # the name is made from the resolved arguments
            run = named_run(store, task, run, kwargs, info)
        cache = open_cache(store, task, info, kwargs) if task.cache is not None else None
        if cache is not None and cache.hit is not None:  # cached: the function does not run
            text = cache.hit
        else:
            try:
                with using(None, info), prints_logged(task.log_prints):
                    value = call_bound(task.fn, kwargs)
                    if task.is_async:  # a coroutine: run it on this thread's loop, cancelled at timeout_seconds
                        value = aio.run(value, task.timeout_seconds)
                    elif not task.plain_function:  # a generator's values, collected (see aio.collected)
                        value = aio.collected(value, task.timeout_seconds)
            finally:
                if task.timeout_seconds:  # ended (or timed out): a late soft limit must not cut the bookkeeping
                    attempt.hold_off_time_limit()
                flush_run_logs()  # its lines reach Redis before its end does: a worker stopped next loses none
            text = dumps(value, task.result_serializer, where)
        if task.persist_result:
            persist(trid, text)  # before Completed: a completed persisted result is always on storage
        if cache is not None:
            cache.keep(text)
    except Exception as exc:
        poking_for = now() - store.task_runs.first_poke(trid) if isinstance(exc, RETRY) else 0.0
        outcome = _outcome(task, exc, retries_used, attempt, poking_for)
        if outcome.state is StateType.AWAITING_RETRY:
            progress = {"state": outcome.state.value, "message": outcome.message, "retry_at": now() + outcome.delay}
            if outcome.uses_retry:  # an attempt that raised (not a sensor's poke): its traceback is kept in the logs
                progress["traceback"] = format_traceback(exc)

            def awaiting_retry(pipe: Any) -> None:
                store.task_runs.progress(trid, progress, pipe)

            record: Callable[[Any], None] | None = awaiting_retry
            if outcome.delay <= 0:  # the broker gets the next attempt at once: its state goes first
                awaiting_retry(None)
                record = None
            call_hooks(task, task.hooks, info, outcome.state, outcome.message)
            # The slots go back before the next attempt is sent, not after: given back later, they would
            # be taken from under that attempt, which may already run elsewhere and find them held by
            # its task run id (so it keeps them), and the limit could then be passed.
            concurrency.release(store, trid, held)
            held.clear()
            # A later attempt is kept in Redis: AwaitingRetry is written in the same round trip as it
            # and as this execution leaving the crash detector, so a worker killed once the state
            # shows has nothing for the detector to call Crashed (and a worker killed before it is).
            attempt.retry(outcome.delay, retries_used + int(outcome.uses_retry), record)
        end_failed(
            store,
            run,
            attempt.worker,
            outcome.state,
            outcome.message,
            format_traceback(exc),
            lambda: call_hooks(task, task.hooks, info, outcome.state, outcome.message),
            attempt.send,
            None if isinstance(exc, RETRY) else exc,  # a sensor that gave up raised no error of its own
            attempt.report,
        )
        if outcome.state is StateType.SKIPPED:
            return Ending.STOPPED
        if isinstance(exc, RETRY):  # a sensor that gave up: Celery would show its last poke's RETRY
            raise TaskRunFailed(f"{outcome.state.value}: {outcome.message}") from exc
        raise
    fields = cache.fields() if cache is not None else None
    return end_completed(
        store, run, attempt, text, lambda: call_hooks(task, task.hooks, info, StateType.COMPLETED), fields, link.writes
    )


def crash_record(run: dict[str, Any], task: Task, attempt: Attempt, retries_used: int) -> dict[str, Any]:
    """What the crash detector needs if this process dies while the task runs."""
    return {
        "root": run["root"],
        "flow_run_id": run["flow_run_id"],
        "label": run.get("label", ""),
        "task": task.name,
        "worker": attempt.worker,
        "pid": os.getpid(),
        "attempt": attempt.number,
        "retries": task.retries,
        "retries_used": retries_used,
        "again": attempt.again(retries_used + 1) if retries_used < task.retries else None,
        "on_crashed": attempt.hooks_message(
            {
                "task": task.name,
                "task_run_id": run["task_run_id"],
                "flow_run_id": run["flow_run_id"],
                "label": run.get("label", ""),
                "attempt": attempt.number,
            }
        )
        if task.hooks.get("on_crashed")
        else None,
    }


def _outcome(task: Task, exc: BaseException, retries_used: int, attempt: Attempt, poking_for: float) -> Outcome:
    if isinstance(exc, SerializationError):  # deterministic: retrying cannot help
        return Outcome(StateType.FAILED, str(exc))
    if attempt.is_timeout(exc) or isinstance(exc, TaskTimedOut):
        return Outcome(StateType.TIMED_OUT, timed_out_message(task, exc))
    return decide(task, exc, retries_used, poking_for)
