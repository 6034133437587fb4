"""The periodic services: send Scheduled flow runs when their start time comes, mark late ones,
delete finished runs past their retention (``retention``).

Each due run is claimed with a conditional UPDATE (``dispatched`` false → true),
so two API processes never send the same run twice; a send that fails (Redis
away) releases the claim and the run is tried again on the next pass. Due runs are
held back while no live worker consumes their queue, and while their deployment's
concurrency limit is full (``deployment_limits``). Each pass also mirrors the tag
concurrency limits to Redis, where workers take their slots.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine, func, update
from sqlmodel import Session, col, select

from api.metrics import Metrics
from api.models import ConcurrencyLimit, Deployment, FlowRun, is_tree_root
from api.services.deployment_limits import DeploymentLimits
from api.services.late import apply_deployment_policies, mark_late
from api.services.outage import RedisOutage, next_wait
from api.services.retention import Retention
from api.services.scheduling import schedule_runs
from api.submit import dispatch
from orchestrator.config.settings import get_settings
from orchestrator.errors import ConnectionProblem
from orchestrator.runstate import slots as concurrency
from orchestrator.runstate.leases import SERVICES_LOCK
from orchestrator.runstate.store import RunStore, get_store
from orchestrator.states import StateType
from orchestrator.supervision import crashes
from orchestrator.supervision.crashes import detect_crashes
from orchestrator.supervision.stalled import StalledRuns
from orchestrator.transport.messaging import sender_messaging

log = logging.getLogger("orchestrator.dispatcher")


WAITING = [StateType.SCHEDULED.value, StateType.LATE.value, StateType.AWAITING_CONCURRENCY_SLOT.value]
QUEUE = func.coalesce(func.nullif(FlowRun.queue, ""), "default")  # a run's queue; empty means default


def dispatch_due(engine: Engine, store: RunStore | None = None, limit: int = 200) -> int:
    """Send the runs whose start time has come; returns how many were sent.

    Only one dispatcher works at a time (a Redis lock), so a deployment's
    concurrency limit is never overrun by two API processes counting at once.
    """
    store = store or get_store()
    lock = store.leases.try_lock(SERVICES_LOCK, timeout=60)
    if lock is None:
        return 0  # another API process is dispatching right now
    try:
        return _dispatch_due(engine, store, limit)
    finally:
        store.leases.release_lock(lock)  # expired during a very slow pass: the next pass takes it again


def _dispatch_due(engine: Engine, store: RunStore, limit: int) -> int:
    """One pass: hold back what cannot go yet, send the rest oldest first.

    A run whose queue no live worker consumes stays where it is (Scheduled, then
    Late with the reason): its message would only pile up in Redis, and when the
    workers come back the deployment's late-run policy, not a stampede of stale
    messages, decides what runs. Neither kind of held-back run is in the query that
    picks what to send, so a large backlog never blocks runs behind it.
    """
    now = time.time()
    live_queues = sorted({q for w in store.fleet.live_workers() for q in w.get("queues", [])})
    paused = select(Deployment.id).where(col(Deployment.paused).is_(True))
    due = (
        select(FlowRun.id, FlowRun.deployment_id)
        .where(col(FlowRun.state).in_(WAITING))
        .where(col(FlowRun.dispatched).is_(False))
        .where(col(FlowRun.scheduled_start) <= now)
        .where(col(FlowRun.deployment_id).is_(None) | col(FlowRun.deployment_id).not_in(paused))
        .order_by(col(FlowRun.scheduled_start))
        .limit(limit)
    )
    sent = 0
    with Session(engine) as session:
        limits = DeploymentLimits(session)
        full = limits.full()
        if full:
            limits.hold(session.exec(due.where(col(FlowRun.deployment_id).in_(full))).all())
        ready = due.where(QUEUE.in_(live_queues))
        if full:
            ready = ready.where(col(FlowRun.deployment_id).is_(None) | col(FlowRun.deployment_id).not_in(full))
        for run_id, deployment_id in session.exec(ready).all():
            if not limits.has_slot(deployment_id):
                limits.hold([(run_id, deployment_id)])  # filled during this pass
                continue
            claimed = session.execute(
                update(FlowRun)
                .where(col(FlowRun.id) == run_id, col(FlowRun.dispatched).is_(False))
                .values(dispatched=True)
            )
            session.commit()
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                continue  # cancelled meanwhile
            row = session.get(FlowRun, run_id)
            if row is None:
                continue
            try:
                dispatch(row)
            except ConnectionProblem as exc:
                log.warning("dispatcher: %s; flow run %s will be sent on a later pass", exc, run_id)
                session.execute(update(FlowRun).where(col(FlowRun.id) == run_id).values(dispatched=False))
                session.commit()
                break
            sent += 1
            limits.took_slot(deployment_id)
            limits.sent(row)
    return sent


def publish_limits(engine: Engine, store: RunStore) -> None:
    """Keep Redis's copy of the tag concurrency limits equal to the table (after a Redis restart, say)."""
    with Session(engine) as session:
        rows = session.exec(select(ConcurrencyLimit)).all()
        concurrency.publish_limits(store, {row.tag: row.slots for row in rows})


def running_roots(engine: Engine, limit: int = 2000) -> list[str]:
    """Root flow runs recorded Running, least recently updated first (the stalled-run candidates)."""
    with Session(engine) as session:
        return list(
            session.exec(
                select(FlowRun.id)
                .where(FlowRun.state == StateType.RUNNING.value, is_tree_root())
                .order_by(col(FlowRun.updated))
                .limit(limit)
            ).all()
        )


def run_services(
    engine: Engine,
    store: RunStore,
    stop: threading.Event,
    interval: float = 1.0,
    outage: RedisOutage | None = None,
    metrics: Metrics | None = None,
) -> None:
    """The periodic services, once a second until ``stop``: send due runs, mark overdue ones Late, and
    (when due) delete a batch of finished runs past their retention.

    A failing pass is logged, never fatal. While Redis is away no service runs (each would only
    fail again): the outage is logged once (``outage``, shared with the recorder), Redis is asked
    again with a growing pause, and the pass that finds it back says so.
    """
    late_after = get_settings().late_after_seconds
    stalled = StalledRuns()
    retention = Retention(metrics)
    outage = outage or RedisOutage(store.url)
    wait = interval
    while not stop.is_set():
        if not _redis_answers(store, outage):
            wait = next_wait(wait)
            stop.wait(wait)
            continue
        wait = interval
        began = time.perf_counter()
        for service in (
            lambda: schedule_runs(engine),
            lambda: publish_limits(engine, store),
            lambda: dispatch_due(engine, store),
            lambda: mark_late(engine, store, late_after),
            lambda: apply_deployment_policies(engine, store, sender_messaging()),
            lambda: detect_crashes(store, sender_messaging()),
            lambda: stalled(store, lambda: running_roots(engine)),
            lambda: retention(engine, store),
        ):
            try:
                service()
            except Exception:
                if not _redis_answers(store, outage):
                    break  # Redis went away mid-pass: told once, the next passes wait for it
                log.exception("services pass failed")
        if metrics is not None:
            metrics.services_pass.observe(time.perf_counter() - began)
        stop.wait(interval)


def _redis_answers(store: RunStore, outage: RedisOutage) -> bool:
    """Ping Redis; report the outage (once) or its end to ``outage``."""
    try:
        store.ping()
    except ConnectionProblem as exc:
        outage.lost(exc.__cause__ or exc)
        crashes.OUTAGES.lost()  # heartbeats missed meanwhile prove nothing about their workers
        return False
    outage.back()
    return True
