"""The benchmark workloads, written twice: as orchestrator flows and as raw Celery canvas.

Both sides run on the same worker: the raw tasks are registered on the worker's own
Celery app (``workers.app.app``), so serializers, acks, prefetch, events and result
backend are identical. Every task is trivial (returns a small int), so what is
measured is the cost of orchestration, not of work.

Importing this module reads ``ORCHESTRATOR_REDIS_URL`` (through ``workers.app``):
set it before the first import.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

from celery.canvas import Signature, chain, chord, group

from orchestrator import flow, get_run_logger, task
from workers.app import app

# -- orchestrator tasks -----------------------------------------------------------------


@task
def noop(i: int) -> int:
    """Return the argument."""
    return i


@task
def source() -> int:
    """The fan-out's upstream."""
    return 0


@task
def work(i: int) -> int:
    """One branch of the fan-out."""
    return i


@task
def reduce_sum(parts: list[int]) -> int:
    """The fan-in."""
    return sum(parts)


@task
def inc(x: int) -> int:
    """One link of the chain."""
    return x + 1


# -- orchestrator flows (static: traced client-side, compiled to chain/group/chord) ------


@flow(name="bench-w0-single")
def w0_single(x: int = 1) -> Any:
    """W0: one task."""
    return noop.submit(x)


@flow(name="bench-w1-fan")
def w1_fan(n: int = 500) -> Any:
    """W1: source, then n parallel tasks, then one reduce."""
    src = source.submit()
    parts = [work.submit(i, wait_for=[src]) for i in range(n)]
    return reduce_sum.submit(parts)


@flow(name="bench-w2-chain")
def w2_chain(n: int = 200) -> Any:
    """W2: n tasks, each taking the previous one's result."""
    x = inc.submit(0)
    for _ in range(n - 1):
        x = inc.submit(x)
    return x


@flow(name="bench-w3-independent")
def w3_independent(n: int = 5000) -> Any:
    """W3: n independent tasks; the flow returns all their results."""
    return [noop.submit(i) for i in range(n)]


@flow(name="bench-w4-child")
def w4_child(start: int) -> Any:
    """W4's subflow: a chain of 10 increments from ``start`` (it only wires tasks: traced inline)."""
    x = inc.submit(start)
    for _ in range(9):
        x = inc.submit(x)
    return x


@flow(name="bench-w4-subflows")
def w4_subflows(n: int = 20) -> Any:
    """W4: n concurrent subflows of 10 tasks each; the parent returns their results."""
    return [w4_child(i) for i in range(n)]


@flow(name="bench-w4l-child")
def w4l_child(start: int) -> Any:
    """W4L's subflow: computes with its input, so each one is a flow run of its own."""
    x = inc.submit(start + 0)
    for _ in range(9):
        x = inc.submit(x)
    return x


@flow(name="bench-w4l-subflows")
def w4l_subflows(n: int = 20) -> Any:
    """W4L: W4 with subflows that compute with their inputs: n child runs started by plan nodes."""
    return [w4l_child(noop.submit(i)) for i in range(n)]


@task
async def async_source() -> int:
    """W5's fan-out upstream: an async task."""
    return 0


@task
async def async_work(i: int) -> int:
    """One branch of W5's fan-out: an async task."""
    return i


@task
async def async_reduce_sum(parts: list[int]) -> int:
    """W5's fan-in: an async task."""
    return sum(parts)


@flow(name="bench-w5-async-fan")
async def w5_async_fan(n: int = 500) -> Any:
    """W5: W1 written with async tasks (and an async body, traced into the same plan)."""
    src = async_source.submit()
    parts = [async_work.submit(i, wait_for=[src]) for i in range(n)]
    return async_reduce_sum.submit(parts)


@task
def numbers(n: int) -> list[int]:
    """W1M's upstream: the items to map over, known only when it has run."""
    return list(range(n))


@flow(name="bench-w1m-map")
def w1m_map(n: int = 500) -> Any:
    """W1M: a map over an upstream task's result (expanded on a worker), then one reduce."""
    return reduce_sum.submit(work.map(numbers.submit(n)))


# -- orchestrator flows (dynamic: the body reads values, so a worker drives it) -----------


@flow(name="bench-d2-sequential")
def d2_sequential(n: int = 200) -> int:
    """D2: n calls one after another, each waiting for its result before the next."""
    x = 0
    for _ in range(n):
        x = inc.submit(x).result()
    return x


@flow(name="bench-d3-many")
def d3_many(n: int = 5000) -> list[int]:
    """D3: n tasks submitted at once (a map over a range), then all their results read."""
    return noop.map(range(n)).result()  # type: ignore[no-any-return]


@flow(name="bench-api-five")
def api_five(x: int = 1) -> Any:
    """The API benchmark's flow: 5 tasks (a source, three in parallel, a reduce)."""
    src = source.submit()
    parts = [work.submit(x + i, wait_for=[src]) for i in range(3)]
    return reduce_sum.submit(parts)


@task
def logged_source() -> int:
    """The fan-out's upstream, saying so in one log line."""
    get_run_logger().info("source ready")
    return 0


@task
def logged_work(i: int) -> int:
    """One branch that logs a line with its input."""
    get_run_logger().info("working on %d", i)
    return i


@task
def logged_reduce(parts: list[int]) -> int:
    """The fan-in, logging the total."""
    get_run_logger().info("%d parts add up", len(parts))
    return sum(parts)


@flow(name="bench-api-five-logged")
def api_five_logged(x: int = 1) -> Any:
    """``bench-api-five`` whose every task writes one log line (what the database keeps of logs)."""
    src = logged_source.submit()
    parts = [logged_work.submit(x + i, wait_for=[src]) for i in range(3)]
    return logged_reduce.submit(parts)


# -- raw Celery tasks, on the worker's own app -------------------------------------------


@app.task(name="bench.raw.noop")
def raw_noop(i: int) -> int:
    """Return the argument."""
    return i


@app.task(name="bench.raw.source")
def raw_source() -> int:
    """The fan-out's upstream."""
    return 0


@app.task(name="bench.raw.work")
def raw_work(i: int) -> int:
    """One branch of the fan-out."""
    return i


@app.task(name="bench.raw.reduce")
def raw_reduce(parts: list[int]) -> int:
    """The fan-in."""
    return sum(parts)


@app.task(name="bench.raw.inc")
def raw_inc(x: int) -> int:
    """One link of the chain."""
    return x + 1


# Celery has no async tasks: a raw task runs its coroutine itself. Like the orchestrator's
# executor, it keeps one event loop per thread (asyncio.run per task would build a loop each
# time, a cost that is not orchestration), so W5 compares like with like.
_raw_loops = threading.local()


def _run_raw(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` on this thread's loop, made on first use."""
    loop = getattr(_raw_loops, "loop", None)
    if loop is None:
        loop = _raw_loops.loop = asyncio.new_event_loop()
    return loop.run_until_complete(coro)


async def _async_source() -> int:
    return 0


async def _async_work(i: int) -> int:
    return i


async def _async_reduce(parts: list[int]) -> int:
    return sum(parts)


@app.task(name="bench.raw.async_source")
def raw_async_source() -> int:
    """W5's fan-out upstream, async inside."""
    return _run_raw(_async_source())


@app.task(name="bench.raw.async_work")
def raw_async_work(i: int) -> int:
    """One branch of W5's fan-out, async inside."""
    return _run_raw(_async_work(i))


@app.task(name="bench.raw.async_reduce")
def raw_async_reduce(parts: list[int]) -> int:
    """W5's fan-in, async inside."""
    return _run_raw(_async_reduce(parts))


# -- raw canvas, hand-written: what a Celery user would write ----------------------------


@app.task(name="bench.raw.numbers")
def raw_numbers(n: int) -> list[int]:
    """W1M's upstream, by hand."""
    return list(range(n))


@app.task(name="bench.raw.expand", bind=True)
def raw_expand(self: Any, items: list[int]) -> Any:
    """W1M by hand: replace this task with a chord over the upstream's items (Celery's way)."""
    return self.replace(chord(group(raw_work.si(i) for i in items), raw_reduce.s()))


def raw_w0(x: int = 1) -> Signature:
    """W0: one task."""
    return raw_noop.s(x)


def raw_w1(n: int = 500) -> Signature:
    """W1: source, then a chord of n tasks into one reduce."""
    return chain(raw_source.si(), chord(group(raw_work.si(i) for i in range(n)), raw_reduce.s()))


def raw_w2(n: int = 200) -> Signature:
    """W2: a chain of n increments, each receiving the previous result."""
    return chain(raw_inc.s(0), *(raw_inc.s() for _ in range(n - 1)))


def raw_w3(n: int = 5000) -> Signature:
    """W3: a group of n independent tasks."""
    return group(raw_noop.si(i) for i in range(n))


def raw_w4(n: int = 20) -> Signature:
    """W4: n chains of 10 increments side by side, in a group (what the subflows compile to)."""
    return group(chain(raw_inc.s(i), *(raw_inc.s() for _ in range(9))) for i in range(n))


def raw_w4l(n: int = 20) -> Signature:
    """W4L: each chain starts from a task's result, as each child run starts from its node's input."""
    return group(chain(raw_noop.si(i), raw_inc.s(), *(raw_inc.s() for _ in range(9))) for i in range(n))


def raw_w5(n: int = 500) -> Signature:
    """W5: W1's canvas of tasks that run a coroutine each."""
    return chain(raw_async_source.si(), chord(group(raw_async_work.si(i) for i in range(n)), raw_async_reduce.s()))


def raw_d2(n: int, timeout: float) -> int:
    """D2 by hand: a client loop of n calls, each ``.get()`` before the next is sent."""
    x = 0
    for _ in range(n):
        x = raw_inc.delay(x).get(timeout=timeout)
    return x


def raw_w1m(n: int = 500) -> Signature:
    """W1M: the upstream's list goes to a task that expands it into a chord."""
    return chain(raw_numbers.si(n), raw_expand.s())


def raw_d3(n: int = 5000) -> Signature:
    """D3 by hand: a group of n tasks, all results waited for (W3's canvas)."""
    return raw_w3(n)


def expected(workload: str, n: int) -> Any:
    """The value both sides must return for ``workload`` of size ``n``."""
    table = {
        "W0": 1,
        "W1": sum(range(n)),
        "W1M": sum(range(n)),
        "W2": n,
        "W3": list(range(n)),
        "W4": [i + 10 for i in range(n)],
        "W4L": [i + 10 for i in range(n)],
        "W5": sum(range(n)),
        "D2": n,
        "D3": list(range(n)),
    }
    return table[workload]
