"""The task graph a flow body produces when traced: nodes, data edges, wait_for edges.

A plan is plain data (JSON-ready) so it can be shown by ``orchestrator plan``, stored
in Redis beside the run, and compiled to Celery canvas by :mod:`orchestrator.planning.compiler`.
Inputs are *templates*: JSON data where ``{"__ref__": id, "path": [...]}`` stands for
the result of another node, fetched by the executor at run time.
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from orchestrator.errors import PlanError

NodeKind = Literal["task", "map", "subflow", "flow_run"]
REF = "__ref__"


def make_ref(node_id: str, path: list[Any] | None = None) -> dict[str, Any]:
    """A template item that stands for node ``node_id``'s result (optionally indexed)."""
    return {REF: node_id, "path": list(path or [])}


def iter_refs(template: Any) -> Iterator[dict[str, Any]]:
    """Every reference dict inside ``template``, depth first."""
    if isinstance(template, dict):
        if REF in template:
            yield template
            return
        for value in template.values():
            yield from iter_refs(value)
    elif isinstance(template, list):
        for value in template:
            yield from iter_refs(value)


def refs_in(template: Any) -> list[str]:
    """Node ids referenced anywhere in ``template``, in first-seen order (those :func:`iter_refs` finds).

    Without a generator per level: a one-task ``.delay()`` asks about ten times (tracing, compiling,
    writing its records), mostly of inputs with no reference at all."""
    found: dict[str, None] = {}
    _collect_refs(template, found)
    return list(found)


def _collect_refs(template: Any, found: dict[str, None]) -> None:
    if isinstance(template, dict):
        if REF in template:
            found[template[REF]] = None
            return
        items: Any = template.values()
    elif isinstance(template, list):
        items = template
    else:
        return
    for value in items:
        if isinstance(value, (dict, list)):
            _collect_refs(value, found)


@dataclass
class Node:
    """One task run to be: a task call, a runtime map expansion, a subflow's end, or a flow run of its own.

    A ``flow_run`` node starts a child run once its inputs (``{"parameters": ...}``) are ready:
    a subflow whose body needs its actual parameters, ``child.delay()`` in a body, or
    ``run_deployment``; ``options`` say which flow or deployment and whether the node waits
    for the child's end (its value is then the child's result, else the child's run id).
    """

    id: str
    kind: NodeKind
    name: str  # task name (kind task/map) or child flow name (kind subflow)
    label: str  # human label, e.g. "extract-2"
    flow_run_id: str  # the flow run (root or subflow) this node belongs to
    inputs: dict[str, Any] = field(default_factory=dict)  # parameter name -> template
    wait_for: list[str] = field(default_factory=list)
    queue: str = "default"
    options: dict[str, Any] = field(default_factory=dict)
    trigger: str = "all_successful"
    allow: list[str] = field(default_factory=list)  # upstreams whose failure is tolerated

    @property
    def tolerant(self) -> bool:
        """Runs (or decides) even when an upstream did not complete: needs a Redis join."""
        return self.trigger != "all_successful" or bool(self.allow)

    @property
    def upstream(self) -> list[str]:
        """Every node this one waits for: data references first, then wait_for."""
        ups = refs_in(self.inputs)
        for extra in self.wait_for:
            if extra not in ups:
                ups.append(extra)
        return ups


@dataclass
class SubflowInfo:
    """A child flow run traced inline; its end is marked by node ``end_node``."""

    run_id: str
    name: str
    parent_run_id: str
    parameters: dict[str, Any]
    end_node: str = ""


@dataclass
class Plan:
    """The traced graph of one flow run tree."""

    flow_name: str
    root_run_id: str
    queue: str
    nodes: dict[str, Node] = field(default_factory=dict)
    subflows: dict[str, SubflowInfo] = field(default_factory=dict)
    returns: Any = None  # template of the root flow's return value

    def add(self, node: Node) -> None:
        """Add ``node``; its upstreams must already be in the plan."""
        for up in node.upstream:
            if up not in self.nodes:
                raise PlanError(
                    f"task {node.label!r} waits for a future that is not part of flow "
                    f"{self.flow_name!r}; pass only futures created inside the same flow run."
                )
        self.nodes[node.id] = node

    def downstream(self) -> dict[str, list[str]]:
        """node id -> ids of the nodes that wait for it."""
        out: dict[str, list[str]] = {nid: [] for nid in self.nodes}
        for node in self.nodes.values():
            for up in node.upstream:
                out[up].append(node.id)
        return out

    def leaves(self, flow_run_id: str | None = None) -> list[str]:
        """Nodes nothing waits for (optionally only those of one flow run)."""
        down = self.downstream()
        return [
            nid
            for nid, node in self.nodes.items()
            if (flow_run_id is None or node.flow_run_id == flow_run_id)
            and not any(self.nodes[d].flow_run_id == node.flow_run_id for d in down[nid])
        ]

    def preds(self, node: Node) -> list[str]:
        """Upstreams inside this plan (a re-run plan leaves out the ones that completed)."""
        return [u for u in node.upstream if u in self.nodes]

    def topological_order(self) -> list[str]:
        """Node ids so that every node comes after its upstreams; refuses cycles.

        A plan with no edges inside it (one task, tasks that wait for nothing) is in its
        insertion order, the order ``graphlib`` gives such a graph too: without building the
        sorter, about 10 µs of every one-task ``.delay()``, which traces and compiles it."""
        preds = [(node.id, self.preds(node)) for node in self.nodes.values()]
        if not any(ups for _, ups in preds):
            return [nid for nid, _ in preds]
        sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
        for nid, ups in preds:
            sorter.add(nid, *ups)
        try:
            return list(sorter.static_order())
        except graphlib.CycleError as exc:
            cycle = " -> ".join(self.nodes[n].label for n in exc.args[1] if n in self.nodes)
            raise PlanError(
                f"flow {self.flow_name!r} has a dependency cycle ({cycle}); remove one of the wait_for links."
            ) from exc

    def rerun(self, ids: set[str]) -> Plan:
        """The part of this plan that must run again: ``ids``; upstreams outside it are done."""
        part = Plan(self.flow_name, self.root_run_id, self.queue, returns=self.returns)
        part.nodes = {nid: node for nid, node in self.nodes.items() if nid in ids}
        part.subflows = {k: v for k, v in self.subflows.items() if v.end_node in ids}
        return part

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`."""
        plan = cls(data["flow_name"], data["root_run_id"], data["queue"], returns=data.get("returns"))
        for raw in data["nodes"]:
            fields = {k: v for k, v in raw.items() if k != "upstream"}
            plan.nodes[fields["id"]] = Node(**fields)
        for raw in data.get("subflows", []):
            plan.subflows[raw["run_id"]] = SubflowInfo(**raw)
        return plan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, to be dumped: the values are the plan's own, not copies.

        ``dataclasses.asdict`` deep-copies every input template and option, which was the
        largest single cost of writing a one-task run's records (``.delay()`` waits for it).
        """
        return {
            "flow_name": self.flow_name,
            "root_run_id": self.root_run_id,
            "queue": self.queue,
            "nodes": [_shallow(n, _NODE_FIELDS) | {"upstream": n.upstream} for n in self.nodes.values()],
            "subflows": [_shallow(s, _SUBFLOW_FIELDS) for s in self.subflows.values()],
            "returns": self.returns,
        }


_NODE_FIELDS = tuple(f.name for f in fields(Node))
_SUBFLOW_FIELDS = tuple(f.name for f in fields(SubflowInfo))


def _shallow(record: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """A dataclass's fields by name, values not copied (they are JSON data)."""
    return {name: getattr(record, name) for name in names}
