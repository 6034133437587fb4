"""Prefect 3 authoring features, in-process, traced and on the fleet (issue 16):

- ``with tags(...)``: tags added to every task run started in the block, held to tag
  concurrency limits on the fleet;
- ``quote()`` / ``opaque()``: arguments passed whole, not searched for futures;
- ``@task`` / ``@flow`` on methods (the instance bound as the first argument);
- ``inspect.signature``, ``__doc__``, ``__name__``, ``__wrapped__`` of flows and tasks;
- a flow called in-process validates and converts its arguments by their annotations;
- ``submit`` / ``map`` inside a task run the nested tasks in threads of that process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import Flow, as_completed, flow, opaque, quote, tags, task, wait
from orchestrator.authoring.tags import current_tags
from orchestrator.config.settings import get_settings
from orchestrator.devstack.localstack import worker
from orchestrator.errors import (
    DefinitionError,
    FlowRunFailed,
    OrchestratorError,
    ParameterError,
    SerializationError,
)
from orchestrator.planning.compiler import option_overrides
from orchestrator.runs.handle import FlowRun
from orchestrator.runstate import slots as concurrency
from orchestrator.runstate.store import get_store
from orchestrator.runtime.futures import Future, FutureList
from tests import authoring_flows as af

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def authoring_worker(redis_url: str, worker_logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Three worker processes on the flows' queue (a limit of 1 must hold across them)."""
    with worker(
        redis_url,
        ["tests.authoring_flows"],
        queues=af.QUEUE,
        concurrency=3,
        name="authoring@%h",
        log_path=worker_logs / "authoring.log",
    ) as proc:
        yield proc


def by_task(run: FlowRun, name: str) -> list[dict[str, Any]]:
    return [r for r in run.task_runs() if r.get("name", "").endswith(f".{name}")]


@task
def echo(value: Any) -> Any:
    return value


# -- 1. tags() ---------------------------------------------------------------------------------------------
def test_a_tags_block_adds_its_tags_to_every_task_run_started_inside_it() -> None:
    ran_with: list[tuple[str, ...]] = []
    lock = threading.Lock()

    def record(task_: Any, run: Any, state: Any) -> None:
        with lock:
            ran_with.append(tuple(task_.tags))

    @task(tags=["own"], on_completion=[record])
    def load(x: int) -> int:
        return x

    @flow
    def nightly() -> list[int]:
        with tags("db", "nightly") as in_force:
            assert in_force == {"db", "nightly"}
            first = load.submit(1)
            with tags("inner", "db"):  # nested blocks add up; a tag given twice is kept once
                second = load(2)
                third = load.map([3, 4])
            assert current_tags() == ("db", "nightly")  # the inner block is over
        outside = load.submit(5)
        return [first.result(), second, *third.result(), outside.result()]

    assert nightly() == [1, 2, 3, 4, 5]
    assert sorted(ran_with) == sorted(
        [
            ("own", "db", "nightly"),
            ("own", "db", "nightly", "inner"),
            ("own", "db", "nightly", "inner"),
            ("own", "db", "nightly", "inner"),
            ("own",),
        ]
    )
    assert load.tags == ["own"]  # the task itself is untouched
    assert current_tags() == ()


def test_a_tags_block_around_an_in_process_call_reaches_its_tasks_and_a_bad_tag_is_refused() -> None:
    seen: list[tuple[str, ...]] = []

    @task(on_completion=[lambda t, r, s: seen.append(tuple(t.tags))])
    def step() -> None: ...

    @flow
    def body() -> None:
        step()

    with tags("from-caller"):
        body()
    assert seen == [("from-caller",)]
    refused = r"separate non-empty strings, e.g. tags\('db', 'nightly'\)"
    with pytest.raises(DefinitionError, match=refused), tags(["db", "nightly"]):  # type: ignore[arg-type]
        pass


def test_the_tracer_puts_the_blocks_tags_in_the_plan_and_in_the_message_but_not_from_around_delay() -> None:
    plan = af.tagged_static.plan("m", "trace-tag", 2)
    nodes = list(plan.nodes.values())
    assert [n.options["tags"] for n in nodes] == [["trace-tag"], ["trace-tag"]]
    assert option_overrides(nodes[0])["tags"] == ["trace-tag"]  # what the worker is told (it registered no tags)
    with tags("around-the-call"):  # a block around .delay()/.plan() does not reach the run
        again = af.tagged_static.plan("m", "trace-tag", 1)
    assert [n.options["tags"] for n in again.nodes.values()] == [["trace-tag"]]


def test_tags_blocks_hold_to_a_concurrency_limit_on_the_fleet_static_and_dynamic(
    authoring_worker: subprocess.Popen[bytes],
) -> None:
    store = get_store()
    tag = f"auth-{uuid.uuid4().hex[:8]}"
    concurrency.publish_limits(store, concurrency.read_limits(store) | {tag: 1})
    try:
        for flow_ in (af.tagged_static, af.tagged_dynamic):
            marker = uuid.uuid4().hex
            run = flow_.delay(marker, tag, 3)
            assert sorted(run.result(timeout=60)) == [0, 1, 2]
            assert run.info["mode"] == ("static" if flow_ is af.tagged_static else "dynamic")
            assert store.redis.get(f"test:auth:{marker}:max") == "1", flow_.name  # 3 processes, 1 slot
            assert any(r.get("slot_tag") == tag for r in by_task(run, "counted")), flow_.name  # some waited
    finally:
        concurrency.publish_limits(store, {k: v for k, v in concurrency.read_limits(store).items() if k != tag})


# -- 2. quote() / opaque() -------------------------------------------------------------------------------
def test_quote_passes_the_value_itself_without_resolving_or_waiting_for_its_futures() -> None:
    release = threading.Event()

    @task
    def slow() -> str:
        return "released" if release.wait(10) else "timed out"

    @task
    def sees(items: list[Any]) -> list[str]:
        release.set()  # if quote() made slow an upstream, this would only run after slow's 10 s
        return [type(v).__name__ for v in items]

    big = {"rows": list(range(1000))}

    @task
    def identity(value: Any) -> bool:
        return value is big

    @flow
    def body() -> dict[str, Any]:
        blocked = slow.submit()
        kinds = sees.submit(quote([blocked, 1]))
        return {"kinds": kinds.result(), "slow": blocked.result(), "same": identity(quote(big))}

    out = body()
    assert out == {"kinds": ["LocalFuture", "int"], "slow": "released", "same": True}
    assert echo(quote([1])) == [1]  # called as a plain function, the marker comes off too


def test_opaque_resolves_a_future_but_does_not_look_inside_a_value() -> None:
    big = {"rows": list(range(1000))}

    @task
    def kinds(value: Any) -> Any:
        if isinstance(value, list):
            return [type(v).__name__ for v in value]
        return value is big

    @flow
    def body() -> list[Any]:
        first = echo.submit(41)
        return [
            echo.submit(opaque(first)).result(),  # the value, waited for
            kinds(opaque([first])),  # not walked: the future itself
            kinds(opaque(big)),  # the same object, not copied
            echo.map(opaque([5, 6])).result(),  # a mapped list: each run gets its element
        ]

    assert body() == [41, ["LocalFuture"], True, [5, 6]]


def test_the_plan_has_an_edge_for_opaque_and_none_for_quote() -> None:
    @flow
    def body() -> list[Any]:
        first = echo.submit(1)
        return [echo.submit(opaque(first)), echo.submit(quote({"n": [1, 2]}))]

    nodes = {n.label: n for n in body.plan().nodes.values()}
    assert nodes["echo-1"].inputs == {"value": {"__ref__": nodes["echo-0"].id, "path": []}}
    assert nodes["echo-2"].inputs == {"value": {"n": [1, 2]}}
    assert nodes["echo-2"].wait_for == []

    @flow
    def quotes_a_future() -> Any:
        return echo.submit(quote([echo.submit(1)]))

    with pytest.raises(SerializationError, match=r"quote\(\.\.\.\) passes its value without resolving the futures"):
        quotes_a_future.plan()


def test_quote_and_opaque_on_the_fleet_static_and_dynamic(authoring_worker: subprocess.Popen[bytes]) -> None:
    static = af.quoted_static.delay(4)
    assert static.result(timeout=60) == {"quoted": {"rows": [0, 1, 2, 3]}, "opaque": 4, "mapped": [[1], [2]]}
    assert static.info["mode"] == "static"
    dynamic = af.quoted_dynamic.delay(3)
    assert dynamic.result(timeout=60) == {"quoted": {"rows": [0, 1, 2]}, "opaque": 3}
    assert dynamic.info["mode"] == "dynamic"
    failing = af.quoted_future_dynamic.delay()
    with pytest.raises(FlowRunFailed, match=r"quote\(\.\.\.\) passes its value without resolving"):
        failing.result(timeout=60)


# -- 3. methods ------------------------------------------------------------------------------------------
def test_tasks_and_flows_on_methods_bind_the_instance_in_process() -> None:
    class Pipeline:
        def __init__(self, factor: int) -> None:
            self.factor = factor

        @task
        def scale(self, x: int) -> int:
            return self.factor * x

        @staticmethod
        @task
        def plus_one(x: int) -> int:
            return x + 1

        @task
        @staticmethod
        def plus_two(x: int) -> int:
            return x + 2

        @classmethod
        @task
        def named(cls, x: int) -> str:
            return f"{cls.__name__}-{x}"

        @flow
        def run(self, x: int) -> list[Any]:
            return [
                self.scale(x),
                self.scale.submit(x).result(),
                self.scale.map([1, 2]).result(),
                self.scale.with_options(retries=1).submit(x).result(),  # a copy stays bound
                self.plus_one.submit(x).result(),
                self.plus_two(x),
                self.named(x),
            ]

    pipeline = Pipeline(10)
    assert pipeline.run(3) == [30, 30, [10, 20], 30, 4, 5, "Pipeline-3"]
    assert pipeline.run(x="3") == pipeline.run(3)  # validated after binding: self is not a parameter to check
    assert pipeline.scale(2) == 20  # outside a flow: a plain call, bound
    assert Pipeline.plus_one(1) == 2 and Pipeline.named(1) == "Pipeline-1"
    assert list(inspect.signature(pipeline.scale).parameters) == ["x"]  # self is bound, as for a method
    assert list(inspect.signature(pipeline.run).parameters) == ["x"]
    assert list(inspect.signature(Pipeline.scale).parameters) == ["self", "x"]
    assert isinstance(Pipeline.__dict__["run"], Flow) and Pipeline.run is Pipeline.__dict__["run"]


def test_a_method_whose_instance_cannot_travel_is_refused_clearly_before_anything_is_sent() -> None:
    with pytest.raises(
        DefinitionError, match=r"method bound to a Plain instance, and authoring-bound-flow.delay\(\) would send"
    ):
        af.Plain(2).run.delay(1)
    with pytest.raises(DefinitionError, match="method bound to a Plain instance"):
        af.Plain(2).run.apply_async({"x": 1})
    with pytest.raises(SerializationError, match=r"argument 'self': this is a method bound to a Plain instance"):
        af.json_instance.delay(1)  # traced where .delay() is called: refused before anything is written


def test_task_above_classmethod_binds_the_class_as_prefect_does() -> None:
    class Catalog:
        @task
        @classmethod
        def describe(cls, item: str) -> str:
            return f"{cls.__name__} lists {item}"

    class Shelf(Catalog):
        pass

    @flow
    def lists(item: str) -> list[str]:
        return [Catalog.describe(item), Shelf.describe.submit(item).result(), Catalog().describe(item)]

    assert lists("maps") == ["Catalog lists maps", "Shelf lists maps", "Catalog lists maps"]
    assert Catalog.describe("atlases") == "Catalog lists atlases"  # outside a flow: a plain call, bound
    assert list(inspect.signature(Catalog.describe).parameters) == ["item"]


def test_static_methods_and_a_picklable_instance_run_on_the_fleet(authoring_worker: subprocess.Popen[bytes]) -> None:
    assert af.Maths.double.name == "tests.authoring_flows.Maths.double"  # what the worker finds it by
    static = af.static_methods.delay(4)
    assert static.result(timeout=60) == [8, 12, [8, 10]]
    assert static.info["mode"] == "static"
    assert af.pickled_instance.delay(6).result(timeout=60) == 30


# -- 4. what inspect sees ----------------------------------------------------------------------------------
def test_flows_and_tasks_look_like_the_functions_they_wrap() -> None:
    def plain(day: dt.date, n: int = 2) -> int:
        """Counts the rows of a day."""
        return n

    wrapped_flow = flow(plain)
    wrapped_task = task(plain)
    for obj in (wrapped_flow, wrapped_task):
        assert inspect.signature(obj) == inspect.signature(plain)
        assert obj.__doc__ == "Counts the rows of a day."
        assert obj.__name__ == "plain" and obj.__wrapped__ is plain  # type: ignore[attr-defined]
        assert obj.__qualname__ == plain.__qualname__ and obj.__module__ == __name__  # type: ignore[attr-defined]
    assert wrapped_flow.with_options(retries=1).__wrapped__ is plain  # type: ignore[attr-defined]


# -- 5. parameter validation in-process --------------------------------------------------------------------
class Client:
    """A class pydantic has no schema for: checked with isinstance."""


@flow(name="authoring-typed")
def typed(name: str, x: int, day: dt.date, client: Client | None = None, raw=None, anything: Any = None) -> list[Any]:
    """``raw`` has no annotation on purpose: it is passed as given."""
    return [name, x, day, client, raw, anything]


def test_an_in_process_call_converts_its_arguments_by_their_annotations() -> None:
    out = typed("etl", "5", "2026-01-02", raw="as given", anything=b"bytes")
    assert out == ["etl", 5, dt.date(2026, 1, 2), None, "as given", b"bytes"]
    assert typed(name="etl", x=5.0, day=dt.date(2026, 1, 3))[1:3] == [5, dt.date(2026, 1, 3)]

    @flow
    def variadic(*parts: int, **named: dt.date) -> list[Any]:
        return [parts, named]

    assert variadic("1", 2, on="2026-01-02") == [(1, 2), {"on": dt.date(2026, 1, 2)}]

    @flow
    async def later(x: int) -> int:
        return x + 1

    assert asyncio.run(later("1")) == 2  # type: ignore[arg-type]


def test_a_value_of_exactly_its_plain_annotated_type_is_taken_as_given_and_others_are_converted() -> None:
    """``.delay(n=1)`` of an ``n: int`` skips pydantic (it would give the value back); a bool for an int
    or an int for a float still goes to it and comes back converted as before."""
    from pydantic import TypeAdapter

    from orchestrator.authoring.params import validated_parameters

    @flow
    def plain(n: int, ratio: float, label: str, on: bool) -> None:
        pass

    given = {"n": 2**70, "ratio": float("inf"), "label": " as is ", "on": False}
    assert validated_parameters(plain, given) == given
    converted = validated_parameters(plain, {"n": True, "ratio": 1, "label": "y", "on": 1})
    assert converted == {"n": TypeAdapter(int).validate_python(True), "ratio": 1.0, "label": "y", "on": True}
    assert [type(v) for v in converted.values()] == [int, float, str, bool]


def test_a_bad_argument_names_the_parameter_what_was_given_and_what_was_expected() -> None:
    with pytest.raises(ParameterError) as caught:
        typed(1, "five", "2026-02-30", client="not a client")
    text = str(caught.value)
    assert text.startswith("flow 'authoring-typed': ")
    assert "parameter 'name' got 1 (int), expected str: Input should be a valid string" in text
    assert "parameter 'x' got 'five' (str), expected int" in text
    assert "parameter 'day' got '2026-02-30' (str), expected date" in text
    assert "parameter 'client' got 'not a client' (str), expected Client | None" in text

    @flow
    def listed(values: list[int]) -> list[int]:
        return values

    with pytest.raises(
        ParameterError, match=r"parameter 'values' got \[1, 'x'\] \(list\), expected list\[int\] \(at \[1\]\)"
    ):
        listed([1, "x"])


def test_validate_parameters_false_takes_the_arguments_as_given() -> None:
    @flow(validate_parameters=False)
    def loose(x: int) -> Any:
        return x

    assert loose("5") == "5"
    assert typed.with_options(validate_parameters=False)(1, "5", "d")[:3] == [1, "5", "d"]


def test_importing_the_sdk_loads_no_pydantic() -> None:
    program = "import sys, orchestrator; print('pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- 6. tasks inside tasks -------------------------------------------------------------------------------
def test_submit_and_map_inside_a_task_run_in_threads_and_give_futures() -> None:
    attempts: list[int] = []

    @task
    def square(x: int) -> int:
        return x * x

    @task(retries=2)
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) < 3:
            raise RuntimeError("not yet")
        return x

    @task
    def broken() -> None:
        raise ValueError("nested boom")

    @task
    def outer(xs: list[int]) -> dict[str, Any]:
        mapped = square.map(xs)
        assert isinstance(mapped, FutureList) and all(isinstance(f, Future) for f in mapped)
        mapped.wait()
        first = square.submit(xs[0])
        chained = square.submit(first)  # a nested future passed on: waited for, its value given
        done, not_done = wait([first, chained])
        failed = broken.submit()
        return {
            "mapped": mapped.result(),
            "chained": chained.result(),
            "done": len(done) == 2 and not not_done,
            "completed": sorted(f.result() for f in as_completed(list(mapped))),
            "retried": flaky.submit(7).result(),
            "direct": square(5),  # a plain call, as before
            "failed": repr(failed.result(raise_on_failure=False)),
            "state": failed.state.name,
        }

    @flow
    def body(xs: list[int]) -> dict[str, Any]:
        return outer(xs)

    out = body([1, 2, 3])
    assert out["mapped"] == [1, 4, 9] and out["completed"] == [1, 4, 9]
    assert out["chained"] == 1 and out["done"] and out["direct"] == 25
    assert out["retried"] == 7 and attempts == [7, 7, 7]
    assert "nested boom" in out["failed"] and out["state"] == "Failed"


def test_a_nested_task_past_its_timeout_ends_timed_out_and_is_not_retried() -> None:
    """A nested task run keeps the in-process timeout rule: abandoned at the deadline, TimedOut, no retry."""
    release = threading.Event()
    calls: list[int] = []

    @task(timeout_seconds=0.2, retries=2)
    def stuck() -> None:
        calls.append(1)
        release.wait(30)  # the abandoned thread ends once the test has its answer

    @task
    def outer() -> tuple[str, str]:
        future = stuck.submit()
        error = future.result(raise_on_failure=False)
        return future.state.name, f"{type(error).__name__}: {error}"

    @flow
    def body() -> tuple[str, str]:
        return outer()

    try:
        state, error = body()
    finally:
        release.set()
    assert state == "TimedOut" and calls == [1]
    assert isinstance(error, str) and error.startswith("LocalTimeout") and "after 0.2s" in error


def test_nested_tasks_that_wait_for_their_own_nested_tasks_do_not_deadlock() -> None:
    """Every thread of a depth busy waiting for nested tasks of its own: those run on the next depth's threads.

    The first ``threads`` middles meet at a barrier, so all of them are running (the rest queued)
    before any submits its leaf: with one pool for every depth, the leaves would queue behind
    the waiting middles and nothing could finish.
    """
    threads = get_settings().local_max_workers
    many = threads + 4
    all_running = threading.Barrier(threads)

    @task
    def leaf(x: int) -> int:
        return x + 1

    @task
    def middle(x: int) -> int:
        if x < threads:
            all_running.wait(timeout=20)
        return leaf.submit(x).result(timeout=20)  # type: ignore[no-any-return]

    @task
    def top(n: int) -> int:
        return sum(middle.map(list(range(n))).result(timeout=30))

    @flow
    def body(n: int) -> int:
        return top(n)

    assert body(many) == sum(range(1, many + 1))


def test_submit_outside_any_flow_or_task_says_what_to_do() -> None:
    with pytest.raises(OrchestratorError, match=r"outside a flow; call it inside a @flow body \(or a task\)"):
        echo.submit(1)
    with pytest.raises(OrchestratorError, match="outside a flow"):
        echo.map([1])

    @flow
    def passes_a_flow_future() -> Any:
        @task
        def takes(f: Any) -> Any:
            return echo.submit(f).result()

        return takes(quote(echo.submit(1)))

    with pytest.raises(OrchestratorError, match="only futures of tasks submitted in that task can be passed on"):
        passes_a_flow_future()


def test_a_task_maps_another_task_inside_itself_on_the_fleet(authoring_worker: subprocess.Popen[bytes]) -> None:
    marker = uuid.uuid4().hex
    run = af.nested_static.delay(marker, [2, 3, 4])
    assert run.result(timeout=60) == {"squares": [4, 9, 16], "retried": 4, "direct": 9}
    assert run.info["mode"] == "static"
    assert get_store().redis.get(f"test:auth:nested:{marker}:2") == "2"  # the nested retry ran
    assert [r["label"] for r in run.task_runs()] == ["fan_out_inside-0"]  # nested runs belong to their task run
