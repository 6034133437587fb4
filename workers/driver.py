"""Dynamic mode: a flow body that needs task results runs on a worker and submits as it goes.

The body runs in a thread of the worker process, outside Celery's pool: the Celery
task that starts it returns at once, so the pool slot is free for the very tasks the
body waits for. A fleet of one worker with concurrency 1 therefore cannot deadlock.

How a worker takes a body (supervised from that moment) and hands it over when it stops:
:mod:`workers.body_admission`. What a resumed body replays: :mod:`orchestrator.runstate.journal`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from celery import Celery

from orchestrator.authoring import registry
from orchestrator.authoring.flows import Flow
from orchestrator.authoring.options import message_overrides, time_limits
from orchestrator.authoring.task_run_names import planned_name
from orchestrator.authoring.tasks import Task
from orchestrator.authoring.triggers import DEFAULT_TRIGGER
from orchestrator.data.references import resolve
from orchestrator.errors import BodySuperseded, FlowRunFailed, FlowRunStopped, ReplayDiverged, RunTimeout, describe
from orchestrator.planning.compiler import inline_or_stored, make_signature, message_run
from orchestrator.planning.plan import REF, make_ref, refs_in
from orchestrator.planning.templates import allowed_failures, to_template
from orchestrator.runs.create import FlowSpec, start_linked_run
from orchestrator.runs.handle import FlowRun
from orchestrator.runs.lifecycle import (
    after_final,
    deciders,
    end_flow_run,
    flow_outcome,
    schedule_deadline,
)
from orchestrator.runstate.journal import JournalEntry
from orchestrator.runstate.records import NewTaskRun, body_task_run_id, default_run_name
from orchestrator.runstate.store import RunStore, get_store, now
from orchestrator.runtime import aio
from orchestrator.runtime.context import RunInfo, using
from orchestrator.runtime.engine import (
    Engine,
    bind_arguments,
    check_wait_for,
    replace_futures,
    split_map_arguments,
    zip_mapped,
)
from orchestrator.runtime.futures import DoneAndNotDone, Future
from orchestrator.runtime.run_logger import prints_logged
from orchestrator.runtime.task_errors import remote_task_error
from orchestrator.states import State, StateType
from orchestrator.transport.messaging import CeleryMessaging, TaskRunEnd

from .body_attempts import BodyAttempt
from .executor import end_failed, full_run

log = logging.getLogger(__name__)

# How often a body waiting on results asks whether its run was stopped (a cancel, its timeout);
# waits shorter than this cost no extra round trip.
STOP_CHECK_SECONDS = 0.5
# A wait on at most this many task runs blocks until one of its tree's task runs ends; a wait on
# more polls with a growing pause (each wake-up reads every pending state: many at once would
# make a wide wait quadratic in Redis reads).
WAKE_UP_MAX = 16


class RemoteFuture(Future[Any]):
    """A task run sent to the fleet by a dynamic flow body."""

    engine: DynamicEngine

    def __init__(self, engine: DynamicEngine, task_run_id: str, label: str) -> None:
        self.engine = engine
        self.task_run_id = task_run_id
        self.label = label

    @property
    def state_type(self) -> StateType:
        final = self.engine.store.task_runs.final_states(self.engine.root, [self.task_run_id])[self.task_run_id]
        if final is not None:
            return final
        return StateType(self.engine.store.task_runs.read(self.task_run_id).get("state", "Pending"))

    def state_message(self) -> str:
        return str(self.engine.store.task_runs.read(self.task_run_id).get("message", ""))

    def wait(self, timeout: float | None = None) -> StateType:
        done, _ = self.engine.wait([self], timeout)
        if done:
            return self.state_type
        now_in = self.state_type  # not done in time (on a replay: not when the earlier attempt waited)
        return now_in if not now_in.is_final else StateType.RUNNING

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        """The task's value; a failed task run raises its own exception, rebuilt (see runtime/task_errors.py)."""
        state = self.wait(timeout)
        if not state.is_final:
            raise RunTimeout(f"task run {self.label} ({self.task_run_id}) is still {state.value} after {timeout}s.")
        if state is StateType.COMPLETED:
            return resolve(make_ref(self.task_run_id), self.engine.store, allow_pickle=True, where=self.label)
        if state is StateType.CANCELLED:  # cancelled with its run: the body stops here
            self.engine.check_not_stopped()
        self.failure_seen = True
        record = self.engine.store.task_runs.read(self.task_run_id)
        error = remote_task_error(
            record, task_run_id=self.task_run_id, flow_run_id=self.engine.flow_run_id, label=self.label, state=state
        )
        if raise_on_failure:
            raise error
        return error


class LinkedRunFuture(Future[Any]):
    """A child flow run a dynamic body started as a run of its own (``child.submit(...)``)."""

    engine: DynamicEngine

    def __init__(self, engine: DynamicEngine, run_id: str, label: str) -> None:
        self.engine = engine
        self.task_run_id = run_id  # the child flow run's id: what wait() and as_completed() follow
        self.label = label

    @property
    def state_type(self) -> StateType:
        return self.engine.store.flow_runs.state(self.task_run_id) or StateType.PENDING

    def state_message(self) -> str:
        return str(self.engine.store.flow_runs.read(self.task_run_id).get("message", ""))

    def wait(self, timeout: float | None = None) -> StateType:
        return self.engine.store.flow_runs.wait_final(self.task_run_id, timeout) or StateType.PENDING

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        try:
            return FlowRun(self.task_run_id, self.engine.store).result(timeout)
        except FlowRunFailed as exc:
            if raise_on_failure:
                raise
            return exc


def _values_of_children(value: Any) -> Any:
    """``value`` with every child-run future replaced by the child's value (waiting for it); ``quote()``,
    ``opaque()`` and a method's instance stay marked for the templates that encode them."""
    return replace_futures(value, lambda f, _: f.result() if isinstance(f, LinkedRunFuture) else f, unwrap_quoted=False)


class DynamicEngine(Engine):
    """Submits a flow body's task calls to the fleet one by one, as the body runs."""

    def __init__(
        self,
        app: Celery,
        store: RunStore,
        root: str,
        flow_run_id: str,
        queue: str,
        label_counts: dict[str, int] | None = None,
        *,
        attempt: int = 1,
        replay: bool = False,
    ) -> None:
        self.app = app
        self.store = store
        self.root = root
        self.flow_run_id = flow_run_id
        self.queue = queue
        self.futures: list[RemoteFuture] = []
        self.has_downstream: set[str] = set()
        self._counts = label_counts if label_counts is not None else {}  # shared by the run tree
        self.attempt = attempt  # the root body's attempt: a newer live one supersedes this engine
        self._journal = store.journal.read(flow_run_id) if replay else {}  # what an earlier attempt did
        self._position = 0  # the body's next call, counted in the order it makes them

    def template(self, value: Any, where: str, serializer: str = "json") -> Any:
        """Encode arguments; futures of this run tree become references."""
        return to_template(
            value, where, serializer, lambda f: isinstance(f, RemoteFuture) and f.engine.root == self.root
        )

    def leaves(self) -> list[str]:
        """Task runs of this flow run that nothing in it waited for (nor saw fail: the body handled those)."""
        return [f.task_run_id for f in self.futures if f.task_run_id not in self.has_downstream and not f.failure_seen]

    def check_not_stopped(self) -> None:
        """Raise FlowRunStopped if the run tree ended while the body ran (a cancel, its timeout), or
        BodySuperseded if another attempt of the body took over (this worker was declared dead, or
        handed the body over): the body's calls into the orchestrator are where it learns, and unwinds."""
        state, live = self.store.flow_runs.state_and_body_attempt(self.root)
        if state is not None and state.is_final:
            raise FlowRunStopped(self.root, state.value)
        if live != self.attempt:
            raise BodySuperseded(self.root, self.attempt, live)

    def next_call(self, asked: JournalEntry) -> tuple[int, JournalEntry | None]:
        """The position of the body's next call, and what an earlier attempt recorded there (None: a
        call never made before). A recorded call that differs from ``asked`` stops the replay."""
        position = self._position
        self._position += 1
        recorded = self._journal.get(position)
        if recorded is not None and (recorded.kind, recorded.name, recorded.label) != (
            asked.kind,
            asked.name,
            asked.label,
        ):
            raise ReplayDiverged(self.flow_run_id, position, recorded.describe(), asked.describe())
        return position, recorded

    def submit(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any]) -> RemoteFuture:
        task.importable_or_raise()
        self.check_not_stopped()
        where = f"task {task.name!r}"
        bound = _values_of_children(bind_arguments(task.fn, args, kwargs, where))
        inputs = {k: self.template(v, f"{where} argument {k!r}", task.result_serializer) for k, v in bound.items()}
        upstream = refs_in(inputs)
        allow = list(allowed_failures(inputs))
        for item in check_wait_for(wait_for, task.name):
            ref = self.template(item, f"{where} wait_for", "json")
            upstream.append(ref[REF])
            if ref.get("allow_failure"):
                allow.append(ref[REF])
        count = self._counts.get(task.label_base, 0)
        self._counts[task.label_base] = count + 1
        label = f"{task.label_base}-{count}"
        if task.task_run_name is not None:
            label = planned_name(task.task_run_name, bound, inputs, where) or label
        position, recorded = self.next_call(JournalEntry("task", task.name, label))
        trid = recorded.id if recorded is not None else str(uuid.uuid4())
        run = message_run(self.root, self.flow_run_id, label)
        tolerant = task.trigger != DEFAULT_TRIGGER or bool(allow)
        if tolerant:
            run |= {"ups": upstream, "allow": allow, "trigger": task.trigger}
        inline, stored = inline_or_stored(inputs)
        message: dict[str, Any] = {"run": run, "inputs": inline}
        declared = registry.get_task(task.name)
        overrides = (
            {}  # the registered task itself: nothing changed
            if declared is task
            else message_overrides(task.name, task.options, declared.options if declared is not None else None)
        )
        if overrides:  # task.with_options(...) in the body: the worker applies these (as in a compiled plan)
            message["options"] = overrides
        sig = make_signature(
            task.name,
            message,
            queue=task.queue or self.queue,
            task_id=trid,
            app=self.app,
            limits=time_limits(overrides, is_async=task.is_async),
        )
        future = RemoteFuture(self, trid, label)
        self.futures.append(future)
        self.has_downstream.update(upstream)
        if recorded is not None:  # replayed: it ran, runs, or waits already; sent again only if it never began
            resend = self.store.journal.claim_resend(self.root, trid)
            if resend:
                sig.set(retries=resend - 1)  # older messages of it are stale now (claim_resend)
                self._register_and_send(sig, run, trid, upstream, tolerant)
            return future
        entry = JournalEntry("task", task.name, label, id=trid)
        new = NewTaskRun(trid, label, task.name, self.flow_run_id, self.root)
        self.store.task_runs.add_to_dynamic_tree(  # the root's set holds the whole tree
            new, stored, lambda pipe: self.store.journal.record(self.flow_run_id, position, entry, pipe)
        )
        self._register_and_send(sig, run, trid, upstream, tolerant)
        return future

    def _register_and_send(self, sig: Any, run: dict[str, Any], trid: str, upstream: list[str], tolerant: bool) -> None:
        """Send a task run's message now, or leave it to be sent when its upstreams end (or end it
        UpstreamFailed/Skipped at once, when one of them already failed)."""
        status, count_or_up, up_state = self.store.task_runs.register_waiting(
            self.root, trid, upstream, json.dumps(dict(sig)), tolerant
        )
        if status == "blocked":
            state = StateType.SKIPPED if up_state == StateType.SKIPPED.value else StateType.UPSTREAM_FAILED
            up_label = self.store.task_runs.read(count_or_up or "").get("label", count_or_up)
            message = f"not run: upstream {up_label} ended {up_state}"
            messaging = CeleryMessaging(self.app)

            def report(ends: Sequence[TaskRunEnd]) -> None:  # sent by this process: Celery's own name for it
                messaging.report_ends(ends, "")

            end_failed(
                self.store, full_run(run, trid), "driver", state, message, send=messaging.send_signatures, report=report
            )
            report([TaskRunEnd(trid, str(sig.get("task") or ""), state, message)])  # never sent: Flower learns here
        elif count_or_up == "0":
            sig.apply_async()

    def map(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any]) -> list[RemoteFuture]:
        where = f"task {task.name!r}"
        mapped, static = split_map_arguments(bind_arguments(task.fn, args, kwargs, where), where)
        lists = {k: list(v.result() if isinstance(v, Future) else v) for k, v in mapped.items()}
        return [self.submit(task, (), static | one, wait_for) for one in zip_mapped(lists, where)]

    def call_subflow(self, flow: Flow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.check_not_stopped()
        params = flow.bind_parameters(
            replace_futures(args, lambda f, _: f.result()), replace_futures(kwargs, lambda f, _: f.result())
        )
        position, recorded = self.next_call(JournalEntry("subflow", flow.name))
        child_id = recorded.id if recorded is not None else str(uuid.uuid4())
        if recorded is not None and self.store.flow_runs.state(child_id) is StateType.COMPLETED and recorded.counts:
            self._counts.update(recorded.counts)  # as if its body ran again: later labels come out the same
            return self._recorded_subflow_value(flow, child_id)  # replayed: it completed, its body runs no more
        if recorded is None:
            self.store.journal.record(self.flow_run_id, position, JournalEntry("subflow", flow.name, id=child_id))
        if recorded is None or self.store.flow_runs.state(child_id) is None:
            self.store.flow_runs.write(
                child_id,
                {
                    "id": child_id,
                    "flow": flow.name,
                    "name": default_run_name(flow.name, child_id),
                    "parent": self.flow_run_id,
                    "root": self.root,
                    "state": StateType.RUNNING.value,
                    "started": now(),
                    "mode": "dynamic",
                },
            )
        child = DynamicEngine(
            self.app,
            self.store,
            self.root,
            child_id,
            flow.queue or self.queue,
            self._counts,
            attempt=self.attempt,
            replay=recorded is not None,
        )
        try:
            with using(child, RunInfo(child_id, flow.name, extra={"parent_flow_run_id": self.flow_run_id})):
                value, decided = returned_state(aio.call(flow.fn, params))
            if decided:
                raise FlowRunFailed(f"subflow run {flow.name} ({child_id}): {decided}")
            child.wait(list(child.futures), None)
            returns = child.template(value, f"subflow {flow.name!r} return value")
        except Exception as exc:
            self.store.flow_runs.write(
                child_id, {"state": StateType.FAILED.value, "ended": now(), "message": describe(exc)}
            )
            raise
        self.store.flow_runs.write(
            child_id,
            {"returns": returns, "deciders": deciders(returns, child.leaves()), "result_refs": refs_in(returns)},
        )
        state, message = flow_outcome(self.store, self.root, child_id)
        end_flow_run(self.store, child_id, state, message)
        if state is not StateType.COMPLETED:
            raise FlowRunFailed(f"subflow run {flow.name} ({child_id}) failed: {message}")
        done = JournalEntry("subflow", flow.name, id=child_id, counts=dict(self._counts))
        self.store.journal.record(self.flow_run_id, position, done)  # a replay need not run its body again
        return resolve(returns, self.store, allow_pickle=True, where=f"subflow {flow.name!r}")

    def _recorded_subflow_value(self, flow: Flow, child_id: str) -> Any:
        """A completed in-process subflow's value, from its record (a replay does not run it again)."""
        returns = json.loads(self.store.flow_runs.field(child_id, "returns") or "null")
        return resolve(returns, self.store, allow_pickle=True, where=f"subflow {flow.name!r}")

    def submit_subflow(self, flow: Flow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LinkedRunFuture:
        """``child.submit(...)``: the child starts now as a run of its own (linked to this one), traced on
        a worker with these values, compiled when it can be; several run at once."""
        flow.importable_or_raise()
        self.check_not_stopped()
        resolved = replace_futures((args, kwargs), lambda f, _: f.result())
        params = flow.bind_parameters(*resolved)
        run_id, started = self._linked_run_id(flow)
        if started:  # replayed: the recorded run started already
            return LinkedRunFuture(self, run_id, f"subflow-{flow.name}")
        queue = flow.queue or self.queue
        start_linked_run(
            FlowSpec.of(flow),
            params,
            run_id=run_id,
            parent=self.flow_run_id,
            parent_task_run="",
            tree=self.root,
            queue=queue,
        )
        return LinkedRunFuture(self, run_id, f"subflow-{flow.name}")

    def trigger_flow(self, flow: Flow, parameters: dict[str, Any], *, queue: str | None, name: str | None) -> FlowRun:
        """``child.delay()`` in a dynamic body: a run of its own, linked to this flow run."""
        flow.importable_or_raise()
        self.check_not_stopped()
        run_id, started = self._linked_run_id(flow)
        if started:  # replayed: the recorded run started already
            return FlowRun(run_id, self.store)
        start_linked_run(
            FlowSpec.of(flow),
            _values_of_children(parameters),
            run_id=run_id,
            parent=self.flow_run_id,
            parent_task_run="",
            tree=self.root,
            queue=queue,
            name=name,
        )
        return FlowRun(run_id, self.store)

    def _linked_run_id(self, flow: Flow) -> tuple[str, bool]:
        """The id of a run of its own the body starts here (recorded before it starts), and whether
        it started already (a replayed call: the earlier attempt started it)."""
        position, recorded = self.next_call(JournalEntry("run", flow.name))
        if recorded is not None:  # if its record is missing, the worker died before starting it
            return recorded.id, self.store.flow_runs.state(recorded.id) is not None
        run_id = str(uuid.uuid4())
        self.store.journal.record(self.flow_run_id, position, JournalEntry("run", flow.name, id=run_id))
        return run_id, False

    def _poll(self, futures: list[Future[Any]], timeout: float | None) -> Iterator[Future[Any]]:
        """Yield futures as they become final (task runs, and child runs of their own); stop at ``timeout``."""
        pending = {f.task_run_id: f for f in futures}
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        next_check = time.monotonic() + STOP_CHECK_SECONDS
        while pending:
            if time.monotonic() >= next_check:  # a long wait: has the run been stopped meanwhile?
                self.check_not_stopped()
                next_check = time.monotonic() + STOP_CHECK_SECONDS
            tasks = [trid for trid, f in pending.items() if not isinstance(f, LinkedRunFuture)]
            finals: dict[str, StateType | None] = dict(self.store.task_runs.final_states(self.root, tasks))
            for trid, f in pending.items():
                if isinstance(f, LinkedRunFuture):
                    state = self.store.flow_runs.state(trid)
                    finals[trid] = state if state is not None and state.is_final else None
            for trid, state in finals.items():
                if state is not None:
                    yield pending.pop(trid)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                return
            if len(pending) <= WAKE_UP_MAX and not any(isinstance(f, LinkedRunFuture) for f in pending.values()):
                # a few task runs: wait for one of the tree's task runs to end (woken at once), until
                # the next stop check at the latest
                until = next_check if deadline is None else min(next_check, deadline)
                self.store.task_runs.await_a_finish(self.root, until - time.monotonic())
            else:  # many: poll on a timer (each wake-up would read them all)
                time.sleep(pause)
                pause = min(pause * 1.5, 0.1)

    def wait(self, futures: list[Future[Any]], timeout: float | None) -> DoneAndNotDone:
        # all of them (timeout None) is the same on every attempt; which ended in time is recorded
        done = set(self._poll(futures, None)) if timeout is None else self._done_in_time(futures, timeout)
        return DoneAndNotDone(done, set(futures) - done)

    def _done_in_time(self, futures: list[Future[Any]], timeout: float) -> set[Future[Any]]:
        """The futures final within ``timeout``, recorded once the wait is over (a wait cut short by
        a crash is not recorded: the replay waits again, for the whole timeout)."""
        asked = JournalEntry("order", f"wait of {len(futures)} futures")
        position, recorded = self.next_call(asked)
        if recorded is not None:
            return {f for f in futures if f.task_run_id in set(recorded.ids)}
        done = list(self._poll(futures, timeout))
        self.store.journal.record(self.flow_run_id, position, replace(asked, ids=[f.task_run_id for f in done]))
        return set(done)

    def as_completed(self, futures: list[Future[Any]], timeout: float | None) -> Iterator[Future[Any]]:
        """Futures as they become final, each recorded as it is given back, so that a replayed body
        gets them in the order the earlier attempt saw (its later calls may depend on that order);
        after the recorded ones, a replay goes on live."""
        asked = JournalEntry("order", f"as_completed of {len(futures)} futures")
        position, recorded = self.next_call(asked)
        if recorded is None:
            self.store.journal.record(self.flow_run_id, position, asked)
        return self._given_in_order(futures, timeout, position, list(recorded.ids) if recorded is not None else [])

    def _given_in_order(
        self, futures: list[Future[Any]], timeout: float | None, position: int, replayed: list[str]
    ) -> Iterator[Future[Any]]:
        by_id = {f.task_run_id: f for f in futures}
        for trid in replayed:
            future = by_id.pop(trid, None)
            if future is not None:
                yield future  # final already: it was when the earlier attempt got it
        index = len(replayed)
        for future in self._poll(list(by_id.values()), timeout):
            self.store.journal.record_given(self.flow_run_id, position, index, future.task_run_id)
            index += 1
            yield future


def returned_state(value: Any) -> tuple[Any, str]:
    """A body's return value, and why its run fails if the body returned a state that did not
    complete (as in Prefect, a returned state decides the run's end); a Completed state gives its data."""
    if not isinstance(value, State):
        return value, ""
    if value.is_completed():
        return value.data, ""
    said = f": {value.message}" if value.message else ""
    return None, f"the flow returned a {value.name} state{said}"


def drive(app: Celery, flow: Flow, run_id: str, parameters: dict[str, Any], queue: str, body: BodyAttempt) -> None:
    """Run a dynamic flow body to its end; the run ends when its last task run does.

    A retry runs the whole body again (new task runs), like Prefect's flow retries. A resumed
    attempt (its worker died, or handed it over) replays: the calls its journal recorded get
    their recorded runs back, and only calls never made before run.
    """
    store = get_store()
    if body.kind == "resume":  # a body that waited for a thread and never began has nothing to replay
        never_began = {StateType.PENDING: "start", StateType.AWAITING_RETRY: "retry"}
        body = replace(body, kind=never_began.get(store.flow_runs.state(run_id) or StateType.RUNNING, "resume"))
    if (
        body.kind == "resume"
        and store.task_runs.final_states(run_id, [body_task_run_id(run_id)])[body_task_run_id(run_id)]
    ):
        log.info("flow run %s: its body had ended before its worker stopped; nothing to resume", run_id)
        return  # its task runs go on and end the run
    if body.kind == "resume":
        log.info("flow run %s (%s): body attempt %d resumes, replaying its journal", run_id, flow.name, body.attempt)
        status = f"its body is driven by {body.worker} (attempt {body.attempt}, resumed: {body.why})"
        store.flow_runs.write(run_id, {"body_status": status})
    else:
        store.flow_runs.start_dynamic_body(run_id)  # the body itself is the one task run its tree waits for
        if body.kind == "retry":
            store.journal.clear(run_id)  # a retry runs the body from the start: nothing to replay
        schedule_deadline(store, run_id, flow.timeout_seconds, queue)
        state = StateType.RETRYING if body.kind == "retry" else StateType.RUNNING
        store.flow_runs.write(run_id, {"state": state.value, "started": now(), "mode": "dynamic"})
    engine = DynamicEngine(app, store, run_id, run_id, queue, attempt=body.attempt, replay=body.kind == "resume")
    returns: Any = None
    body_error = ""
    try:
        with using(engine, RunInfo(run_id, flow.name)), prints_logged(flow.log_prints):
            value, body_error = returned_state(aio.call(flow.fn, parameters))
        returns = engine.template(_values_of_children(value), f"flow {flow.name!r} return value")
    except FlowRunStopped as stopped:  # cancelled or timed out while it ran: it unwound, nothing to record
        body_stopped(store, flow, run_id, stopped)
        return
    except BodySuperseded as superseded:  # another attempt drives it now: this one leaves without a trace
        log.info("flow run %s (%s): %s; this attempt stops", run_id, flow.name, superseded)
        return
    except ReplayDiverged as diverged:
        log.error("flow run %s (%s): %s", run_id, flow.name, diverged)
        body_error = str(diverged)
    except Exception as exc:
        log.exception("flow run %s (%s): the flow body raised", run_id, flow.name)
        body_error = f"the flow body raised {describe(exc)}"
    store.flow_runs.write(
        run_id,
        {
            "returns": returns,
            "deciders": deciders(returns, engine.leaves()),
            "result_refs": refs_in(returns),
            "body_error": body_error,
        },
    )
    body_state = StateType.FAILED if body_error else StateType.COMPLETED
    after_final(store, run_id, store.task_runs.finished(run_id, body_task_run_id(run_id), body_state, {"ended": now()}))


def body_stopped(store: RunStore, flow: Flow, run_id: str, stopped: FlowRunStopped) -> None:
    """A body whose run was stopped from outside has unwound: its pseudo task run ends with the run's
    state, and the flow's hooks for that state run here, where the code is, unless the process that
    stopped the run had the code and ran them already (``end_flow_run``: once per end)."""
    state = StateType(stopped.state)
    log.info("flow run %s (%s): the body stopped: the run ended %s", run_id, flow.name, state.value)
    store.task_runs.finished(run_id, body_task_run_id(run_id), StateType.CANCELLED, {"ended": now()})
    end_flow_run(store, run_id, state, store.flow_runs.field(run_id, "message") or "", write=False)
