"""Retention: finished flow runs past their limit are deleted by the services, one small batch at a time.

The limit of a run, in days after it ended, is its deployment's ``retention_days`` when it has
one, else its flow's in ``ORCHESTRATOR_RETENTION_DAYS_BY_FLOW``, else ``ORCHESTRATOR_RETENTION_DAYS``;
a run none of them covers is kept forever (the default: nothing is deleted unless asked for).

Only root runs are picked (a subflow traced into its parent's plan goes with its parent, as
``DELETE /api/flow-runs/{id}`` does it: :mod:`api.deletion`), and only final ones, by their end
time; a tree with a run still under way below its root waits. At most
``ORCHESTRATOR_RETENTION_BATCH_SIZE`` runs (and their trees) go per transaction, oldest end
first, and no more trees than hold ``TASK_RUNS_PER_BATCH`` task runs (one tree always goes whole),
so a large backlog never holds the database long: while batches come out full the next
pass (a second later) takes the next one, else the service waits
``ORCHESTRATOR_RETENTION_INTERVAL_SECONDS``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Engine, func, or_, true
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from api.db import chunks
from api.deletion import FINAL, Changed, TreeRun, delete_tree, run_tree
from api.metrics import Metrics
from api.models import Deployment, FlowRun, TaskRun, is_tree_root
from orchestrator.config.settings import Settings, get_settings
from orchestrator.runstate.store import RunStore

log = logging.getLogger("orchestrator.retention")

DAY = 86400.0
TASK_RUNS_PER_BATCH = 50_000  # task runs of the trees one transaction deletes, beyond the first tree


@dataclass(frozen=True)
class Policy:
    """How long finished runs are kept, in days: the server's default and each flow's own."""

    days: float | None = None
    by_flow: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: Settings) -> Policy:
        return cls(settings.retention_days, dict(settings.retention_days_by_flow))


@dataclass(frozen=True)
class Pass:
    """What one retention pass deleted, and whether it stopped at its batch size (more may be waiting)."""

    flow_runs: int = 0
    task_runs: int = 0
    full: bool = False


def expired_query(cutoff: float, limit: int, *where: ColumnElement[bool]) -> SelectOfScalar[str]:
    """Up to ``limit`` final root runs that ended before ``cutoff``, oldest end first: a walk of
    ``ix_flow_run_ended`` from its start that stops after ``limit`` matches, not a scan of every run."""
    child = aliased(FlowRun)
    busy_child = (  # a child under way keeps its tree (deeper ones are caught by deletable_trees)
        select(child.id).where(col(child.parent_id) == col(FlowRun.id), col(child.state).not_in(FINAL)).exists()
    )
    # The state test is wrapped (states are never NULL) so that SQLite, which has no statistics, does
    # not pick the state index and sort every finished run; the end time's index is the selective one.
    final = func.coalesce(col(FlowRun.state), "").in_(FINAL)
    finished = (final, is_tree_root(), col(FlowRun.ended).is_not(None), ~busy_child)
    return (
        select(FlowRun.id)
        .where(*finished, col(FlowRun.ended) < cutoff, *where)
        .order_by(col(FlowRun.ended))
        .limit(limit)
    )


def expired_roots(session: Session, policy: Policy, now: float, limit: int) -> list[str]:
    """Up to ``limit`` final root runs past their retention, each group oldest end first."""
    overrides = session.exec(
        select(Deployment.id, Deployment.retention_days).where(col(Deployment.retention_days).is_not(None))
    ).all()
    picked: list[str] = []

    def take(days: float, *where: ColumnElement[bool]) -> None:
        if len(picked) >= limit:
            return
        picked.extend(session.exec(expired_query(now - days * DAY, limit - len(picked), *where)).all())

    for deployment_id, days in overrides:
        take(float(days), col(FlowRun.deployment_id) == deployment_id)  # type: ignore[arg-type]
    ids = [deployment_id for deployment_id, _ in overrides]
    own_deployment = (
        or_(col(FlowRun.deployment_id).is_(None), col(FlowRun.deployment_id).not_in(ids)) if ids else true()
    )
    for flow, days in sorted(policy.by_flow.items()):
        take(days, col(FlowRun.flow_name) == flow, own_deployment)
    if policy.days is not None:
        other_flows = col(FlowRun.flow_name).not_in(list(policy.by_flow)) if policy.by_flow else true()
        take(policy.days, own_deployment, other_flows)
    return picked


def deletable_trees(
    session: Session, roots: list[str], task_budget: int = TASK_RUNS_PER_BATCH
) -> tuple[list[TreeRun], bool]:
    """The trees of these roots, less every tree with a run under way below its root (it waits), and
    only as many whole trees, in order, as hold ``task_budget`` task runs (the first one always): a
    batch of 500 backfills of 2,000 task runs each would otherwise be one transaction of a million.
    Also whether the budget left some out (the next pass takes them at once)."""
    tree = run_tree(session, roots)
    top_of = _tops(tree, set(roots))
    blocked = {top_of[r.id] for r in tree if not r.deletable}
    counts: dict[str, int] = {}
    for part in chunks([r.id for r in tree]):
        found = session.exec(
            select(TaskRun.flow_run_id, func.count())
            .where(col(TaskRun.flow_run_id).in_(part))
            .group_by(col(TaskRun.flow_run_id))
        ).all()
        for flow_run_id, n in found:
            counts[top_of[flow_run_id]] = counts.get(top_of[flow_run_id], 0) + int(n)
    chosen: set[str] = set()
    held = 0
    for root in roots:
        if root in blocked:
            continue
        if chosen and held + counts.get(root, 0) > task_budget:
            return [r for r in tree if top_of[r.id] in chosen], True
        chosen.add(root)
        held += counts.get(root, 0)
    return [r for r in tree if top_of[r.id] in chosen], False


def _tops(tree: list[TreeRun], roots: set[str]) -> dict[str, str]:
    """Each run of the tree -> the root (among ``roots``) it hangs from."""
    parent = {r.id: r.parent_id for r in tree}
    tops: dict[str, str] = {}
    for run in tree:  # parents come first (run_tree's order): a child's parent is resolved already
        up = parent[run.id]
        tops[run.id] = run.id if run.id in roots or up is None else tops.get(up, run.id)
    return tops


def apply_retention(
    engine: Engine,
    store: RunStore,
    policy: Policy,
    *,
    batch: int,
    task_budget: int = TASK_RUNS_PER_BATCH,
    now: float | None = None,
    metrics: Metrics | None = None,
) -> Pass:
    """Delete one batch of runs past their retention (with their trees); say what went."""
    now = time.time() if now is None else now
    with Session(engine) as session:
        roots = expired_roots(session, policy, now, batch)
        if not roots:
            return Pass()
        tree, cut = deletable_trees(session, roots, task_budget)
        if not tree:
            return Pass(full=False)
        try:
            done = delete_tree(session, store, tree)
        except Changed as exc:  # a run was retried meanwhile: the next pass looks again
            log.info("retention: a batch was left for the next pass (%s)", exc)
            return Pass()
    log.info("retention: deleted %d flow runs and %d task runs", len(done.flow_runs), done.task_runs)
    if metrics is not None:
        metrics.runs_deleted.labels("retention").inc(len(done.flow_runs))
        metrics.task_runs_deleted.labels("retention").inc(done.task_runs)
    return Pass(len(done.flow_runs), done.task_runs, full=len(roots) >= batch or cut)


class Retention:
    """The retention service of the services loop: a pass when due, at once again while batches come out full."""

    def __init__(self, metrics: Metrics | None = None, settings: Settings | None = None) -> None:
        settings = settings or get_settings()
        self.policy = Policy.of(settings)
        self.interval = settings.retention_interval_seconds
        self.batch = settings.retention_batch_size
        self.metrics = metrics
        self.due = 0.0  # monotonic time of the next pass

    def __call__(self, engine: Engine, store: RunStore) -> Pass:
        now = time.monotonic()
        if now < self.due:
            return Pass()
        self.due = now + self.interval  # a failing pass is tried again after the interval, not every second
        done = apply_retention(engine, store, self.policy, batch=self.batch, metrics=self.metrics)
        if done.full:
            self.due = now
        return done
