"""``async def`` tasks and flows (``tests/test_async.py``), on queues of their own."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from orchestrator import flow, task
from orchestrator.runtime.context import current_run
from orchestrator.runtime.futures import Future

QUEUE = "async"  # the module's worker with concurrency 2
SOLO = "async-solo"  # its worker with concurrency 1: every task runs in the same process and thread


@task
async def double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


@task
def inc(x: int) -> int:
    return x + 1


@task
async def stamp(n: int, seconds: float) -> dict[str, float]:
    """When it started and ended: two of them in a gather overlap if they ran concurrently."""
    start = time.time()
    await asyncio.sleep(seconds)
    return {"n": n, "start": start, "end": time.time()}


@task(retries=2)
async def fails_first(x: int) -> dict[str, int]:
    run = current_run()
    attempt = run.attempt if run else 0
    await asyncio.sleep(0)
    if attempt < 2:
        raise ValueError(f"attempt {attempt} fails on purpose")
    return {"x": x, "attempt": attempt}


@task(timeout_seconds=1)
async def overruns(seconds: float) -> str:
    """Marks its loop, then sleeps past its timeout; the probe afterwards finds the mark."""
    asyncio.get_running_loop().timed_out_here = True  # type: ignore[attr-defined]
    await asyncio.sleep(seconds)
    return "should have timed out"


@task
async def marks_and_sleeps(seconds: float) -> str:
    """As overruns, without a timeout of its own: the flow gives one with with_options."""
    asyncio.get_running_loop().timed_out_here = True  # type: ignore[attr-defined]
    await asyncio.sleep(seconds)
    return "should have timed out"


@task
async def probe_loop() -> dict[str, Any]:
    """Which loop runs it, and how many tasks that loop object has run (a new loop starts at 1)."""
    loop = asyncio.get_running_loop()
    loop.calls = getattr(loop, "calls", 0) + 1  # type: ignore[attr-defined]
    return {
        "loop": id(loop),
        "calls": loop.calls,  # type: ignore[attr-defined]
        "pid": os.getpid(),
        "timed_out_here": getattr(loop, "timed_out_here", False),
    }


@task(log_prints=True)
async def chatty(n: int) -> int:
    await asyncio.sleep(0)
    print(f"async print {n}")
    return n


@task
async def sleeps(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


# -- flows ----------------------------------------------------------------------------------------------


@flow(name="async-wired", queue=QUEUE)
async def wired(x: int) -> Any:
    """Only wires tasks (awaits, a future awaited, a gather of calls): traced into a static plan."""
    a = await double(x)  # 2x
    b = double.submit(a)  # 4x, a future
    c = await b  # under the tracer: b itself
    both = await asyncio.gather(double(c), double(a))  # 8x, 4x
    return inc.submit(both[0]), both[1]  # sync task in an async body


@flow(name="async-overlapping", queue=QUEUE)
async def overlapping(seconds: float) -> dict[str, Any]:
    """Computes with values: a dynamic body; the gathered tasks run side by side."""
    first, second = await asyncio.gather(stamp(1, seconds), stamp(2, seconds))
    total = first["n"] + second["n"]  # a value: dynamic
    doubled = await double.submit(total)  # await of a future
    return {"first": first, "second": second, "result": inc(doubled)}  # a sync task call blocks, as in sync bodies


@flow(name="async-kinds", queue=QUEUE)
async def kinds() -> dict[str, bool]:
    """What an async task's submit and call give inside an async body (Prefect 3's answers)."""
    future, call = double.submit(1), double(1)
    kinds = {"submit gives a future": isinstance(future, Future), "a call gives a coroutine": asyncio.iscoroutine(call)}
    await call
    await future
    return kinds


@flow(name="async-child", queue=QUEUE)
async def child(x: int) -> Any:
    return await double(x)


@flow(name="async-parent", queue=QUEUE)
async def parent(x: int) -> Any:
    value = await child(x)
    return inc.submit(value)


@flow(name="async-computing-child", queue=QUEUE)
async def computing_child(a: int, b: int) -> Any:
    """Computes with its inputs: traced inside a parent it needs values, so it is a run of its own."""
    return await double(a + b)


@flow(name="async-linked-parent", queue=QUEUE)
async def linked_parent(a: int) -> Any:
    x = double.submit(a)
    y = await computing_child(x, 1)
    return inc.submit(y)


@flow(name="async-retried", queue=QUEUE)
async def retried(x: int) -> Any:
    return fails_first.submit(x)


@flow(name="async-printing", queue=QUEUE)
async def printing(n: int) -> Any:
    return chatty.submit(n)


@flow(name="async-sleepy", queue=QUEUE)
async def sleepy(seconds: float) -> Any:
    return [sleeps.submit(seconds), sleeps.submit(seconds)]  # both slots of the worker


@flow(name="async-probe", queue=SOLO)
async def probe() -> Any:
    return probe_loop.submit()


@flow(name="async-overrun", queue=SOLO)
async def overrun(seconds: float, via_options: bool = False) -> Any:
    """A declared timeout ends overruns; a with_options one ends marks_and_sleeps (both by the task's own loop)."""
    if via_options:
        return marks_and_sleeps.with_options(timeout_seconds=1).submit(seconds)
    return overruns.submit(seconds)
