"""Prometheus metrics of one API process: ``GET /metrics`` (see docs/metrics.md).

Two kinds, so that a scrape costs the same with ten runs in the database or ten million:

- **Observed as it happens**, in the process that runs the services: the recorder's lag
  (an event's stamp to its commit), each task run's duration and each flow and task run's
  end (when the recorder records it), events sent to the dead-letter list, and each
  services pass. Counters and histograms of this process: they restart at zero with it,
  which ``rate()`` and ``increase()`` expect.
- **Read at scrape time** (:class:`LiveCollector`): runs in the states that are not final,
  by state and flow (a seek per state on the state index of migration 0005: the cost grows
  with the runs under way, not with the history), late runs, live workers, broker queue
  lengths, the events waiting in the stream for the recorder, and the dead-letter list.
  Counting every run ever recorded by state and flow (a scan: 170 ms at 100,000 flow runs,
  1.1 s for task runs at 1,000,000 on SQLite) is what the end counters replace.

Each app owns its :class:`~prometheus_client.CollectorRegistry` (not the global one), so
several apps in one process (tests) never clash over a metric's name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from api.models import FlowRun, TaskRun
from orchestrator.runstate.store import RunStore
from orchestrator.states import StateType
from orchestrator.transport.broker import queue_lengths

log = logging.getLogger("orchestrator.metrics")

MAX_FLOWS = 200  # flow names with a label of their own; runs of any other flow count under OTHER
MAX_TASK_SERIES = 1000  # (flow, task) pairs with a duration histogram of their own
MAX_QUEUES = 100  # queues whose length is read at each scrape
OTHER = "(other)"
NOT_FINAL = [s.value for s in StateType if not s.is_final]

TASK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Labels:
    """At most ``limit`` distinct values of a label; later newcomers are told apart no more (OTHER).

    A flow or task name comes from user code, and every distinct value is a series Prometheus
    keeps; this bounds what a process with many flows (or a bug naming them by run) can create.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[Any] = set()
        self.lock = threading.Lock()

    def __call__(self, value: Any) -> Any:
        with self.lock:
            if value in self.seen:
                return value
            if len(self.seen) < self.limit:
                self.seen.add(value)
                return value
        return OTHER if isinstance(value, str) else (OTHER,) * len(value)


class EndedRun(Protocol):
    """What a run end reads of a flow or task run row (the recorder's plain rows, ``recorder_rows``)."""

    @property
    def state(self) -> str: ...
    @property
    def started(self) -> float | None: ...
    @property
    def ended(self) -> float | None: ...


class EndedFlowRun(EndedRun, Protocol):
    @property
    def flow_name(self) -> str: ...


class EndedTaskRun(EndedRun, Protocol):
    @property
    def flow_run_id(self) -> str: ...
    @property
    def task_name(self) -> str: ...


@dataclass(frozen=True)
class RunEnd:
    """A flow or task run the recorder moved to a final state, as it was then (rows expire at the commit)."""

    state: str
    flow_name: str = ""  # a flow run's
    flow_run_id: str = ""  # a task run's (its row does not carry the flow's name)
    task_name: str | None = None  # None: a flow run
    duration: float | None = None  # a task run that started

    @classmethod
    def of_flow(cls, row: EndedFlowRun) -> RunEnd:
        return cls(row.state, flow_name=row.flow_name or "")

    @classmethod
    def of_task(cls, row: EndedTaskRun) -> RunEnd:
        took = row.ended - row.started if row.started is not None and row.ended is not None else None
        return cls(row.state, flow_run_id=row.flow_run_id, task_name=row.task_name or "", duration=took)


class Metrics:
    """The metrics of one API process, in a registry of its own."""

    def __init__(self, engine: Callable[[], Engine] | None = None, store: Callable[[], RunStore] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.recorder_lag = Histogram(
            "orchestrator_recorder_lag_seconds",
            "Time from an event's stamp (on the worker or client) to its commit in the database by the recorder.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.task_duration = Histogram(
            "orchestrator_task_run_duration_seconds",
            "Duration of task runs that ended (start to end, all attempts), by flow and task name.",
            ["flow", "task"],
            buckets=TASK_BUCKETS,
            registry=self.registry,
        )
        self.flow_runs_ended = Counter(
            "orchestrator_flow_runs_ended",
            "Flow runs the recorder recorded in a final state, by flow and state.",
            ["flow", "state"],
            registry=self.registry,
        )
        self.task_runs_ended = Counter(
            "orchestrator_task_runs_ended",
            "Task runs the recorder recorded in a final state, by flow and state.",
            ["flow", "state"],
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "orchestrator_events_dead_lettered",
            "Events the database refused, kept in the dead-letter list instead of being recorded.",
            registry=self.registry,
        )
        self.services_pass = Histogram(
            "orchestrator_services_pass_seconds",
            "Duration of one pass of the periodic services (schedule, dispatch, late runs, crash detection).",
            buckets=PASS_BUCKETS,
            registry=self.registry,
        )
        self.runs_deleted = Counter(
            "orchestrator_flow_runs_deleted",
            "Flow runs deleted with their task runs, history and logs, by why (retention or request).",
            ["reason"],
            registry=self.registry,
        )
        self.task_runs_deleted = Counter(
            "orchestrator_task_runs_deleted",
            "Task runs deleted with their flow runs, by why (retention or request).",
            ["reason"],
            registry=self.registry,
        )
        self.flows = Labels(MAX_FLOWS)
        self.tasks = Labels(MAX_TASK_SERIES)
        if engine is not None and store is not None:
            self.registry.register(LiveCollector(engine, store, self.flows))

    # -- the recorder's observations ------------------------------------------------------
    def batch_recorded(
        self, session: Session, stamps: Iterable[float], written: float, ended: Sequence[RunEnd]
    ) -> None:
        """A batch was committed at ``written``: its events' lag, and the runs it ended.

        Called after the commit, so a batch applied again after a failure is not counted twice
        (its events are then skipped as already recorded and are not passed here). A failure here
        is logged and goes no further: the batch is recorded, and a metric must not make it retried.
        """
        try:
            self._batch_recorded(session, stamps, written, ended)
        except Exception:
            log.exception("metrics: a recorded batch could not be observed; the metrics miss it")

    def _batch_recorded(
        self, session: Session, stamps: Iterable[float], written: float, ended: Sequence[RunEnd]
    ) -> None:
        for ts in stamps:
            if ts:
                self.recorder_lag.observe(max(0.0, written - ts))
        if not ended:
            return
        names = self._flow_names(session, ended)
        for end in ended:
            if end.task_name is None:
                self.flow_runs_ended.labels(self.flows(end.flow_name), end.state).inc()
                continue
            flow = self.flows(names.get(end.flow_run_id, ""))
            self.task_runs_ended.labels(flow, end.state).inc()
            if end.duration is not None:
                flow, task = self.tasks((flow, end.task_name))
                self.task_duration.labels(flow, task).observe(max(0.0, end.duration))

    @staticmethod
    def _flow_names(session: Session, ended: Sequence[RunEnd]) -> dict[str, str]:
        """The flow name of each ended task run's flow run (one primary-key lookup per 500)."""
        ids = sorted({end.flow_run_id for end in ended if end.task_name is not None and end.flow_run_id})
        names: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            names.update(session.exec(select(FlowRun.id, FlowRun.flow_name).where(col(FlowRun.id).in_(part))).all())
        return names


class LiveCollector(Collector):
    """Gauges read when Prometheus scrapes: from the database (indexed seeks) and from Redis.

    A source that does not answer is reported by ``orchestrator_metrics_source_up`` (0) and
    its gauges are left out of that scrape, rather than failing the whole scrape.
    """

    def __init__(self, engine: Callable[[], Engine], store: Callable[[], RunStore], flows: Labels) -> None:
        self.engine = engine
        self.store = store
        self.flows = flows

    def describe(self) -> list[Metric]:
        return []  # no collect() at registration: that would query the database while the app is built

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "orchestrator_metrics_source_up", "Whether a source answered this scrape (1) or not (0).", labels=["source"]
        )
        waiting_queues: set[str] = set()
        try:
            database = list(self._database(waiting_queues))
            up.add_metric(["database"], 1)
        except Exception as exc:  # the database away: say so, keep the rest of the scrape
            log.warning("metrics: the database did not answer (%s)", type(exc).__name__)
            database = []
            up.add_metric(["database"], 0)
        try:
            fleet = list(self._fleet(waiting_queues))
            up.add_metric(["redis"], 1)
        except Exception as exc:
            log.warning("metrics: Redis did not answer (%s)", type(exc).__name__)
            fleet = []
            up.add_metric(["redis"], 0)
        yield from database
        yield from fleet
        yield up

    def _database(self, waiting_queues: set[str]) -> Iterator[Metric]:
        now = time.time()
        flow_runs = GaugeMetricFamily(
            "orchestrator_flow_runs",
            "Flow runs now in each state that is not final, by flow (final states: orchestrator_flow_runs_ended).",
            labels=["flow", "state"],
        )
        task_runs = GaugeMetricFamily(
            "orchestrator_task_runs",
            "Task runs now in each state that is not final, by flow, among the task runs of flow runs not final.",
            labels=["flow", "state"],
        )
        with Session(self.engine()) as session:
            counts: dict[tuple[str, str], int] = {}
            for state in NOT_FINAL:  # one index seek each (ix_flow_run_state_created)
                rows = session.exec(
                    select(FlowRun.flow_name, func.count()).where(FlowRun.state == state).group_by(FlowRun.flow_name)
                ).all()
                for flow, n in rows:
                    key = (self.flows(flow or ""), state)
                    counts[key] = counts.get(key, 0) + n
            for (flow, state), n in sorted(counts.items()):
                flow_runs.add_metric([flow, state], n)
            task_counts: dict[tuple[str, str], int] = {}
            for flow, state, n in session.exec(
                select(FlowRun.flow_name, TaskRun.state, func.count())
                .join(TaskRun, col(TaskRun.flow_run_id) == col(FlowRun.id))  # ix_task_run_flow_run_id
                .where(col(FlowRun.state).in_(NOT_FINAL), col(TaskRun.state).in_(NOT_FINAL))
                .group_by(FlowRun.flow_name, TaskRun.state)
            ).all():
                key = (self.flows(flow or ""), state)
                task_counts[key] = task_counts.get(key, 0) + n
            for (flow, state), n in sorted(task_counts.items()):
                task_runs.add_metric([flow, state], n)
            late = sum(n for (_, state), n in counts.items() if state == StateType.LATE.value)  # as the gauge above
            start = func.coalesce(FlowRun.scheduled_start, FlowRun.created)
            oldest = session.exec(select(func.min(start)).where(FlowRun.state == StateType.LATE.value)).one()
            waiting_queues.update(
                q or "default"
                for q in session.exec(
                    select(FlowRun.queue).where(col(FlowRun.state).in_(NOT_FINAL)).distinct().limit(MAX_QUEUES)
                ).all()
            )
        yield flow_runs
        yield task_runs
        yield GaugeMetricFamily("orchestrator_late_flow_runs", "Flow runs now Late (not started in time).", value=late)
        yield GaugeMetricFamily(
            "orchestrator_late_flow_run_oldest_seconds",
            "How long ago the oldest Late flow run was due (0 with none).",
            value=max(0.0, now - oldest) if oldest else 0.0,
        )

    def _fleet(self, waiting_queues: set[str]) -> Iterator[Metric]:
        store = self.store()
        workers = store.fleet.live_workers()
        consumers: dict[str, int] = {}
        for worker in workers:
            for queue in worker.get("queues", []):
                consumers[queue] = consumers.get(queue, 0) + 1
        queues = sorted({"default", *consumers, *waiting_queues})[:MAX_QUEUES]
        lengths = queue_lengths(store, queues)
        yield GaugeMetricFamily(
            "orchestrator_workers_live", "Workers heard from in the last seconds.", value=len(workers)
        )
        per_queue = GaugeMetricFamily(
            "orchestrator_queue_workers", "Live workers consuming each queue.", labels=["queue"]
        )
        length = GaugeMetricFamily(
            "orchestrator_queue_length",
            "Messages waiting in each broker queue (the queues of live workers and of runs not final).",
            labels=["queue"],
        )
        for queue in queues:
            per_queue.add_metric([queue], consumers.get(queue, 0))
            length.add_metric([queue], lengths.get(queue, 0))
        yield per_queue
        yield length
        backlog = store.events.backlog()
        yield GaugeMetricFamily(
            "orchestrator_events_backlog",
            "Events (states and log lines) waiting in the Redis stream for the recorder; the stream is never "
            "trimmed past them, so an API down for long makes this grow, not lose history.",
            value=backlog.entries,
        )
        yield GaugeMetricFamily(
            "orchestrator_events_backlog_oldest_seconds",
            "How long ago the oldest event waiting for the recorder was appended (0 with none).",
            value=max(0.0, time.time() - backlog.oldest) if backlog.oldest is not None else 0.0,
        )
        yield GaugeMetricFamily(
            "orchestrator_dead_letter_events",
            "Events the database refused, waiting in the dead-letter list for a person to look at.",
            value=store.events.dead_letter_count(),
        )
