"""The task graph of a flow run, one page of nodes at a time, in time linear in what it reads.

A static run's graph is its plan (kept on the root flow run by the recorder) with each
node's current state; a dynamic run's is its task runs so far. The first version matched
every plan node against every task run of the run: a static map over 20,000 items made
400 million comparisons, 13 s for one request. Here every lookup goes by id: the plan is
read once, a page of its nodes is cut from it, and only that page's task runs are read (by
primary key, plus one query for the expanded children of the page's runtime maps).

What one page holds:

- nodes ``offset .. offset + limit - 1`` in plan order (a dynamic run: its task runs by
  creation time), ``total`` nodes in all and ``next_offset`` (None on the last page);
- each node with its whole ``upstream`` list. An edge belongs to its downstream node, so
  across all pages every edge is listed exactly once; it may name a node of another page;
- a runtime map node's ``mapped`` task runs in index order, at most ``limit`` mapped entries
  on the page in all; ``mapped_total`` is how many the map has (``/task-runs`` lists all).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from api.db import chunks
from api.models import FlowRun, TaskRun
from api.paging import next_offset
from api.schemas import Graph, GraphNode
from orchestrator.runs.create import linked_run_id
from orchestrator.states import StateType

Mapped = list[dict[str, str]]


def _plan_nodes(session: Session, run_id: str, root_id: str) -> tuple[str, list[dict[str, Any]] | None]:
    """Which flow run's plan the run's graph comes from, and its nodes (None: no plan recorded yet).

    The root's plan; the run's own when its root is not recorded (as the first version did).
    """
    plans = dict(session.exec(select(FlowRun.id, FlowRun.plan).where(col(FlowRun.id).in_({run_id, root_id}))).all())
    owner = root_id if root_id in plans else run_id
    plan = plans.get(owner)
    return owner, list(plan.get("nodes", [])) if plan else None


def _states(session: Session, ids: list[str]) -> dict[str, str]:
    """Task run id -> state, for the task runs among ``ids`` that are recorded."""
    found: dict[str, str] = {}
    for chunk in chunks(ids):
        found.update(session.exec(select(TaskRun.id, TaskRun.state).where(col(TaskRun.id).in_(chunk))).all())
    return found


def _expanded(session: Session, maps: list[dict[str, Any]], owner: str) -> dict[str, Mapped]:
    """Map node id -> its expanded task runs (ids ``{map id}-{i}``), in index order.

    One query per id length (map ids are UUIDs: one in practice) on the indexed flow_run_id,
    comparing the id's prefix in the database, so only the children of these maps come back.
    """
    by_length: dict[int, list[str]] = {}
    for node in maps:
        by_length.setdefault(len(node["id"]), []).append(node["id"])
    flow_runs = sorted({str(node.get("flow_run_id") or owner) for node in maps})
    found: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for length, ids in by_length.items():
        for chunk in chunks(ids):
            rows = session.exec(
                select(TaskRun.id, TaskRun.label, TaskRun.state).where(
                    col(TaskRun.flow_run_id).in_(flow_runs),
                    func.substr(TaskRun.id, 1, length).in_(chunk),
                    func.substr(TaskRun.id, length + 1, 1) == "-",
                )
            ).all()
            for task_run_id, label, state in rows:
                index = task_run_id[length + 1 :]
                if index.isdigit():
                    entry = {"id": task_run_id, "label": label, "state": state}
                    found.setdefault(task_run_id[:length], []).append((int(index), entry))
    return {map_id: [entry for _, entry in sorted(children, key=lambda c: c[0])] for map_id, children in found.items()}


def _child_runs(session: Session, page: list[dict[str, Any]], attempts: int) -> dict[str, str]:
    """Node id -> the child flow run it stands for: a traced subflow's end node names it (the recorder
    keeps it from the node's options);
    a ``flow_run`` node's child has an id derived from the node and the parent's attempt (the latest
    attempt's recorded child wins). One query for the page."""
    found = {n["id"]: str(n.get("child_run_id") or "") for n in page if n.get("kind") == "subflow"}
    candidates = {
        linked_run_id(n["id"], attempt): (n["id"], attempt)
        for n in page
        if n.get("kind") == "flow_run"
        for attempt in range(1, max(attempts, 1) + 1)
    }
    best: dict[str, int] = {}
    for chunk in chunks(list(candidates)):
        for child_id in session.exec(select(FlowRun.id).where(col(FlowRun.id).in_(chunk))).all():
            node_id, attempt = candidates[child_id]
            if attempt >= best.get(node_id, 0):
                best[node_id], found[node_id] = attempt, child_id
    return {node_id: child for node_id, child in found.items() if child}


def _static_page(
    session: Session, nodes: list[dict[str, Any]], owner: str, limit: int, offset: int, attempts: int = 1
) -> tuple[list[GraphNode], int]:
    """One page of plan nodes with their states and (budgeted) mapped task runs; and the total.

    A node without ``flow_run_id`` is a node of ``owner``, the run whose plan it is; without ``kind``
    a task; without ``upstream`` a node with none (the recorder keeps only what differs: ``graph_of``).
    """
    page = nodes[offset : offset + limit]
    states = _states(session, [node["id"] for node in page])
    children_runs = _child_runs(session, page, attempts)
    maps = [node for node in page if node.get("kind") == "map"]
    children = _expanded(session, maps, owner) if maps else {}
    budget = limit  # mapped entries this page may still list
    out: list[GraphNode] = []
    for node in page:
        expanded = children.get(node["id"], [])
        shown = expanded[:budget]
        budget -= len(shown)
        out.append(
            GraphNode(
                id=node["id"],
                kind=node.get("kind") or "task",
                name=node.get("name") or "",
                label=node.get("label") or "",
                flow_run_id=node.get("flow_run_id") or owner,
                upstream=list(node.get("upstream") or []),
                state=states.get(node["id"], StateType.PENDING.value),
                mapped=shown,
                mapped_total=len(expanded),
                child_run_id=children_runs.get(node["id"], ""),
            )
        )
    return out, len(nodes)


def _dynamic_page(session: Session, run_id: str, limit: int, offset: int) -> tuple[list[GraphNode], int]:
    """One page of the run's own task runs, by creation time (a run without a plan)."""
    mine = col(TaskRun.flow_run_id) == run_id
    total = session.exec(select(func.count()).select_from(TaskRun).where(mine)).one()
    rows = session.exec(
        select(TaskRun.id, TaskRun.task_name, TaskRun.label, TaskRun.state)
        .where(mine)
        .order_by(col(TaskRun.created), col(TaskRun.label), col(TaskRun.id))
        .offset(offset)
        .limit(limit)
    ).all()
    nodes = [
        GraphNode(id=i, kind="task", name=name, label=label, flow_run_id=run_id, upstream=[], state=state)
        for i, name, label, state in rows
    ]
    return nodes, int(total)


def graph_page(session: Session, run_id: str, limit: int, offset: int) -> Graph | None:
    """The page of the run's graph from ``offset``, or None when no such run is recorded."""
    found = session.exec(select(FlowRun.root_id, FlowRun.mode, FlowRun.attempt).where(FlowRun.id == run_id)).first()
    if found is None:
        return None
    root_id, mode, attempts = found
    owner, plan = _plan_nodes(session, run_id, root_id or run_id)
    if plan is None:
        nodes, total = _dynamic_page(session, run_id, limit, offset)
    else:
        if owner != run_id:  # a subflow run: its own nodes of its root's plan
            plan = [node for node in plan if node.get("flow_run_id") == run_id]
        nodes, total = _static_page(session, plan, owner, limit, offset, attempts)
    return Graph(
        flow_run_id=run_id,
        mode=mode,
        nodes=nodes,
        total=total,
        limit=limit,
        offset=offset,
        next_offset=next_offset(offset, len(nodes), total),
    )
