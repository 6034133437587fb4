"""The tracer's task graph and the exact Celery canvas it compiles to (no services needed)."""

from __future__ import annotations

import graphlib
import inspect
import itertools
import random
import sys
from typing import Any

import pytest
from celery.canvas import Signature, _chain, chord, group

from orchestrator import flow, task
from orchestrator.errors import DefinitionError, PlanError, SerializationError
from orchestrator.planning.compiler import (
    CHAIN_SEGMENT,
    EXPAND_MAP_TASK,
    FINISH_SUBFLOW_TASK,
    _Graph,
    canvas_tree,
    compile_plan,
)
from orchestrator.planning.plan import Plan
from orchestrator.planning.tracer import DynamicFlowRequired
from tests import flows


def compiled_tree(plan: Plan) -> Any:
    labels = {n.id: n.label for n in plan.nodes.values()}
    return canvas_tree(compile_plan(plan).canvas, labels)


def test_chain() -> None:
    plan = flows.chain_flow.plan(x=1)
    assert compiled_tree(plan) == ("chain", ["inc-0", "inc-1", "double-0"])
    canvas = compile_plan(plan).canvas
    assert isinstance(canvas, _chain)
    assert all(sig.immutable for sig in canvas.tasks)


def test_fan_out_fan_in_is_an_explicit_chord() -> None:
    plan = flows.fan_flow.plan(n=3)
    canvas = compile_plan(plan).canvas
    assert isinstance(canvas, chord)
    assert compiled_tree(plan) == ("chord", ["double-0", "double-1", "double-2"], "total-0")


def test_diamond() -> None:
    plan = flows.diamond_flow.plan(x=1)
    assert compiled_tree(plan) == ("chain", ["inc-0", ("chord", ["double-0", "inc-1"], "add-0")])


def test_non_series_parallel_graph_uses_joins_and_adds_no_barrier() -> None:
    plan = flows.non_sp_flow.plan(slow=1)
    compiled = compile_plan(plan)
    labels = {n.id: n.label for n in plan.nodes.values()}
    assert compiled.shapes == [None]
    assert canvas_tree(compiled.canvas, labels) == ("group", ["sleepy-0", "sleepy-1"])
    assert {labels[k]: v for k, v in compiled.join_pending.items()} == {"sleepy-2": 2, "sleepy-3": 1}


def test_independent_parts_are_a_group() -> None:
    @flow
    def two_chains() -> None:
        flows.inc.submit(flows.inc.submit(1))
        flows.double.submit(2)

    assert compiled_tree(two_chains.plan()) == ("group", [("chain", ["inc-0", "inc-1"]), "double-0"])


def test_map_over_a_parameter_is_a_group_and_over_a_result_a_runtime_expansion() -> None:
    assert compiled_tree(flows.map_param_flow.plan(values=[1, 2])) == ("chord", ["double-0", "double-1"], "total-0")
    plan = flows.map_upstream_flow.plan(n=3)
    canvas = compile_plan(plan).canvas
    assert compiled_tree(plan) == ("chain", ["numbers-0", "double-0", "total-0"])
    assert isinstance(canvas, _chain)
    assert canvas.tasks[1].task == EXPAND_MAP_TASK
    assert canvas.tasks[1].kwargs["task"] == "tests.flows.double"


def test_subflows_are_part_of_the_same_graph() -> None:
    plan = flows.parent_flow.plan()
    assert len(plan.subflows) == 3
    ends = [n for n in plan.nodes.values() if n.kind == "subflow"]
    assert {n.name for n in ends} == {"child-flow", "dependent-child"}
    tree = compiled_tree(plan)
    # the two side-by-side subflows are parallel; the dependent one follows only the first
    assert tree == (
        "group",
        [
            ("chain", ["sleepy-0", "subflow-child-flow-0", "double-0", "subflow-dependent-child-0"]),
            ("chain", ["sleepy-1", "subflow-child-flow-1"]),
        ],
    )
    end = next(n for n in plan.nodes.values() if n.label == "subflow-dependent-child-0")
    sig = next(s for s in compile_plan(plan).canvas.tasks[0].tasks if s.options["task_id"] == end.id)
    assert sig.task == FINISH_SUBFLOW_TASK


def test_messages_carry_flow_run_and_task_run_ids_and_the_queue() -> None:
    plan = flows.chain_flow.plan(x=1)
    sig: Signature = compile_plan(plan).canvas.tasks[0]
    node = plan.nodes[sig.options["task_id"]]
    assert sig.task == "tests.flows.inc"
    assert sig.kwargs["run"] == {"flow_run_id": plan.root_run_id, "label": "inc-0"}
    assert sig.options["task_id"] == node.id  # the Celery task id is the task run id
    assert sig.options["queue"] == "default"
    assert sig.options["ignore_result"] is True
    assert sig.kwargs["inputs"] == {"x": 1}


def test_task_queue_overrides_flow_queue() -> None:
    plan = flows.routed_flow.plan()
    assert [n.queue for n in plan.nodes.values()] == ["db", "etl"]
    canvas = compile_plan(plan).canvas  # the queues the messages are sent to
    assert isinstance(canvas, _chain)
    sent = [(s.task, s.options["queue"]) for s in canvas.tasks]
    assert sent == [("tests.flows.query_db", "db"), ("tests.flows.inc", "etl")]


def test_inputs_are_references_not_values() -> None:
    plan = flows.chain_flow.plan(x=1)
    first, second, _ = plan.nodes.values()
    assert second.inputs == {"x": {"__ref__": first.id, "path": []}}


@pytest.mark.parametrize(
    ("flow_obj", "reason"),
    [
        (flows.dynamic_flow, ".result()"),
    ],
)
def test_bodies_that_need_values_are_dynamic(flow_obj: Any, reason: str) -> None:
    with pytest.raises(DynamicFlowRequired, match=reason.replace("(", r"\(").replace(")", r"\)")):
        flow_obj.plan()


def test_branching_iterating_and_caught_signals_are_detected() -> None:
    @flow
    def branches() -> None:
        if flows.inc.submit(1) > 1:
            flows.inc.submit(2)

    @flow
    def iterates() -> None:
        for value in flows.numbers.submit(3):
            flows.inc.submit(value)

    @flow
    def swallows() -> None:
        try:
            flows.inc.submit(1).result()
        except Exception:
            pass

    for body in (branches, iterates, swallows):
        with pytest.raises(DynamicFlowRequired):
            body.plan()


def test_lambda_and_async_generators_are_refused_when_decorated() -> None:
    with pytest.raises(DefinitionError, match="lambda"):
        task(lambda x: x)

    async def agen() -> Any:
        yield 1

    with pytest.raises(DefinitionError, match="async generator"):
        task(agen)


def test_closures_run_locally_but_are_refused_when_compiled_for_workers() -> None:
    @task
    def local_only() -> int:
        return 1

    @flow
    def uses_closure() -> int:
        return local_only.submit()  # type: ignore[no-any-return]

    assert uses_closure() == 1
    with pytest.raises(DefinitionError, match="inside another function"):
        compile_plan(uses_closure.plan())
    with pytest.raises(DefinitionError, match="move it to the top level"):
        uses_closure.delay()


def test_unsendable_literal_argument_is_refused_at_trace_time_naming_the_argument() -> None:
    @flow
    def sends_object() -> None:
        flows.inc.submit(object())

    with pytest.raises(SerializationError, match=r"argument 'x'.*builtins\.object"):
        sends_object.plan()


def test_a_future_from_another_flow_run_is_refused() -> None:
    leaked: list[Any] = []

    @flow
    def first() -> None:
        leaked.append(flows.inc.submit(1))

    @flow
    def second() -> None:
        flows.inc.submit(leaked[0])

    first.plan()
    with pytest.raises(PlanError, match="another flow run"):
        second.plan()


def test_large_graphs_compile_quickly() -> None:
    @flow
    def long_chain() -> Any:
        value = flows.inc.submit(0)
        for _ in range(299):
            value = flows.inc.submit(value)
        return value

    plan = long_chain.plan()
    compiled = compile_plan(plan)
    labels = {n.id: n.label for n in plan.nodes.values()}
    # Celery carries a chain's remaining links in every message: long chains are cut into
    # segments of CHAIN_SEGMENT links, each sent by a join when the previous one's last link ends.
    segments = [canvas_tree(compiled.canvas, labels)]
    for entry, data in compiled.join_signatures.items():
        assert compiled.join_pending[entry] == 1
        segments.append(canvas_tree(Signature.from_dict(data), labels))
    segments.sort(key=lambda seg: int(seg[1][0].split("-")[1]))
    assert [len(seg[1]) for seg in segments] == [CHAIN_SEGMENT] * 9 + [300 - 9 * CHAIN_SEGMENT]
    assert [label for seg in segments for label in seg[1]] == [f"inc-{i}" for i in range(300)]
    group_canvas = compile_plan(flows.fan_flow.plan(n=2000)).canvas
    assert isinstance(group_canvas, chord) and len(group_canvas.tasks) == 2000
    assert isinstance(group(group_canvas.tasks), group)


def another_add(x: int, y: int) -> int:
    return x - y


def test_two_functions_may_not_share_a_task_name() -> None:
    with pytest.raises(DefinitionError, match=r"already used by tests\.flows\.add.*@task\(name=\.\.\.\)"):
        task(name="tests.flows.add")(another_add)


def test_large_inputs_travel_in_redis_not_in_every_chord_message() -> None:
    plan = flows.fan_flow.plan(n=100)
    compiled = compile_plan(plan)
    assert isinstance(compiled.canvas, chord)
    assert compiled.canvas.body.kwargs["inputs"] is None
    (stored,) = compiled.stored_inputs.values()
    assert stored.count("__ref__") == 100
    assert all(sig.kwargs["inputs"] == {"x": i} for i, sig in enumerate(compiled.canvas.tasks))


def test_tolerant_tasks_are_started_by_joins_that_carry_their_rule() -> None:
    plan = flows.trigger_flow.plan()
    compiled = compile_plan(plan)
    labels = {n.id: n.label for n in plan.nodes.values()}
    assert compiled.shapes == [None]  # canvas would stop at the failing task
    assert {labels[t] for t in compiled.tolerant} == {
        "cleanup-0",
        "alert-0",
        "all_failed_task-0",
        "all_failed_task-1",
        "alert-1",
        "show-0",
    }
    alert = next(Signature.from_dict(d) for k, d in compiled.join_signatures.items() if labels[k] == "alert-0")
    assert alert.kwargs["run"]["trigger"] == "any_failed"
    show = next(n for n in plan.nodes.values() if n.label == "show-0")
    assert show.trigger == "all_successful" and show.allow == show.upstream


def _shape_order(shape: Any, before: set[tuple[str, str]]) -> list[str]:
    """Every (a, b) the shape runs a before b, added to ``before``; returns its leaves."""
    kind, value = shape
    if kind == "leaf":
        return [value]
    parts = [_shape_order(part, before) for part in value]
    if kind == "seq":
        for i, earlier in enumerate(parts):
            for later in parts[i + 1 :]:
                before.update((a, b) for a in earlier for b in later)
    return [leaf for part in parts for leaf in part]


def _random_graph(rng: random.Random, preds: dict[str, list[str]], depth: int = 0) -> tuple[list[str], list[str]]:
    """A random series-parallel graph into ``preds``; returns its sources and sinks."""
    roll = rng.random()
    if depth > 4 or roll < 0.3:
        name = f"n{len(preds)}"
        preds[name] = []
        return [name], [name]
    parts = [_random_graph(rng, preds, depth + 1) for _ in range(rng.randint(2, 4))]
    if roll < 0.65:  # in series: every sink of one part before every source of the next
        for (_, sinks), (sources, _) in itertools.pairwise(parts):
            for source in sources:
                preds[source] = preds[source] + sinks
        return parts[0][0], parts[-1][1]
    return [s for p in parts for s in p[0]], [s for p in parts for s in p[1]]


class _GraphOnly:
    """Just what ``_Graph`` reads of a plan."""

    def __init__(self, preds: dict[str, list[str]]) -> None:
        self.nodes = {name: name for name in preds}
        self._preds = preds

    def preds(self, node: str) -> list[str]:
        return self._preds[node]


def test_decomposition_orders_exactly_what_the_graph_orders() -> None:
    """Random graphs, series-parallel or with extra edges: a shape found keeps every
    dependency and adds none (its order is the graph's transitive closure), and every
    series-parallel graph gets a shape."""
    rng = random.Random(18)
    shaped = 0
    for _ in range(400):
        preds: dict[str, list[str]] = {}
        _random_graph(rng, preds)
        series_parallel = rng.random() < 0.7
        order = list(graphlib.TopologicalSorter(preds).static_order())
        if not series_parallel:
            for _ in range(rng.randint(1, 3)):
                i, j = sorted(rng.sample(range(len(order)), 2)) if len(order) > 1 else (0, 0)
                if i != j and order[i] not in preds[order[j]]:
                    preds[order[j]] = preds[order[j]] + [order[i]]
        graph = _Graph(_GraphOnly(preds), order)  # type: ignore[arg-type]
        closure: set[tuple[str, str]] = set()
        ancestors: dict[str, set[str]] = {}
        for node in order:
            ancestors[node] = {a for up in preds[node] for a in (ancestors[up] | {up})}
            closure.update((a, node) for a in ancestors[node])
        shapes = [graph.decompose(component) for component in graph.components(order)]
        if series_parallel:
            assert all(shape is not None for shape in shapes), preds
        if all(shape is not None for shape in shapes):
            before: set[tuple[str, str]] = set()
            for shape in shapes:
                _shape_order(shape, before)
            assert before == closure, preds
            shaped += 1
    assert shaped > 280


def test_a_very_long_chain_compiles_without_deep_recursion() -> None:
    """Each segment of a long chain is built in a loop: at 10,000 links (313 segments) the
    compiler fits in a stack of 300 frames, where one frame per segment would not."""

    @flow
    def very_long_chain() -> Any:
        value = flows.inc.submit(0)
        for _ in range(9_999):
            value = flows.inc.submit(value)
        return value

    plan = very_long_chain.plan()
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack(0)) + 300)
    try:
        compiled = compile_plan(plan)
    finally:
        sys.setrecursionlimit(limit)
    assert len(compiled.join_signatures) == (10_000 - 1) // CHAIN_SEGMENT
