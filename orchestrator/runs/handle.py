"""Follow flow runs sent to the fleet (:class:`FlowRun`), and prepare and launch a run whose record is written.

Runs are created in :mod:`orchestrator.runs.create` (``etl.delay(...)``, the API,
deployments). A client that has the flow's code traces it here, compiles the plan and
sends the canvas itself: one hop fewer than asking a worker to do it. A flow that needs
task results while it runs is sent to a worker of its queue to be driven there.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.data.references import resolve
from orchestrator.data.serialization import to_jsonable
from orchestrator.errors import FlowRunFailed, OrchestratorError, RunTimeout
from orchestrator.planning.compiler import Compiled
from orchestrator.planning.plan import Plan
from orchestrator.planning.tracer import DynamicFlowRequired, trace_flow
from orchestrator.runs.lifecycle import launch_static, list_task_runs
from orchestrator.runstate.events import LogLine
from orchestrator.runstate.records import typed_task_run
from orchestrator.runstate.store import RunStore, get_store
from orchestrator.runtime.run_logger import run_logs_kept
from orchestrator.states import StateType
from orchestrator.transport.messaging import Messaging

if TYPE_CHECKING:
    from orchestrator.authoring.flows import Flow


class FlowRun:
    """A handle on a flow run sent to the fleet."""

    def __init__(self, run_id: str, store: RunStore | None = None) -> None:
        self.id = run_id
        self.store = store or get_store()

    @property
    def state(self) -> StateType | None:
        """The run's current state (None if Redis does not know the run)."""
        return self.store.flow_runs.state(self.id)

    @property
    def info(self) -> dict[str, Any]:
        """The run record: name, flow, queue, state, timestamps, message."""
        return {k: _maybe_json(v) for k, v in self.store.flow_runs.read(self.id).items()}

    def wait(self, timeout: float | None = None) -> StateType:
        """Block until the run is final; raise RunTimeout after ``timeout`` seconds."""
        return self._final(self.store.flow_runs.wait_final(self.id, timeout), timeout)

    def _final(self, state: StateType | None, timeout: float | None) -> StateType:
        if state is None or not state.is_final:
            raise RunTimeout(
                f"flow run {self.id} is still {state.value if state else 'unknown'} after "
                f"{timeout}s; it goes on. Check that a worker consumes its queue "
                f"({self.info.get('queue')})."
            )
        return state

    def result(self, timeout: float | None = None) -> Any:
        """The flow's return value; raises FlowRunFailed if the run did not complete."""
        waited, outcome = self.store.flow_runs.wait_outcome(self.id, timeout)
        state = self._final(waited, timeout)
        if state is not StateType.COMPLETED:
            name = outcome.name if outcome.name is not None else self.id
            error = FlowRunFailed(f"flow run {name} ({self.id}) ended {state.value}: {outcome.message or ''}")
            error.original_type, error.original_message = self._root_cause()
            raise error
        returns = json.loads(outcome.returns if outcome.returns is not None else "null")
        where = f"flow run {self.id} result"
        return resolve(returns, self.store, allow_pickle=True, where=where, prefetched=outcome.results)

    def _root_cause(self) -> tuple[str | None, str | None]:
        """The exception the first task run to fail raised (class ``module:qualname``, text), if any."""
        raised = [row for row in self.task_runs() if row.get("error_type")]
        if not raised:
            return None, None
        first = min(raised, key=lambda row: float(row.get("ended") or 0))
        return str(first["error_type"]), str(first.get("error_text", ""))

    def logs(self) -> list[dict[str, Any]]:
        """Log lines of this flow run and its task runs, oldest first (shipped every ~0.5 s)."""
        return self.store.events.logs_of(self.id)

    def task_runs(self) -> list[dict[str, Any]]:
        """Every task run of this flow run (a root: of its subflows too), by start time.

        Values come typed (:func:`typed_task_run`): ``attempts`` an int, times floats, ``cached``
        a bool, ``state`` a StateType; not the text Redis keeps them as.
        """
        rows = [typed_task_run(raw) for raw in list_task_runs(self.store, self.id)]
        return sorted(rows, key=lambda r: (r.get("started") or r.get("created") or 0.0, r.get("label", "")))

    def __repr__(self) -> str:
        return f"<FlowRun {self.id} {self.state}>"


def log_line(record: logging.LogRecord) -> LogLine:
    """A run-logger record as the log line a worker would ship."""
    return LogLine(
        flow_run_id=record.flow_run_id,  # type: ignore[attr-defined]
        task_run_id=getattr(record, "task_run_id", None),
        level=record.levelname,
        message=record.getMessage(),
        ts=record.created,
    )


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def encode_parameters(flow: Flow, parameters: dict[str, Any]) -> dict[str, Any]:
    """Parameters as JSON data; an unsendable one is named in the error."""
    return {name: to_jsonable(value, f"flow {flow.name!r} parameter {name!r}") for name, value in parameters.items()}


@dataclass
class PreparedRun:
    """A traced and compiled run, or the reason it cannot be compiled statically."""

    run_id: str
    queue: str
    plan: Plan | None = None
    compiled: Compiled | None = None
    dynamic_reason: str | None = None
    log_lines: list[LogLine] = field(default_factory=list)  # what the body logged while planned here


def prepare_run(
    flow: Flow,
    parameters: dict[str, Any],
    *,
    run_id: str,
    queue: str,
    messaging: Messaging,
    keep_logs: bool = False,
) -> PreparedRun:
    """Trace and compile a run without writing anything.

    Bad definitions and unsendable arguments raise here, before any record exists.
    A body that needs task values is marked dynamic. So is a body that raises while traced:
    what it did with a planned future may be what failed (``isinstance(x, int)``, a library
    that read the value), and with real values on a worker it either runs or fails with its
    own error there.

    ``keep_logs``: what the body logs while traced is kept for :func:`launch_prepared` to ship
    with the run (a worker ships its own lines; a body that turns out dynamic logs them again
    on the worker, so those are dropped).
    """
    prepared = PreparedRun(run_id, queue)
    records: list[logging.LogRecord] = []
    try:
        with run_logs_kept(records) if keep_logs else contextlib.nullcontext():
            prepared.plan = trace_flow(flow, parameters, run_id=run_id, queue=queue)
        prepared.log_lines = [log_line(record) for record in records]
    except DynamicFlowRequired as signal:
        prepared.dynamic_reason = str(signal)
        return prepared
    except OrchestratorError:
        raise
    except Exception as exc:
        prepared.dynamic_reason = (
            f"the flow body raised {type(exc).__name__} ({exc}) while it was planned; it runs with the tasks' values"
        )
        return prepared
    prepared.compiled = messaging.compile(prepared.plan)
    return prepared


def launch_prepared(
    prepared: PreparedRun,
    flow_name: str,
    *,
    store: RunStore,
    messaging: Messaging,
    record: dict[str, Any],
    pipe: Any = None,
    new: bool = False,
) -> None:
    """Start a prepared run whose record is written (or queued in ``pipe``; ``new``: and not yet
    written, see :func:`~orchestrator.runs.lifecycle.launch_static`)."""
    run_id = prepared.run_id
    pipe = pipe if pipe is not None else store.pipeline()
    if prepared.plan is not None and prepared.compiled is not None:
        launch_static(store, messaging, prepared.plan, prepared.compiled, record, pipe, new=new)
        if prepared.log_lines:
            store.events.ship_logs(prepared.log_lines)
        return
    store.flow_runs.write(run_id, {"mode": "dynamic", "mode_reason": prepared.dynamic_reason or ""}, pipe)
    pipe.execute()
    messaging.send_start(flow_name, run_id, prepared.queue, dynamic=True)
