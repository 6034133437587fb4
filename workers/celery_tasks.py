"""The Celery tasks of the fleet: one per user task, plus the built-in node kinds.

Each stays thin: decode the message, call the executor (or the node logic), and
translate the ending into what Celery should report (SUCCESS, RETRY, FAILURE, or
Ignore for a skip, which also stops a chain; Celery sends no event for Ignore, so
:meth:`CeleryAttempt.stop` tells Flower the task run's final state first).

All of them set ``ignore_result``: results live in the orchestrator's own keys, and the
Redis backend still counts chord parts for ignored results (``on_chord_part_return``
runs either way), so storing and publishing every return value would be pure cost.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from billiard.exceptions import WorkerLostError
from celery import Celery
from celery import Task as CeleryTask
from celery.canvas import Signature, chord, group, signature
from celery.exceptions import Ignore, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.utils.saferepr import saferepr
from celery.worker.request import Request

from orchestrator.authoring import registry
from orchestrator.authoring.hooks import call_hooks
from orchestrator.authoring.options import flow_from_record, registered_time_limits, time_limits
from orchestrator.authoring.params import coerce_parameters
from orchestrator.authoring.tasks import Task
from orchestrator.config.settings import get_settings
from orchestrator.data.references import resolve, returns_text
from orchestrator.data.serialization import from_jsonable
from orchestrator.errors import OrchestratorError, RunError
from orchestrator.planning.compiler import (
    COLLECT_MAP_TASK,
    CRASH_HOOKS_TASK,
    EXPAND_MAP_TASK,
    FINISH_SUBFLOW_TASK,
    FLOW_CRASH_HOOKS_TASK,
    FLOW_DEADLINE_TASK,
    RESUME_FLOW_BODY_TASK,
    RETRY_FLOW_RUN_TASK,
    RUN_LINKED_FLOW_TASK,
    START_FLOW_RUN_TASK,
    inline_or_stored,
    make_signature,
    message_run,
)
from orchestrator.planning.templates import to_template
from orchestrator.runs.handle import encode_parameters, launch_prepared, prepare_run
from orchestrator.runs.lifecycle import (
    end_flow_run,
    flow_outcome,
    relaunch_static,
    stop_flow_run,
)
from orchestrator.runstate.connection import RedisUnavailable
from orchestrator.runstate.records import NewTaskRun
from orchestrator.runstate.store import RunStore, get_store, now
from orchestrator.runtime.context import RunInfo
from orchestrator.runtime.engine import zip_mapped
from orchestrator.states import StateType
from orchestrator.transport.collected_sends import captured_chord, collected_send
from orchestrator.transport.messaging import CeleryMessaging, TaskRunEnd, acknowledgement

from .body_admission import start_driver
from .body_attempts import BodyAttempt
from .executor import Ending, end_completed, end_failed, full_run, gate, run_task, start_record
from .heartbeat import HEARTBEATS
from .linked_runs import run_linked_flow as start_linked_flow
from .redis_transport import forget_acknowledged
from .time_limits import hold_off_soft_limit

log = logging.getLogger(__name__)

TIMED_FROM_SEND = frozenset({"countdown", "expires"})
"""Signature options Celery turns into a time when it sends the message (an ETA, an expiry)."""


class CeleryAttempt:
    """The executor's view of one Celery task execution."""

    def __init__(self, celery_task: CeleryTask) -> None:
        self.celery_task = celery_task
        self.number = int(celery_task.request.retries or 0) + 1
        self.worker = celery_task.request.hostname or socket.gethostname()
        # the broker's flag: RabbitMQ sets it on what it gives back (a lost connection, a rejected
        # message), kombu's Redis transport on what it restores; messages sent anew (retries, resumes)
        # never carry it
        self.redelivered = bool((celery_task.request.delivery_info or {}).get("redelivered"))
        self._restore_limit: Callable[[], None] | None = None
        self._with_end = (False, False)  # what chained() gave: a chain link's send, the acknowledgement
        self.acked_with_end = False  # the end script acknowledged this execution's message (see chained)

    def hold_off_time_limit(self) -> None:
        if self._restore_limit is None:
            self._restore_limit = hold_off_soft_limit()

    def restore_time_limit(self) -> None:
        if self._restore_limit is not None:
            self._restore_limit()
            self._restore_limit = None

    def retry(self, delay: float, retries_used: int, record: Callable[[Any], None] | None = None) -> NoReturn:
        """Schedule the next attempt; a delayed one waits in Redis, not as a broker ETA, written in one
        round trip with ``record`` (the attempt's AwaitingRetry) and this execution leaving the crash
        detector. A next attempt sent at once has its state written by the caller before (``record`` None)."""
        task, request = self.celery_task, self.celery_task.request
        if delay <= 0:
            kwargs = dict(request.kwargs or {}) | {"retries_used": retries_used}
            sent = task.retry(countdown=0, kwargs=kwargs, max_retries=None, throw=False)  # in the broker now
            self._leave_crash_detector()
            raise sent
        self._later(self.again(retries_used), delay, f"next attempt in {delay:g}s", attempt_over=True, record=record)

    def _task_run_id(self) -> str | None:
        """The task run this execution runs (a message's id is its task run's, see ``full_run``)."""
        request = self.celery_task.request
        run = (request.kwargs or {}).get("run")
        return (run.get("task_run_id") or request.id) if isinstance(run, dict) else None

    def _leave_crash_detector(self, pipe: Any = None) -> None:
        """This execution is over and its next one is kept (in the broker, or in ``pipe``'s write to
        Redis): it leaves the crash detector now, not at the next heartbeat, and its own message is
        stale if the broker delivers it again (its worker lost before acknowledging it). A worker killed within
        that beat had the detector declare Crashed (and retry again) a task run that was only waiting
        for its next attempt. Retry paths only: a task that completes never comes here."""
        trid = self._task_run_id()
        if trid is None:
            return
        HEARTBEATS.end(trid)  # first: a beat in between must not put it back
        store = get_store()
        own = store.pipeline() if pipe is None else pipe  # one round trip either way
        store.task_runs.supersede(trid, self.number + 1, own)  # this message, redelivered, is stale
        store.leases.forget(own, trid)
        if pipe is None:
            own.execute()

    def send(self, signatures: list[dict[str, Any]]) -> None:
        CeleryMessaging(self.celery_task.app).send_signatures(signatures)

    def report(self, ends: Sequence[TaskRunEnd]) -> None:
        CeleryMessaging(self.celery_task.app).report_ends(ends, self.worker)

    def chained(self) -> list[tuple[str, str, Any]]:
        """The Redis commands to run with this execution's Completed end: the next link of its chain
        (:meth:`_next_link`), then the acknowledgement of its message (:meth:`_acknowledgement`)."""
        request = self.celery_task.request
        server = get_store().server()
        link = self._next_link(server)
        # Acknowledged with the end only when Celery has nothing left to do once the task returns: a
        # worker that dies before doing it must have the message delivered again, as before (the
        # redelivered execution finds the task run final and lets Celery do the rest: send a chain's
        # next step that was not captured, link callbacks, count a chord's part).
        after_return = request.callbacks or request.chord or (request.chain and not link)
        ack = [] if after_return else self._acknowledgement(server)
        self._with_end = (bool(link), bool(ack))
        return link + ack

    def _acknowledgement(self, server: tuple[Any, ...] | None) -> list[tuple[str, str, Any]]:
        """The commands that acknowledge this execution's message, to run in its end script: with late
        acknowledgement (the fleet's setting) Celery's main process acknowledges a message after its
        task returns, a round trip in the one serial part of a worker; done in the end's round trip,
        the end and the acknowledgement are one step, and a worker that dies between the two no longer
        has a finished task's message delivered again. [] when its broker is not the run store's
        Redis (``messaging.acknowledgement``) or the message was acknowledged when it started."""
        task, request = self.celery_task, self.celery_task.request
        if not task.acks_late:
            return []
        return acknowledgement(task.app, (request.properties or {}).get("delivery_tag"), server)

    def _next_link(self, server: tuple[Any, ...] | None) -> list[tuple[str, str, Any]]:
        """What Celery's tracer would send after this task returns (the next link of its chain, as
        ``_dispatch_callbacks_and_chain`` builds it), captured as Redis commands; [] when the next
        step is a group or a chain, a chord that cannot be collected whole or is not the chain's
        last step, the task has link callbacks, or the broker is not the run store's Redis
        (:func:`captured_sends`). A chord is Celery's own send with its header's messages collected
        (``collected_sends.py``); its size is stored in the result backend here, before any of
        them can run.

        The executor asks before the function runs (``chained_ahead``): all of it comes from the
        request, which the run does not change, and from None, what an orchestrator task returns.
        Not a link timed from its send (``countdown``, ``expires``; the compiler sets neither):
        captured early, its clock would start before the task ran; Celery sends that one, as before.
        A capture that raises raises here: ``chained_ahead`` decides what that means (a time limit
        ends the attempt; anything else leaves the link to Celery).
        """
        task, request = self.celery_task, self.celery_task.request
        chain = request.chain
        if not chain or request.callbacks:
            return []
        app = task.app
        following = signature(chain[-1], app=app)
        if type(following) not in (Signature, chord) or not TIMED_FROM_SEND.isdisjoint(following.options):
            return []
        inherit = app.conf.task_inherit_parent_priority
        priority = (request.delivery_info or {}).get("priority") if inherit else None
        options = {
            "chain": chain[:-1],
            "parent_id": request.id,
            "root_id": request.root_id or request.id,
            "priority": priority,
        }
        # (None,): what the task returned, as Celery passes it (an orchestrator task returns None)
        if type(following) is chord:  # W1's source: its header in the end's round trip (collected_sends.py)
            return (captured_chord(app, following, (None,), options, server) or []) if not chain[:-1] else []
        messaging = CeleryMessaging(app)
        return messaging.captured_signatures([following], options, server, (None,), connected_only=False) or []

    def chained_sent(self) -> None:
        link, ack = self._with_end
        if link:
            self.celery_task.request.chain = None  # the tracer sends nothing after the task returns
        self.acked_with_end = ack  # the main process must not acknowledge it again (ACKED_WITH_END)

    def stop(self, run: dict[str, Any]) -> NoReturn:
        """End this execution with Ignore, which stops the canvas here (nothing after it is sent).

        Celery sends no final event for Ignore, so Flower would show the task STARTED forever:
        the task run's final state (Skipped, UpstreamFailed...) is reported first, read in one
        round trip on this path only. A run that is not final (a stale attempt: a newer one
        carries it on) is not reported.
        """
        with contextlib.suppress(Exception):  # telling Flower must never keep the run from stopping
            end = get_store().task_runs.final_end(run["root"], run["task_run_id"])
            if end is not None:
                self.report([TaskRunEnd(run["task_run_id"], self.celery_task.name, *end)])
        raise Ignore()

    def again(self, retries_used: int) -> dict[str, Any]:
        """The next attempt's message: same task id and queue, one more Celery retry."""
        kwargs = dict(self.celery_task.request.kwargs or {}) | {"retries_used": retries_used}
        return self._message(kwargs, self.number)

    def hooks_message(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The crash-hooks message for this task's queue (the queue this execution came from)."""
        queue = (self.celery_task.request.delivery_info or {}).get("routing_key") or get_settings().default_queue
        return dict(self.celery_task.app.signature(CRASH_HOOKS_TASK, kwargs=fields, queue=queue))

    def _message(self, kwargs: dict[str, Any], retries: int) -> dict[str, Any]:
        """This execution's message with ``kwargs`` and Celery's retry count ``retries`` (same id and queue)."""
        task = self.celery_task
        return dict(task.signature_from_request(task.request, None, kwargs, retries=retries))

    def _later(
        self,
        message: dict[str, Any],
        delay: float,
        why: str,
        *,
        attempt_over: bool = False,
        record: Callable[[Any], None] | None = None,
    ) -> NoReturn:
        """Keep ``message`` in Redis until ``delay`` has passed (not as a broker ETA); end this execution.

        ``attempt_over``: the message is the next attempt (a retry), so this execution leaves the crash
        detector in the same round trip; a wait for a concurrency slot comes before the attempt began.
        ``record`` writes the attempt's state first, in that same round trip.
        """
        store = get_store()
        pipe = store.pipeline()
        if record is not None:
            record(pipe)
        store.delayed.schedule(json.dumps(message), now() + delay, pipe)
        if attempt_over:
            self._leave_crash_detector(pipe)  # in the same round trip as the message it hands over to
        pipe.execute()
        raise Retry(why, when=delay)  # Celery and Flower show RETRY

    def is_timeout(self, exc: BaseException) -> bool:
        return isinstance(exc, (SoftTimeLimitExceeded, TimeLimitExceeded))

    def wait(self, delay: float, why: str) -> NoReturn:
        """Send this same attempt again later; Celery and Flower show RETRY with why."""
        self._later(self.resume_message(), delay, why)

    def resume_message(self) -> dict[str, Any]:
        """This same attempt's message (same id, queue, chain and chord), to be sent again on an event."""
        return self._message(dict(self.celery_task.request.kwargs or {}), self.number - 1)

    def hold(self, why: str) -> NoReturn:
        """End this execution without an outcome: its :meth:`resume_message`, kept elsewhere, carries it on.

        Celery and Flower show RETRY with why; the worker slot is free meanwhile.
        """
        raise Retry(why)


ACKED_WITH_END = "acknowledged with its end"
"""What a user task's Celery task returns when its end script acknowledged its message
(:meth:`CeleryAttempt._acknowledgement`); None otherwise. Only the worker's main process reads it."""

_ACKED_TEXT = saferepr(ACKED_WITH_END)  # as the pool hands a return value to the main process


def _seeing_acked_with_end(on_success: Callable[..., Any]) -> Callable[..., Any]:
    """``on_success`` of a request class, which notes a message its task acknowledged already and
    passes on what Celery shows of every other orchestrator task's return (None)."""

    @functools.wraps(on_success)
    def noting(self: OrchestratorRequest, failed__retval__runtime: Any, **kwargs: Any) -> Any:
        failed, retval, runtime = failed__retval__runtime
        if not failed and retval == _ACKED_TEXT:
            self.acked_with_end = True
            failed__retval__runtime = (failed, saferepr(None), runtime)
        return on_success(self, failed__retval__runtime, **kwargs)

    return noting


class OrchestratorRequest(Request):  # type: ignore[misc]
    """Celery's request, plus what the worker's main process must tell when a pool process dies,
    and no second acknowledgement of a message its task's end script acknowledged.

    With ``task_reject_on_worker_lost`` Celery puts the message of a task whose pool
    process died back on its queue, and it runs again. The dead process can no longer
    heartbeat, and the crash detector must not also declare the task run Crashed and
    send it a second time: the main process takes it off the heartbeat set (the new
    execution adds it again) and records why it runs again.

    A task that returns :data:`ACKED_WITH_END` had its message acknowledged in Redis by its end
    script: the main process only forgets it (``forget_acknowledged``), with no round trip. Celery
    builds a subclass of this class for each task (``create_request_cls``) with an ``on_success``
    of its own, which :meth:`__init_subclass__` wraps.
    """

    acked_with_end = False
    on_success = _seeing_acked_with_end(Request.on_success)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "on_success" in cls.__dict__:
            cls.on_success = _seeing_acked_with_end(cls.__dict__["on_success"])

    def acknowledge(self) -> None:
        if self.acked_with_end and forget_acknowledged(self._message):
            self.acknowledged = True
            return
        super().acknowledge()

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # ExceptionWithTraceback
        if isinstance(exc, WorkerLostError) and self.task.reject_on_worker_lost:
            with contextlib.suppress(Exception):  # never in the way of Celery's own handling
                requeued_after_worker_lost(self.id, self.kwargs, str(exc), self.hostname or socket.gethostname())
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


def requeued_after_worker_lost(task_run_id: str, kwargs: Any, why: str, worker: str) -> None:
    """Record that a task run's pool process died and Celery sent its message again."""
    if not isinstance(kwargs, dict) or "run" not in kwargs:
        return  # not one of ours
    run = full_run(kwargs["run"], task_run_id)
    store = get_store()
    store.leases.forget_now(task_run_id)
    if store.task_runs.final_states(run["root"], [task_run_id]).get(task_run_id) is not None:
        return  # it had ended before its process died
    message = f"its worker process died ({why}); Celery put the message back on its queue and it runs again"
    fields = {"state": StateType.RUNNING.value, "message": message, "flow_run_id": run["flow_run_id"]}
    store.task_runs.progress(task_run_id, fields | {"root": run["root"], "worker": worker})
    log.warning("task run %s: %s", task_run_id, message)


class OrchestratorTask(CeleryTask):  # type: ignore[misc]
    """Base of every user task: records what the executor cannot see itself.

    A task killed by its hard time limit never returns to the executor; Celery then
    calls ``on_failure`` in the worker's main process, and the task run is made
    TimedOut here so its flow run still ends. A pool process that dies is handled by
    :class:`OrchestratorRequest`.
    """

    Request = "workers.celery_tasks:OrchestratorRequest"
    collects_sends = True  # see apply_async

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: Any = None,
        **options: Any,
    ) -> Any:
        """Celery's send, unless a chord's header is being collected on this thread
        (``collected_sends.py``): then the message is collected, to go out with the end of the task
        run before the chord."""
        collected = collected_send(self, args, kwargs, task_id, (link, link_error, shadow), options)
        if collected is not None:
            return collected
        return super().apply_async(args, kwargs, task_id, producer, link, link_error, shadow, **options)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, TimeLimitExceeded) and isinstance(kwargs, dict) and "run" in kwargs:
            message = f"killed by the hard time limit ({exc}); timeout_seconds was exceeded and the task ignored it"
            run = full_run(kwargs["run"], task_id)
            end_unexecuted(self.app, run, self.name, socket.gethostname(), StateType.TIMED_OUT, message)


def end_unexecuted(
    app: Celery, run: dict[str, Any], task_name: str, worker: str, state: StateType, message: str
) -> None:
    """End a task run whose execution never reported back (hard time limit, revoked, unknown task).

    The task's hooks run if this worker imported it; tolerant downstream tasks that
    became ready are sent, the rest marked, as after any failure.
    """
    task = registry.get_task(task_name)

    def hooks() -> None:
        if task is not None:
            info = RunInfo(run["flow_run_id"], "", run["task_run_id"], task.name)
            call_hooks(task, task.hooks, info, state, message)

    messaging = CeleryMessaging(app)
    end_failed(
        get_store(),
        run,
        worker,
        state,
        message,
        hooks=hooks,
        send=messaging.send_signatures,
        report=lambda ends: messaging.report_ends(ends, worker),
    )


def record_revoked(app: Celery, request: Any, terminated: bool) -> None:
    """Make a revoked orchestrator task run Cancelled (its downstream UpstreamFailed)."""
    kwargs = getattr(request, "kwargs", None)
    if not isinstance(kwargs, dict) or "run" not in kwargs or not getattr(request, "id", None):
        return  # not one of ours
    how = "terminated while running" if terminated else "revoked before it ran"
    worker = str(getattr(request, "hostname", "") or socket.gethostname())
    run = full_run(kwargs["run"], request.id)
    end_unexecuted(
        app,
        run,
        getattr(request, "task", "") or "",
        worker,
        StateType.CANCELLED,
        f"cancelled: the Celery task was {how}",
    )


def record_unknown(app: Celery, message: Any, name: str, task_id: str, worker: str) -> None:
    """A message for a task this worker never imported: the task run fails, saying why."""
    try:
        _, kwargs, _ = message.decode()
    except Exception:  # not a protocol-2 orchestrator message
        return
    if not isinstance(kwargs, dict) or "run" not in kwargs:
        return
    reason = (
        f"worker {worker} does not know task {name!r}: start it with --flows <the module defining it> "
        "(or ORCHESTRATOR_FLOW_MODULES), or route the task to workers that import it."
    )
    end_unexecuted(app, full_run(kwargs["run"], task_id), name, worker, StateType.FAILED, reason)


def register_user_task(app: Celery, task: Task) -> None:
    """Register ``task`` as a Celery task under its own name."""
    if task.name in app.tasks:
        return
    limits = registered_time_limits(task.timeout_seconds, is_async=task.is_async)

    def entry(
        self: CeleryTask,
        run: dict[str, Any],
        inputs: dict[str, Any] | None,
        retries_used: int = 0,
        options: dict[str, Any] | None = None,
    ) -> str | None:
        current = registry.get_task(task.name) or task
        if options:
            current = current.with_message_options(options)
        run = full_run(run, self.request.id)
        attempt = CeleryAttempt(self)
        ending = run_task(current, run, inputs, attempt, retries_used)
        if ending is Ending.STOPPED:
            attempt.stop(run)
        return ACKED_WITH_END if attempt.acked_with_end else None

    entry.__name__ = task.fn.__name__
    entry.__doc__ = task.fn.__doc__
    app.task(name=task.name, bind=True, ignore_result=True, base=OrchestratorTask, **limits)(entry)


def expand_and_send(
    celery_task: CeleryTask,
    store: RunStore,
    attempt: CeleryAttempt,
    run: dict[str, Any],
    task: str,
    children: list[dict[str, Any]],
    queue: str,
    options: dict[str, Any] | None,
    target: Task | None,
) -> NoReturn:
    """Record a map's runs once and replace the expansion with their chord (raises Ignore)."""
    ids = [f"{run['task_run_id']}-{i}" for i in range(len(children))]
    first = store.task_runs.claim_expansion(run["root"], run["task_run_id"], len(ids))
    pipe = store.pipeline()
    carried: list[dict[str, Any] | None] = []  # what each child's message carries
    for i, (child, inputs_i) in enumerate(zip(ids, children, strict=True)):
        inline, text = inline_or_stored(inputs_i)  # pickled or large inputs wait in the run store
        carried.append(inline)
        if first:  # a redelivered expansion only re-sends
            label = f"{run.get('label')}[{i}]"
            new = NewTaskRun(child, label, task, run["flow_run_id"], run["root"])
            in_flows = (run["flow_run_id"], run["root"])
            store.task_runs.add(pipe, new, in_flows=in_flows, downstream=[run["task_run_id"]], stored_input=text)
        elif text is not None:
            store.task_runs.keep_input(pipe, run["root"], child, text)
    pipe.execute()
    changed = {"options": options} if options else {}
    header = [
        make_signature(
            task,
            {
                "run": message_run(run["root"], run["flow_run_id"], f"{run.get('label')}[{i}]"),
                "inputs": inputs_i,
                **changed,
            },
            queue=queue,
            task_id=child,
            app=celery_task.app,
            limits=time_limits(options or {}, is_async=target is not None and target.is_async),
        )
        for i, (child, inputs_i) in enumerate(zip(ids, carried, strict=True))
    ]
    # the count, not the ids: Celery copies a chord's body into each of its n header messages
    collect = make_signature(COLLECT_MAP_TASK, {"run": run, "count": len(ids)}, queue=queue, app=celery_task.app)
    raise celery_task.replace(chord(group(header, app=celery_task.app), collect, app=celery_task.app))


def register_builtin_tasks(app: Celery) -> None:
    """The node kinds that are not user code: map expansion, map join, subflow end, start."""

    @app.task(name=EXPAND_MAP_TASK, bind=True, ignore_result=True)
    def expand_map(
        self: CeleryTask,
        run: dict[str, Any],
        task: str,
        inputs: dict[str, Any] | None,
        queue: str,
        options: dict[str, Any] | None = None,
    ) -> None:
        """Expand a map over an upstream result into one task run per element, then join.

        ``options``: the mapped task's with_options changes, carried on to each mapped run.
        """
        store = get_store()
        attempt = CeleryAttempt(self)
        run = full_run(run, self.request.id)
        if gate(store, run, attempt.worker, attempt.send, attempt.report) is None:
            attempt.stop(run)
        started = store.task_runs.started(
            run["root"], run["task_run_id"], start_record(run, task, attempt), stored_inputs=inputs is None
        )
        if started is None:
            return
        from_store = inputs is None  # pickle payloads are loaded only from the run store
        inputs = inputs if inputs is not None else started.stored_inputs or {}
        where = f"map {run.get('label')} of task {task!r}"
        target = registry.get_task(task)
        serializer = target.result_serializer if target else "json"
        try:
            pickled = serializer == "pickle"
            mapped = resolve(inputs["mapped"], store, allow_pickle=pickled, inline_pickle=from_store, where=where)
            runs = zip_mapped({k: list(v) for k, v in mapped.items()}, where)
            children = [
                inputs["static"] | {k: to_template(v, where, serializer, lambda _: False) for k, v in one.items()}
                for one in runs
            ]
        except Exception as exc:
            end_failed(store, run, attempt.worker, StateType.FAILED, str(exc), send=attempt.send, report=attempt.report)
            raise
        if not children:
            end_completed(store, run, attempt, "[]")
            return
        try:
            expand_and_send(self, store, attempt, run, task, children, queue, options, target)
        except (Ignore, *RedisUnavailable):
            raise  # Ignore: replaced by the chord (sent); Redis away: the message runs again once it is back
        except Exception as exc:  # Redis out of memory, a message too large: the run ends, never hangs
            message = f"map {run.get('label')} could not send its {len(children)} runs: {type(exc).__name__}: {exc}"
            log.exception("flow run %s: %s", run["root"], message)
            end_failed(store, run, attempt.worker, StateType.FAILED, message, send=attempt.send, report=attempt.report)
            stop_flow_run(store, CeleryMessaging(self.app), run["root"], StateType.FAILED, message)
            raise

    @app.task(name=COLLECT_MAP_TASK, bind=True, ignore_result=True)
    def collect_map(self: CeleryTask, run: dict[str, Any], count: int = 0, children: list[str] | None = None) -> None:
        """All mapped runs completed: the map's result is the list of their results. The runs are
        ``<map's task run id>-<i>`` for i below ``count`` (``children``: messages sent before that)."""
        store = get_store()
        children = children if children is not None else [f"{run['task_run_id']}-{i}" for i in range(count)]
        texts = store.task_runs.results(children)
        missing = [c for c, t in texts.items() if t is None]
        attempt = CeleryAttempt(self)
        if missing:
            end_failed(
                store,
                run,
                attempt.worker,
                StateType.FAILED,
                f"mapped results missing: {missing[:3]}",
                send=attempt.send,
            )
            raise RunError(f"map {run.get('label')}: results of {len(missing)} mapped runs are missing")
        end_completed(store, run, attempt, "[" + ",".join(t or "null" for t in texts.values()) + "]")

    @app.task(name=FINISH_SUBFLOW_TASK, bind=True, ignore_result=True)
    def finish_subflow(self: CeleryTask, run: dict[str, Any], child_run_id: str, inputs: dict[str, Any] | None) -> None:
        """A subflow's task runs are done: decide its state and publish its return value."""
        store = get_store()
        attempt = CeleryAttempt(self)
        run = full_run(run, self.request.id)
        started = store.task_runs.started(
            run["root"], run["task_run_id"], start_record(run, "subflow", attempt), stored_inputs=inputs is None
        )
        if started is None:
            return
        inputs = inputs if inputs is not None else started.stored_inputs or {}
        state, message = flow_outcome(store, run["root"], child_run_id)
        if state is StateType.COMPLETED:
            try:
                text = returns_text(store, inputs["returns"], f"subflow run {child_run_id} return value")
            except Exception as exc:  # a refused or missing value ends the subflow, never leaves it Running
                end_flow_run(store, child_run_id, StateType.FAILED, str(exc))
                end_failed(
                    store, run, attempt.worker, StateType.FAILED, str(exc), send=attempt.send, report=attempt.report
                )
                raise
            end_flow_run(store, child_run_id, state)
            end_completed(store, run, attempt, text)
            return
        end_flow_run(store, child_run_id, state, message)
        end_failed(store, run, attempt.worker, StateType.FAILED, message, send=attempt.send, report=attempt.report)
        raise RunError(f"subflow run {child_run_id} failed: {message}")

    @app.task(name=RUN_LINKED_FLOW_TASK, bind=True, ignore_result=True)
    def run_linked_flow(
        self: CeleryTask, run: dict[str, Any], flow: str, inputs: dict[str, Any] | None, link: dict[str, Any]
    ) -> None:
        """A plan node that starts a flow run of its own (see :mod:`workers.linked_runs`)."""
        attempt = CeleryAttempt(self)
        if not start_linked_flow(attempt, run, self.request.id, flow, inputs, link):
            attempt.stop(full_run(run, self.request.id))

    @app.task(name=FLOW_DEADLINE_TASK, bind=True, ignore_result=True)
    def flow_deadline(self: CeleryTask, run_id: str, timeout: float) -> None:
        """The flow run's timeout_seconds passed: end it TimedOut and stop its tasks."""
        message = f"ran past timeout_seconds={timeout:g}; its unfinished task runs were cancelled"
        stop_flow_run(get_store(), CeleryMessaging(self.app), run_id, StateType.TIMED_OUT, message)

    @app.task(name=CRASH_HOOKS_TASK, bind=True, ignore_result=True)
    def crash_hooks(
        self: CeleryTask, task: str, task_run_id: str, flow_run_id: str, label: str, attempt: int, message: str = ""
    ) -> None:
        """A task run was declared Crashed (its worker died): run its on_crashed hooks here, where the
        code is. The crash detector sends this once per crash it claims."""
        definition = registry.get_task(task)
        if definition is None:
            log.warning("task run %s crashed; worker %s cannot run its on_crashed hooks: it does not import %s",
                        task_run_id, self.request.hostname, task)  # fmt: skip
            return
        info = RunInfo(flow_run_id, "", task_run_id, definition.name, attempt, run_name=label or None)
        call_hooks(definition, definition.hooks, info, StateType.CRASHED, message)

    @app.task(name=RETRY_FLOW_RUN_TASK, bind=True, ignore_result=True)
    def retry_flow_run(self: CeleryTask, run_id: str, attempt: int) -> None:
        """Next attempt of a failed flow run: re-run what did not complete (static) or the body."""
        store = get_store()
        record = store.flow_runs.read(run_id)
        if record.get("state") != StateType.AWAITING_RETRY.value:
            return  # cancelled meanwhile, or a redelivered message
        if record.get("mode") != "dynamic":
            relaunch_static(store, CeleryMessaging(self.app), run_id, attempt)
            return
        definition = registry.get_flow(record.get("flow", ""))
        if definition is None:
            message = f"worker {self.request.hostname} cannot retry flow {record.get('flow')!r}: it does not import it"
            end_flow_run(store, run_id, StateType.FAILED, message + "; start it with --flows.")
            return
        definition = flow_from_record(definition, record.get("flow_options"))
        parameters = definition.complete_parameters(from_jsonable(json.loads(record.get("parameters", "{}"))))
        store.flow_runs.write(run_id, {"attempt": str(attempt), "body_error": ""})
        body = BodyAttempt(store.flow_runs.next_body_attempt(run_id), "retry", self.request.hostname or "")
        start_driver(self.app, definition, run_id, parameters, record.get("queue") or "default", body)

    @app.task(name=RESUME_FLOW_BODY_TASK, bind=True, ignore_result=True)
    def resume_flow_body(self: CeleryTask, run_id: str, attempt: int) -> None:
        """A dynamic body's worker died (or handed it over): drive it again here, replaying its journal.
        Sent by the crash detector or the shutting-down worker, once per attempt."""
        store = get_store()
        record = store.flow_runs.read(run_id)
        state, live = store.flow_runs.state_and_body_attempt(run_id)
        if state is None or state.is_final or live != attempt:
            return  # it ended meanwhile, or a newer attempt was sent
        definition = registry.get_flow(record.get("flow", ""))
        if definition is None:
            message = (
                f"worker {self.request.hostname} cannot resume flow {record.get('flow')!r} (its body's worker "
                "died): it does not import it; start the workers of this queue with --flows <its module>."
            )
            stop_flow_run(store, CeleryMessaging(self.app), run_id, StateType.CRASHED, message)
            return
        definition = flow_from_record(definition, record.get("flow_options"))
        parameters = definition.complete_parameters(from_jsonable(json.loads(record.get("parameters", "{}"))))
        body = BodyAttempt(attempt, "resume", self.request.hostname or "")
        start_driver(self.app, definition, run_id, parameters, record.get("queue") or "default", body)

    @app.task(name=FLOW_CRASH_HOOKS_TASK, bind=True, ignore_result=True)
    def flow_crash_hooks(self: CeleryTask, run_id: str, message: str = "") -> None:
        """A flow run ended Crashed (its body's workers kept dying): run its on_crashed hooks here,
        where the code is; once (the run's end-hooks latch)."""
        end_flow_run(get_store(), run_id, StateType.CRASHED, message, write=False)

    @app.task(name=START_FLOW_RUN_TASK, bind=True, ignore_result=True)
    def start_flow_run(self: CeleryTask, flow: str, run_id: str, dynamic: bool = False) -> None:
        """Start a flow run whose record exists: trace and compile it, or drive it."""
        store = get_store()
        record = store.flow_runs.read(run_id)
        if not record:
            log.error("start_flow_run: no record for flow run %s; nothing to start", run_id)
            return
        if record.get("state") not in (StateType.PENDING.value, StateType.SCHEDULED.value):
            return  # already started (redelivered message)
        definition = registry.get_flow(flow)
        if definition is None:
            known = ", ".join(sorted(f.name for f in registry.all_flows())) or "none"
            store.flow_runs.write(
                run_id,
                {
                    "state": StateType.FAILED.value,
                    "ended": now(),
                    "message": f"worker {self.request.hostname} has no flow named {flow!r} (it knows: "
                    f"{known}); start the worker with --flows <module defining it>.",
                },
            )
            return
        queue = record.get("queue") or self.request.delivery_info.get("routing_key") or "default"
        definition = flow_from_record(definition, record.get("flow_options"))  # a with_options flow sent by .delay()
        store.flow_runs.write(run_id, definition.run_options)
        try:
            given = from_jsonable(json.loads(record.get("parameters", "{}")))
            definition.check_parameter_names(given)
            parameters = definition.complete_parameters(coerce_parameters(definition, given))  # callable defaults: now
            resolved = definition.run_options | {"parameters": encode_parameters(definition, parameters)}
            if record.get("name_given") != "1":
                resolved["name"] = definition.run_name(parameters, run_id)
            if not dynamic:
                messaging = CeleryMessaging(self.app)
                prepared = prepare_run(definition, parameters, run_id=run_id, queue=queue, messaging=messaging)
                if prepared.dynamic_reason is None:
                    launch_prepared(prepared, flow, store=store, messaging=messaging, record=resolved)
                    return
            store.flow_runs.write(run_id, resolved | {"state": StateType.PENDING.value})  # the API learns them
        except OrchestratorError as exc:  # bad parameters or definition: say so, never stay Pending
            store.flow_runs.write(run_id, {"state": StateType.FAILED.value, "ended": now(), "message": str(exc)})
            return
        except RedisUnavailable:
            raise  # Redis is away: the message is not acknowledged and runs again once it is back
        except Exception as exc:  # the flow body raised while it was traced, say: the run must still end
            log.exception("flow run %s could not start", run_id)
            message = f"the worker could not start this run: {type(exc).__name__}: {exc}"
            store.flow_runs.write(run_id, {"state": StateType.FAILED.value, "ended": now(), "message": message})
            return
        start_driver(
            self.app, definition, run_id, parameters, queue, BodyAttempt(1, "start", self.request.hostname or "")
        )
