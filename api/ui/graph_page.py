"""The run page's graph: the plan laid out by level, large maps folded into summaries, ready to draw in one pass.

``GET /ui/runs/{id}/graph.json`` reads the whole graph through :func:`api.graph.graph_page`
(the query behind ``GET /api/flow-runs/{id}/graph``, page after page) and the run tree's
task-run states through :func:`api.routes.flow_runs.task_states` (the query of the route the script
then polls with ``since``, so that a refresh reads only what changed). The layout is done
here, not in the browser, so that the script draws boxes at given places and nothing else:

- a node's level is one more than its deepest upstream (plan order is topological, so one
  pass); a dynamic run's task runs have no edges and sit on one level;
- within a level, nodes of the same task (and flow run) beyond :data:`FOLD_OVER` become one
  summary box with counts by state: a static map over 5,000 items is one box, not 5,000;
  a runtime map is one box whose expanded task runs show as chips up to :data:`FOLD_OVER`,
  as counts beyond;
- a level holds at most :data:`LEVEL_CAP` boxes: past them its plain task nodes fold into one
  box ("N more tasks", with counts), so the drawing stays bounded however wide the plan;
- boxes are ordered within a level by the mean place of their upstreams (one barycentre
  sweep: fewer crossings, no search), then stacked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field
from sqlmodel import Session

from api.graph import graph_page
from api.paging import LIMIT_MAX
from api.routes.deps import SessionDep, whole_run_id
from api.routes.flow_runs import task_states
from api.schemas import GraphNode
from api.security import require_api_key

router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(require_api_key)])

FOLD_OVER = 40  # more nodes of one task on one level (or expanded task runs of a map) than this: counts
LEVEL_CAP = 12  # boxes per level at most (about a screen's height): the rest of a wide level folds into one
MAX_NODES = 200_000  # graph pages read for one drawing at most (a plan larger than this is cut, and says so)
BOX_W, BOX_H, GAP_X, GAP_Y = 200, 44, 70, 14
CHIP, CHIPS_PER_ROW = 12, 14  # a runtime map's expanded task runs: small squares, in rows inside its box
MAPPED_ID = re.compile(r"^(?P<map>.+)-(?P<index>\d+)$")
LABEL_INDEX = re.compile(r"-\d+$")  # "double-17" -> "double": a fold is labelled by its task


class Box(BaseModel):
    """One box of the drawing: a node, a fold of same-task nodes, or a runtime map with its task runs."""

    id: str
    kind: str = Field(description="task, map, subflow, flow_run, or fold (many nodes of one task: counts).")
    label: str
    x: int
    y: int
    h: int
    level: int
    members: list[str] = Field(description="The task run ids it stands for (a map: its expanded ones).")
    child_run_id: str = ""
    flow_run_id: str = ""


class GraphView(BaseModel):
    """The laid-out graph and the states to paint on it; ``since`` is where the script's polling starts."""

    flow_run_id: str
    mode: str
    boxes: list[Box]
    edges: list[tuple[str, str]]
    states: dict[str, str] = Field(description="Task run id -> state, for every member of every box.")
    since: float
    width: int
    height: int
    nodes: int = Field(description="Nodes in the plan (or task runs of a dynamic run).")
    cut: bool = Field(default=False, description="The plan had more than MAX_NODES nodes; only those are drawn.")
    fold_over: int = FOLD_OVER


@dataclass
class _Group:
    """Nodes of one level drawn as one box (one node, or a fold)."""

    key: str
    level: int
    nodes: list[GraphNode] = field(default_factory=list)
    order: float = 0.0
    more: bool = False  # the rest of a wide level (LEVEL_CAP), not one task's nodes


def read_nodes(session: Session, run_id: str) -> tuple[str, list[GraphNode], int]:
    """The run's mode and all graph nodes (page after page of the public route's query), and the total."""
    nodes: list[GraphNode] = []
    offset: int | None = 0
    mode, total = "", 0
    while offset is not None and len(nodes) < MAX_NODES:
        page = graph_page(session, run_id, LIMIT_MAX, offset)
        if page is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no flow run {run_id}.")
        mode, total = page.mode, page.total
        nodes.extend(page.nodes)
        offset = page.next_offset
    return mode, nodes, total


def levels_of(nodes: list[GraphNode]) -> dict[str, int]:
    """Node id -> its level: 0 without upstreams (in this graph), else one more than its deepest upstream."""
    level: dict[str, int] = {}
    for node in nodes:  # plan order is topological: an upstream comes first
        level[node.id] = 1 + max((level[u] for u in node.upstream if u in level), default=-1)
    return level


def group_nodes(nodes: list[GraphNode], level: dict[str, int]) -> list[_Group]:
    """The boxes' groups: same level, kind, task and flow run together; folded only when many."""
    buckets: dict[tuple[int, str, str, str], list[GraphNode]] = {}
    for node in nodes:
        buckets.setdefault((level[node.id], node.kind, node.name, node.flow_run_id), []).append(node)
    groups: list[_Group] = []
    for (lvl, kind, _name, _run), members in buckets.items():
        if len(members) > FOLD_OVER and kind == "task":
            groups.append(_Group(key=f"fold:{members[0].id}", level=lvl, nodes=members))
        else:
            groups.extend(_Group(key=m.id, level=lvl, nodes=[m]) for m in members)
    return cap_levels(groups)


def cap_levels(groups: list[_Group]) -> list[_Group]:
    """At most LEVEL_CAP boxes per level: past them, a level's plain task nodes fold into one box.

    5,000 distinct tasks on 50 levels would draw 5,000 boxes (a second of the browser's time);
    capped, 50 x 12. Maps, subflows and folds keep their own boxes (they say more than a count)."""
    by_level: dict[int, list[_Group]] = {}
    for group in groups:
        by_level.setdefault(group.level, []).append(group)
    kept: list[_Group] = []
    for lvl, members in by_level.items():
        if len(members) <= LEVEL_CAP:
            kept.extend(members)
            continue
        plain = [g for g in members if len(g.nodes) == 1 and g.nodes[0].kind == "task"]
        others = [g for g in members if not (len(g.nodes) == 1 and g.nodes[0].kind == "task")]
        room = max(LEVEL_CAP - len(others) - 1, 0)
        rest = [n for g in plain[room:] for n in g.nodes]
        kept.extend(others + plain[:room])
        if rest:  # (a level of maps and subflows only keeps them all)
            kept.append(_Group(key=f"more:{rest[0].id}", level=lvl, nodes=rest, more=True))
    return kept


def place(groups: list[_Group], box_of: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Order each level by the mean row of its groups' upstreams (one sweep), then stack: group key -> (x, row)."""
    row: dict[str, float] = {}
    by_level: dict[int, list[_Group]] = {}
    for group in groups:
        by_level.setdefault(group.level, []).append(group)
    placed: dict[str, tuple[int, int]] = {}
    for lvl in sorted(by_level):
        members = by_level[lvl]
        for i, group in enumerate(members):
            ups = {box_of[u] for n in group.nodes for u in n.upstream if u in box_of}
            seen = [row[u] for u in ups if u in row]
            group.order = sum(seen) / len(seen) if seen else float(i)
        members.sort(key=lambda g: g.order)
        for i, group in enumerate(members):
            row[group.key] = float(i)
            placed[group.key] = (lvl, i)
    return placed


def label_of(group: _Group) -> str:
    """'extract-3' for one node, 'double x5000' for one task's fold, '4970 more tasks' for a level's rest."""
    first = group.nodes[0]
    if group.more:
        return f"{len(group.nodes)} more tasks"
    if len(group.nodes) > 1:
        return f"{LABEL_INDEX.sub('', first.label) or first.name} x{len(group.nodes)}"
    return first.label or first.name


def box_height(group: _Group, mapped: int) -> int:
    """A box is one line high, a runtime map's grows with its chips (up to FOLD_OVER of them)."""
    node = group.nodes[0]
    if node.kind != "map" or not mapped or mapped > FOLD_OVER:
        return BOX_H
    rows = -(-mapped // CHIPS_PER_ROW)
    return BOX_H + rows * (CHIP + 2)


def lay_out(
    run_id: str, mode: str, nodes: list[GraphNode], total: int, states: dict[str, str], since: float
) -> GraphView:
    """Boxes at their places, edges between boxes (each once), and every member's state."""
    level = levels_of(nodes)
    groups = group_nodes(nodes, level)
    box_of = {n.id: g.key for g in groups for n in g.nodes}
    mapped: dict[str, list[str]] = {}  # a runtime map's expanded task runs, from the tree's states
    maps = {n.id for n in nodes if n.kind == "map"}
    for task_run_id in states:
        found = MAPPED_ID.match(task_run_id)
        if found and found["map"] in maps:
            mapped.setdefault(found["map"], []).append(task_run_id)
    placed = place(groups, box_of)
    tops: dict[int, int] = {}
    boxes: list[Box] = []
    for group in sorted(groups, key=lambda g: placed[g.key]):
        lvl, _row = placed[group.key]
        first = group.nodes[0]
        children = sorted(mapped.get(first.id, []), key=lambda i: int(i.rsplit("-", 1)[1]))
        h = box_height(group, len(children))
        y = tops.get(lvl, 0)
        tops[lvl] = y + h + GAP_Y
        folded = len(group.nodes) > 1
        boxes.append(
            Box(
                id=group.key,
                kind="fold" if folded else first.kind,
                label=label_of(group),
                x=lvl * (BOX_W + GAP_X),
                y=y,
                h=h,
                level=lvl,
                members=[n.id for n in group.nodes] + children,
                child_run_id=first.child_run_id if not folded else "",
                flow_run_id=first.flow_run_id,
            )
        )
    edges = sorted(
        {(box_of[u], box_of[n.id]) for n in nodes for u in n.upstream if u in box_of and box_of[u] != box_of[n.id]}
    )
    shown = {n.id: n.state for n in nodes} | {i: states[i] for ids in mapped.values() for i in ids}
    return GraphView(
        flow_run_id=run_id,
        mode=mode,
        boxes=boxes,
        edges=edges,
        states=shown,
        since=since,
        width=(max(level.values(), default=0) + 1) * (BOX_W + GAP_X),
        height=max(tops.values(), default=0),
        nodes=total,
        cut=total > len(nodes),
    )


@router.get("/runs/{run_id}/graph.json", response_model=GraphView)
def graph_view(session: SessionDep, run_id: str) -> GraphView:
    """The run's graph laid out for the run page (the script draws it once, then polls ``/task-states``)."""
    whole = whole_run_id(session, run_id[:64]) if len(run_id) <= 64 else None
    if whole is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no flow run {run_id!r}.")
    rows = task_states(session, whole, since=0, limit=MAX_NODES)
    states = {i: state for i, state, _ in rows}
    mode, nodes, total = read_nodes(session, whole)
    return lay_out(whole, mode, nodes, total, states, max((u for _, _, u in rows), default=0.0))
