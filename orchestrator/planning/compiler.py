"""Compile a traced :class:`~orchestrator.planning.plan.Plan` into Celery canvas.

Each weakly connected part of the graph is decomposed into series and parallel
pieces: a series becomes a ``chain``, parallel pieces a ``group``, and a group
followed by more work an explicit ``chord(group, rest)``. A part that is not
series-parallel (A->C, B->C, B->D) cannot be expressed in canvas without adding a
barrier that would delay D until A ends, so it runs by *Redis joins* instead: its
first tasks are sent at once and every other task is sent by the last of its
upstreams to finish (see ``workers.joins``). Every task thus starts as soon as its
own upstreams are done.

Signatures are immutable (``.si``): data never rides on Celery's result passing;
each task fetches its inputs from Redis by reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.canvas import Signature, _chain, chain, chord, group

from orchestrator.authoring.options import message_overrides, time_limits
from orchestrator.authoring.registry import get_task
from orchestrator.data.serialization import PICKLE_TAG
from orchestrator.errors import DefinitionError
from orchestrator.planning.plan import Node, Plan

EXPAND_MAP_TASK = "orchestrator.expand_map"
COLLECT_MAP_TASK = "orchestrator.collect_map"
FINISH_SUBFLOW_TASK = "orchestrator.finish_subflow"
RUN_LINKED_FLOW_TASK = "orchestrator.run_linked_flow"
START_FLOW_RUN_TASK = "orchestrator.start_flow_run"
FLOW_DEADLINE_TASK = "orchestrator.flow_deadline"
RETRY_FLOW_RUN_TASK = "orchestrator.retry_flow_run"
CRASH_HOOKS_TASK = "orchestrator.crash_hooks"  # a task's on_crashed hooks, on a worker of its queue
FLOW_CRASH_HOOKS_TASK = "orchestrator.flow_crash_hooks"  # a flow's on_crashed hooks, on a worker of its queue
RESUME_FLOW_BODY_TASK = "orchestrator.resume_flow_body"  # a dynamic body again, replaying (its worker died)

# Intermediate form: ("leaf", id) | ("seq", [parts]) | ("par", [parts])
Shape = tuple[str, Any]


@dataclass
class Compiled:
    """What launching a plan needs: the canvas to apply and the join table."""

    canvas: Signature | None
    join_pending: dict[str, int] = field(default_factory=dict)  # node -> upstream count
    join_signatures: dict[str, dict[str, Any]] = field(default_factory=dict)
    stored_inputs: dict[str, str] = field(default_factory=dict)  # node -> inputs JSON kept in Redis
    tolerant: set[str] = field(default_factory=set)  # nodes sent even when an upstream failed
    shapes: list[Shape | None] = field(default_factory=list)  # per part; None = joins


# Inputs larger than this travel in Redis, not in the message: Celery copies a chord's
# body into every header message, so a fan-in's 500 references would be sent 500 times.
INLINE_INPUTS_LIMIT = 1024
# Longest chain sent as one Celery chain; the rest follows by a join (see _CanvasBuilder).
CHAIN_SEGMENT = 32


def message_run(root: str, flow_run_id: str, label: str) -> dict[str, Any]:
    """The run ids a message carries; its Celery task id is the task run id."""
    run = {"flow_run_id": flow_run_id, "label": label}
    if root != flow_run_id:
        run["root"] = root
    return run


def make_signature(
    name: str,
    kwargs: dict[str, Any],
    *,
    queue: str,
    task_id: str | None = None,
    app: Celery | None = None,
    limits: dict[str, Any] | None = None,
) -> Signature:
    """An immutable signature that Celery sends without subscribing to its result.

    ``limits`` are per-message time limits (:func:`~orchestrator.authoring.options.time_limits`):
    Celery keeps them in the message, also when the task retries or is sent again from Redis.
    """
    options: dict[str, Any] = {"queue": queue, "ignore_result": True}
    if task_id:
        options["task_id"] = task_id
    if limits:
        options.update(limits)
    return Signature(name, kwargs=kwargs, options=options, immutable=True, app=app)


# ``json.dumps`` with options builds an encoder per call (2-3 µs); this one is built once (same text)
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def inline_or_stored(inputs: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(inputs to put in the message, JSON to store in Redis instead): one of them is None.

    Large inputs are stored to keep messages small; inputs carrying a pickle payload are always
    stored, because workers load pickle only from the run store, never from a message (whose
    content anyone who can reach the broker or Flower's task API chooses).
    """
    text = _COMPACT.encode(inputs)
    keep = len(text) > INLINE_INPUTS_LIMIT or f'"{PICKLE_TAG}"' in text
    return (None, text) if keep else (inputs, None)


def option_overrides(node: Node) -> dict[str, Any]:
    """Run options of a task node that differ from the task as workers register it."""
    declared = get_task(node.name)
    return message_overrides(node.name, node.options, declared.options if declared is not None else None)


def node_signature(
    plan: Plan, node: Node, app: Celery | None = None, stored: dict[str, str] | None = None
) -> Signature:
    """The Celery signature that runs one node; large inputs go to ``stored`` instead."""
    run: dict[str, Any] = message_run(plan.root_run_id, node.flow_run_id, node.label)
    if node.tolerant:  # decides at start from its upstreams' final states (see triggers.py)
        run |= {"ups": node.upstream, "allow": node.allow, "trigger": node.trigger}
    inputs, text = inline_or_stored(node.inputs)
    if text is not None and stored is not None:
        stored[node.id] = text
    elif text is not None:
        inputs = node.inputs
    limits: dict[str, Any] | None = None
    if node.kind == "task":
        error = node.options.get("importable_error")
        if error:
            raise DefinitionError(f"task {node.name!r} cannot run on workers: {error}.")
        name = node.name
        kwargs: dict[str, Any] = {"run": run, "inputs": inputs}
        overrides = option_overrides(node)
        if overrides:  # task.with_options(...) in the flow: the worker applies these
            kwargs["options"] = overrides
            declared = get_task(node.name)
            limits = time_limits(overrides, is_async=declared is not None and declared.is_async)
    elif node.kind == "map":
        name = EXPAND_MAP_TASK
        kwargs = {"run": run, "task": node.name, "inputs": inputs, "queue": node.queue}
        overrides = option_overrides(node)
        if overrides:  # the mapped runs get them (see workers.celery_tasks.expand_map)
            kwargs["options"] = overrides
    elif node.kind == "flow_run":
        name = RUN_LINKED_FLOW_TASK
        kwargs = {"run": run, "flow": node.name, "inputs": inputs, "link": node.options}
    else:
        name = FINISH_SUBFLOW_TASK
        kwargs = {"run": run, "child_run_id": node.options["child_run_id"], "inputs": inputs}
    return make_signature(name, kwargs, queue=node.queue, task_id=node.id, app=app, limits=limits)


# -- series-parallel decomposition ----------------------------------------------------
class _Graph:
    """Adjacency of the plan's nodes, and the series-parallel decomposition of a subset.

    Every step is linear in the subset's nodes and edges, so the whole decomposition of a
    chain or a wide fan-out is linear too: a 5,000-link chain used to re-scan the rest of
    the chain for every link peeled off (quadratic, 17 s before anything was sent).
    """

    ANCESTOR_SPLIT_MAX = 400  # the fallback split tests each node's ancestors: kept small

    def __init__(self, plan: Plan, order: list[str]) -> None:
        self.order = order
        self.index = {nid: i for i, nid in enumerate(order)}
        self.preds: dict[str, list[str]] = {nid: plan.preds(plan.nodes[nid]) for nid in order}
        self.succs: dict[str, list[str]] = {nid: [] for nid in order}
        for nid, ups in self.preds.items():
            for up in ups:
                self.succs[up].append(nid)

    def components(self, nodes: list[str]) -> list[list[str]]:
        """Weakly connected components of the induced subgraph, in topological order."""
        members = set(nodes)
        seen: set[str] = set()
        comps: list[list[str]] = []
        for start in nodes:
            if start in seen:
                continue
            stack, comp = [start], []
            seen.add(start)
            while stack:
                cur = stack.pop()
                comp.append(cur)
                for nxt in (*self.preds[cur], *self.succs[cur]):
                    if nxt in members and nxt not in seen:
                        seen.add(nxt)
                        stack.append(nxt)
            comps.append(sorted(comp, key=self.index.__getitem__))
        return comps

    def ancestors(self, nodes: list[str]) -> dict[str, int]:
        """Bitset of ancestors (inside ``nodes``) of each node; nodes in topological order."""
        members = set(nodes)
        anc: dict[str, int] = {}
        for nid in nodes:
            bits = 0
            for up in self.preds[nid]:
                if up in members:
                    bits |= anc[up] | (1 << self.index[up])
            anc[nid] = bits
        return anc

    def level_cuts(self, nodes: list[str]) -> list[list[str]]:
        """A connected subset cut at every level the graph already orders, first piece first.

        With ``depth`` the longest path from a source, cutting at level k puts P (depth < k)
        before S (the rest). The cut adds no dependency when every sink of P is an ancestor
        of every source of S. S's sources are exactly the level-k nodes, and a sink of P has
        all its successors in S, at depth k or more, so it can only reach a level-k node by a
        direct edge: the cut is valid when each level-k node has every sink of P as a direct
        predecessor. A node at depth d with its nearest successor at level m is a sink of P
        for the cuts d < k <= m, and it is a predecessor counted at level k only when m == k.
        One pass finds every valid cut; answers ``[nodes]`` when there is none.
        """
        members = set(nodes)
        depth: dict[str, int] = {}
        for nid in nodes:
            depth[nid] = 1 + max((depth[u] for u in self.preds[nid] if u in members), default=-1)
        top = max(depth.values())
        nearest_succ = {nid: min((depth[s] for s in self.succs[nid] if s in members), default=top + 1) for nid in nodes}
        sinks_at = [0] * (top + 2)  # sinks of P for the cut at level k, by a difference array
        for nid in nodes:
            sinks_at[depth[nid] + 1] += 1
            sinks_at[min(nearest_succ[nid], top) + 1] -= 1
        for k in range(1, top + 2):
            sinks_at[k] += sinks_at[k - 1]
        valid = [True] * (top + 1)
        valid[0] = False
        for nid in nodes:
            k = depth[nid]
            if valid[k]:
                direct = sum(1 for u in self.preds[nid] if u in members and nearest_succ[u] == k)
                valid[k] = direct == sinks_at[k]
        pieces: list[list[str]] = [[] for _ in range(top + 1)]
        piece = 0
        piece_of_level = []
        for k in range(top + 1):
            piece += valid[k]
            piece_of_level.append(piece)
        for nid in nodes:
            pieces[piece_of_level[depth[nid]]].append(nid)
        return pieces[: piece + 1]

    def ancestor_split(self, nodes: list[str]) -> tuple[list[str], list[str]] | None:
        """Split a small connected subset into P then S where P is a node with its ancestors.

        Tried when no level cut is valid. Valid when every source of S has every sink of P
        among its ancestors: then "all of P before any of S" is already implied by the graph.
        """
        if len(nodes) > self.ANCESTOR_SPLIT_MAX:
            return None
        members = set(nodes)
        anc = self.ancestors(nodes)
        for v in nodes:
            first = {n for n in nodes if (anc[v] >> self.index[n]) & 1 or n == v}
            if len(first) == len(nodes):
                continue
            sinks = 0
            for n in first:
                if not any(s in first for s in self.succs[n]):
                    sinks |= 1 << self.index[n]
            rest = [n for n in nodes if n not in first]
            sources = [n for n in rest if not any(u in members and u not in first for u in self.preds[n])]
            if all(anc[s] & sinks == sinks for s in sources):
                return [n for n in nodes if n in first], rest
        return None

    def decompose(self, nodes: list[str]) -> Shape | None:
        """Series-parallel shape of a subset, or None when it is not series-parallel."""
        comps = self.components(nodes)
        if len(comps) > 1:
            parts = [self.decompose(c) for c in comps]
            return None if any(p is None for p in parts) else ("par", parts)
        if len(nodes) == 1:
            return ("leaf", nodes[0])
        series: list[Shape] = []
        remaining = nodes
        while True:  # remaining is connected, 2+ nodes
            pieces = self.level_cuts(remaining)
            if len(pieces) == 1:
                split = self.ancestor_split(remaining)
                if split is None:
                    return None
                pieces = list(split)
            *heads, remaining = pieces
            for head in heads:
                shape = self.decompose(head)
                if shape is None:
                    return None
                series.append(shape)
            if len(self.components(remaining)) > 1 or len(remaining) == 1:
                tail = self.decompose(remaining)
                if tail is None:
                    return None
                series.append(tail)
                return ("seq", series)


class _CanvasBuilder:
    """Builds the canvas of series-parallel shapes, chords explicit, long chains segmented.

    Celery carries a chain's remaining links in every message, so a chain of n tasks
    moves O(n^2) bytes. After ``CHAIN_SEGMENT`` steps, at a single task, the rest of the
    series is stored as a join signature and sent by that task when it completes.
    """

    def __init__(self, sigs: dict[str, Signature], app: Celery | None, compiled: Compiled) -> None:
        self.sigs = sigs
        self.app = app
        self.compiled = compiled

    def build(self, shape: Shape) -> Signature:
        kind, value = shape
        if kind == "leaf":
            return self.sigs[value]
        if kind == "par":
            return group([self.build(p) for p in value], app=self.app)
        return self.series(list(value))

    def series(self, parts: list[Shape]) -> Signature:
        """The first segment of a series; every later segment is stored as a join.

        A loop rather than recursion, so a chain of any length is built in constant
        stack depth, and each part is visited once.
        """
        first, stop = self.segment(parts, 0)
        while stop is not None:
            entry = _first_leaf(parts[stop])  # depends directly on the leaf before it (series split)
            self.compiled.join_pending[entry] = 1
            later, next_stop = self.segment(parts, stop)
            self.compiled.join_signatures[entry] = dict(later)
            stop = next_stop
        return first

    def segment(self, parts: list[Shape], start: int) -> tuple[Signature, int | None]:
        """Canvas of ``parts`` from ``start``, and where the next segment starts (None: no more)."""
        steps: list[Signature] = []
        for i in range(start, len(parts)):
            part, more = parts[i], i + 1 < len(parts)
            built = self.build(part)
            if isinstance(built, group) and more:
                steps.append(chord(built, self.series(parts[i + 1 :]), app=self.app))
                break
            steps.extend(built.tasks if isinstance(built, _chain) else [built])
            if more and part[0] == "leaf" and len(steps) >= CHAIN_SEGMENT:
                return self.chain_of(steps), i + 1
        return self.chain_of(steps), None

    def chain_of(self, steps: list[Signature]) -> Signature:
        return steps[0] if len(steps) == 1 else chain(*steps, app=self.app)


def _first_leaf(shape: Shape) -> str:
    kind, value = shape
    return str(value) if kind == "leaf" else _first_leaf(value[0])


def compile_plan(plan: Plan, app: Celery | None = None) -> Compiled:
    """Compile ``plan``: canvas for series-parallel parts, Redis joins for the rest."""
    order = plan.topological_order()
    graph = _Graph(plan, order)
    compiled = Compiled(canvas=None)
    sigs = {nid: node_signature(plan, plan.nodes[nid], app, compiled.stored_inputs) for nid in order}
    builder = _CanvasBuilder(sigs, app, compiled)
    top: list[Signature] = []
    for comp in graph.components(order):
        tolerant = {nid for nid in comp if plan.nodes[nid].tolerant}
        compiled.tolerant |= tolerant
        # Canvas stops at a failed task, so a part where something must run anyway
        # (a trigger rule, allow_failure, wait()) is started by joins instead.
        shape = None if tolerant else graph.decompose(comp)
        compiled.shapes.append(shape)
        if shape is not None:
            top.append(builder.build(shape))
            continue
        for nid in comp:
            ups = graph.preds[nid]
            if ups:
                compiled.join_pending[nid] = len(ups)
                compiled.join_signatures[nid] = dict(sigs[nid])
            else:
                top.append(sigs[nid])
    if len(top) == 1:
        compiled.canvas = top[0]
    elif top:
        compiled.canvas = group(top, app=app)
    return compiled


def canvas_tree(sig: Signature | None, labels: dict[str, str]) -> Any:
    """The canvas as nested data: ("chain"|"group", [...]), ("chord", header, body) or a label."""
    if sig is None:
        return None
    if isinstance(sig, chord):
        return ("chord", canvas_tree(group(sig.tasks), labels)[1], canvas_tree(sig.body, labels))
    if isinstance(sig, (_chain, group)):
        kind = "chain" if isinstance(sig, _chain) else "group"
        return (kind, [canvas_tree(t, labels) for t in sig.tasks])
    task_id = sig.options.get("task_id", "")
    return labels.get(task_id, task_id)


def describe_canvas(sig: Signature | None, labels: dict[str, str]) -> str:
    """Readable, indented text of a canvas, task ids replaced by node labels."""

    def render(tree: Any, indent: int) -> list[str]:
        pad = "  " * indent
        if tree is None:
            return [f"{pad}(nothing to run)"]
        if isinstance(tree, str):
            return [f"{pad}{tree}"]
        if tree[0] == "chord":
            return [
                f"{pad}chord(",
                f"{pad}  header: group(",
                *[line for t in tree[1] for line in render(t, indent + 2)],
                f"{pad}  )",
                f"{pad}  body:",
                *render(tree[2], indent + 2),
                f"{pad})",
            ]
        return [f"{pad}{tree[0]}(", *[line for t in tree[1] for line in render(t, indent + 1)], f"{pad})"]

    return "\n".join(render(canvas_tree(sig, labels), 0))
